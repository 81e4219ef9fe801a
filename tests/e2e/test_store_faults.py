"""A store that cannot answer (gone, unreachable, locked past the store
timeout) is answered UNAVAILABLE over both APIs, with a sentence that says
so, within the timeout, and logged without a flood; nothing is lost, and the
same calls work once it is back.

PostgreSQL is reached through a TCP proxy the test cuts (tests.tcp_proxy),
which is what a restart or a failover of the database looks like from the
server's side.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from geopunch.v1 import location_pb2, timeclock_pb2
from tests.conftest import API_KEY, Client, ServerProcess, make_time_clock
from tests.e2e.test_webhooks import subscribe
from tests.helpers import details, eventually, pg_migrated, rpc_error, scrape, value
from tests.nats_stream import NATS_URL, stream_messages
from tests.tcp_proxy import TcpProxy
from tests.webhook_receiver import Receiver

USER = 9170357
HEADERS = {"X-API-KEY": API_KEY}
#: The servers here wait this long for the store.
TIMEOUT_S = 2


def _log_lines(srv: ServerProcess, msg: str) -> list[dict[str, object]]:
    lines = (json.loads(line) for line in srv.logs().splitlines() if line.startswith("{"))
    return [line for line in lines if line.get("msg") == msg]


def _clock_out(http: httpx.Client, tc_id: int, key: str) -> httpx.Response:
    return http.post(
        f"/time-clock/v1/time-clocks/{tc_id}/clock-out",
        json={"userId": USER},
        headers={"Idempotency-Key": key},
    )


def _retry_delay(err: grpc.RpcError) -> float | None:
    """The google.rpc.RetryInfo delay among the status's details, if any."""
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return float(info.retry_delay.ToTimedelta().total_seconds())
    return None


def _refused_unavailable(answer: httpx.Response, sentence: str) -> None:
    assert answer.status_code == 503, answer.text
    assert answer.headers["Retry-After"] == "1"
    body = answer.json()
    assert body["code"] == "UNAVAILABLE"
    assert body["detail"] == f"{sentence}; retry shortly"


def _watch(http_address: str, into: queue.Queue[dict[str, object]]) -> None:
    """The account's events over Server-Sent Events, on one connection."""
    with (
        httpx.Client(base_url=f"http://{http_address}", headers=HEADERS, timeout=60) as http,
        http.stream("GET", "/geopunch/v1/events") as answer,
    ):
        for line in answer.iter_lines():
            if line == ": geopunch events":  # the stream's first line
                into.put({"type": "open"})
            if line.startswith("data: "):
                into.put(json.loads(line[6:]))


@pytest.fixture
def proxied(
    tmp_path: Path, stream: tuple[str, str]
) -> Iterator[tuple[ServerProcess, TcpProxy, str]]:
    """A server on a fresh PostgreSQL database, reached through a proxy, and
    publishing to a JetStream stream of its own; with the database's direct
    URL, for the test's own look."""
    with pg_migrated() as url:
        parsed = make_url(url)
        proxy = TcpProxy((parsed.host or "127.0.0.1", parsed.port or 5432))
        through = parsed.set(host="127.0.0.1", port=proxy.port)
        srv = ServerProcess(
            db_url=through.render_as_string(hide_password=False),
            env_extra={
                "GEOPUNCH_STORE_TIMEOUT_SECONDS": str(TIMEOUT_S),
                "GEOPUNCH_NATS_URL": NATS_URL,
                "GEOPUNCH_NATS_STREAM": stream[0],
                "GEOPUNCH_NATS_SUBJECT_PREFIX": stream[1],
            },
        )
        try:
            srv.start(tmp_path)
            yield srv, proxy, url
        finally:
            proxy.open()
            if srv.proc is not None:
                srv.terminate()
            proxy.close()


