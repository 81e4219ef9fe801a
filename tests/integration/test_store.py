"""Repositories and unit of work on a real database file (and PostgreSQL)."""

from __future__ import annotations

import contextlib
import functools
import logging
import random
import sqlite3
import string
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import date
from typing import Any, TypeVar

import pytest
from alembic.config import Config as AlembicConfig
from alembic.script import ScriptDirectory
from prometheus_client import REGISTRY
from sqlalchemy import Engine, text

from geopunch.adapters.activity_messages import encode_line
from geopunch.adapters.db import repositories
from geopunch.adapters.db.fence_rows import ArrowFenceReader
from geopunch.adapters.db.prepared import driver
from geopunch.adapters.db.store import (
    HEAD_REVISION,
    MIGRATIONS,
    SQLITE_CACHE_KIB,
    SQLITE_SOFT_HEAP_LIMIT,
    current_revision,
    fence_snapshot_reader,
    make_engine,
    migrate,
    statistics_off,
)
from geopunch.adapters.db.tables import LONGEST_KEPT_LINE
from geopunch.bootstrap import build_app
from geopunch.config import Config
from geopunch.domain.accounts import DEFAULT_ACCOUNT
from geopunch.domain.errors import ConcurrentChange, DomainError, ErrorCode
from geopunch.domain.locations import FenceRows
from geopunch.domain.models import (
    DayStatus,
    ExitAction,
    ExitDetectionSettings,
    Geofence,
    GeofencePolicy,
    Job,
    ManualBreakType,
    TimeClock,
)
from geopunch.domain.ports import EncodedPage, PageQuery
from geopunch.domain.punches import (
    PAID_BREAK,
    UNPAID_BREAK,
    WORKED,
    Activity,
    ActivityKind,
    ActivityRow,
    PunchLocation,
    PunchPoint,
    PunchState,
)
from tests.helpers import AccountStore, pg_migrated

TC = TimeClock(
    id=42,
    name="Depot",
    timezone="Europe/Paris",
    job_enforcement=True,
    jobs=(Job("a", "A"), Job("a1", "A one", "a"), Job("b", "B")),
    user_ids=frozenset({1, 2, 3}),
    manual_breaks_enabled=True,
    manual_break_types=(
        ManualBreakType("lunch", "Lunch", True, 1800),
        ManualBreakType("rest", "Rest"),
    ),
    geofence_policy=GeofencePolicy.REQUIRE_INSIDE,
    accuracy_tolerance_m=25.0,
    exit_detection=ExitDetectionSettings(buffer_low_accuracy_m=120.0),
)


T = TypeVar("T")


def fence(i: int, jobs: tuple[str, ...] = ("a",)) -> Geofence:
    return Geofence(
        id=f"fence-{i}",
        time_clock_id=TC.id,
        name=f"F{i}",
        is_enabled=i % 2 == 0,
        fence_size_m=100 + i,
        job_ids=jobs,
        exit_action=ExitAction.AUTO_CLOCK_OUT,
        address=f"{i} Road",
        latitude=45.0 + i / 1000,
        longitude=-179.9999,
    )


def test_migration_is_at_head_and_repeatable(engine: Engine) -> None:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    head = ScriptDirectory.from_config(cfg).get_current_head()
    # The store's own idea of the newest revision (it skips alembic there)
    # must be alembic's: a new revision that forgets it would never run.
    assert head == HEAD_REVISION
    assert current_revision(engine) == head and head
    assert migrate(engine) == head


