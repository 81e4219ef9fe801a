"""The punch lifecycle: shifts and manual breaks of one user on one time clock.

State per (time clock, user) is *idle*, *on shift* or *on break*; at most one
activity is open. Activities of one (time clock, user) never overlap: every new
start is at or after the end of the latest completed one (intervals are
half-open), and every end is after its start.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Literal, NamedTuple
from zoneinfo import ZoneInfo

from geopunch.domain.builders import positional_builder
from geopunch.domain.errors import DomainError, ErrorCode
from geopunch.domain.ids import ordered_hex, ordered_hexes
from geopunch.domain.models import DayStatus, GeofencePolicy, ManualBreakType, TimeClock
from geopunch.domain.rules import (
    MAX_ADDRESS_LENGTH,
    MAX_SECONDS_TIMESTAMP,
    check_user,
    coordinate_problem,
    is_valid_timezone,
)

MAX_PAST_S = 12 * 3600
#: A mandatory break may be ended this soon after its start (undo of a mis-tap).
UNDO_WINDOW_S = 45
MAX_IDEMPOTENCY_KEY = 128


class PunchKind(StrEnum):
    CLOCK_IN = "clock_in"
    CLOCK_OUT = "clock_out"
    START_BREAK = "start_break"
    END_BREAK = "end_break"


class ActivityKind(StrEnum):
    SHIFT = "shift"
    BREAK = "break"


@dataclass(frozen=True, slots=True)
class PunchLocation:
    address: str
    latitude: float | None
    longitude: float | None
    accuracy: float | None = None


@dataclass(frozen=True, slots=True)
class PunchPoint:
    """One end of an activity."""

    timestamp: int
    timezone: str
    location: PunchLocation | None = None
    source: str = "api"
    geofence_id: str | None = None


@dataclass(frozen=True, slots=True)
class Activity:
    id: str
    time_clock_id: int
    user_id: int
    kind: ActivityKind
    start: PunchPoint
    end: PunchPoint | None
    job_id: str | None
    break_type_id: str | None = None
    scheduler_shift_id: str | None = None
    from_shift_id: str | None = None
    created_at: int = 0
    modified_at: int = 0
    notes: str | None = None

    @property
    def is_open(self) -> bool:
        return self.end is None


_KINDS = {k.value: k for k in ActivityKind}
_new_location = positional_builder(PunchLocation)
_new_point = positional_builder(PunchPoint)
_new_activity = positional_builder(Activity)


def _point(
    ts: int | None,
    tz: str | None,
    address: str | None,
    lat: float | None,
    lon: float | None,
    accuracy: float | None,
    source: str | None,
    geofence_id: str | None,
) -> PunchPoint | None:
    """One end of an :class:`ActivityRow` as a point (None for an open end,
    whose fields are all None; a present end has its zone and source)."""
    if ts is None:
        return None
    location = None
    if lat is not None or lon is not None or address is not None:
        location = _new_location(address or "", lat, lon, accuracy)
    return _new_point(ts, tz, location, source, geofence_id)


class ActivityRow(NamedTuple):
    """An activity as one flat tuple, in the order the store keeps its
    columns: a listed page of thousands is read and answered from these
    without the five objects of an :class:`Activity` apiece (bench/README.md,
    ListTimeActivities). ``activity()`` gives the object where logic needs it."""

    id: str
    time_clock_id: int
    user_id: int
    kind: str
    job_id: str | None
    break_type_id: str | None
    scheduler_shift_id: str | None
    from_shift_id: str | None
    start_ts: int
    start_tz: str
    start_address: str | None
    start_lat: float | None
    start_lon: float | None
    start_accuracy: float | None
    start_source: str
    start_geofence_id: str | None
    end_ts: int | None
    end_tz: str | None
    end_address: str | None
    end_lat: float | None
    end_lon: float | None
    end_accuracy: float | None
    end_source: str | None
    end_geofence_id: str | None
    created_at: int
    modified_at: int
    notes: str | None

    def activity(self) -> Activity:
        start = _point(*self[8:16])
        assert start is not None
        return _new_activity(
            self.id,
            self.time_clock_id,
            self.user_id,
            _KINDS[self.kind],
            start,
            _point(*self[16:24]),
            self.job_id,
            self.break_type_id,
            self.scheduler_shift_id,
            self.from_shift_id,
            self.created_at,
            self.modified_at,
            self.notes,
        )

    @staticmethod
    def of(a: Activity) -> ActivityRow:
        return ActivityRow._make(
            (
                a.id,
                a.time_clock_id,
                a.user_id,
                a.kind.value,
                a.job_id,
                a.break_type_id,
                a.scheduler_shift_id,
                a.from_shift_id,
                *point_fields(a.start),
                *point_fields(a.end),
                a.created_at,
                a.modified_at,
                a.notes,
            )
        )


#: One activity as totals read it: user, the column its seconds count in
#: (``WORKED``, ``PAID_BREAK`` or ``UNPAID_BREAK``), start, and end (an open
#: one's ``now``). ``ActivityRepository.spans`` gives them as rows of int64
#: arrays, so that totals never make a Python object an activity.
Span = tuple[int, int, int, int]
WORKED, PAID_BREAK, UNPAID_BREAK = 0, 1, 2


def span(
    user_id: int,
    kind: str,
    break_type_id: str | None,
    start: int,
    end: int | None,
    paid_breaks: Collection[str],
    now: int,
) -> Span:
    """The :data:`Span` of one activity, as the store makes it in its read."""
    if kind == ActivityKind.SHIFT.value:
        column = WORKED
    else:
        column = PAID_BREAK if break_type_id in paid_breaks else UNPAID_BREAK
    return user_id, column, start, now if end is None else end


#: One end of an :class:`ActivityRow`: timestamp, zone, address, latitude,
#: longitude, accuracy, source, geofence id (all None for an open end).
PointFields = tuple[
    int | None,
    str | None,
    str | None,
    float | None,
    float | None,
    float | None,
    str | None,
    str | None,
]


def point_fields(p: PunchPoint | None) -> PointFields:
    """A point as the eight flat fields of one end of an :class:`ActivityRow`."""
    if p is None:
        return (None,) * 8
    loc = p.location
    if loc is None:
        return (p.timestamp, p.timezone, None, None, None, None, p.source, p.geofence_id)
    return (
        p.timestamp,
        p.timezone,
        loc.address,
        loc.latitude,
        loc.longitude,
        loc.accuracy,
        p.source,
        p.geofence_id,
    )


@dataclass(frozen=True, slots=True)
class PunchCommand:
    """Any of the four punches, as the caller sent it (None: omitted)."""

    kind: PunchKind
    time_clock_id: int
    user_id: int
    timezone: str = ""
    location: PunchLocation | None = None
    timestamp: int | None = None
    job_id: str = ""
    scheduler_shift_id: str = ""
    manual_break_id: str = ""
    is_resume_shift: bool | None = None
    idempotency_key: str = ""


@dataclass(frozen=True, slots=True)
class PunchState:
    """What a punch needs to know about one user on one time clock, read at once."""

    open: Activity | None  # the open shift or break
    last_end: int | None  # the latest end of a completed activity
    day_status: DayStatus | None  # of the punch's timesheet day


@dataclass(frozen=True, slots=True)
class PunchResult:
    """What a punch did. ``activity`` is the shift or break it opened or closed."""

    activity: Activity
    closed_shift: Activity | None = None
    resumed_shift: Activity | None = None


def check_idempotency_key(key: str) -> None:
    if len(key) > MAX_IDEMPOTENCY_KEY:
        raise DomainError(
            ErrorCode.INVALID_ARGUMENT,
            f"idempotency_key is longer than {MAX_IDEMPOTENCY_KEY} characters",
        )


def punch_time(cmd: PunchCommand, now: float) -> int:
    """The punch's Unix second: the supplied one after the window rules, or now."""
    if cmd.timestamp is None:
        return int(now)
    ts = cmd.timestamp
    if ts > MAX_SECONDS_TIMESTAMP:
        raise DomainError(
            ErrorCode.INVALID_TIMESTAMP_FUTURE,
            f"timestamp {ts} is in the future; it looks like milliseconds, send Unix seconds",
            {"timestamp": str(ts)},
        )
    if ts > now:
        raise DomainError(
            ErrorCode.INVALID_TIMESTAMP_FUTURE,
            f"timestamp {ts} is {ts - now:.0f} s in the future",
            {"timestamp": str(ts), "serverTime": str(int(now))},
        )
    if now - ts > MAX_PAST_S:
        raise DomainError(
            ErrorCode.INVALID_TIMESTAMP_TOO_OLD,
            f"timestamp {ts} is {(now - ts) / 3600:.1f} hours in the past; the limit is 12 hours "
            "(record older punches as completed time activities)",
            {"timestamp": str(ts), "limitHours": "12"},
        )
    return ts