@pytest.mark.postgres
def test_a_store_that_goes_away_is_answered_unavailable_and_nothing_is_lost(
    proxied: tuple[ServerProcess, TcpProxy, str], stream: tuple[str, str]
) -> None:
    srv, proxy, direct = proxied
    client = Client(srv.address)
    http = httpx.Client(base_url=f"http://{srv.http_address}", headers=HEADERS, timeout=30)
    receiver = Receiver()
    try:
        tc = make_time_clock(client)
        # A webhook subscription delivering across the outage.
        receiver.start()
        subscribe(client, receiver.url, time_clock_ids=[tc.id])
        client(
            client.timeclock.ClockIn,
            timeclock_pb2.ClockInRequest(time_clock_id=tc.id, user_id=USER),
        )
        assert len(receiver.wait_for(1, 10)) == 1
        # An event stream open across the outage, read on a thread.
        events: queue.Queue[dict[str, object]] = queue.Queue()
        threading.Thread(target=_watch, args=(srv.http_address, events), daemon=True).start()
        assert [events.get(timeout=10)["type"] for _ in range(2)] == ["open", "clockIn"]

        proxy.cut()  # the database stops: connections closed, new ones refused
        started = time.monotonic()
        _refused_unavailable(_clock_out(http, tc.id, "out-1"), "the store cannot be reached")
        err = rpc_error(
            lambda: client(
                client.timeclock.ClockOut,
                timeclock_pb2.ClockOutRequest(
                    time_clock_id=tc.id, user_id=USER, idempotency_key="out-1"
                ),
            )
        )
        assert err.code() is grpc.StatusCode.UNAVAILABLE
        assert err.details() == "the store cannot be reached; retry shortly"
        assert _retry_delay(err) == 1.0  # as HTTP's Retry-After
        trailing = {str(m.key): str(m.value) for m in err.trailing_metadata()}
        assert trailing["grpc-retry-pushback-ms"] == "1000"
        # A read, on the HTTP API's thread pool rather than the punch lane.
        _refused_unavailable(
            http.get(f"/time-clock/v1/time-clocks/{tc.id}/geofences"),
            "the store cannot be reached",
        )
        assert time.monotonic() - started < 5 * TIMEOUT_S
        time.sleep(3)  # the background loops fail a few rounds meanwhile
        samples = scrape(srv.http_address)  # the metrics need no store
        assert value(samples, "geopunch_store_unavailable_total", reason="unreachable") >= 3

        proxy.open()  # back: the pool's dead connections are replaced
        answer = _clock_out(http, tc.id, "out-1")
        for _ in range(50):
            if answer.status_code != 503:
                break
            time.sleep(0.1)
            answer = _clock_out(http, tc.id, "out-1")
        assert answer.status_code == 200, answer.text
        again = _clock_out(http, tc.id, "out-1")  # a client's retry: the same answer
        assert again.json()["data"] == answer.json()["data"], again.text
        # The stream stayed open, and the punch made after the outage comes on it.
        assert events.get(timeout=10)["type"] == "clockOut"
        delivered = receiver.wait_for(2, 15)
        assert [r.event["type"] for r in delivered] == ["clockIn", "clockOut"]
        # And the JetStream sink published both, once each.
        published = asyncio.run(stream_messages(stream[0], 2, 15))
        punches = [json.loads(m.data)["type"] for m in published]
        assert [t for t in punches if t.startswith("clock")] == ["clockIn", "clockOut"]
        # The outage is not a defect of the deliveries: nothing restarted.
        samples = scrape(srv.http_address)
        for what in ("webhooks", "subscription", "sink"):
            assert value(samples, "geopunch_delivery_restarts_total", what=what) == 0
    finally:
        receiver.stop()
        http.close()
        client.close()

    # The shift was closed once, by the retried punch, and by nothing else.
    engine = create_engine(direct)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT end_ts IS NOT NULL FROM activities WHERE user_id = :u"), {"u": USER}
            ).all()
    finally:
        engine.dispose()
    assert rows == [(True,)]

    # Each call's failure is a warning without a stack; the background
    # loops say they failed once (not once a second each) and recovered.
    assert not [m for m in srv.logs().splitlines() if "unexpected error" in m]
    # SQLAlchemy's pool says it could not reset a dead connection, in its own
    # words; every line of geopunch's own about the outage is without a stack.
    stacks = [
        line
        for line in (json.loads(m) for m in srv.logs().splitlines() if m.startswith("{"))
        if "exc" in line and not str(line["logger"]).startswith("sqlalchemy")
    ]
    assert not stacks, stacks
    warned = _log_lines(srv, "store unavailable")
    assert warned and {w["reason"] for w in warned} == {"unreachable"}
    assert all("exc" not in w for w in warned)
    claims = _log_lines(srv, "claiming webhook subscriptions failed")
    assert len(claims) == 1 and "exc" not in claims[0], claims
    eventually(
        lambda: len(_log_lines(srv, "claiming webhook subscriptions recovered")) == 1,
        10,
        "the webhook claims never said they recovered",
    )