def test_a_store_at_the_newest_revision_opens_without_alembic(engine: Engine) -> None:
    """In a fresh interpreter, as a server starts: the revision is read with
    one query, and alembic is never imported."""
    import subprocess
    import sys

    url = engine.url.render_as_string(hide_password=False)
    code = (
        "import sys\n"
        "from geopunch.adapters.db.store import make_engine, migrate\n"
        f"assert migrate(make_engine({url!r})) == {HEAD_REVISION!r}\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'alembic'], 'alembic loaded'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_time_clock_round_trip_and_replace(engine: Engine) -> None:
    uows = AccountStore(engine)
    with uows() as uow:
        uow.time_clocks.add(TC)
        uow.commit()
    with uows(readonly=True) as uow:
        assert uow.time_clocks.get(TC.id) == TC
        assert uow.time_clocks.next_id() == TC.id + 1
    changed = TimeClock(id=TC.id, name="Renamed", timezone="UTC", jobs=(Job("b", "Bee"),))
    with uows() as uow:
        uow.time_clocks.replace(changed)
        uow.commit()
    with uows(readonly=True) as uow:
        assert uow.time_clocks.get(TC.id) == changed
    with uows() as uow, pytest.raises(DomainError) as exc:
        uow.time_clocks.add(TC)
    assert exc.value.code is ErrorCode.TIME_CLOCK_ALREADY_EXISTS


def test_time_clocks_are_listed_by_id_as_one_by_one(engine: Engine) -> None:
    """``list_of`` (a follower's reread, its statements prepared, the ids
    in chunks on SQLite and one array on PostgreSQL) gives each clock as
    ``get`` does, in id order: more ids than a chunk, some unknown, some
    twice; another account's clock of the same id stays out."""
    uows = AccountStore(engine)
    clocks = [
        replace(
            TC,
            id=100 + i,
            user_ids=frozenset(range(i % 4)),
            jobs=TC.jobs[: i % 4],
            manual_break_types=TC.manual_break_types[: i % 3],
            job_enforcement=bool(i % 4),
        )
        for i in range(300)
    ]
    with uows() as uow:
        for tc in clocks:
            uow.time_clocks.add(tc)
        other = uow.accounts.create("other").id
        uow.commit()
    with uows(account=other) as uow:
        uow.time_clocks.add(replace(TC, id=150, name="Not yours"))
        uow.time_clocks.add(replace(TC, id=5000))
        uow.commit()
    wanted = [c.id for c in clocks[::-1]] + [7, 5000, 150, 150]
    with uows(readonly=True) as uow:
        assert uow.time_clocks.list_of(wanted) == clocks
        assert uow.time_clocks.list_of([150]) == [clocks[50]]
        assert uow.time_clocks.list_of([5000, 7]) == []
        assert uow.time_clocks.list_of([]) == []
        assert uow.time_clocks.list_all() == clocks
    with uows(account=other, readonly=True) as uow:
        assert [tc.name for tc in uow.time_clocks.list_of([150, 151])] == ["Not yours"]


def test_a_pipeline_opened_inside_another_is_part_of_it(engine: Engine) -> None:
    """``list_of`` pipelines its reads; called inside a unit of work's own
    ``together`` (a punch's writes) it joins that pipeline, and both end
    cleanly."""
    uows = AccountStore(engine)
    with uows() as uow:
        with uow.together():
            uow.time_clocks.add(TC)
            assert uow.time_clocks.list_of([TC.id]) == [TC]
            uow.time_clocks.add(replace(TC, id=TC.id + 1))
        assert uow.time_clocks.get(TC.id + 1) == replace(TC, id=TC.id + 1)
        uow.commit()


def test_uncommitted_work_is_rolled_back(engine: Engine) -> None:
    uows = AccountStore(engine)
    with uows() as uow:
        uow.time_clocks.add(TC)
        uow.geofences.add_many([fence(1)])
        # no commit
    with uows(readonly=True) as uow:
        assert uow.time_clocks.get(TC.id) is None
        assert len(uow.geofences.enabled_rows()) == 0


def test_geofences_round_trip_in_order(engine: Engine) -> None:
    uows = AccountStore(engine)
    fences = [fence(i, ("a", "a1") if i % 3 else ()) for i in range(50)]
    with uows() as uow:
        uow.time_clocks.add(TC)
        uow.geofences.add_many(fences[:20])
        uow.commit()
    with uows() as uow:
        uow.geofences.add_many(fences[20:])
        uow.commit()
    with uows(readonly=True) as uow:
        assert uow.geofences.list_for(TC.id) == fences
        assert uow.geofences.get(TC.id, "fence-7") == fences[7]
        assert uow.geofences.get(TC.id + 1, "fence-7") is None
        assert uow.geofences.job_ids_in_use(TC.id) == {"a", "a1"}
    with uows() as uow:
        assert uow.geofences.delete(TC.id, "fence-7")
        assert not uow.geofences.delete(TC.id, "fence-7")
        uow.commit()
    with uows(readonly=True) as uow:
        assert [f.id for f in uow.geofences.list_for(TC.id)] == [
            f.id for f in fences if f.id != "fence-7"
        ]


def test_column_wise_inserts_take_constants_and_refuse_ragged_or_unknown_columns(
    engine: Engine,
) -> None:
    """``Prepared.many_columns``, which stores a request's fences: the
    round trip above goes through it; here its refusals."""
    from geopunch.adapters.db.repositories import _INSERT_FENCE_JOB

    with engine.begin() as conn:
        with pytest.raises(ValueError, match="different lengths"):
            _INSERT_FENCE_JOB.many_columns(
                conn,
                {"fence_id": ["x", "y"], "job_id": ["a"], "time_clock_id": [1, 1]},
                {"account_id": DEFAULT_ACCOUNT, "position": 0},
            )
        # No rows: nothing to run, whatever the constants.
        _INSERT_FENCE_JOB.many_columns(conn, {"fence_id": []}, {})
        if engine.dialect.name == "sqlite":  # positional parameters, checked by name
            with pytest.raises(ValueError, match="not parameters"):
                _INSERT_FENCE_JOB.many_columns(
                    conn,
                    {"fence_id": ["x"], "job_id": ["a"], "time_clock_id": [1], "colour": [2]},
                    {"account_id": DEFAULT_ACCOUNT, "position": 0},
                )


def test_a_prepared_statement_binds_its_own_literals(engine: Engine) -> None:
    """A value written into a prepared statement (a CASE's, a literal) is
    bound along with the caller's, whichever way the statement runs; the
    caller names only its own parameters."""
    from sqlalchemy import BigInteger, bindparam, insert, literal, select

    from geopunch.adapters.db.prepared import Prepared
    from geopunch.adapters.db.tables import time_clock_users

    uows = AccountStore(engine)
    with uows() as uow:
        uow.time_clocks.add(TC)  # users 1, 2 and 3
        uow.commit()
    users = time_clock_users.c
    add = Prepared(
        insert(time_clock_users).values(
            account_id=bindparam("acct"),
            time_clock_id=literal(TC.id, BigInteger),
            user_id=bindparam("user"),
        )
    )
    read = Prepared(
        select(users.user_id, literal("seen"))
        .where(
            users.time_clock_id == literal(TC.id, BigInteger), users.user_id > bindparam("above")
        )
        .order_by(users.user_id)
    )
    with engine.begin() as conn:
        add.many_columns(conn, {"user": [7, 8]}, {"acct": DEFAULT_ACCOUNT})
        add.many(conn, [{"acct": DEFAULT_ACCOUNT, "user": 9}])
        add.execute(conn, {"acct": DEFAULT_ACCOUNT, "user": 10})
        assert read.all(conn, {"above": 2}) == [(u, "seen") for u in (3, 7, 8, 9, 10)]
        assert read.first(conn, {"above": 9}) is not None


def _same_rows(got: FenceRows, want: FenceRows) -> None:
    assert len(got) == len(want)
    for name in ("time_clock_ids", "ids", "latitudes", "longitudes", "sizes_m", "exit_actions"):
        assert getattr(got, name).tolist() == getattr(want, name).tolist(), name
        assert getattr(got, name).dtype.kind == getattr(want, name).dtype.kind, name
    assert got.job_ids == want.job_ids


def test_enabled_rows_are_the_enabled_fences_as_columns(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The columnar reads a start-up builds the index from (the driver
    cursor's, and ADBC's in a child process beside it) agree with the objects,
    fence for fence: order, coordinates, actions, jobs (a sub-job order kept),
    non-ASCII ids of other lengths; other accounts' fences stay out."""
    uows = AccountStore(engine)
    actions = list(ExitAction)
    fences = [
        replace(
            fence(i, ("a1", "a") if i % 4 == 0 else ("b",) if i % 6 == 2 else ()),
            exit_action=actions[i % 3],
            id=f"fence-{i}-\u00e9t\u00e9" if i % 5 == 0 else f"fence-{i}",
        )
        for i in range(40)
    ]
    with uows() as uow:
        uow.time_clocks.add(TC)
        uow.time_clocks.add(replace(TC, id=TC.id + 1))
        uow.geofences.add_many(fences[:25])
        uow.geofences.add_many([replace(f, time_clock_id=TC.id + 1) for f in fences[25:]])
        other = uow.accounts.create("other").id
        empty = uow.accounts.create("empty").id
        uow.commit()
    with uows(account=other) as uow:
        uow.time_clocks.add(TC)
        uow.geofences.add_many([replace(f, id=f"x{f.id}", is_enabled=True) for f in fences])
        uow.commit()
    with uows(readonly=True) as uow:
        want = FenceRows.of(uow.geofences.list_for(TC.id) + uow.geofences.list_for(TC.id + 1))
        cursor = uow.index_changes.last()
    with uows(account=other, readonly=True) as uow:
        want_other = FenceRows.of(uow.geofences.list_for(TC.id))
    assert len(want) == 20 and len(want_other) == 40 and want.job_ids
    assert {len(i) for i in want.ids.tolist()} != {want.ids.itemsize}  # ids of several lengths
    # One row a chunk splits every two-job fence's rows; 7 leaves one chunk
    # part-filled: rows renumbered either way.
    for chunk in (1, 7, 1000):
        with uows(readonly=True) as uow:
            uow.geofences.DRIVER_CHUNK = chunk
            got = uow.geofences.enabled_rows()
        _same_rows(got, want)
        assert set(got.exit_actions.tolist()) == {0, 1, 2}
    # Some clocks only (a follower's reread): their fences, read through a
    # prepared statement (on SQLite one per 256 ids), in the same chunks.
    with uows(readonly=True) as uow:
        want_first = FenceRows.of(uow.geofences.list_for(TC.id))
        unknown = list(range(1000, 1300))
        for chunk in (1, 7, 1000):
            uow.geofences.DRIVER_CHUNK = chunk
            _same_rows(uow.geofences.enabled_rows([TC.id + 1, *unknown, TC.id]), want)
            _same_rows(uow.geofences.enabled_rows([TC.id]), want_first)
            assert len(uow.geofences.enabled_rows(unknown)) == 0
    beside = fence_snapshot_reader(engine)
    assert beside is not None
    assert beside([DEFAULT_ACCOUNT]) is None  # too few fences to start a reader for
    monkeypatch.setattr(ArrowFenceReader, "MIN_FENCES", 60)
    for batch in (1, 7, 1000):  # the same splits, in the driver's Arrow batches
        monkeypatch.setattr(ArrowFenceReader, "BATCH_ROWS", batch)
        snapshot = beside([DEFAULT_ACCOUNT, other, empty])
        assert snapshot is not None and snapshot.cursor == cursor
        _same_rows(snapshot.rows[DEFAULT_ACCOUNT], want)
        _same_rows(snapshot.rows[other], want_other)
        assert len(snapshot.rows[empty]) == 0


def test_database_refuses_a_fence_job_that_is_not_a_time_clock_job(engine: Engine) -> None:
    uows = AccountStore(engine)
    with uows() as uow:
        uow.time_clocks.add(TC)
        uow.commit()
    with uows() as uow, pytest.raises(Exception, match=r"(?i)foreign key"):
        uow.geofences.add_many([fence(1, ("nope",))])


def test_day_statuses(engine: Engine) -> None:
    uows = AccountStore(engine)
    with uows() as uow:
        uow.time_clocks.add(TC)
        uow.time_clocks.set_day_status(
            TC.id, 1, [date(2026, 1, 2), date(2026, 1, 1)], DayStatus.LOCKED
        )
        uow.time_clocks.set_day_status(TC.id, 1, [date(2026, 1, 2)], DayStatus.APPROVED)
        uow.time_clocks.set_day_status(TC.id, 2, [date(2026, 1, 3)], DayStatus.LOCKED)
        uow.commit()
    with uows() as uow:
        assert uow.time_clocks.day_statuses(TC.id, 1) == {
            date(2026, 1, 1): DayStatus.LOCKED,
            date(2026, 1, 2): DayStatus.APPROVED,
        }
        uow.time_clocks.set_day_status(TC.id, 1, [date(2026, 1, 1)], DayStatus.OPEN)
        uow.commit()
    with uows(readonly=True) as uow:
        assert uow.time_clocks.day_statuses(TC.id, 1) == {date(2026, 1, 2): DayStatus.APPROVED}


def test_concurrent_writers_all_land(engine: Engine) -> None:
    """Writers on several connections serialize instead of failing with 'database is locked'."""
    uows = AccountStore(engine)
    with uows() as uow:
        uow.time_clocks.add(TC)
        uow.commit()
    errors: list[BaseException] = []

    def write(worker: int) -> None:
        try:
            for n in range(10):
                with uows() as uow:
                    uow.geofences.add_many([fence(worker * 100 + n)])
                    uow.commit()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with uows(readonly=True) as uow:
        assert len(uow.geofences.list_for(TC.id)) == 80


def test_sqlite_pragmas(engine: Engine) -> None:
    if engine.dialect.name != "sqlite":
        pytest.skip("SQLite only")
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA synchronous")).scalar() == 2  # FULL
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert conn.execute(text("PRAGMA cache_size")).scalar() == -SQLITE_CACHE_KIB
        assert conn.execute(text("PRAGMA soft_heap_limit")).scalar() == SQLITE_SOFT_HEAP_LIMIT
        conn.rollback()


def test_sqlite_pool_hands_out_the_connection_returned_last(engine: Engine) -> None:
    # Its page cache is the warm one (see SQLITE_CACHE_KIB).
    if engine.dialect.name != "sqlite":
        pytest.skip("SQLite only")
    first, second = engine.connect(), engine.connect()
    ids = [id(driver(c)) for c in (first, second)]
    first.close()
    second.close()
    with engine.connect() as again:
        assert id(driver(again)) == ids[1]


def test_in_memory_sqlite_is_refused() -> None:
    from geopunch.adapters.db.store import make_engine

    with pytest.raises(ValueError):
        make_engine("sqlite://")


def _activity(aid: str, start: int, end: int | None = None) -> Activity:
    return Activity(
        id=aid,
        time_clock_id=TC.id,
        user_id=1,
        kind=ActivityKind.SHIFT,
        start=PunchPoint(start, "UTC", PunchLocation("here", 1.0, 2.0, 5.0), "api", "fence-1"),
        end=None if end is None else PunchPoint(end, "UTC"),
        job_id="a",
        created_at=start,
        modified_at=start,
    )


def test_the_database_allows_one_open_activity_per_user(engine: Engine) -> None:
    uows = AccountStore(engine)
    with uows() as uow:
        uow.time_clocks.add(TC)
        uow.activities.add(_activity("shift-1", 100))
        uow.commit()
    with uows() as uow, pytest.raises(ConcurrentChange):
        uow.activities.add(_activity("shift-2", 200))
    with uows() as uow:
        end = PunchPoint(150, "UTC", None, "autoClockOut")
        uow.activities.close(_activity("shift-1", 100), end, 150)
        with pytest.raises(ConcurrentChange):
            uow.activities.close(_activity("shift-1", 100), end, 150)  # already closed
        uow.commit()
    with uows() as uow:
        uow.activities.add(_activity("shift-2", 200))  # the next one may open now
        uow.commit()
    with uows(readonly=True) as uow:
        acts = uow.activities.list_for(TC.id, 1)
        assert [a.id for a in acts] == ["shift-1", "shift-2"]
        assert acts[0] == replace(_activity("shift-1", 100), end=end, modified_at=150)
        state = uow.activities.punch_state(TC.id, 1, date(2024, 5, 2))
        assert state == PunchState(_activity("shift-2", 200), 150, None)
        assert uow.activities.punch_state(TC.id, 2, date(2024, 5, 2)) == PunchState(
            None, None, None
        )
    with uows() as uow:
        uow.time_clocks.set_day_status(TC.id, 1, [date(2024, 5, 2)], DayStatus.LOCKED)
        uow.commit()
    with uows(readonly=True) as uow:
        state = uow.activities.punch_state(TC.id, 1, date(2024, 5, 2))
        assert state == PunchState(_activity("shift-2", 200), 150, DayStatus.LOCKED)
        assert uow.activities.punch_state(TC.id, 1, date(2024, 5, 3)).day_status is None


def test_writes_sent_together_are_refused_as_lost_races_when_the_block_ends(
    engine: Engine,
) -> None:
    """On PostgreSQL the block's statements share one round trip, and the
    store answers them only at its end: a refusal, or a close that found
    nothing open, must still be a lost race there, and nothing of it kept."""
    uows = AccountStore(engine)
    end = PunchPoint(150, "UTC", None, "api")
    with uows() as uow:
        uow.time_clocks.add(TC)
        uow.activities.add(_activity("shift-1", 100))
        uow.commit()
    reached = []
    with uows() as uow, pytest.raises(ConcurrentChange), uow.together():
        uow.activities.add(_activity("shift-2", 200))  # a second open one
        reached.append("after the add")
    # PostgreSQL answers at the block's end; SQLite at the statement.
    assert reached == (["after the add"] if engine.dialect.name == "postgresql" else [])
    with (
        uows() as uow,
        pytest.raises(ConcurrentChange, match="closed meanwhile"),
        uow.together(),
    ):
        uow.activities.close(_activity("shift-9", 100), end, 150)  # nothing open by that id
    with uows() as uow:
        with uow.together():
            uow.activities.close(_activity("shift-1", 100), end, 150)
            uow.activities.add(_activity("shift-2", 200))
            state = uow.activities.punch_state(TC.id, 1, date(2024, 5, 2))  # reads see them
            assert state.open is not None and state.open.id == "shift-2"
        uow.commit()
    with uows(readonly=True) as uow:
        acts = uow.activities.list_for(TC.id, 1)
        assert [(a.id, a.end) for a in acts] == [("shift-1", end), ("shift-2", None)]


def test_open_many_finds_open_activities_of_pairs_in_any_number(engine: Engine) -> None:
    """IN lists of users per time clock, padded to prepared lengths and cut into chunks."""
    uows = AccountStore(engine)
    other = replace(TC, id=TC.id + 1, name="Other")
    with uows() as uow:
        uow.time_clocks.add(TC)
        uow.time_clocks.add(other)
        for user in range(1, 301):
            act = replace(_activity(f"s-{user}", 100), user_id=user)
            uow.activities.add(act)
            if user % 3 == 0:  # closed: not open any more
                uow.activities.close(act, PunchPoint(150, "UTC"), 150)
        # Same user on the other clock: only asked-for pairs come back.
        uow.activities.add(replace(_activity("o-1", 100), time_clock_id=other.id))
        uow.commit()
    with uows(readonly=True) as uow:
        assert uow.activities.open_many([]) == {}
        for n in (1, 3, 256, 300):
            pairs = [(TC.id, u) for u in range(1, n + 1)]
            found = uow.activities.open_many(pairs)
            assert set(found) == {(TC.id, u) for u in range(1, n + 1) if u % 3}
            assert found[(TC.id, 1)] == _activity("s-1", 100)
        found = uow.activities.open_many([(other.id, 1), (other.id, 2), (TC.id + 7, 1)])
        assert list(found) == [(other.id, 1)] and found[(other.id, 1)].id == "o-1"


def test_idempotency_keys(engine: Engine) -> None:
    uows = AccountStore(engine)
    with uows() as uow:
        uow.idempotency.put("k1", "clock_in", "h", b"\x00answer")
        uow.commit()
    with uows() as uow:
        assert uow.idempotency.get("k1") == ("clock_in", "h", b"\x00answer")
        assert uow.idempotency.get("k2") is None
        with pytest.raises(ConcurrentChange):
            uow.idempotency.put("k1", "clock_in", "h", b"other")


def commit(committer: Any, work: Callable[[Any], T]) -> T:
    """From a thread: ``work`` through the committer, on an event loop of its own."""
    import asyncio

    async def submit() -> T:
        result: T = await committer.submit(work)
        return result

    return asyncio.run(submit())


@pytest.mark.parametrize("fail_after_write", [True, False])
def test_group_committer_isolates_failures_and_commits_the_rest(
    engine: Engine, fail_after_write: bool
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from geopunch.adapters.db.store import GroupCommitter

    uows = AccountStore(engine)
    with uows() as uow:
        uow.time_clocks.add(TC)
        uow.commit()
    committer = GroupCommitter(uows, max_batch=16)

    def work(i: int) -> str:
        def body(uow: object) -> str:
            if i % 5 == 0 and not fail_after_write:
                raise DomainError(ErrorCode.INVALID_ARGUMENT, f"work {i} fails")
            uow.idempotency.put(f"key-{i}", "m", "h", b"x")  # type: ignore[attr-defined]
            if i % 5 == 0:
                raise DomainError(ErrorCode.INVALID_ARGUMENT, f"work {i} fails")
            return f"ok-{i}"

        return commit(committer, body)

    try:
        with ThreadPoolExecutor(32) as pool:
            futures = [pool.submit(work, i) for i in range(100)]
            outcomes = []
            for f in futures:
                try:
                    outcomes.append(f.result())
                except DomainError as err:
                    outcomes.append(err.message)
    finally:
        committer.close()
    assert outcomes == [f"work {i} fails" if i % 5 == 0 else f"ok-{i}" for i in range(100)]
    with uows(readonly=True) as uow:
        stored = {i for i in range(100) if uow.idempotency.get(f"key-{i}") is not None}
    assert stored == {i for i in range(100) if i % 5}


def test_group_committer_survives_a_database_error_inside_one_piece(engine: Engine) -> None:
    """A constraint violation in one piece of a batch (which aborts the whole
    transaction on PostgreSQL) is rolled back to that piece's savepoint; the
    pieces before and after it in the same commit stay."""
    from concurrent.futures import ThreadPoolExecutor

    from geopunch.adapters.db.store import GroupCommitter

    uows = AccountStore(engine)
    committer = GroupCommitter(uows, max_batch=64)

    def work(i: int) -> str:
        def body(uow: object) -> str:
            uow.idempotency.put(f"own-{i}", "m", "h", b"x")  # type: ignore[attr-defined]
            uow.idempotency.put("shared", "m", "h", b"x")  # type: ignore[attr-defined]
            return "ok"

        try:
            return commit(committer, body)
        except ConcurrentChange:
            return "lost"

    try:
        with ThreadPoolExecutor(16) as pool:
            outcomes = list(pool.map(work, range(40)))
    finally:
        committer.close()
    assert outcomes.count("ok") == 1 and outcomes.count("lost") == 39
    winner = outcomes.index("ok")
    with uows(readonly=True) as uow:
        stored = {i for i in range(40) if uow.idempotency.get(f"own-{i}") is not None}
        assert uow.idempotency.get("shared") is not None
    assert stored == {winner}


def test_group_commit_pieces_run_bare_where_the_store_counts_changes(engine: Engine) -> None:
    from geopunch.adapters.db.store import GroupCommitter

    def put(key: str, fail: bool = False) -> Callable[[Any], str]:
        def body(uow: Any) -> str:
            uow.idempotency.put(key, "m", "h", b"x")
            if fail:
                raise DomainError(ErrorCode.INVALID_ARGUMENT, key)
            return key

        return body

    def refuse(uow: Any) -> str:
        raise DomainError(ErrorCode.INVALID_ARGUMENT, "refused before writing")

    def read_then_refuse(uow: Any) -> str:
        uow.idempotency.get("a")  # a read alone leaves nothing to undo
        raise DomainError(ErrorCode.INVALID_ARGUMENT, "refused after reading")

    def duplicate(uow: Any) -> str:
        uow.idempotency.put("a", "m", "h", b"x")  # already there: the database refuses
        return "never"

    uows = AccountStore(engine)
    with uows() as uow:
        steps = [put("a"), refuse, read_then_refuse, put("b")]
        done = GroupCommitter._apply(uow, steps, guarded=False)
        assert done is not None
        assert [ok for ok, _ in done] == [True, False, False, True]
        assert [done[0][1], done[3][1]] == ["a", "b"]
        assert isinstance(uow.changes(), int)
        done = GroupCommitter._apply(uow, [duplicate, put("e")], guarded=False)
        if engine.dialect.name == "postgresql":
            # A failed statement aborts the whole transaction there: the
            # batch goes round again with savepoints, as after a write.
            assert done is None
        else:  # SQLite undoes the failed statement alone
            assert done is not None and [ok for ok, _ in done] == [False, True]
    with uows() as uow:
        # "d" wrote before failing: the batch goes round again
        assert GroupCommitter._apply(uow, [put("c"), put("d", fail=True)], guarded=False) is None
        uow.commit()
    with uows() as uow:
        assert uow.idempotency.get("a") is None  # nothing of the earlier rounds was kept


def test_group_committer_answers_every_caller_with_its_own_result(engine: Engine) -> None:
    """64 threads, each committing 25 pieces one after another: every caller
    gets its own answer (or its own error), none waits forever, all is stored."""
    from concurrent.futures import ThreadPoolExecutor

    from geopunch.adapters.db.store import GroupCommitter

    uows = AccountStore(engine)
    committer = GroupCommitter(uows, max_batch=8)

    def caller(t: int) -> list[str]:
        answers = []
        for i in range(25):
            key = f"t{t}-{i}"

            def body(uow: Any, key: str = key) -> str:
                if key.endswith("-7"):
                    raise DomainError(ErrorCode.INVALID_ARGUMENT, key)
                uow.idempotency.put(key, "m", "h", key.encode())
                return key

            try:
                answers.append(commit(committer, body))
            except DomainError as err:
                answers.append("refused " + err.message)
        return answers

    with ThreadPoolExecutor(64) as pool:
        results = list(pool.map(caller, range(64), timeout=120))
    committer.close()
    for t, answers in enumerate(results):
        assert answers == [f"refused t{t}-{i}" if i == 7 else f"t{t}-{i}" for i in range(25)]
    with uows(readonly=True) as uow:
        for t in range(0, 64, 9):
            assert uow.idempotency.get(f"t{t}-3") == ("m", "h", f"t{t}-3".encode())
            assert uow.idempotency.get(f"t{t}-7") is None


def test_idempotency_keys_are_purged_oldest_first_in_batches(engine: Engine) -> None:
    from geopunch.service.punches import purge_idempotency_keys

    uows = AccountStore(engine)
    with uows() as uow:
        conn = uow._conn
        assert conn is not None
        conn.execute(
            text(
                "INSERT INTO idempotency_keys "
                "(account_id, key, method, body_hash, response, created_at) "
                "VALUES (1, :k, 'clock_in', 'h', :r, :t)"
            ),
            [{"k": f"old-{i}", "r": b"x", "t": 1_000 + i} for i in range(25)]
            + [{"k": f"new-{i}", "r": b"x", "t": 5_000 + i} for i in range(5)],
        )
        uow.commit()
    with uows() as uow:
        assert uow.idempotency.purge(1_010, 4) == 4  # at most the limit, oldest first
        uow.commit()
    with uows(readonly=True) as uow:
        assert uow.idempotency.get("old-3") is None
        assert uow.idempotency.get("old-4") is not None
    # 21 old keys left, 5 per transaction: every one goes, the recent ones stay
    assert purge_idempotency_keys(uows, now=5_000 + 3_000, retention_s=3_000, batch=5) == 21
    with uows(readonly=True) as uow:
        assert [uow.idempotency.get(f"old-{i}") for i in range(25)] == [None] * 25
        assert all(uow.idempotency.get(f"new-{i}") is not None for i in range(5))


def test_group_committer_answers_coroutines_and_threads_in_the_same_batches(
    engine: Engine,
) -> None:
    """Coroutines on one event loop and threads on loops of their own share
    the committer's writer: each gets its own answer or error, a coroutine that went away
    (cancelled) leaves the others answered, and every success is stored."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from geopunch.adapters.db.store import GroupCommitter

    uows = AccountStore(engine)
    committer = GroupCommitter(uows, max_batch=16)

    def body(key: str) -> Callable[[Any], str]:
        def work(uow: Any) -> str:
            if key.endswith("3"):
                raise DomainError(ErrorCode.INVALID_ARGUMENT, key)
            uow.idempotency.put(key, "m", "h", key.encode())
            return key

        return work

    def answer(run: Callable[[], str]) -> str:
        try:
            return run()
        except DomainError as err:
            return "refused " + err.message

    async def coroutines() -> list[str]:
        async def one(key: str) -> str:
            try:
                return await committer.submit(body(key))
            except DomainError as err:
                return "refused " + err.message

        gone = asyncio.ensure_future(committer.submit(body("gone")))
        gone.cancel()
        return await asyncio.gather(*(one(f"co-{i}") for i in range(200)))

    try:
        with ThreadPoolExecutor(8) as pool:
            threads = [
                pool.submit(answer, functools.partial(commit, committer, body(f"th-{i}")))
                for i in range(80)
            ]
            from_coroutines = asyncio.run(coroutines())
            from_threads = [f.result(60) for f in threads]
    finally:
        committer.close()

    def expected(key: str) -> str:
        return "refused " + key if key.endswith("3") else key

    assert from_coroutines == [expected(f"co-{i}") for i in range(200)]
    assert from_threads == [expected(f"th-{i}") for i in range(80)]
    with uows(readonly=True) as uow:
        assert uow.idempotency.get("co-12") == ("m", "h", b"co-12")
        assert uow.idempotency.get("th-79") == ("m", "h", b"th-79")
        assert uow.idempotency.get("co-13") is None
        assert uow.idempotency.get("gone") is not None  # queued before it was cancelled
    with pytest.raises(RuntimeError, match="closing"):
        commit(committer, body("late"))


def test_a_caller_chosen_id_cannot_exhaust_server_assigned_ids(engine: Engine) -> None:
    """A time clock at the largest id a caller may choose: the next assigned
    ids fill the lowest gaps instead of overflowing."""
    from geopunch.domain.rules import MAX_ENTITY_ID

    uows = AccountStore(engine)
    with uows() as uow:
        uow.time_clocks.add(replace(TC, id=MAX_ENTITY_ID))
        assert uow.time_clocks.next_id() == 1
        for i in (1, 2, 4):
            uow.time_clocks.add(replace(TC, id=i))
        assert uow.time_clocks.next_id() == 3
        uow.commit()


def test_a_batch_runs_its_pieces_in_their_order(engine: Engine) -> None:
    """Pieces queued while the writer is busy form one batch, run by their
    (account, time clock, user) order whatever order they came in: every
    batch on every replica takes its row locks in one order."""
    import asyncio
    import threading

    from geopunch.adapters.db.store import GroupCommitter

    committer = GroupCommitter(AccountStore(engine), max_batch=64)
    ran: list[tuple[int, ...]] = []
    release = threading.Event()

    async def go() -> None:
        def blocker(uow: Any) -> None:
            release.wait(10)

        def piece(order: tuple[int, ...]) -> Callable[[Any], None]:
            return lambda uow: ran.append(order)

        first = committer.submit(blocker)
        await asyncio.sleep(0.05)  # the writer now runs the blocker alone
        orders = [(1, 9, 3), (1, 2, 8), (1, 2, 1), (0, 5, 5), (1, 9, 3, 1)]
        rest = [committer.submit(piece(o), o) for o in orders]
        release.set()
        await asyncio.gather(first, *rest)

    try:
        asyncio.run(go())
    finally:
        committer.close()
    assert ran == sorted(ran) == [(0, 5, 5), (1, 2, 1), (1, 2, 8), (1, 9, 3), (1, 9, 3, 1)]


def test_a_deadlock_victim_is_told_to_run_again(engine: Engine) -> None:
    """The store's deadlock and serialization errors (raw from the driver or
    wrapped by SQLAlchemy) reach the piece's caller as ConcurrentChange, which
    every writer retries; the batch's other pieces commit."""
    from sqlalchemy.exc import OperationalError

    from geopunch.adapters.db.store import GroupCommitter

    class Deadlock(Exception):
        sqlstate = "40P01"

    committer = GroupCommitter(AccountStore(engine), max_batch=8)

    def raw(uow: Any) -> None:
        raise Deadlock("deadlock detected")

    def wrapped(uow: Any) -> None:
        raise OperationalError("UPDATE ...", {}, Deadlock("deadlock detected"))

    def fine(uow: Any) -> str:
        uow.idempotency.put("survivor", "m", "h", b"x")
        return "ok"

    try:
        for body in (raw, wrapped):
            with pytest.raises(ConcurrentChange):
                commit(committer, body)
        assert commit(committer, fine) == "ok"
    finally:
        committer.close()


@pytest.mark.postgres
def test_a_real_deadlock_between_two_transactions_is_a_concurrent_change() -> None:
    """Two units of work lock two time clocks in opposite orders on
    PostgreSQL: the one PostgreSQL picks as the victim raises ConcurrentChange
    (SQLSTATE 40P01 translated when its unit of work ends)."""
    import threading

    from geopunch.adapters.db.store import SqlUnitOfWorkFactory, make_engine, migrate
    from tests.helpers import pg_schema

    with pg_schema() as url:
        engine = make_engine(url)
        try:
            migrate(engine)
            uows = SqlUnitOfWorkFactory(engine)
            with uows(account=1) as uow:
                uow.time_clocks.add(replace(TC, id=1))
                uow.time_clocks.add(replace(TC, id=2))
                uow.commit()
            barrier = threading.Barrier(2, timeout=10)
            outcomes: list[str] = []

            def lock(first: int, second: int) -> None:
                try:
                    with uows(account=1) as uow:
                        uow.time_clocks.replace(replace(TC, id=first, name="a"))
                        barrier.wait()
                        uow.time_clocks.replace(replace(TC, id=second, name="b"))
                        uow.commit()
                    outcomes.append("committed")
                except ConcurrentChange:
                    outcomes.append("retry")

            threads = [threading.Thread(target=lock, args=p) for p in ((1, 2), (2, 1))]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
        finally:
            engine.dispose()
    assert sorted(outcomes) == ["committed", "retry"]


def _completed(activity_id: str, start: int, end: int, user: int = 1) -> Activity:
    a = replace(_activity(activity_id, start), user_id=user, notes="n")
    return replace(a, end=PunchPoint(end, "UTC", None, "timeActivity"))


def test_time_activity_rows_round_trip_page_and_correct(engine: Engine) -> None:
    uows = AccountStore(engine)
    with uows() as uow:
        uow.time_clocks.add(TC)
        uow.activities.add_many(
            [_completed(f"s{i}", 1000 * i, 1000 * i + 500) for i in range(1, 6)]
        )
        uow.activities.add(_activity("open", 9000))
        uow.commit()
    with uows(readonly=True) as uow:
        acts = uow.activities
        assert acts.get(TC.id, "s1") == _completed("s1", 1000, 1500)
        assert acts.get(TC.id + 1, "s1") is None
        page = acts.page(PageQuery(TC.id, 1400, 10_000, [], [], None, 3))
        assert [a.id for a in page] == ["s1", "s2", "s3"]
        # Flat rows, the same activities as the objects read one by one.
        assert [r.activity() for r in page] == [acts.get(TC.id, f"s{i}") for i in (1, 2, 3)]
        assert all(ActivityRow.of(r.activity()) == r for r in page)
        rest = acts.page(
            PageQuery(TC.id, 1400, 10_000, [], [], (page[-1].start_ts, page[-1].id), 9)
        )
        assert [a.id for a in rest] == ["s4", "s5", "open"]
        assert rest[-1].activity() == _activity("open", 9000) and rest[-1].end_ts is None
        assert [a.id for a in acts.page(PageQuery(TC.id, 0, 10_000, [2], [], None, 9))] == []
        assert sorted(a.id for a in acts.near(TC.id, [1], 2500, 3000)[1]) == ["s2", "s3"]
        assert list(acts.open_for(TC.id)) == [1]
    with uows() as uow:
        moved = replace(_completed("s1", 1100, 1600), modified_at=7, created_at=1000)
        uow.activities.replace(moved, read_modified_at=1000)
        with pytest.raises(ConcurrentChange):  # the version read is gone
            uow.activities.replace(moved, read_modified_at=0)
        with pytest.raises(ConcurrentChange):
            uow.activities.remove("s2", read_modified_at=12345)
        uow.activities.remove("s2", read_modified_at=2000)
        uow.commit()
    with uows(readonly=True) as uow:
        assert uow.activities.get(TC.id, "s1") == moved
        assert uow.activities.get(TC.id, "s2") is None


@pytest.mark.parametrize(("slice_s", "chunk"), [(7 * 86_400, 50_000), (300, 2)])
def test_spans_give_each_activity_its_column_and_an_open_one_ends_now(
    engine: Engine, slice_s: int, chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The four integers a window's totals read, worked out by the database
    (on both stores, with and without paid break types, filtered by user),
    whole or a part at a time (SQLite a slice of the window a statement,
    PostgreSQL a chunk of rows a fetch)."""
    monkeypatch.setattr(repositories, "_SPAN_SLICE_S", slice_s)
    monkeypatch.setattr(repositories, "_SPAN_CHUNK", chunk)
    uows = AccountStore(engine)

    def on_break(aid: str, start: int, end: int | None, break_type: str) -> Activity:
        a = replace(_activity(aid, start, end), user_id=2, kind=ActivityKind.BREAK)
        return replace(a, job_id=None, break_type_id=break_type)

    with uows() as uow:
        uow.time_clocks.add(TC)
        uow.activities.add_many(
            [
                _completed("shift", 1000, 1500),
                on_break("lunch", 1000, 1100, "lunch"),
                on_break("rest", 1200, 1300, "rest"),
                _completed("late", 20_000, 20_500),  # after the window
            ]
        )
        uow.activities.add(replace(_activity("open", 1600), user_id=3))
        uow.commit()
    window = PageQuery(TC.id, 0, 10_000, [], [], None, 10)
    with uows(readonly=True) as uow:

        def read(q: PageQuery, paid: list[str]) -> list[tuple[int, ...]]:
            read = uow.activities.spans(q, paid, 7000)
            return sorted(tuple(int(v) for v in r) for chunk in read for r in chunk)

        assert read(window, ["lunch"]) == [
            (1, WORKED, 1000, 1500),
            (2, PAID_BREAK, 1000, 1100),
            (2, UNPAID_BREAK, 1200, 1300),
            (3, WORKED, 1600, 7000),
        ]
        assert read(window, []) == [
            (1, WORKED, 1000, 1500),
            (2, UNPAID_BREAK, 1000, 1100),
            (2, UNPAID_BREAK, 1200, 1300),
            (3, WORKED, 1600, 7000),
        ]
        assert read(window._replace(user_ids=[2]), ["rest", "lunch", "x"]) == [
            (2, PAID_BREAK, 1000, 1100),
            (2, PAID_BREAK, 1200, 1300),
        ]
        # Begun before the window and running into it; nothing after it.
        assert read(window._replace(start=1400, end=1650), []) == [
            (1, WORKED, 1000, 1500),
            (3, WORKED, 1600, 7000),
        ]
        assert read(window._replace(start=30_000, end=40_000), []) == [(3, WORKED, 1600, 7000)]
        assert read(window._replace(user_ids=[99]), ["lunch"]) == []


def test_sqlite_spans_narrow_their_slices_when_a_slice_passes_the_longest_value(
    tmp_path: Any,
) -> None:
    """A day whose rows joined pass SQLite's longest value (about 15 million
    activities at its default of 1 GB) is read in narrower slices, not
    refused. Here the limit is lowered to two rows' worth."""
    from geopunch.adapters.db.store import make_engine

    engine = make_engine(f"sqlite:///{tmp_path / 'store.db'}")
    migrate(engine)
    uows = AccountStore(engine)
    day = 86_400
    shifts = [_completed(f"s{i}", day + 100 * i, day + 100 * i + 50) for i in range(7)]
    # Two users begin in the same second, 3 * day.
    both = [replace(_completed(f"b{u}", 3 * day, 3 * day + 9), user_id=u) for u in (1, 2)]
    with uows() as uow:
        uow.time_clocks.add(TC)
        uow.activities.add_many(shifts + both)
        uow.commit()
    window = PageQuery(TC.id, 0, 3 * day, [], [], None, 10)
    with uows(readonly=True) as uow:
        raw = driver(uow.activities._conn)
        row = 4 * 16  # hex digits a row
        before = raw.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 2 * row)
        try:
            chunks = list(uow.activities.spans(window, [], 7000))
            raw.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, row + 1)
            with pytest.raises(sqlite3.DataError):  # a second that cannot be cut
                list(uow.activities.spans(window._replace(end=3 * day + 1), [], 7000))
        finally:
            raw.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, before)
        whole = list(uow.activities.spans(window, [], 7000))
    assert max(len(c) for c in chunks) <= 2 and len(whole) == 3  # a statement a day
    expected = [(1, WORKED, day + 100 * i, day + 100 * i + 50) for i in range(7)]
    assert sorted(tuple(int(v) for v in r) for c in chunks for r in c) == expected
    assert sorted(tuple(int(v) for v in r) for c in whole for r in c) == expected
    engine.dispose()