def punch_timezone(cmd: PunchCommand, tc: TimeClock) -> str:
    if not cmd.timezone:
        return tc.timezone
    if not is_valid_timezone(cmd.timezone):
        raise DomainError(
            ErrorCode.INVALID_TIMEZONE,
            f"{cmd.timezone!r} is not an IANA time zone name such as 'America/New_York'",
            {"timezone": cmd.timezone},
        )
    return cmd.timezone


def timesheet_day(ts: int, timezone: str) -> date:
    """The calendar date of a punch in its time zone."""
    return datetime.fromtimestamp(ts, UTC).astimezone(ZoneInfo(timezone)).date()


def check_day_open(day: date, status: DayStatus | None, user_id: int) -> None:
    if status in (DayStatus.LOCKED, DayStatus.APPROVED):
        raise DomainError(
            ErrorCode.HAS_LOCKED_DAYS,
            f"{day.isoformat()} is {status.value.lower()} for user {user_id}; "
            "unlock the day before punching on it",
            {"date": day.isoformat(), "status": status.value},
        )


def check_location(location: PunchLocation | None) -> None:
    """Coordinates are optional, but when given they come as a finite, in-range pair."""
    if location is None:
        return
    if len(location.address) > MAX_ADDRESS_LENGTH:
        raise DomainError(
            ErrorCode.INVALID_LOCATION,
            f"locationData.address is {len(location.address)} characters; "
            f"the limit is {MAX_ADDRESS_LENGTH}",
        )
    if (location.latitude is None) != (location.longitude is None):
        raise DomainError(
            ErrorCode.INVALID_LOCATION, "locationData needs both latitude and longitude, or neither"
        )
    if location.latitude is not None:
        for value, limit, name in (
            (location.latitude, 90.0, "latitude"),
            (location.longitude, 180.0, "longitude"),
        ):
            problem = coordinate_problem(value, limit, name)
            if problem:
                raise DomainError(ErrorCode.INVALID_LOCATION, f"locationData: {problem}")
    acc = location.accuracy
    if acc is not None and not (math.isfinite(acc) and acc >= 0):
        raise DomainError(ErrorCode.INVALID_LOCATION, f"locationData.accuracy {acc} must be >= 0")


