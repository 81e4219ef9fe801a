"""Event delivery across SIGKILL, and the JetStream sink against the NATS
server of this machine (mandatory in CI: ``.ci/run`` makes sure it is up):
every event in seq order on a subject per account and type, each once, also
when a kill falls between publishing and recording the acknowledgement."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest

from tests.conftest import Client, ServerProcess
from tests.e2e.test_webhooks import (
    _kill_all,
    check_delivered,
    clock_of_users,
    logged,
    punch_pairs,
    subscribe,
)
from tests.webhook_receiver import Receiver

NATS_URL = os.environ.get("GEOPUNCH_TEST_NATS_URL", "nats://127.0.0.1:4222")


def _nats_reachable() -> bool:
    host, _, port = NATS_URL.removeprefix("nats://").partition(":")
    try:
        socket.create_connection((host, int(port or 4222)), timeout=2).close()
    except OSError:
        return False
    return True


async def _stream_messages(stream: str, count: int, timeout: float) -> list[Any]:
    """The stream's messages from the first, by a consumer of its own."""
    nc = await nats.connect(NATS_URL, connect_timeout=5)
    try:
        js = nc.jetstream()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        # The sink makes the stream with its first publish, which may come
        # after the punches' answers on a busy machine.
        while True:
            try:
                await js.stream_info(stream)
                break
            except nats.js.errors.NotFoundError:
                assert loop.time() < deadline, f"stream {stream} never made"
                await asyncio.sleep(0.05)
        sub = await js.pull_subscribe("", durable=None, stream=stream)
        out: list[Any] = []
        while len(out) < count and loop.time() < deadline:
            try:
                batch = await sub.fetch(min(100, count - len(out) + 10), timeout=1)
            except TimeoutError:  # nats-py raises its own subclass or asyncio's own
                continue
            for m in batch:
                await m.ack()
            out.extend(batch)
        # Nothing more than expected arrives afterwards either.
        with contextlib.suppress(TimeoutError):
            out.extend(await sub.fetch(10, timeout=1))
        return out
    finally:
        await nc.close()


async def _delete_stream(stream: str) -> None:
    nc = await nats.connect(NATS_URL, connect_timeout=5)
    try:
        await nc.jetstream().delete_stream(stream)
    except nats.js.errors.NotFoundError:
        pass
    finally:
        await nc.close()


@pytest.fixture
def stream() -> Iterator[tuple[str, str]]:
    """A stream and subject prefix of this test's own. Without a NATS
    server the test is skipped, unless GEOPUNCH_REQUIRE_NATS says it must
    run (CI sets it, as it does GEOPUNCH_REQUIRE_PG)."""
    if not _nats_reachable():
        if os.environ.get("GEOPUNCH_REQUIRE_NATS"):
            pytest.fail(f"no NATS server at {NATS_URL} (GEOPUNCH_REQUIRE_NATS is set)")
        pytest.skip(f"no NATS server at {NATS_URL}; set GEOPUNCH_TEST_NATS_URL")
    tag = uuid.uuid4().hex[:10]
    name, prefix = f"GEOPUNCH_TEST_{tag}", f"geopunch-test.{tag}"
    yield name, prefix
    asyncio.run(_delete_stream(name))


def _server(url: str, stream: tuple[str, str], processes: int = 1) -> ServerProcess:
    return ServerProcess(
        db_url=url,
        env_extra={
            "GEOPUNCH_NATS_URL": NATS_URL,
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
        _check(asyncio.run(_stream_messages(stream[0], 10, 30)), want, stream[1])
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
        asyncio.run(_stream_messages(stream[0], 6, 30))
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
        _check(asyncio.run(_stream_messages(stream[0], 46, 60)), want, stream[1])
    finally:
        client.close()
        srv.terminate()
        receiver.stop()