def test_every_write_keeps_the_activity_line_and_a_row_without_one_is_encoded_when_listed(
    engine: Engine,
) -> None:
    uows = AccountStore(engine)
    with uows() as uow:
        uow.time_clocks.add(TC)
        uow.activities.add_many([_completed(f"s{i}", 1000 * i, 1000 * i + 500) for i in (1, 2)])
        uow.activities.add(_activity("open", 9000))
        uow.activities.add(replace(_activity("closing", 5000), user_id=2))
        uow.commit()
    with uows() as uow:
        closing = replace(_activity("closing", 5000), user_id=2)
        uow.activities.close(closing, PunchPoint(5600, "UTC", None, "realtime"), 5600)
        moved = replace(_completed("s1", 1100, 1600), modified_at=7, created_at=1000)
        uow.activities.replace(moved, read_modified_at=1000)
        uow.commit()

    def listed(*args: Any) -> tuple[list[ActivityRow], EncodedPage]:
        args = args or (TC.id, 0, 10_000, [], [], None, 10)
        q = PageQuery(*args)
        with uows(readonly=True) as uow:
            return uow.activities.page(q), uow.activities.page_lines(q)

    rows, lines = listed()
    assert [r.id for r in rows] == ["s1", "s2", "closing", "open"]
    assert rows[0].start_ts == 1100 and rows[2].end_ts == 5600 and rows[3].end_ts is None
    # Each line is its row's as it is now: inserted, closed, corrected.
    encoded = [encode_line(r) for r in rows]
    assert lines == EncodedPage(4, b"".join(encoded), None)
    with engine.begin() as conn:
        stored: dict[str, bytes] = dict(
            conn.execute(text("SELECT id, encoded FROM activities")).all()
        )
    assert stored == {r.id: line for r, line in zip(rows, encoded, strict=True)}
    # Cut short: the last key, and whether more follow; the filters and the cursor.
    assert listed(TC.id, 0, 10_000, [], [], None, 2)[1] == EncodedPage(
        2, encoded[0] + encoded[1], (2000, "s2")
    )
    assert listed(TC.id, 0, 10_000, [1], [], (1100, "s1"), 2)[1] == EncodedPage(
        2, encoded[1] + encoded[3], None
    )
    assert listed(TC.id, 0, 10_000, [], [], (2000, "s2"), 1)[1] == EncodedPage(
        1, encoded[2], (5000, "closing")
    )
    assert listed(TC.id, 0, 10_000, [3], [], None, 2)[1] == EncodedPage(0, b"", None)
    # Lists padded to a power of two (the statements are prepared per length).
    assert listed(TC.id, 0, 10_000, [1, 2, 3], ["a", "b", "x"], None, 10) == (rows, lines)
    # A row stored before the lines were kept has none: made from its columns.
    with engine.begin() as conn:
        conn.execute(text("UPDATE activities SET encoded = NULL WHERE id IN ('s2', 'open')"))
    assert listed() == (rows, lines)
    assert listed(TC.id, 0, 10_000, [], [], None, 2)[1] == EncodedPage(
        2, encoded[0] + encoded[1], (2000, "s2")
    )


