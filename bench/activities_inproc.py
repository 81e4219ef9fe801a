"""Where a ``CreateTimeActivities`` call of 1,000 activities spends its time,
in process: the gRPC servicer's method called directly (request decoding,
checks, writes, events, the answer), without the transport.

    python3 dev.py run bench/activities_inproc.py [--calls 30]
        [--database-url postgresql+psycopg://postgres@127.0.0.1:5432/test]

A fresh SQLite file as the server runs it (WAL, ``synchronous=FULL``), or a
PostgreSQL schema of its own, a
time clock of 10,000 users held by the fence index as in the server, and
each call the next day of ``bench/timesheets.py``'s history (500 users, a
shift and a break each). In the same run the baseline of the issue's bar: a
plain ``executemany`` of the same rows in one durable transaction.

Timers around the store's writes split the call: the activities' insert, the
events' insert (at the commit) and the rest of the commit, against everything
else (decoding, planning, judging against the store, building events and the
answer). Prints JSON of per-call medians in milliseconds and the call's rate
against the baseline's.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from timesheets import DAY, PER_CALL, TC, Baseline, history, rows_like, store

from geopunch.adapters.db import store as sql_store
from geopunch.adapters.db.repositories import SqlActivityRepository
from geopunch.adapters.db.store import SqlUnitOfWork
from geopunch.adapters.grpc.auth import principal_var
from geopunch.adapters.grpc.timeclock import TimeClockServicer
from geopunch.bootstrap import SystemClock, build_app
from geopunch.config import Config
from geopunch.domain.accounts import DEFAULT_ACCOUNT, Principal, Scope
from geopunch.domain.models import Job, ManualBreakType, TimeClock
from geopunch.service import admin
from geopunch.service.index_feed import follow_index_changes
from geopunch.v1 import timeclock_pb2

USERS = 10_000

_spent: dict[str, list[float]] = defaultdict(list)


def _timed(owner: object, name: str, label: str) -> None:
    """Time every call of ``owner.name`` under ``label``."""
    inner: Callable[..., Any] = getattr(owner, name)

    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            _spent[label].append((time.perf_counter() - started) * 1000)

    setattr(owner, name, timed)


def requests(calls: int) -> list[timeclock_pb2.CreateTimeActivitiesRequest]:
    now = int(time.time())
    first_day = (now // DAY - calls - 2) * DAY
    out: list[timeclock_pb2.CreateTimeActivitiesRequest] = []
    batch: list[timeclock_pb2.UserTimeActivities] = []
    for group in history(USERS, calls + 1, first_day):
        batch.append(group)
        if len(batch) * 2 >= PER_CALL:
            out.append(
                timeclock_pb2.CreateTimeActivitiesRequest(time_clock_id=TC, time_activities=batch)
            )
            batch = []
            if len(out) == calls:
                break
    return out


def run(calls: int, database_url: str | None, stored: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp, store(database_url, Path(tmp)) as url:
        app = build_app(Config.from_env({"GEOPUNCH_DATABASE_URL": url}))
        clock = TimeClock(
            id=TC,
            name="bench",
            timezone="America/New_York",
            jobs=(Job("j", "J"),),
            user_ids=frozenset(range(1, USERS + 1)),
            manual_breaks_enabled=True,
            manual_break_types=(ManualBreakType("rest", "Rest", is_paid=True),),
        )
        admin.create_time_clock(app.uows, DEFAULT_ACCOUNT, clock, ["j"], assign_id=False)
        follow_index_changes(app.uows, app.index, app.index_cursor)  # as the server's feed does
        servicer = TimeClockServicer(app.uows, app.index, SystemClock(), committer=None)  # type: ignore[arg-type]
        principal_var.set(Principal(DEFAULT_ACCOUNT, frozenset(Scope), "bench"))
        baseline = Baseline(url)
        todo = requests(stored + calls)
        for i, request in enumerate(todo[:stored]):  # the history a busy store holds
            servicer.CreateTimeActivities(request, None)
            baseline.keep_statistics((i + 1) * PER_CALL)
        todo = todo[stored:]
        # As the server does once started: what set-up built is not walked by
        # every full collection.
        gc.collect()
        gc.freeze()
        _timed(SqlActivityRepository, "add_many", "activities_insert")
        # The events are written inside the commit (store.write_appended).
        _timed(sql_store, "write_appended", "events_insert")
        _timed(SqlUnitOfWork, "commit", "commit")
        call_ms, cpu_ms, plain_ms = [], [], []
        for i, request in enumerate(todo):
            started, cpu = time.perf_counter(), time.process_time()
            reply = servicer.CreateTimeActivities(request, None)
            call_ms.append((time.perf_counter() - started) * 1000)
            cpu_ms.append((time.process_time() - cpu) * 1000)
            answer = timeclock_pb2.CreateTimeActivitiesResponse()
            answer.data.CopyFrom(reply.data)
            rows = rows_like(answer, f"-{i}")
            started = time.perf_counter()
            baseline.insert(rows)
            plain_ms.append((time.perf_counter() - started) * 1000)

    # The commit's own share: without the events written in it (once a call each).
    _spent["commit"] = [
        c - e for c, e in zip(_spent["commit"], _spent["events_insert"], strict=True)
    ]

    def p50(values: list[float]) -> float:
        return round(statistics.median(values[3:]), 2)  # past the first calls' warm-up

    writes = {label: p50(values) for label, values in sorted(_spent.items())}
    return {
        "calls": calls,
        "stored_first": stored * PER_CALL,
        "create_1000_p50_ms": p50(call_ms),
        "create_1000_cpu_p50_ms": p50(cpu_ms),
        "writes_p50_ms": writes,
        "rest_p50_ms": round(p50(call_ms) - sum(writes.values()), 2),
        "executemany_1000_p50_ms": p50(plain_ms),
        "writes_over_executemany": round(sum(writes.values()) / p50(plain_ms), 2),
        "create_vs_executemany_rate": round(p50(plain_ms) / p50(call_ms), 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=30)
    ap.add_argument("--database-url", default=None, help="PostgreSQL; default: SQLite")
    ap.add_argument(
        "--stored", type=int, default=0, help="calls' worth of history stored first, untimed"
    )
    args = ap.parse_args()
    print(json.dumps(run(args.calls, args.database_url, args.stored), indent=2))


if __name__ == "__main__":
    main()