def clock_in_job(tc: TimeClock, job_id: str) -> str | None:
    if not job_id:
        if tc.job_enforcement:
            raise DomainError(
                ErrorCode.JOB_REQUIRED,
                f"time clock {tc.id} requires a job (or sub-job) on clock-in",
                {"timeClockId": str(tc.id)},
            )
        return None
    if job_id not in tc.job_ids:
        raise DomainError(
            ErrorCode.JOB_NOT_FOUND,
            f"job {job_id!r} is not a job of time clock {tc.id}",
            {"jobId": job_id},
        )
    return job_id


def break_type(tc: TimeClock, manual_break_id: str) -> ManualBreakType:
    if not tc.manual_breaks_enabled:
        raise DomainError(
            ErrorCode.MANUAL_BREAKS_DISABLED,
            f"manual breaks are not enabled on time clock {tc.id}",
            {"timeClockId": str(tc.id)},
        )
    for bt in tc.manual_break_types:
        if bt.id == manual_break_id:
            return bt
    raise DomainError(
        ErrorCode.MANUAL_BREAK_NOT_FOUND,
        f"manual break {manual_break_id!r} does not exist on time clock {tc.id}",
        {"manualBreakId": manual_break_id},
    )


def check_start_after_history(ts: int, last_end: int | None) -> None:
    """A new activity may not begin inside or before a completed one."""
    if last_end is not None and ts < last_end:
        raise DomainError(
            ErrorCode.OVERLAPS_COMPLETED_ACTIVITY,
            f"timestamp {ts} falls before the end ({last_end}) of a completed shift or break",
            {"timestamp": str(ts), "completedEnd": str(last_end)},
        )


