"""Event delivery across SIGKILL, and the JetStream sink against the NATS
server of this machine (mandatory in CI: ``.ci/run`` makes sure it is up):
every event in seq order on a subject per account and type, each once, also
when a kill falls between publishing and recording the acknowledgement, and
across a broker that is away at the start and goes away while in use."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from tests.conftest import Client, ServerProcess
from tests.e2e.test_webhooks import (
    _kill_all,
    check_delivered,
    clock_of_users,
    logged,
    punch_pairs,
    subscribe,
)
from tests.helpers import eventually
from tests.nats_stream import NATS_URL, nats_address, stream_messages
from tests.tcp_proxy import TcpProxy
from tests.webhook_receiver import Receiver


def _server(
    url: str, stream: tuple[str, str], processes: int = 1, nats_url: str = NATS_URL
) -> ServerProcess:
    return ServerProcess(
        db_url=url,
        env_extra={
            "GEOPUNCH_NATS_URL": nats_url,
            "GEOPUNCH_NATS_STREAM": stream[0],
            "GEOPUNCH_NATS_SUBJECT_PREFIX": stream[1],
            "GEOPUNCH_WEBHOOK_LEASE_SECONDS": "1.5",
        },
        args=["--processes", str(processes)],
    )


def _check(messages: list[Any], want: list[Any], prefix: str) -> None:
    assert len(messages) == len(want), (len(messages), len(want))
    for m, e in zip(messages, want, strict=True):
        body = json.loads(m.data)
        assert m.headers["Nats-Msg-Id"] == e.id == body["id"]
        assert body["seq"] == e.seq and body["type"] == e.type
        assert m.subject == f"{prefix}.{e.account_id}.{e.type}"


def test_every_event_is_published_once_in_order(tmp_path: Path, stream: tuple[str, str]) -> None:
    srv = _server(f"sqlite:///{tmp_path / 'sink.db'}", stream)
    srv.start(tmp_path)
    client = Client(srv.address)
    try:
        clock = clock_of_users(client)
        punch_pairs(client, clock, 5)
        want = logged(client, clock[0], 10)
        _check(asyncio.run(stream_messages(stream[0], 10, 30)), want, stream[1])
    finally:
        client.close()
        srv.terminate()


def test_a_sigkill_mid_delivery_loses_nothing_and_duplicates_only_redeliveries(
    store_url: str, tmp_path: Path, stream: tuple[str, str]
) -> None:
    """One kill for both deliveries: webhooks and the JetStream sink. Every
    event reaches the receiver (a repeat only as a redelivery of the same
    webhook-id) and the stream holds each once, in order. Two processes on
    SQLite, one on PostgreSQL: each count and each store once, in half the
    time of all four pairs (a kill and a restart cost seconds each)."""
    processes = 2 if store_url.startswith("sqlite") else 1
    srv = _server(store_url, stream, processes)
    srv.start(tmp_path)
    receiver = Receiver().start()
    client = Client(srv.address)
    try:
        clock = clock_of_users(client)
        sub = subscribe(client, receiver.url, time_clock_ids=[clock[0]])
        punch_pairs(client, clock, 3)  # published and recorded before the kill...
        first = logged(client, clock[0], 6)
        asyncio.run(stream_messages(stream[0], 6, 30))
        receiver.behaviour = lambda r: (time.sleep(0.02) or 200, 0.0)  # type: ignore[func-returns-value]
        punch_pairs(client, clock, 20)  # ...and these in flight when it comes
        deadline = time.monotonic() + 30
        while len(receiver.accepted()) < 12:
            assert time.monotonic() < deadline, "no deliveries before the kill"
            time.sleep(0.01)
        client.close()
        _kill_all(srv)
        assert len({r.webhook_id for r in receiver.accepted()}) < 46, (
            "all delivered before the kill"
        )
        srv = _server(store_url, stream, processes)
        srv.start(tmp_path)
        client = Client(srv.address)
        want = logged(client, clock[0], 46)
        assert want[:6] == first
        check_delivered(receiver, sub.secret, want, timeout=60)
        _check(asyncio.run(stream_messages(stream[0], 46, 60)), want, stream[1])
    finally:
        client.close()
        srv.terminate()
        receiver.stop()


def _log_lines(srv: ServerProcess, msg: str) -> list[dict[str, Any]]:
    lines = (json.loads(line) for line in srv.logs().splitlines() if line.startswith("{"))
    return [line for line in lines if line.get("msg") == msg]


def test_a_broker_that_is_away_delays_events_and_loses_none(
    tmp_path: Path, stream: tuple[str, str]
) -> None:
    """The broker is reached through a proxy the test cuts. Away at the start,
    the sink's first connection used to wait two minutes (nats-py's 60
    attempts) without a word; gone while in use, nats-py logged each failed
    reconnection as an error with its stack, one every 2 s. Now each outage
    is one line that names the cause, then one when it recovers; punches go
    on meanwhile, and every event reaches the stream once, in order."""
    proxy = TcpProxy(nats_address())
    proxy.cut()
    srv = _server(
        f"sqlite:///{tmp_path / 'away.db'}", stream, nats_url=f"nats://127.0.0.1:{proxy.port}"
    )
    srv.start(tmp_path)
    client = Client(srv.address)
    failed, recovered = (
        "publishing to the event broker failed",
        "publishing to the event broker recovered",
    )
    try:
        clock = clock_of_users(client)
        punch_pairs(client, clock, 1)  # answered, with the broker away
        eventually(lambda: bool(_log_lines(srv, failed)), 20, "the sink said nothing of the broker")
        assert "no servers available" in _log_lines(srv, failed)[0]["error"]
        proxy.open()
        want = logged(client, clock[0], 2)
        _check(asyncio.run(stream_messages(stream[0], 2, 30)), want, stream[1])

        proxy.cut()  # gone while connected
        punch_pairs(client, clock, 2)
        eventually(lambda: len(_log_lines(srv, failed)) == 2, 20, "nothing said of the lost broker")
        proxy.open()
        want = logged(client, clock[0], 6)
        _check(asyncio.run(stream_messages(stream[0], 6, 30)), want, stream[1])
        assert len(_log_lines(srv, recovered)) == 2
        assert len(_log_lines(srv, failed)) == 2
        stacks = [line for line in map(json.loads, srv.logs().splitlines()) if "exc" in line]
        assert not stacks, stacks
        assert not _log_lines(srv, "nats: encountered error")
    finally:
        client.close()
        srv.terminate()
        proxy.close()
