"""The pure punch decision: every row of the state table and every reason it gives.

No store and no engine: states, commands and location verdicts are values.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from geopunch.domain.errors import DomainError, ErrorCode
from geopunch.domain.models import DayStatus, GeofencePolicy, Job, ManualBreakType, TimeClock
from geopunch.domain.punches import (
    Activity,
    ActivityKind,
    PointVerdict,
    PunchCommand,
    PunchKind,
    PunchLocation,
    PunchPoint,
    PunchState,
    SchedulerShiftCheck,
    decide_punch,
    fence_job,
    plan_punch,
)

NOW = 1_800_000_000
USER = 7
TC = TimeClock(
    id=1,
    name="HQ",
    timezone="UTC",
    jobs=(Job("job-a"), Job("job-b"), Job("job-a1", parent_id="job-a")),
    user_ids=frozenset({USER}),
    manual_breaks_enabled=True,
    manual_break_types=(
        ManualBreakType("coffee", "Coffee"),
        ManualBreakType("lunch", "Lunch", is_mandatory=True, min_duration_s=1800),
    ),
)
IDLE = PunchState(open=None, last_end=None, day_status=None)
HERE = PunchLocation("1 Main St", 41.0, -87.0, 5.0)


def _ids() -> object:
    n = iter(range(1, 1000))
    return lambda kind: f"{kind.value}-{next(n)}"


def shift(start: int = NOW - 3600, job: str | None = "job-a") -> Activity:
    return Activity(
        "shift-open", TC.id, USER, ActivityKind.SHIFT, PunchPoint(start, "UTC"), None, job
    )


def brk(start: int = NOW - 600, type_id: str = "coffee", from_shift: bool = True) -> Activity:
    return Activity(
        "break-open",
        TC.id,
        USER,
        ActivityKind.BREAK,
        PunchPoint(start, "UTC"),
        None,
        "job-a" if from_shift else None,
        break_type_id=type_id,
        from_shift_id="shift-old" if from_shift else None,
    )


def on(activity: Activity | None, last_end: int | None = None) -> PunchState:
    return PunchState(open=activity, last_end=last_end, day_status=None)


def cmd(kind: PunchKind, **kw: object) -> PunchCommand:
    defaults: dict[str, object] = {"kind": kind, "time_clock_id": TC.id, "user_id": USER}
    if kind is PunchKind.START_BREAK:
        defaults["manual_break_id"] = "coffee"
    return PunchCommand(**{**defaults, **kw})  # type: ignore[arg-type]


def verdict(allowed: bool = True, fence: str | None = "fence-1", status: int = 0) -> PointVerdict:
    return PointVerdict(status, allowed, allowed, fence if allowed else None, 0, -10.0, fence, ())


def decide(
    c: PunchCommand,
    state: PunchState = IDLE,
    tc: TimeClock = TC,
    v: PointVerdict | None = None,
    scheduler_shift: SchedulerShiftCheck = "ok",
) -> object:
    plan = plan_punch(tc, c, NOW)
    return decide_punch(plan, state, v, NOW, scheduler_shift, _ids())  # type: ignore[arg-type]


def reason(c: PunchCommand, state: PunchState = IDLE, **kw: object) -> str:
    with pytest.raises(DomainError) as err:
        decide(c, state, **kw)  # type: ignore[arg-type]
    return err.value.code.value


# -- The state table ------------------------------------------------------------------------


def test_idle_clock_in_opens_a_shift() -> None:
    d = decide(cmd(PunchKind.CLOCK_IN, job_id="job-a1"))
    (opened,) = d.added  # type: ignore[attr-defined]
    assert d.closed == ()  # type: ignore[attr-defined]
    assert opened.kind is ActivityKind.SHIFT and opened.is_open
    assert (opened.start.timestamp, opened.job_id, opened.created_at) == (NOW, "job-a1", NOW)
    assert d.result.activity == opened  # type: ignore[attr-defined]


def test_idle_break_is_standalone() -> None:
    d = decide(cmd(PunchKind.START_BREAK))
    (opened,) = d.added  # type: ignore[attr-defined]
    assert opened.kind is ActivityKind.BREAK and opened.from_shift_id is None
    assert d.result.closed_shift is None and opened.job_id is None  # type: ignore[attr-defined]


def test_shift_clock_out_closes_it() -> None:
    d = decide(cmd(PunchKind.CLOCK_OUT), on(shift()))
    (done,) = d.closed  # type: ignore[attr-defined]
    assert d.added == () and done.id == "shift-open"  # type: ignore[attr-defined]
    assert done.end is not None and done.end.timestamp == NOW and done.modified_at == NOW


def test_break_from_a_shift_switches_in_one_decision() -> None:
    d = decide(cmd(PunchKind.START_BREAK), on(shift()))
    (closed,) = d.closed  # type: ignore[attr-defined]
    (opened,) = d.added  # type: ignore[attr-defined]
    assert closed.id == "shift-open" and closed.end.timestamp == NOW
    assert (opened.job_id, opened.from_shift_id, opened.break_type_id) == (
        "job-a",
        "shift-open",
        "coffee",
    )
    assert d.result.closed_shift == closed  # type: ignore[attr-defined]


@pytest.mark.parametrize("resume", [None, True])
def test_end_of_a_break_from_a_shift_resumes_it(resume: bool | None) -> None:
    d = decide(cmd(PunchKind.END_BREAK, is_resume_shift=resume), on(brk()))
    (ended,) = d.closed  # type: ignore[attr-defined]
    (resumed,) = d.added  # type: ignore[attr-defined]
    assert ended.id == "break-open"
    assert resumed.kind is ActivityKind.SHIFT and resumed.job_id == "job-a"
    assert resumed.start.timestamp == ended.end.timestamp == NOW
    assert d.result.resumed_shift == resumed  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("state", "resume"), [(on(brk()), False), (on(brk(from_shift=False)), None)]
)
def test_end_of_a_break_without_resuming_leaves_the_user_idle(
    state: PunchState, resume: bool | None
) -> None:
    d = decide(cmd(PunchKind.END_BREAK, is_resume_shift=resume), state)
    assert len(d.closed) == 1 and d.added == ()  # type: ignore[attr-defined]
    assert d.result.resumed_shift is None  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("kind", "state", "code"),
    [
        (PunchKind.CLOCK_OUT, IDLE, "NO_OPEN_SHIFT"),
        (PunchKind.END_BREAK, IDLE, "NO_OPEN_BREAK"),
        (PunchKind.CLOCK_IN, on(shift()), "ALREADY_CLOCKED_IN"),
        (PunchKind.END_BREAK, on(shift()), "NO_OPEN_BREAK"),
        (PunchKind.CLOCK_IN, on(brk()), "OPEN_BREAK"),
        (PunchKind.START_BREAK, on(brk()), "ALREADY_ON_BREAK"),
        (PunchKind.CLOCK_OUT, on(brk()), "NO_OPEN_SHIFT"),
    ],
)
def test_refused_rows_of_the_state_table(kind: PunchKind, state: PunchState, code: str) -> None:
    assert reason(cmd(kind), state) == code


# -- Rules of the command alone, in the order a caller fixes them ----------------------------


@pytest.mark.parametrize(
    ("command", "tc", "code"),
    [
        (cmd(PunchKind.CLOCK_IN, user_id=99), TC, "USER_NOT_ASSIGNED"),
        (cmd(PunchKind.CLOCK_IN, timezone="Mars/Base"), TC, "INVALID_TIMEZONE"),
        (cmd(PunchKind.CLOCK_IN, timestamp=NOW + 5), TC, "INVALID_TIMESTAMP_FUTURE"),
        (cmd(PunchKind.CLOCK_IN, timestamp=NOW * 1000), TC, "INVALID_TIMESTAMP_FUTURE"),
        (cmd(PunchKind.CLOCK_IN, timestamp=NOW - 12 * 3600 - 1), TC, "INVALID_TIMESTAMP_TOO_OLD"),
        (
            cmd(PunchKind.CLOCK_IN, location=PunchLocation("x", 1.0, None)),
            TC,
            "INVALID_LOCATION",
        ),
        (
            cmd(PunchKind.CLOCK_IN, location=PunchLocation("x", 91.0, 0.0)),
            TC,
            "INVALID_LOCATION",
        ),
        (
            cmd(PunchKind.CLOCK_IN, location=PunchLocation("x", 1.0, 1.0, -1.0)),
            TC,
            "INVALID_LOCATION",
        ),
        (cmd(PunchKind.START_BREAK, manual_break_id="nap"), TC, "MANUAL_BREAK_NOT_FOUND"),
        (
            cmd(PunchKind.START_BREAK),
            replace(TC, manual_breaks_enabled=False),
            "MANUAL_BREAKS_DISABLED",
        ),
        (cmd(PunchKind.CLOCK_IN, job_id="job-z"), TC, "JOB_NOT_FOUND"),
        (cmd(PunchKind.CLOCK_IN), replace(TC, job_enforcement=True), "JOB_REQUIRED"),
    ],
)
def test_command_rules(command: PunchCommand, tc: TimeClock, code: str) -> None:
    with pytest.raises(DomainError) as err:
        plan_punch(tc, command, NOW)
    assert err.value.code.value == code


def test_a_timestamp_exactly_twelve_hours_old_is_accepted() -> None:
    d = decide(cmd(PunchKind.CLOCK_IN, timestamp=NOW - 12 * 3600))
    assert d.result.activity.start.timestamp == NOW - 12 * 3600  # type: ignore[attr-defined]


# -- Rules that need the state --------------------------------------------------------------


def test_ends_must_follow_starts() -> None:
    assert (
        reason(cmd(PunchKind.CLOCK_OUT, timestamp=NOW - 3600), on(shift()))
        == "INVALID_TIMESTAMP_BEFORE_CLOCK_IN"
    )
    assert (
        reason(cmd(PunchKind.END_BREAK, timestamp=NOW - 600), on(brk()))
        == "INVALID_TIMESTAMP_BEFORE_START"
    )
    assert (
        reason(cmd(PunchKind.START_BREAK, timestamp=NOW - 3600), on(shift()))
        == "INVALID_TIMESTAMP_BEFORE_CLOCK_IN"
    )


@pytest.mark.parametrize("kind", [PunchKind.CLOCK_IN, PunchKind.START_BREAK])
def test_new_activities_may_not_start_inside_completed_ones(kind: PunchKind) -> None:
    history = on(None, last_end=NOW - 60)
    assert reason(cmd(kind, timestamp=NOW - 61), history) == "OVERLAPS_COMPLETED_ACTIVITY"
    # half-open: starting at the second the last one ended is fine
    assert decide(cmd(kind, timestamp=NOW - 60), history).added  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("elapsed", "allowed"),
    [(45, True), (46, False), (1799, False), (1800, True)],
)
def test_mandatory_breaks(elapsed: int, allowed: bool) -> None:
    state = on(brk(start=NOW - elapsed, type_id="lunch"))
    if allowed:
        assert decide(cmd(PunchKind.END_BREAK), state).closed  # type: ignore[attr-defined]
    else:
        assert reason(cmd(PunchKind.END_BREAK), state) == "MANDATORY_BREAK_TOO_SHORT"


@pytest.mark.parametrize("status", [DayStatus.LOCKED, DayStatus.APPROVED])
@pytest.mark.parametrize(
    ("kind", "state"),
    [
        (PunchKind.CLOCK_IN, IDLE),
        (PunchKind.CLOCK_OUT, on(shift())),
        (PunchKind.START_BREAK, on(shift())),
        (PunchKind.END_BREAK, on(brk())),
    ],
)
def test_locked_and_approved_days_refuse_every_punch(
    kind: PunchKind, state: PunchState, status: DayStatus
) -> None:
    locked = replace(state, day_status=status)
    assert reason(cmd(kind), locked) == "HAS_LOCKED_DAYS"
    assert decide(cmd(kind), replace(state, day_status=DayStatus.OPEN))


@pytest.mark.parametrize("found", ["missing", "not_assigned"])
def test_scheduler_shifts(found: SchedulerShiftCheck) -> None:
    c = cmd(PunchKind.CLOCK_IN, scheduler_shift_id="s-1")
    assert reason(c, scheduler_shift=found) == "SCHEDULER_SHIFT_NOT_FOUND"
    d = decide(c, scheduler_shift="ok")
    assert d.result.activity.scheduler_shift_id == "s-1"  # type: ignore[attr-defined]


# -- The geofence policy --------------------------------------------------------------------

INSIDE_ONLY = replace(TC, geofence_policy=GeofencePolicy.REQUIRE_INSIDE)


def test_the_fence_a_punch_is_in_is_recorded_under_every_policy() -> None:
    d = decide(cmd(PunchKind.CLOCK_IN, location=HERE), v=verdict())
    assert d.result.activity.start.geofence_id == "fence-1"  # type: ignore[attr-defined]
    outside = decide(cmd(PunchKind.CLOCK_IN, location=HERE), v=verdict(allowed=False))
    assert outside.result.activity.start.geofence_id is None  # type: ignore[attr-defined]


@pytest.mark.parametrize("policy", [GeofencePolicy.REQUIRE_LOCATION, GeofencePolicy.REQUIRE_INSIDE])
def test_a_location_is_required(policy: GeofencePolicy) -> None:
    tc = replace(TC, geofence_policy=policy)
    assert reason(cmd(PunchKind.CLOCK_IN), tc=tc) == "LOCATION_REQUIRED"
    no_point = PunchLocation("address only", None, None)
    assert reason(cmd(PunchKind.CLOCK_IN, location=no_point), tc=tc) == "LOCATION_REQUIRED"


def test_outside_every_fence_is_refused_with_the_distance() -> None:
    with pytest.raises(DomainError) as err:
        decide(cmd(PunchKind.CLOCK_IN, location=HERE), tc=INSIDE_ONLY, v=verdict(allowed=False))
    assert err.value.code is ErrorCode.OUTSIDE_GEOFENCE
    assert err.value.metadata == {
        "timeClockId": "1",
        "distanceMeters": "-10.0",
        "fenceId": "fence-1",
    }
    none = replace(verdict(allowed=False), distance_m=None, nearest_fence_id=None)
    assert (
        reason(cmd(PunchKind.CLOCK_IN, location=HERE), tc=INSIDE_ONLY, v=none) == "OUTSIDE_GEOFENCE"
    )


def test_an_unjudgeable_point_is_an_invalid_location() -> None:
    bad = verdict(status=2)
    assert reason(cmd(PunchKind.CLOCK_IN, location=HERE), v=bad) == "INVALID_LOCATION"


def test_the_fence_is_judged_for_the_open_activitys_job() -> None:
    plan = plan_punch(TC, cmd(PunchKind.CLOCK_OUT), NOW)
    assert fence_job(plan, on(shift(job="job-b"))) == "job-b"
    plan_in = plan_punch(TC, cmd(PunchKind.CLOCK_IN, job_id="job-a"), NOW)
    assert fence_job(plan_in, on(shift(job="job-b"))) == "job-a"
    assert fence_job(plan, IDLE) is None


def test_every_reason_the_decision_gives_is_tested_here() -> None:
    """A reason added to the decision without a test here fails this one."""
    import re
    from pathlib import Path

    import geopunch.domain.punches as decision

    raised = set(re.findall(r"ErrorCode\.([A-Z_]+)", Path(decision.__file__).read_text()))
    raised.add("USER_NOT_ASSIGNED")  # plan_punch's first rule, shared with other use cases
    here = Path(__file__).read_text()
    untested = sorted(code for code in raised if f'"{code}"' not in here)
    assert not untested


def test_an_idempotency_key_is_at_most_128_characters() -> None:
    from geopunch.domain.punches import check_idempotency_key

    check_idempotency_key("k" * 128)
    with pytest.raises(DomainError) as err:
        check_idempotency_key("k" * 129)
    assert err.value.code.value == "INVALID_ARGUMENT"