def test_a_line_past_the_longest_kept_is_listed_from_its_columns(engine: Engine) -> None:
    """Lines up to LONGEST_KEPT_LINE are kept, and held by the index by start
    (PostgreSQL refuses an index entry past about 2,700 bytes); a longer
    one is stored NULL and made from the columns when its page is listed.
    Notes of random letters, so that the index's compression saves nothing."""
    rng = random.Random(7)
    base = encode_line(ActivityRow.of(_completed("x00", 1000, 1500)))
    rows = []
    for i, extra in enumerate(range(-3, 4)):
        notes = "".join(rng.choices(string.ascii_letters, k=LONGEST_KEPT_LINE - len(base) + extra))
        start = 1000 * (i + 1)
        rows.append(replace(_completed(f"x{i:02}", start, start + 500), notes=notes))
    # A last one past the limit by its addresses, and written open then closed.
    far = "".join(rng.choices(string.ascii_letters, k=1000))
    place = PunchPoint(9000, "UTC", PunchLocation(far, 1.0, 2.0, 5.0), "api")
    opened = replace(_activity("y", 9000), start=place, notes=far[:900])
    uows = AccountStore(engine)
    with uows() as uow:
        uow.time_clocks.add(TC)
        uow.activities.add_many(rows)
        uow.activities.add(opened)
        uow.commit()
    with uows() as uow:
        uow.activities.close(opened, place, 9600)
        uow.commit()
    with uows(readonly=True) as uow:
        listed = uow.activities.page(PageQuery(TC.id, 0, 20_000, [], [], None, 20))
        pages = [
            uow.activities.page_lines(PageQuery(TC.id, 0, 20_000, [], [], after, limit))
            for after, limit in ((None, 20), (None, 4), ((4000, "x03"), 4))
        ]
    with engine.begin() as conn:
        stored: dict[str, bytes | None] = dict(
            conn.execute(text("SELECT id, encoded FROM activities")).all()
        )
    lines = [encode_line(r) for r in listed]
    assert [r.id for r in listed] == [*(r.id for r in rows), "y"]
    assert sorted(map(len, lines))[0] < LONGEST_KEPT_LINE < sorted(map(len, lines))[-1]
    assert stored == {
        r.id: line if len(line) <= LONGEST_KEPT_LINE else None
        for r, line in zip(listed, lines, strict=True)
    }
    assert pages == [
        EncodedPage(8, b"".join(lines), None),
        EncodedPage(4, b"".join(lines[:4]), (4000, "x03")),
        EncodedPage(4, b"".join(lines[4:]), None),
    ]