@pytest.mark.postgres
def test_a_store_that_never_answers_is_given_up_on_in_time(
    proxied: tuple[ServerProcess, TcpProxy, str],
) -> None:
    """A database host gone behind a firewall that drops packets: a new
    connection is never answered. libpq would wait for it forever."""
    srv, proxy, _ = proxied
    client = Client(srv.address)
    try:
        tc = make_time_clock(client)
        proxy.hold()
        started = time.monotonic()
        err = rpc_error(
            lambda: client(
                client.timeclock.ClockIn,
                timeclock_pb2.ClockInRequest(time_clock_id=tc.id, user_id=USER),
                timeout=60,
            )
        )
        waited = time.monotonic() - started
        assert err.code() is grpc.StatusCode.UNAVAILABLE, err.details()
        assert err.details() == "the store cannot be reached; retry shortly"
        assert TIMEOUT_S - 0.5 < waited < 4 * TIMEOUT_S, waited
        proxy.open()
        for _ in range(50):
            try:
                client(
                    client.timeclock.ClockIn,
                    timeclock_pb2.ClockInRequest(time_clock_id=tc.id, user_id=USER),
                )
                break
            except grpc.RpcError as again:
                assert again.code() is grpc.StatusCode.UNAVAILABLE
                time.sleep(0.1)
        else:
            raise AssertionError("the store never came back")
    finally:
        client.close()


