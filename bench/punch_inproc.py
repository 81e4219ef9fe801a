"""A punch's latency at one in flight in process, without gRPC.

    python3 dev.py run bench/punch_inproc.py [--punches 4000]

One user clocks in and out in turn through the punch use case and the
server's group committer, on a fresh SQLite file (WAL, ``synchronous=FULL``,
as the server runs) and on uvloop, one punch at a time. In the same run the
baseline: a one-row durable transaction through plain ``sqlite3`` with the
same settings. Then 64 users punch at once (64 in flight, as
``loadgen.py`` drives the server), and the process's CPU time per punch is
taken: the punch's own work with commits shared by a batch, without gRPC.

Prints JSON: the punch's p50 at one in flight and the p50 of the
committer's batch (the punch's work and its commit in the writer thread),
the rest being the hand-offs between the event loop and that thread; and
the CPU milliseconds per punch at 64 in flight. Added to the gRPC floor
(``grpc_floor.py``) the first is the least a punch over gRPC can take at one
in flight; set against a ``Ping``'s server CPU (``loadgen.py``) the second
bounds how close punches can come to ``Ping``'s rate.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop

from geopunch.adapters.db.store import GroupCommitter, SqlUnitOfWorkFactory, make_engine, migrate
from geopunch.domain.accounts import DEFAULT_ACCOUNT
from geopunch.domain.models import Job, TimeClock
from geopunch.domain.punches import PunchCommand, PunchKind
from geopunch.service import admin, punches

TC, USER = 1, 10
IN_FLIGHT = 64


class _Clock:
    def __init__(self) -> None:
        self.t = float(int(time.time()) - 86_400)

    def now(self) -> float:
        return self.t


def plain_commit_ms(db: Path, n: int) -> float:
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT, b TEXT)")
    spent = []
    for _ in range(n):
        started = time.perf_counter()
        conn.execute("BEGIN")
        conn.execute("INSERT INTO t (a, b) VALUES (?, ?)", ("x" * 100, "y" * 200))
        conn.execute("COMMIT")
        spent.append(time.perf_counter() - started)
    conn.close()
    return statistics.median(spent[n // 8 :]) * 1000


def punch_ms(db: Path, n: int) -> dict[str, float]:
    engine = make_engine(f"sqlite:///{db}")
    migrate(engine)
    uows = SqlUnitOfWorkFactory(engine)
    users = frozenset({USER, *range(1000, 1000 + IN_FLIGHT)})
    tc = TimeClock(id=TC, name="b", timezone="UTC", jobs=(Job("j", "J"),), user_ids=users)
    admin.create_time_clock(uows, DEFAULT_ACCOUNT, tc, ["j"], assign_id=False)
    committer = GroupCommitter(uows)
    batches: list[float] = []
    run_batch = committer._run_batch

    def timed_batch(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return run_batch(*args, **kwargs)
        finally:
            batches.append(time.perf_counter() - started)

    committer._run_batch = timed_batch  # type: ignore[method-assign]
    clock = _Clock()

    async def punch_all() -> list[float]:
        spent = []
        for i in range(n):
            clock.t += 2  # a user's punches a second or more apart
            kind = PunchKind.CLOCK_IN if i % 2 == 0 else PunchKind.CLOCK_OUT
            cmd = PunchCommand(kind, TC, USER)
            started = time.perf_counter()
            await punches.punch(committer.submit, None, clock, DEFAULT_ACCOUNT, cmd, "bench")
            spent.append(time.perf_counter() - started)
        return spent

    async def punch_together(rounds: int) -> float:
        """CPU seconds per punch, IN_FLIGHT users punching at once."""
        started = time.process_time()
        for i in range(rounds):
            clock.t += 2
            kind = PunchKind.CLOCK_IN if i % 2 == 0 else PunchKind.CLOCK_OUT
            await asyncio.gather(
                *(
                    punches.punch(
                        committer.submit,
                        None,
                        clock,
                        DEFAULT_ACCOUNT,
                        PunchCommand(kind, TC, 1000 + u),
                        "bench",
                    )
                    for u in range(IN_FLIGHT)
                )
            )
        return (time.process_time() - started) / (rounds * IN_FLIGHT)

    try:
        spent = uvloop.run(punch_all())
        cpu_per_punch = uvloop.run(punch_together(max(n // IN_FLIGHT, 20)))
    finally:
        committer.close()
        engine.dispose()
    return {
        "punch_p50_ms": statistics.median(spent[n // 8 :]) * 1000,
        "batch_p50_ms": statistics.median(batches[n // 8 : n]) * 1000,
        "cpu_ms_per_punch_at_64": cpu_per_punch * 1000,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--punches", type=int, default=4000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result: dict[str, Any] = {
            k: round(v, 3) for k, v in punch_ms(Path(tmp) / "p.db", args.punches).items()
        }
        result["plain_durable_commit_p50_ms"] = round(
            plain_commit_ms(Path(tmp) / "c.db", args.punches), 3
        )
    result["punch_over_plain_commit"] = round(
        result["punch_p50_ms"] / result["plain_durable_commit_p50_ms"], 2
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