def test_a_listed_page_is_read_from_the_index_by_start_alone(engine: Engine) -> None:
    """The statements of a page of a whole time clock read only what the
    index by start holds (bench/README.md, ListTimeActivities): a column
    added to them would send every row of a page to the table. (A page of
    some users or jobs filters on columns the index does not hold.) On
    PostgreSQL once vacuum has marked the table all-visible, and with the
    plans a large table would get (a handful of rows would rather be
    scanned and sorted). On SQLite a window's totals read only it as well."""
    uows = AccountStore(engine)
    with uows() as uow:
        uow.time_clocks.add(TC)
        uow.activities.add_many(
            [_completed(f"s{i}", 1000 * i, 1000 * i + 500) for i in range(1, 9)]
        )
        uow.commit()
    pg = engine.dialect.name == "postgresql"
    queries = [
        PageQuery(TC.id, 0, 20_000, [], [], None, 4),
        PageQuery(TC.id, 0, 20_000, [], [], (2000, "s2"), 4),
    ]
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        if pg:
            conn.execute(text("VACUUM (ANALYZE) activities"))
            conn.execute(text("SET enable_seqscan = off"))
            conn.execute(text("SET enable_sort = off"))
        with uows(readonly=True) as uow:
            asked = [uow.activities._page_params(q) for q in queries]
        for shape, params in asked:
            # SQLite reads a window's totals (spans) from it too (revision 0016).
            for kind in ("kept",) if pg else ("joined", "tail", "spans"):
                # A window's totals name the paid break types (spans).
                paid = shape._replace(paid=1) if kind == "spans" else shape
                compiled = repositories._paging(kind, paid)._compile(conn)
                args = compiled.args({**params, "limit": 5, "p0": "lunch", "now": 0, "since": 0})
                if pg:
                    lines = [r[0] for r in driver(conn).execute(f"EXPLAIN {compiled.sql}", args)]
                    assert any("Index Only Scan using ix_activities_start" in x for x in lines), (
                        lines
                    )
                else:
                    steps = [
                        r[-1]
                        for r in driver(conn).execute(f"EXPLAIN QUERY PLAN {compiled.sql}", args)
                    ]
                    assert any("USING COVERING INDEX ix_activities_lines" in x for x in steps), (
                        steps
                    )


