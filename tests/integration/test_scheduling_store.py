"""Schedulers, scheduled shifts and the event log on SQLite and PostgreSQL."""

from __future__ import annotations

from dataclasses import replace

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine

from geopunch.adapters.db.tables import ONE_DIALECT_INDEXES, metadata
from geopunch.domain.accounts import DEFAULT_ACCOUNT
from geopunch.domain.errors import ConcurrentChange
from geopunch.domain.events import Event, LiveTrail
from geopunch.domain.models import Job
from geopunch.domain.punches import PunchLocation
from geopunch.domain.shifts import (
    CustomField,
    ScheduledShift,
    Scheduler,
    ShiftBreak,
    ShiftLayer,
    ShiftLocation,
)
from tests.helpers import AccountStore

SCHED = Scheduler(
    id=11,
    name="Store",
    timezone="Europe/Paris",
    jobs=(Job("j", "Job", None, "#ABCDEF"), Job("j1", "Sub", "j")),
    user_ids=frozenset({5, 6}),
    multi_user_shifts=True,
)

FULL = ScheduledShift(
    id="6784dacb3c07733b0a849f49",
    scheduler_id=11,
    start_time=1736924400,
    end_time=1736960400,
    title="Full",
    job_id="j1",
    timezone="Europe/Paris",
    is_published=True,
    is_open_shift=False,
    open_spots=None,
    is_require_admin_approval=None,
    assigned_user_ids=(6, 5),
    location=ShiftLocation(False, PunchLocation("1 rue X", 48.85, 2.35)),
    color="#ABCDEF",
    notes=("<p>a</p>", "<b>b</b>"),
    breaks=(ShiftBreak("Lunch", "unpaid", 720, 30, 1736938800, 1736940600),),
    statuses=({"statusId": "s1", "note": {"nested": [1, 2.5, None, True]}},),
    has_details=True,
    shift_layers=(ShiftLayer("layer", "value"),),
    shift_source="API",
    custom_fields=(CustomField("f1", "text"), CustomField("f2", [1, "x"]), CustomField("f3", None)),
    created_by=5,
    created_at=1736760011,
    updated_at=1736760011,
)


def test_migrations_create_exactly_the_declared_tables(engine: Engine) -> None:
    def declared_here(item: object, name: str | None, kind: str, *_: object) -> bool:
        """Not an index the tables declare for the other dialect only."""
        return kind != "index" or ONE_DIALECT_INDEXES.get(name or "", dialect) == dialect

    dialect = engine.dialect.name
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"include_object": declared_here})
        diff = compare_metadata(context, metadata)
    assert diff == []


def test_scheduler_round_trip_and_replace(engine: Engine) -> None:
    uows = AccountStore(engine)
    with uows() as uow:
        uow.schedulers.add(SCHED)
        uow.commit()
    with uows(readonly=True) as uow:
        assert uow.schedulers.get(SCHED.id) == SCHED
        assert uow.schedulers.has_user(SCHED.id, 5)
        assert not uow.schedulers.has_user(SCHED.id, 7)
        assert uow.schedulers.get(999) is None
        assert uow.schedulers.next_id() == SCHED.id + 1
    changed = replace(SCHED, name="New", jobs=(Job("k"),), user_ids=frozenset({7}))
    with uows() as uow:
        uow.schedulers.replace(changed)
        uow.commit()
    with uows(readonly=True) as uow:
        assert uow.schedulers.get(SCHED.id) == changed


def test_shifts_are_stored_exactly_and_listed_by_window(engine: Engine) -> None:
    uows = AccountStore(engine)
    bare = ScheduledShift(
        id="a" * 24,
        scheduler_id=11,
        start_time=FULL.end_time,
        end_time=FULL.end_time + 3600,
        title="Bare",
        timezone="Europe/Paris",
        is_published=False,
        is_open_shift=True,
        open_spots=3,
        is_require_admin_approval=True,
        color="#4B7AC5",
        location=ShiftLocation(True),
    )
    with uows() as uow:
        uow.schedulers.add(SCHED)
        uow.shifts.add_many([FULL, bare])
        uow.commit()
    with uows(readonly=True) as uow:
        assert uow.shifts.get(FULL.id) == FULL
        assert uow.shifts.get(bare.id) == bare
        assert uow.shifts.get("missing") is None
        assert uow.shifts.list_range(11, FULL.start_time, bare.end_time) == [FULL, bare]
        assert uow.shifts.list_range(11, FULL.end_time, FULL.end_time + 1) == [bare]
        assert uow.shifts.list_range(12, 0, 2**40) == []


def test_event_log_orders_and_pages(engine: Engine) -> None:
    uows = AccountStore(engine)
    with uows() as uow:
        first = uow.events.after(0)
        cursor = first[-1].seq if first else 0
        uow.events.append(
            [Event("shiftPublished", 10, {"n": i}, user_id=i, scheduler_id=11) for i in range(5)]
        )
        uow.commit()
    with uows() as uow:
        uow.events.append([Event("never", 1, {})])  # rolled back: not in the log
    with uows(readonly=True) as uow:
        got = uow.events.after(cursor)
        assert [e.payload["n"] for e in got] == [0, 1, 2, 3, 4]
        assert [e.seq for e in got] == sorted(e.seq for e in got)
        assert len({e.seq for e in got}) == 5
        page = uow.events.after(got[1].seq, limit=2)
        assert [e.user_id for e in page] == [2, 3]