def check_end_after_start(ts: int, open_activity: Activity, live: bool = False) -> None:
    """A supplied timestamp must be after the open activity's start; a live
    punch (the server's time) may also fall in the same second, as a tap on
    "clock out" right after "clock in" does."""
    start = open_activity.start.timestamp
    if ts > start or (live and ts == start):
        return
    code = (
        ErrorCode.INVALID_TIMESTAMP_BEFORE_CLOCK_IN
        if open_activity.kind is ActivityKind.SHIFT
        else ErrorCode.INVALID_TIMESTAMP_BEFORE_START
    )
    raise DomainError(
        code,
        f"timestamp {ts} is not after the open {open_activity.kind.value}'s start "
        f"({open_activity.start.timestamp})",
        {"timestamp": str(ts), "startTimestamp": str(open_activity.start.timestamp)},
    )


def check_mandatory(bt: ManualBreakType | None, start: int, end: int) -> None:
    if bt is None or not bt.is_mandatory:
        return
    elapsed = end - start
    if UNDO_WINDOW_S < elapsed < bt.min_duration_s:
        raise DomainError(
            ErrorCode.MANDATORY_BREAK_TOO_SHORT,
            f"break {bt.name!r} is mandatory: it ran {elapsed} s of its {bt.min_duration_s} s "
            f"minimum (it can be undone only within {UNDO_WINDOW_S} s)",
            {
                "elapsedSeconds": str(elapsed),
                "minimumSeconds": str(bt.min_duration_s),
                "endableAt": str(start + bt.min_duration_s),
            },
        )


# -- The decision -------------------------------------------------------------
#
# A punch is judged in three steps, all pure: ``plan_punch`` checks what the
# command says on its own (user, zone, time, location, break type, job);
# the use case then reads the user's state (and, for the punch's point, the
# fence engine's verdict); ``decide_punch`` applies the state table and the
# rules that need the state, and answers what to write. The use case writes it.


@dataclass(frozen=True, slots=True)
class PointVerdict:
    """The fence engine's answer for one punch location, judged for one job.

    ``checked`` is False when the engine could not judge the point (its
    ``status`` then says why). ``fence_id`` is the applicable enabled fence the
    point is deepest inside (None when not allowed); ``distance_m`` is the
    signed geodesic distance to the boundary of the nearest applicable fence
    (negative inside, None when the clock has no applicable fence), and
    ``nearest_fence_id`` names that fence.
    """

    status: int
    inside: bool
    allowed: bool
    fence_id: str | None
    exit_action: int
    distance_m: float | None
    nearest_fence_id: str | None
    matched_fence_ids: tuple[str, ...]

    @property
    def checked(self) -> bool:
        return self.status == 0


@dataclass(frozen=True, slots=True)
class PunchPlan:
    """A punch command checked on its own, before any state is read."""

    cmd: PunchCommand
    time_clock: TimeClock
    timestamp: int
    timezone: str
    day: date
    job_id: str | None  # a clock-in's job
    break_type: ManualBreakType | None  # a break start's type


#: What the store says of a clock-in's ``scheduler_shift_id``: it names a shift
#: that admits the user, a shift that does not, or nothing.
SchedulerShiftCheck = Literal["ok", "not_assigned", "missing"]


@dataclass(frozen=True, slots=True)
class PunchDecision:
    """What a punch does: its answer, and the writes that make it so.

    ``closed`` are open activities as they are after the punch (with their
    end), to be closed in the store before ``added`` are inserted."""

    result: PunchResult
    closed: tuple[Activity, ...]
    added: tuple[Activity, ...]


def new_activity_id(kind: ActivityKind) -> str:
    return f"{kind.value}-{ordered_hex()}"


def activity_ids(n: int) -> Callable[[ActivityKind], str]:
    """:func:`new_activity_id` for a request of ``n`` activities: their
    random parts drawn at once (see :func:`ordered_hexes`), one at a time
    past ``n``."""
    drawn = iter(ordered_hexes(n))

    def new_id(kind: ActivityKind) -> str:
        part = next(drawn, None)
        return f"{kind.value}-{ordered_hex() if part is None else part}"

    return new_id


