"""The punch lifecycle: shifts and manual breaks of one user on one time clock.

State per (time clock, user) is *idle*, *on shift* or *on break*; at most one
activity is open. Activities of one (time clock, user) never overlap: every new
start is at or after the end of the latest completed one (intervals are
half-open), and every end is after its start.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, date, datetime
from enum import StrEnum
from zoneinfo import ZoneInfo

from geopunch.domain.errors import DomainError, ErrorCode
from geopunch.domain.models import DayStatus, ManualBreakType, TimeClock
from geopunch.domain.rules import coordinate_problem, is_valid_timezone

MAX_PAST_S = 12 * 3600
#: A mandatory break may be ended this soon after its start (undo of a mis-tap).
UNDO_WINDOW_S = 45
#: Larger timestamps are milliseconds sent by mistake.
MAX_SECONDS_TIMESTAMP = 100_000_000_000
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

    @property
    def is_open(self) -> bool:
        return self.end is None


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


def check_end_after_start(ts: int, open_activity: Activity) -> None:
    if ts > open_activity.start.timestamp:
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