@pytest.mark.parametrize("clocks", [0, 1, 3, 64, 65, 200])
def test_event_log_filters_by_type_and_time_clock_at_every_list_length(
    engine: Engine, clocks: int
) -> None:
    """The reads are prepared per filter shape, lists padded to powers of two
    (65 and 200 time clocks run past the prepared sizes): every length gives
    exactly the matching events of the account, in order, and a sink's
    store-wide read sees every account's."""
    uows = AccountStore(engine)
    other = AccountStore(engine, account=DEFAULT_ACCOUNT + 77)
    with uows(readonly=True) as uow:
        start = uow.events.newest()
    made = [
        Event(kind, 10, {"i": i}, time_clock_id=100 + i % 7)
        for i, kind in enumerate(["clockIn", "clockOut", "breakStarted"] * 7)
    ]
    with uows() as uow:
        uow.events.append(made)
        uow.commit()
    with other() as uow:
        uow.events.append([Event("clockIn", 10, {"i": -1}, time_clock_id=100)])
        uow.commit()
    wanted_clocks = [100 + i % 7 for i in range(clocks)] + [10_000 + i for i in range(clocks)]
    for types in ([], ["clockIn"], ["clockIn", "breakStarted"], ["clockOut", "x", "y"]):
        with uows(readonly=True) as uow:
            got = uow.events.after(start, 100, types, wanted_clocks[: 2 * clocks])
        expected = [
            e.payload["i"]
            for e in made
            if (not types or e.type in types) and (not clocks or e.time_clock_id in wanted_clocks)
        ]
        assert [e.payload["i"] for e in got] == expected
        assert all(e.account_id == DEFAULT_ACCOUNT and e.id.startswith("evt_") for e in got)
    with uows(readonly=True) as uow:
        every = uow.events.every_after(start, 100)
        assert [e.payload["i"] for e in every] == [*range(21), -1]
        assert [e.seq for e in every] == sorted({e.seq for e in every})
        assert [e.payload["i"] for e in uow.events.every_after(every[2].seq, 2)] == [3, 4]


def test_live_trails_round_trip_in_every_shape_of_write(engine: Engine) -> None:
    """Created, moved (same fences: only the time is written), re-fenced, and
    loaded across IN-list chunks (600 users: chunks of 256 padded to powers of two)."""
    uows = AccountStore(engine)
    users = list(range(1000, 1600))
    first = {(u, 7): LiveTrail(100 + u, ("a", "b") if u % 3 else ()) for u in users}
    first[(1000, 8)] = LiveTrail(5, ("z",))
    with uows() as uow:
        assert uow.locations.load(users) == {}
        uow.locations.save(first, {})
        uow.commit()
    with uows() as uow:
        known = uow.locations.load(users)
        assert known == first
        later = {
            (1001, 7): LiveTrail(9_000, ("a", "b")),  # moved, same fences
            (1002, 7): LiveTrail(9_001, ("c",)),  # left a and b, entered c
            (1003, 7): LiveTrail(9_002, ()),  # left every fence
            (1000, 9): LiveTrail(9_003, ("q",)),  # a new trail of a known user
        }
        uow.locations.save(later, known)
        uow.commit()
    with uows(readonly=True) as uow:
        assert uow.locations.load([1000, 1001, 1002, 1003, 1004]) == {
            (1000, 7): first[(1000, 7)],
            (1000, 8): first[(1000, 8)],
            (1000, 9): later[(1000, 9)],
            (1001, 7): later[(1001, 7)],
            (1002, 7): later[(1002, 7)],
            (1003, 7): later[(1003, 7)],
            (1004, 7): first[(1004, 7)],
        }
        assert uow.locations.load([1001, 1001, 5]) == {(1001, 7): later[(1001, 7)]}


def test_starting_a_trail_twice_is_a_concurrent_change(engine: Engine) -> None:
    uows = AccountStore(engine)
    with uows() as uow:
        uow.locations.save({(1, 2): LiveTrail(10, ())}, {})
        uow.commit()
    with uows() as uow, pytest.raises(ConcurrentChange):
        uow.locations.save({(1, 2): LiveTrail(11, ("f",))}, {})
    with uows(readonly=True) as uow:
        assert uow.locations.load([1]) == {(1, 2): LiveTrail(10, ())}


def test_concurrent_live_reports_on_one_trail_keep_one_consistent_state(engine: Engine) -> None:
    """Threads race to start and advance the same trail; every call lands once,
    in some order, and the stored trail is the one a serial order gives."""
    import asyncio
    import threading

    import numpy as np

    from geopunch.domain.accounts import DEFAULT_ACCOUNT
    from geopunch.domain.models import ExitAction, Geofence, TimeClock
    from geopunch.geo.engine import AccountFences
    from geopunch.service.punches import run_alone
    from geopunch.service.trails import TrailBatch, report_locations

    class Clock:
        def now(self) -> float:
            return 1_900_000_000.0

    uows = AccountStore(engine)
    tc = TimeClock(id=77, name="c", timezone="UTC", user_ids=frozenset({5}))
    fence = Geofence("g", 77, "n", True, 100, (), ExitAction.NO_ACTION, "x", 10.0, 10.0)
    with uows() as uow:
        uow.time_clocks.add(tc)
        uow.geofences.add_many([fence])
        uow.commit()
    index = AccountFences()
    index.load(DEFAULT_ACCOUNT, [tc], [fence])
    errors: list[BaseException] = []

    def one(ts: int) -> None:
        batch = TrailBatch(
            user_ids=np.array([5], np.int64),
            time_clock_ids=np.array([77], np.int64),
            timestamps=np.array([ts], np.int64),
            lats=np.array([10.0]),
            lons=np.array([10.0]),
        )
        try:
            asyncio.run(report_locations(run_alone(uows), index, Clock(), DEFAULT_ACCOUNT, batch))
        except BaseException as exc:  # collected, asserted below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(1_800_000_000 + i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    with uows(readonly=True) as uow:
        trail = uow.locations.load([5])[(5, 77)]
    assert trail.last_ts == 1_800_000_015
    assert trail.inside == ("g",)