@pytest.mark.postgres
def test_a_lock_held_past_the_store_timeout_is_answered_unavailable(
    proxied: tuple[ServerProcess, TcpProxy, str],
) -> None:
    """Someone holds a lock on the activities (a hand-run maintenance, a
    stuck session): a punch waits for it at most the store timeout."""
    srv, _, direct = proxied
    client = Client(srv.address)
    http = httpx.Client(base_url=f"http://{srv.http_address}", headers=HEADERS, timeout=30)
    engine = create_engine(direct)
    events: queue.Queue[dict[str, object]] = queue.Queue()
    try:
        tc = make_time_clock(client)
        with engine.connect() as conn:
            # An event stream opens (its check reads another table), and its
            # first read waits for the lock, and times out.
            conn.execute(text("LOCK TABLE events IN ACCESS EXCLUSIVE MODE"))
            threading.Thread(target=_watch, args=(srv.http_address, events), daemon=True).start()
            assert events.get(timeout=10)["type"] == "open"
            # A gRPC stream's read times out the same way, and ends it.
            started = time.monotonic()
            watching = client.locations.WatchEvents(
                location_pb2.WatchEventsRequest(), metadata=client.metadata, timeout=30
            )
            err = rpc_error(lambda: next(iter(watching)))
            assert err.code() is grpc.StatusCode.UNAVAILABLE, err.details()
            assert err.details() == "the store did not answer in time; retry shortly"
            assert details(err)[0].metadata["afterSeq"] == "0"  # where to resume
            assert time.monotonic() - started < 4 * TIMEOUT_S
            time.sleep(1)  # the SSE stream's read has timed out too by now
            conn.rollback()
        eventually(
            lambda: bool(_log_lines(srv, "store unavailable")), 10, "the read never timed out"
        )
        with engine.connect() as conn:
            conn.execute(text("LOCK TABLE activities IN ACCESS EXCLUSIVE MODE"))
            started = time.monotonic()
            answer = http.post(
                f"/time-clock/v1/time-clocks/{tc.id}/clock-in",
                json={"userId": USER},
                headers={"Idempotency-Key": "in-1"},
            )
            waited = time.monotonic() - started
            _refused_unavailable(answer, "the store did not answer in time")
            assert TIMEOUT_S - 0.5 < waited < 4 * TIMEOUT_S, waited
            conn.rollback()
        answer = http.post(
            f"/time-clock/v1/time-clocks/{tc.id}/clock-in",
            json={"userId": USER},
            headers={"Idempotency-Key": "in-1"},
        )
        assert answer.status_code == 200, answer.text
        # The stream outlived its timed-out read: the punch's event comes on it.
        assert events.get(timeout=10)["type"] == "clockIn"
    finally:
        engine.dispose()
        http.close()
        client.close()
    assert {w["reason"] for w in _log_lines(srv, "store unavailable")} == {"timed_out"}
    assert not [m for m in srv.logs().splitlines() if "unexpected error" in m]


def test_sqlite_held_by_another_process_is_answered_unavailable(tmp_path: Path) -> None:
    """A command or a backup holding SQLite's write lock past the store
    timeout: the punch is refused as busy, then goes through. So too when
    another geopunch process (here: this test) holds the writers' file lock
    beside the database and does not let go, which used to hold every
    writer of the server for as long as it did."""
    db = tmp_path / "held.db"
    srv = ServerProcess(
        db_url=f"sqlite:///{db}", env_extra={"GEOPUNCH_STORE_TIMEOUT_SECONDS": str(TIMEOUT_S)}
    )
    srv.start(tmp_path)
    client = Client(srv.address)
    http = httpx.Client(base_url=f"http://{srv.http_address}", headers=HEADERS, timeout=30)
    holder = sqlite3.connect(db, isolation_level=None)
    try:
        tc = make_time_clock(client)
        holder.execute("BEGIN EXCLUSIVE")
        started = time.monotonic()
        answer = http.post(f"/time-clock/v1/time-clocks/{tc.id}/clock-in", json={"userId": USER})
        waited = time.monotonic() - started
        _refused_unavailable(answer, "the store is held by another transaction")
        assert TIMEOUT_S - 0.5 < waited < 4 * TIMEOUT_S, waited
        holder.execute("ROLLBACK")
        answer = http.post(f"/time-clock/v1/time-clocks/{tc.id}/clock-in", json={"userId": USER})
        assert answer.status_code == 200, answer.text

        writers = os.open(f"{db}-writer.lock", os.O_RDWR)
        try:
            fcntl.flock(writers, fcntl.LOCK_EX)
            started = time.monotonic()
            out = http.post(f"/time-clock/v1/time-clocks/{tc.id}/clock-out", json={"userId": USER})
            waited = time.monotonic() - started
            _refused_unavailable(out, "the store is held by another transaction")
            assert TIMEOUT_S - 0.5 < waited < 4 * TIMEOUT_S, waited
        finally:
            os.close(writers)  # the lock with it
        out = http.post(f"/time-clock/v1/time-clocks/{tc.id}/clock-out", json={"userId": USER})
        assert out.status_code == 200, out.text
    finally:
        holder.close()
        http.close()
        client.close()
        srv.terminate()
    assert {w["reason"] for w in _log_lines(srv, "store unavailable")} == {"busy"}