def plan_punch(tc: TimeClock, cmd: PunchCommand, now: float) -> PunchPlan:
    """The rules a punch command meets on its own, in the order a caller fixes them."""
    check_user(tc, cmd.user_id)
    tz = punch_timezone(cmd, tc)
    ts = punch_time(cmd, now)
    check_location(cmd.location)
    bt = break_type(tc, cmd.manual_break_id) if cmd.kind is PunchKind.START_BREAK else None
    job = clock_in_job(tc, cmd.job_id) if cmd.kind is PunchKind.CLOCK_IN else None
    return PunchPlan(cmd, tc, ts, tz, timesheet_day(ts, tz), job, bt)


def fence_job(plan: PunchPlan, state: PunchState) -> str | None:
    """The job a punch's location is judged for: a clock-in's own, else the open activity's."""
    if plan.cmd.kind is PunchKind.CLOCK_IN:
        return plan.job_id
    return state.open.job_id if state.open is not None else None


def has_point(location: PunchLocation | None) -> bool:
    return location is not None and location.latitude is not None and location.longitude is not None


def geofence_of(
    tc: TimeClock, location: PunchLocation | None, verdict: PointVerdict | None, job_id: str | None
) -> str | None:
    """Apply the time clock's geofence policy to a punch's point; return the
    geofence it is in. ``verdict`` is None when no engine judged the point."""
    if not has_point(location):
        if tc.geofence_policy is not GeofencePolicy.OFF:
            raise DomainError(
                ErrorCode.LOCATION_REQUIRED,
                f"time clock {tc.id} requires locationData with latitude and longitude",
                {"timeClockId": str(tc.id)},
            )
        return None
    if verdict is None:
        return None
    if not verdict.checked:
        raise DomainError(
            ErrorCode.INVALID_LOCATION, f"the location cannot be checked (status {verdict.status})"
        )
    if verdict.allowed or tc.geofence_policy is not GeofencePolicy.REQUIRE_INSIDE:
        return verdict.fence_id
    metadata = {"timeClockId": str(tc.id)}
    if verdict.distance_m is None:
        message = f"time clock {tc.id} has no enabled geofence" + (
            f" for job {job_id!r}" if job_id else ""
        )
    else:
        metadata["distanceMeters"] = f"{verdict.distance_m:.1f}"
        metadata["fenceId"] = verdict.nearest_fence_id or ""
        message = (
            f"the location is {verdict.distance_m:.1f} m outside the nearest applicable "
            f"geofence {verdict.nearest_fence_id}"
        )
    raise DomainError(ErrorCode.OUTSIDE_GEOFENCE, message, metadata)


def check_scheduler_shift(shift_id: str, user_id: int, found: SchedulerShiftCheck) -> None:
    """SCHEDULER_SHIFT_NOT_FOUND unless the shift exists and admits the user."""
    if found == "ok":
        return
    raise DomainError(
        ErrorCode.SCHEDULER_SHIFT_NOT_FOUND,
        f"no scheduled shift {shift_id!r} for user {user_id}"
        + (" (the user is not assigned to it)" if found == "not_assigned" else ""),
        {"schedulerShiftId": shift_id, "userId": str(user_id)},
    )