def test_a_read_only_unit_of_work_reads_one_snapshot(engine: Engine) -> None:
    """On both stores: a page's statements must see the same rows (on
    SQLite its lines and its last key come from two; a page with a line not
    kept is read again)."""
    uows = AccountStore(engine)
    with uows() as uow:
        uow.time_clocks.add(TC)
        uow.activities.add_many([_completed("s1", 1000, 1500)])
        uow.commit()
    with uows(readonly=True) as reader:
        first = reader.activities.page(PageQuery(TC.id, 0, 10_000, [], [], None, 10))
        with uows() as writer:  # committed while the reader is open
            writer.activities.add_many([_completed("s2", 2000, 2500)])
            writer.commit()
        assert reader.activities.page(PageQuery(TC.id, 0, 10_000, [], [], None, 10)) == first
    with uows(readonly=True) as later:
        assert len(later.activities.page(PageQuery(TC.id, 0, 10_000, [], [], None, 10))) == 2


def test_pages_of_lines_are_the_pages_of_rows_in_order_through_ties(engine: Engine) -> None:
    """Thousands of activities, many sharing a start: page after page, the
    joined lines are the rows' lines in (start, id) order, and each page
    ends where the next begins."""
    clock = replace(TC, user_ids=frozenset(range(1, 61)))
    # Each user's fifty never overlap; sixty users share each start.
    made = [
        _completed(
            f"a{(i * 7919) % 3000:05d}", 1000 + (i % 50) * 10, 1005 + (i % 50) * 10, 1 + i // 50
        )
        for i in range(3000)
    ]
    uows = AccountStore(engine)
    with uows() as uow:
        uow.time_clocks.add(clock)
        uow.activities.add_many(made)
        uow.commit()
    with uows(readonly=True) as uow:
        rows = uow.activities.page(PageQuery(TC.id, 0, 10_000, [], [], None, 5000))
        assert len(rows) == 3000
        joined, after, pages = b"", None, 0
        while True:
            page = uow.activities.page_lines(PageQuery(TC.id, 0, 10_000, [], [], after, 700))
            joined += page.lines
            pages += 1
            if page.next_after is None:
                break
            after = page.next_after
    assert pages == 5
    assert joined == b"".join(encode_line(r) for r in rows)


