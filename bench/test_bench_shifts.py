"""pytest-benchmark of bulk shift creation (python3 dev.py bench -k shifts).

``create-500`` is a 500-shift request through the servicer (proto in, proto
out) on a SQLite file with synchronous=FULL; its baseline in the same group is
the bare store cost: the same 500 shift rows, their user rows and 500 event
rows inserted with SQLAlchemy Core in one transaction, without conversion or
validation.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from shifts import scheduler, shift_batch
from sqlalchemy import insert

from geopunch.adapters.db.store import SqlUnitOfWorkFactory, make_engine, migrate
from geopunch.adapters.db.tables import events, scheduled_shifts, shift_users
from geopunch.adapters.grpc.auth import principal_var
from geopunch.adapters.grpc.scheduling import SchedulerServicer, scheduler_from_proto
from geopunch.domain.accounts import ALL_SCOPES, DEFAULT_ACCOUNT, Principal
from geopunch.service.scheduler import create_scheduler
from geopunch.v1 import scheduler_pb2

N = 500


class SystemClock:
    def now(self) -> float:
        return time.time()


@pytest.fixture(scope="module")
def uows(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SqlUnitOfWorkFactory]:
    path: Path = tmp_path_factory.mktemp("bench") / "shifts.db"
    engine = make_engine(f"sqlite:///{path}")
    migrate(engine)
    factory = SqlUnitOfWorkFactory(engine)
    s, paths = scheduler_from_proto(scheduler())
    create_scheduler(factory, DEFAULT_ACCOUNT, s, paths, assign_id=False)
    yield factory
    engine.dispose()


def test_create_500_shifts(benchmark, uows: SqlUnitOfWorkFactory) -> None:  # type: ignore[no-untyped-def]
    benchmark.group = "create-500"
    servicer = SchedulerServicer(uows, SystemClock())
    # What the interceptor sets for a call: the caller's account.
    principal_var.set(Principal(DEFAULT_ACCOUNT, ALL_SCOPES, "bench"))
    offsets = itertools.count()
    bodies = [
        scheduler_pb2.CreateShiftsRequest(scheduler_id=1, shifts=shift_batch(N, i * N))
        for i in range(60)
    ]

    def one() -> scheduler_pb2.ShiftsResponse:
        return servicer.CreateShifts(bodies[next(offsets) % len(bodies)], None)

    reply = benchmark.pedantic(one, rounds=30, warmup_rounds=3)
    assert len(reply.data.shifts) == N


def test_create_500_shifts_baseline_bare_inserts(benchmark, uows: SqlUnitOfWorkFactory) -> None:  # type: ignore[no-untyped-def]
    benchmark.group = "create-500"
    ids = itertools.count()

    def one() -> None:
        batch = next(ids)
        rows = [
            {
                "id": f"bare{batch:08d}{i:012d}",
                "account_id": DEFAULT_ACCOUNT,
                "scheduler_id": 1,
                "start_ts": 1_900_000_000 + i * 3600,
                "end_ts": 1_900_028_800 + i * 3600,
                "title": None,
                "job_id": "job-0",
                "timezone": "America/New_York",
                "is_published": True,
                "is_open_shift": False,
                "open_spots": None,
                "is_require_admin_approval": None,
                "color": "#336699",
                "body": {"notes": ["<p>Bring the keys</p>"], "breaks": [[720, 30], [900, 15]]},
                "created_by": None,
                "created_at": 0,
                "updated_at": 0,
            }
            for i in range(N)
        ]
        with uows(account=DEFAULT_ACCOUNT) as uow:
            conn = uow._conn
            assert conn is not None
            conn.execute(insert(scheduled_shifts), rows)
            conn.execute(
                insert(shift_users),
                [{"shift_id": r["id"], "user_id": 1001, "position": 0} for r in rows],
            )
            conn.execute(
                insert(events),
                [
                    {
                        "type": "shiftPublished",
                        "account_id": DEFAULT_ACCOUNT,
                        "occurred_at": 0,
                        "user_id": 1001,
                        "payload": {},
                    }
                    for _ in rows
                ],
            )
            uow.commit()

    benchmark.pedantic(one, rounds=30, warmup_rounds=3)