def decide_punch(
    plan: PunchPlan,
    state: PunchState,
    verdict: PointVerdict | None,
    now: float,
    scheduler_shift: SchedulerShiftCheck = "ok",
    new_id: Callable[[ActivityKind], str] = new_activity_id,
) -> PunchDecision:
    """The state table and the rules that need the state, for a planned punch.

    ``verdict`` is the engine's answer for the punch's point judged for
    ``fence_job(plan, state)`` (None: no point, or no engine); ``now`` stamps
    the activities' creation and modification times."""
    cmd, tc, ts = plan.cmd, plan.time_clock, plan.timestamp
    current = state.open
    stamp = int(now)
    live = cmd.timestamp is None

    def point(fence: str | None) -> PunchPoint:
        return PunchPoint(ts, plan.timezone, cmd.location, "api", fence)

    def opened(kind: ActivityKind, fence: str | None, **kw: object) -> Activity:
        return Activity(
            id=new_id(kind),
            time_clock_id=tc.id,
            user_id=cmd.user_id,
            kind=kind,
            start=point(fence),
            end=None,
            created_at=stamp,
            modified_at=stamp,
            **kw,  # type: ignore[arg-type]
        )

    def closed(activity: Activity, fence: str | None) -> Activity:
        return replace(activity, end=point(fence), modified_at=stamp)

    def fence(job_id: str | None) -> str | None:
        return geofence_of(tc, cmd.location, verdict, job_id)

    def check_day() -> None:
        check_day_open(plan.day, state.day_status, cmd.user_id)

    if cmd.kind is PunchKind.CLOCK_IN:
        if current is not None:
            _already(current)
        check_start_after_history(ts, state.last_end)
        check_day()
        if cmd.scheduler_shift_id:
            check_scheduler_shift(cmd.scheduler_shift_id, cmd.user_id, scheduler_shift)
        shift = opened(
            ActivityKind.SHIFT,
            fence(plan.job_id),
            job_id=plan.job_id,
            scheduler_shift_id=cmd.scheduler_shift_id or None,
        )
        return PunchDecision(PunchResult(shift), (), (shift,))
    if cmd.kind is PunchKind.CLOCK_OUT:
        if current is None or current.kind is not ActivityKind.SHIFT:
            raise DomainError(
                ErrorCode.NO_OPEN_SHIFT,
                f"user {cmd.user_id} has no open shift on time clock {tc.id}"
                + (" (a manual break is open)" if current is not None else ""),
            )
        check_end_after_start(ts, current, live)
        check_day()
        done = closed(current, fence(current.job_id))
        return PunchDecision(PunchResult(done), (done,), ())
    if cmd.kind is PunchKind.START_BREAK:
        assert plan.break_type is not None
        if current is not None and current.kind is ActivityKind.BREAK:
            raise DomainError(
                ErrorCode.ALREADY_ON_BREAK,
                f"user {cmd.user_id} is already on a manual break on time clock {tc.id}",
                {"breakId": current.id},
            )
        if current is not None:
            check_end_after_start(ts, current, live)
        else:
            check_start_after_history(ts, state.last_end)
        check_day()
        job_of_shift = current.job_id if current is not None else None
        where = fence(job_of_shift)
        shift_closed = closed(current, where) if current is not None else None
        brk = opened(
            ActivityKind.BREAK,
            where,
            job_id=job_of_shift,
            scheduler_shift_id=current.scheduler_shift_id if current is not None else None,
            break_type_id=plan.break_type.id,
            from_shift_id=current.id if current is not None else None,
        )
        return PunchDecision(
            PunchResult(brk, closed_shift=shift_closed),
            () if shift_closed is None else (shift_closed,),
            (brk,),
        )
    # END_BREAK
    if current is None or current.kind is not ActivityKind.BREAK:
        raise DomainError(
            ErrorCode.NO_OPEN_BREAK,
            f"user {cmd.user_id} has no open manual break on time clock {tc.id}",
        )
    check_end_after_start(ts, current, live)
    check_mandatory(_break_type_of(tc, current), current.start.timestamp, ts)
    check_day()
    where = fence(current.job_id)
    ended = closed(current, where)
    resumed = None
    if cmd.is_resume_shift is not False and current.from_shift_id is not None:
        resumed = opened(
            ActivityKind.SHIFT,
            where,
            job_id=current.job_id,
            scheduler_shift_id=current.scheduler_shift_id,
        )
    return PunchDecision(
        PunchResult(ended, resumed_shift=resumed),
        (ended,),
        () if resumed is None else (resumed,),
    )


def _already(current: Activity) -> None:
    if current.kind is ActivityKind.SHIFT:
        raise DomainError(
            ErrorCode.ALREADY_CLOCKED_IN,
            f"user {current.user_id} already has an open shift on time clock "
            f"{current.time_clock_id} since {current.start.timestamp}",
            {"shiftId": current.id},
        )
    raise DomainError(
        ErrorCode.OPEN_BREAK,
        f"user {current.user_id} is on a manual break; end it before clocking in",
        {"breakId": current.id},
    )


def _break_type_of(tc: TimeClock, brk: Activity) -> ManualBreakType | None:
    return next((b for b in tc.manual_break_types if b.id == brk.break_type_id), None)