@pytest.mark.parametrize("by_user_most", [0, 512])
def test_the_board_reads_whole_only_open_rows_it_has_not_kept(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, by_user_most: int
) -> None:
    """Open rows are kept across units of work by id and version: a second
    read answers the kept rows, a row closed since is gone, and a new open
    row of the same user is read, whether the lacking rows are read by id
    or all together (``by_user_most`` 0)."""
    monkeypatch.setattr(repositories, "_OPEN_ROWS", repositories._OpenRows(most=1 << 10))
    monkeypatch.setattr(repositories, "_OPEN_BY_USER_MOST", by_user_most)
    uows = AccountStore(engine)
    with uows() as uow:
        uow.time_clocks.add(TC)
        for user in (1, 2, 3):
            uow.activities.add(replace(_activity(f"open-{user}", 100 * user), user_id=user))
        uow.commit()
    rows = _open_rows_counted()
    with uows(readonly=True) as uow:
        first = uow.activities.open_for(TC.id)
    assert sorted(first) == [1, 2, 3]
    assert first[2].activity() == replace(_activity("open-2", 200), user_id=2)
    assert _open_rows_counted(rows) == (0, 3)  # (kept, read): each row read
    with uows() as uow:
        uow.activities.close(_activity("open-1", 100), PunchPoint(150, "UTC"), modified_at=150)
        uow.activities.close(
            replace(_activity("open-3", 300), user_id=3), PunchPoint(350, "UTC"), modified_at=350
        )
        uow.activities.add(replace(_activity("again-3", 400), user_id=3))
        uow.commit()
    with uows(readonly=True) as uow:
        second = uow.activities.open_for(TC.id)
    assert sorted(second) == [2, 3]
    assert second[2] is first[2]  # kept, not read again
    assert second[3].id == "again-3"
    assert second[3].activity() == replace(_activity("again-3", 400), user_id=3)
    assert _open_rows_counted(rows) == (1, 4)  # open-2 kept, again-3 read
    with uows(account=2) as other:  # another account sees none of them
        assert other.activities.open_for(TC.id) == {}


def _open_rows_counted(since: tuple[float, ...] = (0, 0)) -> tuple[float, ...]:
    """The board's open rows by source (kept, read) counted in the process's
    metrics, less ``since``."""
    return tuple(
        (REGISTRY.get_sample_value("geopunch_user_status_open_rows_total", {"source": s}) or 0)
        - before
        for s, before in zip(("kept", "read"), since, strict=True)
    )


def test_kept_open_rows_are_bounded_oldest_first() -> None:
    kept = repositories._OpenRows(most=4)
    rows = [ActivityRow.of(replace(_activity(f"a{i}", i), user_id=i)) for i in range(10)]
    kept.keep(rows[:3])
    assert all(kept.get((r.id, r.modified_at)) is r for r in rows[:3])
    kept.keep(rows[3:])
    held = [r for r in rows if kept.get((r.id, r.modified_at)) is not None]
    assert held == rows[-2:]
    assert kept.get(("a9", 0)) is None  # another version of a kept row


