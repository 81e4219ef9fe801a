"""Punches under concurrency and under SIGKILL: invariants hold, acknowledged means stored."""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_status import rpc_status

from geopunch.adapters.db.store import SqlUnitOfWorkFactory, make_engine
from geopunch.domain.accounts import DEFAULT_ACCOUNT
from geopunch.domain.punches import Activity
from geopunch.v1 import admin_pb2, timeclock_pb2
from tests.conftest import Client, ServerProcess, next_time_clock_id
from tests.helpers import details

USERS = [501, 502, 503]
STATE_REASONS = {
    "ALREADY_CLOCKED_IN",
    "OPEN_BREAK",
    "NO_OPEN_SHIFT",
    "ALREADY_ON_BREAK",
    "NO_OPEN_BREAK",
    "INVALID_TIMESTAMP_BEFORE_CLOCK_IN",
    "INVALID_TIMESTAMP_BEFORE_START",
    "OVERLAPS_COMPLETED_ACTIVITY",
    "CONCURRENT_MODIFICATION",
}


def setup_clock(c: Client) -> int:
    tc = admin_pb2.TimeClock(
        id=next_time_clock_id(),
        name="busy",
        timezone="UTC",
        user_ids=USERS,
        jobs=[admin_pb2.Job(id="j", name="J")],
        manual_breaks_enabled=True,
        manual_break_types=[admin_pb2.ManualBreakType(id="rest", name="Rest")],
    )
    return int(c(c.admin.CreateTimeClock, admin_pb2.CreateTimeClockRequest(time_clock=tc)).data.id)


@dataclass
class Acked:
    """What OK answers promised: activity id -> (start, end or None) as last acknowledged."""

    starts: dict[str, int] = field(default_factory=dict)
    ends: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def shift(self, s: timeclock_pb2.Shift) -> None:
        with self.lock:
            self.starts[s.id] = s.start.timestamp
            if s.HasField("end"):
                self.ends[s.id] = s.end.timestamp


def random_punch(c: Client, tc: int, user: int, acked: Acked, key: str = "") -> None:
    """One random punch; records what an OK answer acknowledged."""
    kind = random.choice(["in", "out", "break", "end"])
    if kind == "in":
        r = c(
            c.timeclock.ClockIn,
            timeclock_pb2.ClockInRequest(
                time_clock_id=tc, user_id=user, job_id="j", idempotency_key=key
            ),
            timeout=20,
        )
        acked.shift(r.data.shift)
    elif kind == "out":
        r = c(
            c.timeclock.ClockOut,
            timeclock_pb2.ClockOutRequest(time_clock_id=tc, user_id=user, idempotency_key=key),
            timeout=20,
        )
        acked.shift(r.data.shift)
    elif kind == "break":
        b = c(
            c.timeclock.StartManualBreak,
            timeclock_pb2.StartManualBreakRequest(
                time_clock_id=tc, user_id=user, manual_break_id="rest", idempotency_key=key
            ),
            timeout=20,
        )
        with acked.lock:
            acked.starts[b.data.id] = b.data.start.timestamp
        if b.data.is_switch_from_shift:
            acked.shift(b.data.closed_shift)
    else:
        e = c(
            c.timeclock.EndManualBreak,
            timeclock_pb2.EndManualBreakRequest(
                time_clock_id=tc, user_id=user, idempotency_key=key
            ),
            timeout=20,
        )
        with acked.lock:
            acked.ends[e.data.id] = e.data.end.timestamp
        if e.data.is_resume_shift:
            acked.shift(e.data.resumed_shift)


def stored(db: Path | str, tc: int) -> dict[int, list[Activity]]:
    """Every activity of ``USERS`` on ``tc``, from a SQLite file or a store URL."""
    engine = make_engine(f"sqlite:///{db}" if isinstance(db, Path) else db)
    try:
        with SqlUnitOfWorkFactory(engine)(account=DEFAULT_ACCOUNT, readonly=True) as uow:
            return {u: uow.activities.list_for(tc, u) for u in USERS}
    finally:
        engine.dispose()


