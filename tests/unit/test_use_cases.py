"""Every use case over the store the server runs on (SQLite), without gRPC.

The rules themselves are tested in test_rules, test_shifts and
test_punch_decision; here the use cases are: what they read, what they write,
in which transaction, what they tell the fence engine, and what they answer.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest

from geopunch.adapters.db.store import SqlUnitOfWorkFactory
from geopunch.domain.accounts import DEFAULT_ACCOUNT as A
from geopunch.domain.errors import DomainError, ErrorCode
from geopunch.domain.models import (
    DayStatus,
    ExitAction,
    GeofenceDraft,
    Job,
    ManualBreakType,
    TimeClock,
)
from geopunch.domain.ports import FenceEngine, UnitOfWork
from geopunch.domain.punches import (
    PunchCommand,
    PunchKind,
    PunchLocation,
    PunchResult,
    timesheet_day,
)
from geopunch.domain.shifts import ScheduledShift, Scheduler
from geopunch.geo.engine import AccountFences
from geopunch.service import admin, geofences, index_feed, punches, scheduler, trails
from geopunch.service.locations import LocationBatch, check_locations
from tests.helpers import seeded_sqlite
from tests.reference_engine import ReferenceEngine

NOW = 1_800_000_000
T = TypeVar("T")
TC = TimeClock(
    id=12,
    name="HQ",
    timezone="UTC",
    jobs=(Job("job-a", "A"),),
    user_ids=frozenset({7, 8}),
    manual_breaks_enabled=True,
)
SITE = GeofenceDraft(
    name="Site",
    address="1 Main St",
    latitude=41.0,
    longitude=-87.0,
    fence_size_m=200,
    exit_action="autoClockOut",
)


class Clock:
    def __init__(self, t: float = NOW) -> None:
        self.t = t

    def now(self) -> float:
        return self.t


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqlUnitOfWorkFactory]:
    engine = seeded_sqlite(tmp_path / "store.db", [])
    yield SqlUnitOfWorkFactory(engine)
    engine.dispose()


def contents(store: SqlUnitOfWorkFactory) -> list[str]:
    """Every row of every table, as SQL: what a refused call must leave as it was."""
    with sqlite3.connect(str(store.engine.url.database)) as conn:
        return list(conn.iterdump())


@pytest.fixture(params=[AccountFences, ReferenceEngine])
def index(store: SqlUnitOfWorkFactory, request: pytest.FixtureRequest) -> FenceEngine:
    """A fence engine told about every change by the use cases, as the server's
    is: the real one, and the reference that the property tests trust."""
    index: FenceEngine = request.param()
    admin.create_time_clock(store, A, TC, ["jobs[0]"], assign_id=False, listener=index)
    return index


def _fences_at_site(index: FenceEngine) -> tuple[str, ...]:
    return index.view(A).judge(TC.id, 41.0, -87.0).matched_fence_ids


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def punch(
    store: SqlUnitOfWorkFactory, index: FenceEngine | None, clock: Clock, **kw: Any
) -> punches.PunchOutcome:
    cmd = PunchCommand(**{"time_clock_id": TC.id, "user_id": 7, **kw})
    return run(punches.punch(punches.run_alone(store), index, clock, A, cmd, "req-1"))


def result(out: punches.PunchOutcome) -> PunchResult:
    assert out.result is not None, "the punch replayed an answer of the previous release"
    return out.result


# -- Time clocks and days ---------------------------------------------------------------


def test_time_clocks_are_created_noted_for_other_processes_and_read(
    store: SqlUnitOfWorkFactory, index: FenceEngine
) -> None:
    assert admin.read_time_clock(store, A, TC.id) == TC
    with store(account=A, readonly=True) as uow:
        assert uow.index_changes.after(0) == [(1, A, TC.id)]
    assert index.view(A).time_clock(TC.id) == TC
    made = admin.create_time_clock(store, A, replace(TC, id=0), ["jobs[0]"], assign_id=True)
    assert made.id == TC.id + 1
    with pytest.raises(DomainError) as err:
        admin.create_time_clock(store, A, TC, ["jobs[0]"], assign_id=False)
    assert err.value.code is ErrorCode.TIME_CLOCK_ALREADY_EXISTS


def test_an_update_may_not_drop_a_job_a_fence_names(
    store: SqlUnitOfWorkFactory, index: FenceEngine
) -> None:
    geofences.create_geofences(store, A, TC.id, [replace(SITE, job_ids=("job-a",))], index)
    before = contents(store)
    with pytest.raises(DomainError) as err:
        admin.update_time_clock(store, A, replace(TC, jobs=()), [], index)
    assert err.value.code is ErrorCode.JOB_IN_USE and contents(store) == before
    renamed = admin.update_time_clock(store, A, replace(TC, name="Head office"), ["jobs[0]"], index)
    assert admin.read_time_clock(store, A, TC.id) == renamed
    assert index.view(A).time_clock(TC.id) == renamed


def test_day_statuses(store: SqlUnitOfWorkFactory, index: FenceEngine) -> None:
    admin.set_day_status(store, A, TC.id, 7, ["2027-01-04", "2027-01-05"], DayStatus.LOCKED)
    admin.set_day_status(store, A, TC.id, 7, ["2027-01-05"], DayStatus.OPEN)
    days = admin.list_day_statuses(store, A, TC.id, 7)
    assert {d.isoformat(): s for d, s in days.items()} == {"2027-01-04": DayStatus.LOCKED}
    with pytest.raises(DomainError) as err:
        admin.set_day_status(store, A, TC.id, 99, ["2027-01-04"], DayStatus.LOCKED)
    assert err.value.code is ErrorCode.USER_NOT_ASSIGNED


# -- Geofences ----------------------------------------------------------------------------


def test_geofences_are_stored_and_indexed_together(
    store: SqlUnitOfWorkFactory, index: FenceEngine
) -> None:
    (fence,) = geofences.create_geofences(store, A, TC.id, [SITE], index)
    assert geofences.list_geofences(store, A, TC.id) == [fence]
    assert geofences.get_geofence(store, A, TC.id, fence.id) == fence
    assert _fences_at_site(index) == (fence.id,)
    geofences.delete_geofence(store, A, TC.id, fence.id, index)
    assert geofences.list_geofences(store, A, TC.id) == [] and _fences_at_site(index) == ()
    with pytest.raises(DomainError) as err:
        geofences.get_geofence(store, A, TC.id, fence.id)
    assert err.value.code is ErrorCode.GEOFENCE_NOT_FOUND
    with pytest.raises(DomainError) as err:
        geofences.list_geofences(store, A, 999)
    assert err.value.code is ErrorCode.TIME_CLOCK_NOT_FOUND


def test_a_refused_batch_of_fences_writes_nothing(
    store: SqlUnitOfWorkFactory, index: FenceEngine
) -> None:
    before = contents(store)
    with pytest.raises(DomainError) as err:
        geofences.create_geofences(store, A, TC.id, [SITE, replace(SITE, fence_size_m=10)], index)
    assert err.value.code is ErrorCode.INVALID_FENCE_SIZE
    assert contents(store) == before and geofences.list_geofences(store, A, TC.id) == []


# -- Punches ------------------------------------------------------------------------------


def test_a_punch_writes_what_the_decision_says(
    store: SqlUnitOfWorkFactory, index: FenceEngine
) -> None:
    geofences.create_geofences(store, A, TC.id, [SITE], index)
    here = PunchLocation("gate", 41.0, -87.0)
    started = punch(store, index, Clock(), kind=PunchKind.CLOCK_IN, location=here)
    shift = result(started).activity
    assert shift.start.geofence_id is not None and started.request_id == "req-1"
    with store(account=A, readonly=True) as uow:
        assert uow.activities.list_for(TC.id, 7) == [shift]
    ended = punch(store, index, Clock(NOW + 60), kind=PunchKind.CLOCK_OUT)
    done = result(ended).activity
    assert done.id == shift.id and done.end is not None and done.end.timestamp == NOW + 60
    with store(account=A, readonly=True) as uow:
        assert uow.activities.punch_state(TC.id, 7, timesheet_day(NOW, "UTC")).open is None


def test_a_refused_punch_writes_nothing(store: SqlUnitOfWorkFactory, index: FenceEngine) -> None:
    before = contents(store)
    with pytest.raises(DomainError) as err:
        punch(store, index, Clock(), kind=PunchKind.CLOCK_OUT)
    assert err.value.code is ErrorCode.NO_OPEN_SHIFT and contents(store) == before


def test_idempotent_punches_replay_their_first_answer(
    store: SqlUnitOfWorkFactory, index: FenceEngine
) -> None:
    first = punch(store, None, Clock(), kind=PunchKind.CLOCK_IN, idempotency_key="k1")
    again = run(
        punches.punch(
            punches.run_alone(store),
            None,
            Clock(NOW + 5),
            A,
            PunchCommand(PunchKind.CLOCK_IN, TC.id, 7, idempotency_key="k1"),
            "req-2",
        )
    )
    assert again.replayed and again.request_id == "req-1"
    assert again.result == first.result
    with store(account=A, readonly=True) as uow:
        assert len(uow.activities.list_for(TC.id, 7)) == 1
    with pytest.raises(DomainError) as err:
        punch(store, None, Clock(), kind=PunchKind.CLOCK_IN, job_id="job-a", idempotency_key="k1")
    assert err.value.code is ErrorCode.IDEMPOTENCY_KEY_REUSED


def test_answers_stored_by_the_previous_release_still_replay(store: SqlUnitOfWorkFactory) -> None:
    legacy = b"\x0a\x05req-0"  # gRPC bytes, as the previous release stored answers
    with store(account=A) as uow:
        uow.idempotency.put("old", "clock_in", "digest-of-a-grpc-body", legacy)
        uow.commit()
    out = punch(store, None, Clock(), kind=PunchKind.CLOCK_IN, idempotency_key="old")
    assert out.legacy_answer == legacy and out.result is None
    with pytest.raises(DomainError) as err:
        punch(store, None, Clock(), kind=PunchKind.CLOCK_OUT, idempotency_key="old")
    assert err.value.code is ErrorCode.IDEMPOTENCY_KEY_REUSED


def test_a_refusal_on_the_users_state_is_the_keys_answer_and_others_are_not(
    store: SqlUnitOfWorkFactory, index: FenceEngine
) -> None:
    """A key's first answer may be a refusal caused by the user's punches (a
    copy of the request elsewhere must get it too); a refusal of the request
    itself is not kept, so the corrected request may use the same key."""
    punch(store, None, Clock(), kind=PunchKind.CLOCK_IN)
    for _ in range(2):
        with pytest.raises(DomainError) as err:
            punch(store, None, Clock(NOW + 60), kind=PunchKind.CLOCK_IN, idempotency_key="twin")
        assert err.value.code is ErrorCode.ALREADY_CLOCKED_IN
    punch(store, None, Clock(NOW + 120), kind=PunchKind.CLOCK_OUT)
    with pytest.raises(DomainError) as err:  # the key replays its refusal, changes nothing
        punch(store, None, Clock(NOW + 180), kind=PunchKind.CLOCK_IN, idempotency_key="twin")
    assert err.value.code is ErrorCode.ALREADY_CLOCKED_IN
    with store(account=A, readonly=True) as uow:
        assert all(a.end is not None for a in uow.activities.list_for(TC.id, 7))
    with pytest.raises(DomainError) as err:
        punch(
            store,
            None,
            Clock(NOW + 180),
            kind=PunchKind.CLOCK_IN,
            timezone="Nowhere",
            idempotency_key="fixed",
        )
    assert err.value.code is ErrorCode.INVALID_TIMEZONE
    done = punch(store, None, Clock(NOW + 180), kind=PunchKind.CLOCK_IN, idempotency_key="fixed")
    assert result(done).activity.is_open


def test_a_punch_that_keeps_losing_races_is_aborted(store: SqlUnitOfWorkFactory) -> None:
    from geopunch.domain.errors import ConcurrentChange

    tries = []

    async def always_lost(work: Callable[[UnitOfWork], T], order: tuple[int, ...] = ()) -> T:
        tries.append(order)
        raise ConcurrentChange("lost")

    cmd = PunchCommand(PunchKind.CLOCK_IN, TC.id, 7)
    with pytest.raises(DomainError) as err:
        run(punches.punch(always_lost, None, Clock(), A, cmd, "r"))
    assert err.value.code is ErrorCode.CONCURRENT_MODIFICATION
    assert tries == [(A, TC.id, 7, 0)] * punches.MAX_ATTEMPTS  # its place in every batch


def test_validation_changes_nothing(store: SqlUnitOfWorkFactory, index: FenceEngine) -> None:
    before = contents(store)
    cmd = PunchCommand(PunchKind.CLOCK_IN, TC.id, 7)
    assert punches.validate_punch(store, index, Clock(), A, cmd).activity.is_open
    assert contents(store) == before
    with pytest.raises(DomainError) as err:
        punches.validate_punch(store, index, Clock(), A, replace(cmd, kind=PunchKind.CLOCK_OUT))
    assert err.value.code is ErrorCode.NO_OPEN_SHIFT


def test_old_idempotency_keys_are_purged_in_batches(store: SqlUnitOfWorkFactory) -> None:
    # The store stamps a key with its own clock, read between these two.
    first = time.time()
    with store(account=A) as uow:
        for i in range(5):
            uow.idempotency.put(f"k{i}", "clock_in", "h", b"{}")
        uow.commit()
    last = time.time()
    assert punches.purge_idempotency_keys(store, first + 59, retention_s=60) == 0
    assert punches.purge_idempotency_keys(store, last + 62, retention_s=60, batch=2) == 5


# -- Scheduler ----------------------------------------------------------------------------

SCHED = Scheduler(id=3, name="Rota", timezone="UTC", jobs=(Job("job-a"),), user_ids=frozenset({7}))


def test_shifts_are_stored_with_their_events(store: SqlUnitOfWorkFactory) -> None:
    scheduler.create_scheduler(store, A, SCHED, ["jobs[0]"], assign_id=False)
    draft = ScheduledShift(
        start_time=NOW,
        end_time=NOW + 3600,
        job_id="job-a",
        is_published=True,
        assigned_user_ids=(7,),
    )
    (shift,) = scheduler.create_shifts(store, Clock(), A, SCHED.id, [draft])
    assert scheduler.list_shifts(store, A, SCHED.id, NOW, NOW + 60) == [shift]
    with store(account=A, readonly=True) as uow:
        (event,) = uow.events.after(0)
    assert (event.type, event.user_id) == ("shiftPublished", 7)
    scheduler.create_shifts(store, Clock(), A, SCHED.id, [draft], notify_users=False)
    with store(account=A, readonly=True) as uow:
        assert len(uow.events.after(0)) == 1
    with pytest.raises(DomainError) as err:
        scheduler.list_shifts(store, A, SCHED.id, NOW, NOW + 93 * 86400)
    assert err.value.code is ErrorCode.INVALID_ARGUMENT
    renamed = scheduler.update_scheduler(store, A, replace(SCHED, name="Rota 2"), ["jobs[0]"])
    assert scheduler.read_scheduler(store, A, SCHED.id) == renamed


def test_a_clock_in_names_a_scheduled_shift_of_the_user(store: SqlUnitOfWorkFactory) -> None:
    admin.create_time_clock(store, A, TC, ["jobs[0]"], assign_id=False)
    scheduler.create_scheduler(store, A, SCHED, ["jobs[0]"], assign_id=False)
    draft = ScheduledShift(
        start_time=NOW, end_time=NOW + 3600, title="Early", assigned_user_ids=(7,)
    )
    (shift,) = scheduler.create_shifts(store, Clock(), A, SCHED.id, [draft])
    with pytest.raises(DomainError) as err:
        punch(store, None, Clock(), kind=PunchKind.CLOCK_IN, user_id=8, scheduler_shift_id=shift.id)
    assert err.value.code is ErrorCode.SCHEDULER_SHIFT_NOT_FOUND
    out = punch(store, None, Clock(), kind=PunchKind.CLOCK_IN, scheduler_shift_id=shift.id)
    assert result(out).activity.scheduler_shift_id == shift.id


# -- Locations, trails and live positions -------------------------------------------------


def test_check_locations(store: SqlUnitOfWorkFactory, index: FenceEngine) -> None:
    (created,) = geofences.create_geofences(store, A, TC.id, [SITE], index)
    batch = LocationBatch(
        time_clock_id=TC.id,
        lats=np.array([41.0, 42.0]),
        lons=np.array([-87.0, -87.0]),
        time_clock_ids=None,
        accuracies_m=None,
        job_ids=(),
        job_indexes=None,
        job_id="",
        with_distance=False,
    )
    result = check_locations(index, A, batch)
    assert result.inside.tolist() == [True, False]
    assert result.offsets.tolist() == [0, 1, 1]
    assert [result.ids.tolist()[k] for k in result.fences] == [created.id]
    with pytest.raises(DomainError) as err:
        check_locations(index, A, replace(batch, time_clock_id=999))
    assert err.value.code is ErrorCode.TIME_CLOCK_NOT_FOUND


def _samples(ts: list[int], lats: list[float]) -> trails.TrailBatch:
    n = len(ts)
    return trails.TrailBatch(
        user_ids=np.full(n, 7, np.int64),
        time_clock_ids=np.full(n, TC.id, np.int64),
        timestamps=np.array(ts, np.int64),
        lats=np.array(lats),
        lons=np.full(n, -87.0),
    )


def test_leaving_an_auto_clock_out_fence_closes_the_shift(
    store: SqlUnitOfWorkFactory, index: FenceEngine
) -> None:
    geofences.create_geofences(store, A, TC.id, [SITE], index)
    punch(store, index, Clock(), kind=PunchKind.CLOCK_IN, timestamp=NOW - 600)
    submit = punches.run_alone(store)
    run(trails.report_locations(submit, index, Clock(), A, _samples([NOW - 300], [41.0])))
    out = run(trails.report_locations(submit, index, Clock(), A, _samples([NOW - 200], [41.1])))
    assert out.exits.outcomes == ["clockedOut"]
    with store(account=A, readonly=True) as uow:
        (shift,) = uow.activities.list_for(TC.id, 7)
        types = [e.type for e in uow.events.after(0)]
        assert uow.locations.load([7])[(7, TC.id)].last_ts == NOW - 200
    assert shift.end is not None and shift.end.timestamp == NOW - 200
    assert shift.end.source == "autoClockOut"
    assert types == ["clockIn", "geofenceEnter", "geofenceExit", "autoClockOut"]
    # what the same samples would do, judged as history: nothing is stored
    evaluated = trails.evaluate_trails(
        index, A, _samples([NOW - 300, NOW - 200], [41.0, 41.1]), NOW
    )
    assert evaluated.exits.outcomes == ["clockedOut"]


def test_a_stale_live_sample_changes_nothing(
    store: SqlUnitOfWorkFactory, index: FenceEngine
) -> None:
    submit = punches.run_alone(store)
    run(trails.report_locations(submit, index, Clock(), A, _samples([NOW - 100], [41.0])))
    out = run(trails.report_locations(submit, index, Clock(), A, _samples([NOW - 200], [41.0])))
    assert out.result.status.tolist() == [6]
    with store(account=A, readonly=True) as uow:
        assert uow.locations.load([7])[(7, TC.id)].last_ts == NOW - 100


def test_samples_outside_the_allowed_time_are_refused_one_by_one(
    store: SqlUnitOfWorkFactory, index: FenceEngine
) -> None:
    """Before 2000, or beyond the allowed skew past now: INVALID_TIMESTAMP,
    nothing stored; within the skew is accepted."""
    submit = punches.run_alone(store)
    batch = _samples([NOW + 61, 946_684_799, NOW + 60], [41.0, 41.0, 41.0])
    out = run(trails.report_locations(submit, index, Clock(), A, batch, max_skew_s=60))
    assert out.result.status.tolist() == [11, 11, 0]
    with store(account=A, readonly=True) as uow:
        assert uow.locations.load([7])[(7, TC.id)].last_ts == NOW + 60
    evaluated = trails.evaluate_trails(index, A, batch, NOW, max_skew_s=60)
    assert evaluated.result.status.tolist() == [11, 11, 0]


# -- The index-change feed ----------------------------------------------------------------


def test_another_process_follows_the_feed_and_the_feed_is_pruned(
    store: SqlUnitOfWorkFactory, index: FenceEngine
) -> None:
    geofences.create_geofences(store, A, TC.id, [SITE], index)
    there: FenceEngine = type(index)()  # the follower, of the same kind as the writer's
    cursor = index_feed.follow_index_changes(store, there, 0)
    with store(account=A, readonly=True) as uow:
        assert cursor == uow.index_changes.last() == 2
        stamped = [change[2] for seq in (1, 2) if (change := uow.index_changes.at(seq))]
    assert there.totals() == (1, 1)
    assert index_feed.follow_index_changes(store, there, cursor) == cursor
    assert index_feed.prune_index_changes(store, before=min(stamped)) == 0
    assert index_feed.prune_index_changes(store, before=max(stamped) + 1) == 2


def test_exit_actions_apply_to_the_fences_action() -> None:
    assert trails.would_do(ExitAction.NO_ACTION.value, False) == "reported"
    assert trails.would_do(ExitAction.SEND_NOTIFICATION.value, False) == "notified"
    assert trails.would_do(ExitAction.AUTO_CLOCK_OUT.value, True) == "stillInsideAnotherFence"


# -- Events of punches ------------------------------------------------------------------


def test_every_punch_writes_its_events_with_what_a_consumer_needs(
    store: SqlUnitOfWorkFactory, index: FenceEngine
) -> None:
    tc = replace(TC, id=13, manual_break_types=(ManualBreakType("lunch", "Lunch"),))
    admin.create_time_clock(store, A, tc, ["jobs[0]"], assign_id=False, listener=index)
    steps = [
        (PunchKind.CLOCK_IN, {"job_id": "job-a"}),
        (PunchKind.START_BREAK, {"manual_break_id": "lunch"}),
        (PunchKind.END_BREAK, {}),
        (PunchKind.CLOCK_OUT, {}),
    ]
    for k, (kind, kw) in enumerate(steps):
        punch(
            store, index, Clock(), time_clock_id=13, kind=kind, timestamp=NOW - 900 + 60 * k, **kw
        )
    with store(account=A, readonly=True) as uow:
        log = uow.events.after(0)
        activities = {a.id: a for a in uow.activities.list_for(13, 7)}
    assert [e.type for e in log] == [
        "clockIn",
        "breakStarted",
        "breakEnded",
        "shiftResumed",
        "clockOut",
    ]
    assert [e.occurred_at for e in log] == [NOW - 900, NOW - 840, NOW - 780, NOW - 780, NOW - 720]
    assert all((e.user_id, e.time_clock_id, e.account_id) == (7, 13, A) for e in log)
    assert len({e.id for e in log}) == 5
    first_shift, brk = log[0].payload["activityId"], log[1].payload["activityId"]
    assert log[0].payload["jobId"] == "job-a"
    assert log[1].payload["shiftId"] == first_shift
    assert log[1].payload["manualBreakId"] == "lunch"
    resumed = log[3].payload["activityId"]
    assert log[2].payload["resumedShiftId"] == resumed and log[3].payload["breakId"] == brk
    assert log[4].payload["activityId"] == resumed
    # The payload's activity is the stored one as it stood after the punch.
    closed = log[4].payload["activity"]
    assert isinstance(closed, dict) and closed["end"]["timestamp"] == NOW - 720
    assert set(activities) == {first_shift, brk, resumed}


def test_a_refused_punch_writes_no_event(store: SqlUnitOfWorkFactory, index: FenceEngine) -> None:
    with pytest.raises(DomainError):
        punch(store, index, Clock(), kind=PunchKind.CLOCK_OUT, timestamp=NOW - 60)
    with store(account=A, readonly=True) as uow:
        assert uow.events.after(0) == []