def test_kept_open_rows_in_use_outlast_newer_ones() -> None:
    """The board that fills the kept rows keeps its own, however early they
    were kept: those activities are open now."""
    kept = repositories._OpenRows(most=4)
    rows = [ActivityRow.of(replace(_activity(f"a{i}", i), user_id=i)) for i in range(8)]
    kept.keep(rows[:2])  # long open
    kept.keep(rows[2:4])  # closed since
    kept.keep(rows[4:5], in_use=[*rows[:2], rows[4]])
    held = [r for r in rows if kept.get((r.id, r.modified_at)) is not None]
    assert held == [rows[0], rows[1], rows[4]]
    kept.keep(rows[5:8], in_use=[rows[0], *rows[5:8]])  # a1 closed meanwhile: it goes
    held = [r for r in rows if kept.get((r.id, r.modified_at)) is not None]
    assert held == [rows[0], *rows[5:8]]


@pytest.mark.postgres
def test_postgres_refuses_overlapping_activities_of_a_user_itself() -> None:
    """Two transactions that each checked before the other wrote: the exclusion
    constraint refuses the second (a lost race, run again by the use case)."""
    with pg_migrated() as url:
        engine = make_engine(url)
        uows = AccountStore(engine)
        with uows() as uow:
            uow.time_clocks.add(TC)
            uow.activities.add_many([_completed("a", 100, 200)])
            uow.activities.add(_activity("open", 500))
            uow.commit()
        for clash in ([_completed("b", 150, 250)], [_completed("c", 600, 700)]):
            with uows() as uow, pytest.raises(ConcurrentChange):
                uow.activities.add_many(clash)
        with uows() as uow:  # touching, another user: fine
            uow.activities.add_many([_completed("d", 200, 300), _completed("e", 150, 250, user=2)])
            uow.commit()
        engine.dispose()


def test_events_are_purged_oldest_first_and_the_horizon_says_how_far(engine: Engine) -> None:
    from geopunch.domain.events import Event
    from geopunch.service.events import events_after, purge_events

    uows = AccountStore(engine)
    with uows() as uow:
        uow.events.append([Event("shiftPublished", 100 + i, {"n": i}) for i in range(5)])
        uow.commit()
    with uows(readonly=True) as uow:
        seqs = [e.seq for e in uow.events.after(0)]
        assert uow.events.horizon() == 0
    # Nothing is old enough yet: a purge removes nothing.
    assert purge_events(uows.factory, time.time(), 3600) == 0
    # A day later, with a retention of an hour: all of them, two per transaction.
    assert purge_events(uows.factory, time.time() + 86400, 3600, batch=2) == 5
    with uows(readonly=True) as uow:
        assert uow.events.after(0) == [] and uow.events.horizon() == seqs[-1]
    # A subscriber whose cursor retention passed is told; one from 0 is not.
    with pytest.raises(DomainError) as err:
        events_after(uows.factory, DEFAULT_ACCOUNT, seqs[1], [], [])
    assert err.value.code is ErrorCode.EVENTS_PURGED
    assert err.value.metadata["purgedThrough"] == str(seqs[-1])
    assert events_after(uows.factory, DEFAULT_ACCOUNT, 0, [], []) == []
    assert events_after(uows.factory, DEFAULT_ACCOUNT, seqs[-1], [], []) == []


def test_admin_writes_share_commits_and_their_after_steps_run_in_commit_order(
    engine: Engine,
) -> None:
    """``run`` from threads: concurrent admin writes share transactions; each
    caller gets its own result or exception; ``after`` runs once per
    succeeded piece, after its commit, under the commit lock and in the
    order the pieces committed; a failed piece leaves no writes and no step."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from geopunch.adapters.db.store import GroupCommitter
    from geopunch.service import admin, geofences

    uows = AccountStore(engine)
    lock = threading.RLock()
    held: list[bool] = []
    batches: list[int] = []
    committer = GroupCommitter(
        uows, observe=lambda s, n: batches.append(n), commit_lock=lambda: _held(lock)
    )

    class Listener:
        def __init__(self) -> None:
            self.seen: list[tuple[int, int]] = []

        def write_lock(self) -> Any:
            return _held(lock)

        def time_clock_changed(self, account: int, tc: Any, fences: Any, seq: int = 0) -> None:
            held.append(lock._is_owned())  # type: ignore[attr-defined]
            self.seen.append((tc.id, seq))

        def fences_changed(self, *args: Any, seq: int = 0) -> None:
            raise AssertionError("no fences here")

        def reported(self, seq: int) -> bool:
            return False

    listener = Listener()
    clocks = [replace(TC, id=7000 + i, jobs=(), job_enforcement=False) for i in range(40)]

    def make(i: int) -> int:
        tc = clocks[i] if i % 8 else replace(clocks[i], timezone="Not/AZone")  # refused
        made = admin.create_time_clock(
            uows,
            DEFAULT_ACCOUNT,
            tc,
            [],
            assign_id=False,
            listener=listener,  # type: ignore[arg-type]
            commit=committer.run,
        )
        return made.id

    try:
        with ThreadPoolExecutor(16) as pool:
            futures = [pool.submit(make, i) for i in range(40)]
            outcomes: list[Any] = []
            for f in futures:
                try:
                    outcomes.append(f.result())
                except DomainError as err:
                    outcomes.append(err.code.value)
        # The same use case without a committer: one transaction of its own.
        solo = replace(TC, id=7999, jobs=(), job_enforcement=False)
        admin.create_time_clock(uows, DEFAULT_ACCOUNT, solo, [], assign_id=False, listener=listener)  # type: ignore[arg-type]
        with pytest.raises(DomainError):
            geofences.delete_geofence(uows, DEFAULT_ACCOUNT, 7999, "none", commit=committer.run)
    finally:
        committer.close()
    assert outcomes == ["INVALID_TIMEZONE" if i % 8 == 0 else 7000 + i for i in range(40)]
    assert max(batches) > 1  # callers shared commits
    made = [tc for tc, _ in listener.seen]
    assert sorted(made) == sorted([7000 + i for i in range(40) if i % 8] + [7999])
    seqs = [seq for _, seq in listener.seen]
    assert seqs == sorted(seqs) and all(held)  # commit order, under the lock
    with uows(readonly=True) as uow:
        assert uow.time_clocks.get(7000) is None  # refused: nothing stored
        assert uow.time_clocks.get(7001) is not None


@contextlib.contextmanager
def _held(lock: Any) -> Iterator[None]:
    with lock:
        yield


def test_event_payloads_take_numpy_numbers_and_store_nan_as_null(engine: Engine) -> None:
    """Payloads carry what the fence kernels compute (numpy numbers); JSON
    has no NaN, so a missing distance is stored as null on both stores."""
    import numpy as np

    from geopunch.domain.events import Event, event_json, json_bytes

    uows = AccountStore(engine)
    payload = {"distance": np.float64(12.5), "fences": np.int64(3), "gap": float("nan"), 7: "é"}
    with uows() as uow:
        uow.events.append([Event("geofenceExit", 1_800_000_000, payload, 11, 21)])  # type: ignore[arg-type]
        uow.commit()
    with uows(readonly=True) as uow:
        (stored,) = uow.events.after(0)
    assert stored.payload == {"distance": 12.5, "fences": 3, "gap": None, "7": "é"}
    assert b'"payload":{"distance":12.5,"fences":3,"gap":null,"7":"\xc3\xa9"}' in json_bytes(
        event_json(stored)
    )


def test_start_warns_when_postgresql_gathers_no_statistics(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    # Read through SHOW, not pg_settings as the check does; this machine's
    # PostgreSQL runs with autovacuum off, so the warning's case is met here.
    expected: list[str] = []
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            for name in ("autovacuum", "track_counts"):
                if conn.execute(text(f"SHOW {name}")).scalar() == "off":
                    expected.append(name)
    assert statistics_off(engine) == expected
    with caplog.at_level(logging.WARNING, logger="geopunch"):
        app = build_app(
            Config.from_env(
                {"GEOPUNCH_DATABASE_URL": engine.url.render_as_string(hide_password=False)}
            )
        )
    app.engine.dispose()
    warned = [r for r in caplog.records if "planner statistics" in r.getMessage()]
    assert len(warned) == (1 if expected else 0)
    if expected:
        assert warned[0].fields == {"off": expected}  # type: ignore[attr-defined]