def check_store(db: Path | str, tc: int, acked: Acked) -> None:
    by_user = stored(db, tc)
    everything = {a.id: a for acts in by_user.values() for a in acts}
    for acts in by_user.values():
        assert sum(1 for a in acts if a.end is None) <= 1
        closed = sorted((a.start.timestamp, a.end.timestamp) for a in acts if a.end)
        assert all(e >= s for s, e in closed)  # a live end may share its start's second
        for (_, e1), (s2, _) in itertools.pairwise(closed):
            assert e1 <= s2, closed
    for act_id, start in acked.starts.items():
        assert act_id in everything, f"acknowledged {act_id} is missing"
        assert everything[act_id].start.timestamp == start
    for act_id, end in acked.ends.items():
        got = everything[act_id].end
        assert got is not None and got.timestamp == end


def hammer(workers: int, until: Callable[[], bool], work: Callable[[int], None]) -> list[str]:
    """Run ``work`` in ``workers`` threads until ``until()``; return unexpected failures."""
    problems: list[str] = []

    def loop(w: int) -> None:
        while not until():
            try:
                work(w)
            except grpc.RpcError as err:
                if err.code() in (
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.CANCELLED,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                ):
                    if until():
                        return
                    problems.append(f"{err.code().name}: {err.details()}")
                    continue
                status = rpc_status.from_call(err)  # type: ignore[arg-type]
                reason = details(err)[0].reason if status else ""
                if reason not in STATE_REASONS:
                    problems.append(f"{err.code().name} {reason}: {err.details()}")

    threads = [threading.Thread(target=loop, args=(w,)) for w in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return problems


def test_64_concurrent_clients(tmp_path: Path) -> None:
    db = tmp_path / "busy.db"
    srv = ServerProcess(db_url=f"sqlite:///{db}")
    srv.start(tmp_path)
    clients = [Client(srv.address) for _ in range(64)]
    tc = setup_clock(clients[0])
    acked = Acked()
    calls = [0] * 64
    deadline = time.monotonic() + 6

    def work(w: int) -> None:
        calls[w] += 1
        random_punch(clients[w], tc, random.choice(USERS), acked)

    try:
        problems = hammer(64, lambda: time.monotonic() > deadline, work)
    finally:
        for c in clients:
            c.close()
        srv.terminate()
    assert problems == []
    assert sum(calls) > 200
    assert len(acked.starts) > 10
    check_store(db, tc, acked)


def _load_then_kill(
    srv: ServerProcess, clients: list[Client], tc: int, acked: Acked, rng: random.Random, cycle: int
) -> list[str]:
    """Punch from 8 threads until the server is killed at a random moment."""
    killed = threading.Event()
    counter = [0]

    def work(w: int) -> None:
        counter[0] += 1
        key = f"c{cycle}-w{w}-{counter[0]}"
        random_punch(clients[w], tc, rng.choice(USERS), acked, key=key)

    def kill() -> None:
        killed.set()
        srv.kill()

    killer = threading.Timer(rng.uniform(0.8, 2.0), kill)
    killer.start()
    problems = hammer(8, killed.is_set, work)
    killer.join()
    return problems


def test_sigkill_under_load_loses_nothing_acknowledged(tmp_path: Path) -> None:
    db = tmp_path / "crash.db"
    srv = ServerProcess(db_url=f"sqlite:///{db}")
    acked = Acked()
    tc = 0
    rng = random.Random(7)
    for cycle in range(3):
        srv.start(tmp_path)
        clients = [Client(srv.address) for _ in range(8)]
        if cycle == 0:
            tc = setup_clock(clients[0])
        problems = _load_then_kill(srv, clients, tc, acked, rng, cycle)
        for c in clients:
            c.close()
        assert problems == [], problems
        assert srv.proc is not None and srv.proc.returncode == -9
    srv.start(tmp_path)
    srv.terminate()
    assert len(acked.starts) > 5
    check_store(db, tc, acked)
