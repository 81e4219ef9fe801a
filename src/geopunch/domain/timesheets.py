"""Time activities and the read side of a timesheet.

A time activity is a completed shift or manual break recorded after the fact
(an import, or a punch older than the live window), or a correction of one.
It meets the punch rules that still make sense for the past (user, jobs,
break types, zones, locations, locked days) and one more: no two activities of
a user on a time clock overlap, open ones included (intervals are half-open,
an open one runs to infinity). The checks are pure; the use case reads the
stored activities they need and writes what they answer.

The read side lists a time clock's activities in a window, totals them per
user and calendar day, and tells who is on the clock now.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence, Sized
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from typing import Any, NamedTuple, Protocol
from zoneinfo import ZoneInfo

import numpy as np

from geopunch.domain.builders import positional_builder
from geopunch.domain.errors import DomainError, ErrorCode, FieldViolation
from geopunch.domain.events import Event, EventType, Json
from geopunch.domain.models import DayStatus, ManualBreakType, TimeClock
from geopunch.domain.punches import (
    Activity,
    ActivityKind,
    ActivityRow,
    PunchKind,
    PunchLocation,
    PunchPoint,
    PunchResult,
    SchedulerShiftCheck,
    break_type,
    check_location,
    clock_in_job,
    timesheet_day,
)
from geopunch.domain.rules import (
    MAX_ID_LENGTH,
    MAX_SECONDS_TIMESTAMP,
    Collector,
    check_user,
    is_valid_timezone,
    long_id_violations,
)

MAX_ACTIVITIES_PER_REQUEST = 1000
MAX_ACTIVITY_S = 24 * 3600
MAX_NOTES_LENGTH = 2000
#: The widest window ListTimeActivities answers for.
MAX_LIST_WINDOW_S = 92 * 24 * 3600
MAX_PAGE_SIZE = 10_000
DEFAULT_PAGE_SIZE = 1000
#: Users one GetUserStatuses or ListTimeActivities call may name.
MAX_LISTED_USERS = 10_000
MAX_LISTED_JOBS = 1000
#: Source type of the start and end of every time activity.
TIME_ACTIVITY_SOURCE = "timeActivity"


# -- What a caller sends --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PointDraft:
    """One end of a time activity as sent; an empty zone is the time clock's."""

    timestamp: int
    timezone: str = ""
    location: PunchLocation | None = None


@dataclass(frozen=True, slots=True)
class ShiftDraft:
    start: PointDraft
    end: PointDraft
    job_id: str = ""
    scheduler_shift_id: str = ""
    notes: str = ""


@dataclass(frozen=True, slots=True)
class BreakDraft:
    manual_break_id: str
    start: PointDraft
    end: PointDraft
    notes: str = ""


@dataclass(frozen=True, slots=True)
class UserActivities:
    """The completed shifts and breaks of one user in a create request."""

    user_id: int
    shifts: tuple[ShiftDraft, ...] = ()
    manual_breaks: tuple[BreakDraft, ...] = ()


@dataclass(frozen=True, slots=True)
class Correction:
    """UpdateTimeActivity: the activity's new values, for the ``modified_at`` read."""

    activity_id: str
    modified_at: int
    start: PointDraft
    end: PointDraft
    job_id: str = ""
    manual_break_id: str = ""
    scheduler_shift_id: str = ""
    notes: str = ""


@dataclass(frozen=True, slots=True)
class Planned:
    """An activity checked on its own, with the request path its problems are named by."""

    path: str
    activity: Activity


class _Group(Protocol):
    """One user's part of a request: the domain's, or a message of an API."""

    @property
    def shifts(self) -> Sized: ...
    @property
    def manual_breaks(self) -> Sized: ...


def _activities_in(group: _Group) -> int:
    return len(group.shifts) + len(group.manual_breaks)


def count_activities(groups: Iterable[_Group]) -> int:
    return sum(map(_activities_in, groups))


def check_activity_counts(groups: int, activities: int, prefix: str = "time_activities") -> None:
    """BATCH_TOO_LARGE for more users' entries or activities than a request
    takes: by the rules, and by an API before it converts any of them."""
    for count, what in ((groups, "users' entries"), (activities, "activities")):
        if count > MAX_ACTIVITIES_PER_REQUEST:
            said = f"{count} {what} sent; the limit is {MAX_ACTIVITIES_PER_REQUEST} per request"
            violation = FieldViolation(prefix, said, ErrorCode.BATCH_TOO_LARGE)
            raise DomainError.from_violations([violation], "the time activities")


def check_activity_batch(
    groups: Sequence[Any], activities_in: Callable[[Any], int] = _activities_in
) -> None:
    """A request's users' entries counted by their number before any is read,
    then their activities all told (``activities_in`` one entry's, as an API
    holds it): what each API checks before it converts any activity."""
    check_activity_counts(len(groups), 0)
    check_activity_counts(len(groups), sum(map(activities_in, groups)))


# -- Checks of a request on its own -------------------------------------------


def plan_time_activities(
    tc: TimeClock,
    groups: Sequence[UserActivities],
    now: float,
    out: Collector,
    new_id: Callable[[ActivityKind], str],
    prefix: str = "time_activities",
) -> list[Planned]:
    """Every activity of the request checked on its own; the problems go to
    ``out`` and the activities without any are returned."""
    total = count_activities(groups)
    check_activity_counts(len(groups), total, prefix)
    if total == 0:
        out.add(
            prefix, ErrorCode.INVALID_ARGUMENT, "at least one shift or manual break is required"
        )
    planned: list[Planned] = []
    stamp = int(now)
    for i, group in enumerate(groups):
        path = f"{prefix}[{i}]"
        if not _rule(out, f"{path}.user_id", check_user, tc, group.user_id):
            continue
        for j, s in enumerate(group.shifts):
            at = f"{path}.shifts[{j}]"
            a = _plan_shift(tc, group.user_id, s, now, out, at, new_id(ActivityKind.SHIFT), stamp)
            if a is not None:
                planned.append(Planned(at, a))
        for j, b in enumerate(group.manual_breaks):
            at = f"{path}.manual_breaks[{j}]"
            a = _plan_break(tc, group.user_id, b, now, out, at, new_id(ActivityKind.BREAK), stamp)
            if a is not None:
                planned.append(Planned(at, a))
    return planned


def plan_correction(
    tc: TimeClock, current: Activity, change: Correction, now: float, out: Collector
) -> Activity | None:
    """The corrected activity (same id, kind and user), or None with its problems in ``out``."""
    check_version(current, change.modified_at, "change")
    if current.kind is ActivityKind.SHIFT:
        if change.manual_break_id:
            out.add("manual_break_id", ErrorCode.INVALID_ARGUMENT, "a shift has no break type")
        draft = ShiftDraft(
            change.start, change.end, change.job_id, change.scheduler_shift_id, change.notes
        )
        planned = _plan_shift(tc, current.user_id, draft, now, out, "", current.id)
    else:
        if change.job_id or change.scheduler_shift_id:
            out.add(
                "job_id",
                ErrorCode.INVALID_ARGUMENT,
                "a break's job and scheduler shift are those of the shift it follows",
            )
        draft_b = BreakDraft(change.manual_break_id, change.start, change.end, change.notes)
        planned = _plan_break(tc, current.user_id, draft_b, now, out, "", current.id)
    if planned is None:
        return None
    return replace(
        planned,
        created_at=current.created_at,
        # Strictly later than the value read, so a second change based on it
        # is refused even within the same second.
        modified_at=max(int(now), current.modified_at + 1),
    )


def check_version(current: Activity, read_modified_at: int, what: str) -> None:
    """STALE_MODIFIED_AT unless ``current`` is still the version the caller read."""
    if read_modified_at != current.modified_at:
        raise DomainError(
            ErrorCode.STALE_MODIFIED_AT,
            f"activity {current.id} was modified at {current.modified_at}, after the "
            f"{read_modified_at} this {what} was based on; read it again",
            {"activityId": current.id, "modifiedAt": str(current.modified_at)},
        )


def check_completed(current: Activity) -> None:
    if current.is_open:
        raise DomainError(
            ErrorCode.TIME_ACTIVITY_OPEN,
            f"{current.kind.value} {current.id} is still open; end it with a punch first",
            {"activityId": current.id},
        )


def _rule(out: Collector, path: str, check: Callable[..., object], *args: object) -> bool:
    """Run one of the punch rules (which raise) and keep its refusal as a
    violation at ``path``: a time activity meets the very rules a punch does."""
    try:
        check(*args)
    except DomainError as err:
        out.add(path, err.code, err.message)
        return False
    return True


def _point(
    tc: TimeClock, p: PointDraft, now: float, out: Collector, path: str
) -> PunchPoint | None:
    ok = True
    ts = p.timestamp
    if ts <= 0:
        out.add(f"{path}.timestamp", ErrorCode.INVALID_ARGUMENT, "a positive Unix time in seconds")
        ok = False
    elif ts > MAX_SECONDS_TIMESTAMP:
        out.add(
            f"{path}.timestamp",
            ErrorCode.TIMESTAMP_NOT_SECONDS,
            f"{ts} looks like milliseconds; send Unix seconds",
        )
        ok = False
    elif ts > now:
        out.add(
            f"{path}.timestamp",
            ErrorCode.INVALID_TIMESTAMP_FUTURE,
            f"{ts} is {ts - now:.0f} s in the future; a time activity is completed",
        )
        ok = False
    zone = p.timezone or tc.timezone
    if not is_valid_timezone(zone):
        out.add(
            f"{path}.timezone",
            ErrorCode.INVALID_TIMEZONE,
            f"{zone[:64]!r} is not an IANA time zone name such as 'America/New_York'",
        )
        ok = False
    ok = _rule(out, f"{path}.location_data", check_location, p.location) and ok
    return PunchPoint(ts, zone, p.location, TIME_ACTIVITY_SOURCE, None) if ok else None


def _span(
    tc: TimeClock,
    start: PointDraft,
    end: PointDraft,
    now: float,
    out: Collector,
    path: str,
    what: str,
) -> tuple[PunchPoint, PunchPoint] | None:
    dot = "." if path else ""
    s = _point(tc, start, now, out, f"{path}{dot}start")
    e = _point(tc, end, now, out, f"{path}{dot}end")
    if s is None or e is None:
        return None
    if e.timestamp <= s.timestamp:
        out.add(
            f"{path}{dot}end.timestamp",
            ErrorCode.INVALID_TIME_RANGE,
            f"the end ({e.timestamp}) must be after the start ({s.timestamp})",
        )
        return None
    if e.timestamp - s.timestamp > MAX_ACTIVITY_S:
        out.add(
            f"{path}{dot}end.timestamp",
            ErrorCode.SHIFT_TOO_LONG,
            f"the {what} lasts {(e.timestamp - s.timestamp) / 3600:.1f} hours; "
            "the limit is 24 hours",
        )
        return None
    return s, e


def _notes(notes: str, out: Collector, path: str) -> bool:
    if len(notes) > MAX_NOTES_LENGTH:
        dot = "." if path else ""
        out.add(
            f"{path}{dot}notes",
            ErrorCode.INVALID_ARGUMENT,
            f"notes are {len(notes)} characters; the limit is {MAX_NOTES_LENGTH}",
        )
        return False
    return True


def _plan_shift(
    tc: TimeClock,
    user_id: int,
    d: ShiftDraft,
    now: float,
    out: Collector,
    path: str,
    activity_id: str,
    stamp: int = 0,
) -> Activity | None:
    def refs(at: str) -> dict[str, str | None] | None:
        ok = _rule(out, f"{at}job_id", clock_in_job, tc, d.job_id)
        if len(d.scheduler_shift_id) > MAX_ID_LENGTH:
            out.add(f"{at}scheduler_shift_id", ErrorCode.INVALID_ARGUMENT, "id too long")
            ok = False
        return (
            {"job_id": d.job_id or None, "scheduler_shift_id": d.scheduler_shift_id or None}
            if ok
            else None
        )

    return _plan(
        tc,
        user_id,
        ActivityKind.SHIFT,
        d.start,
        d.end,
        d.notes,
        now,
        out,
        path,
        refs,
        activity_id,
        stamp,
    )


def _plan_break(
    tc: TimeClock,
    user_id: int,
    d: BreakDraft,
    now: float,
    out: Collector,
    path: str,
    activity_id: str,
    stamp: int = 0,
) -> Activity | None:
    def refs(at: str) -> dict[str, str | None] | None:
        ok = _rule(out, f"{at}manual_break_id", break_type, tc, d.manual_break_id)
        return {"break_type_id": d.manual_break_id} if ok else None

    return _plan(
        tc,
        user_id,
        ActivityKind.BREAK,
        d.start,
        d.end,
        d.notes,
        now,
        out,
        path,
        refs,
        activity_id,
        stamp,
    )


def _plan(
    tc: TimeClock,
    user_id: int,
    kind: ActivityKind,
    start: PointDraft,
    end: PointDraft,
    notes: str,
    now: float,
    out: Collector,
    path: str,
    refs: Callable[[str], dict[str, str | None] | None],
    activity_id: str,
    stamp: int,
) -> Activity | None:
    """One activity checked on its own: its span, then what it refers to
    (``refs`` checks those at the path prefix given, and returns the
    activity's fields for them, or None), then its notes."""
    span = _span(tc, start, end, now, out, path, kind.value)
    fields = refs(f"{path}." if path else "")
    notes_ok = _notes(notes, out, path)
    if span is None or fields is None or not notes_ok:
        return None
    return Activity(
        id=activity_id,
        time_clock_id=tc.id,
        user_id=user_id,
        kind=kind,
        start=span[0],
        end=span[1],
        job_id=fields.get("job_id"),
        break_type_id=fields.get("break_type_id"),
        scheduler_shift_id=fields.get("scheduler_shift_id"),
        created_at=stamp,
        modified_at=stamp,
        notes=notes or None,
    )


# -- Checks against what is stored --------------------------------------------


def touched_days(a: Activity) -> list[date]:
    """The timesheet days an activity touches: from its start's date to its
    end's (or only the start's, while open), each in its own zone."""
    first = timesheet_day(a.start.timestamp, a.start.timezone)
    last = timesheet_day(a.end.timestamp, a.end.timezone) if a.end is not None else first
    days = [first]
    while days[-1] < last:
        days.append(days[-1] + timedelta(days=1))
    return days


def span_of(planned: Iterable[Activity]) -> tuple[int, int]:
    """The smallest [lo, hi) that holds every one of ``planned`` (all completed)."""
    items = list(planned)
    lo = min(a.start.timestamp for a in items)
    hi = max(a.end.timestamp for a in items if a.end is not None)
    return lo, hi


def judge_against_store(
    planned: Sequence[Planned],
    stored: Mapping[int, Sequence[Activity]],
    days: Mapping[int, Mapping[date, DayStatus]],
    scheduler_shifts: Mapping[tuple[str, int], SchedulerShiftCheck],
    out: Collector,
) -> list[Activity]:
    """The planned activities as they are written, after the rules that need
    the store: no overlap (with each other and with ``stored``, the user's
    activities near them, the one corrected left out), no locked or approved
    day, scheduler shifts that exist and admit the user; a break that starts
    when a shift of its user ends is attributed to that shift."""
    by_user: dict[int, list[Planned]] = {}
    for p in planned:
        by_user.setdefault(p.activity.user_id, []).append(p)
    result: dict[str, Activity] = {}
    for user, items in by_user.items():
        _check_overlaps(items, stored.get(user, ()), out)
        statuses = days.get(user, {})
        ending: dict[int, Activity] = {}
        for a in [*stored.get(user, ()), *(p.activity for p in items)]:
            if a.kind is ActivityKind.SHIFT and a.end is not None:
                ending[a.end.timestamp] = a
        for p in items:
            a = p.activity
            dot = "." if p.path else ""
            locked = locked_day(a, statuses)
            if locked is not None:
                out.add(
                    p.path or "start",
                    ErrorCode.HAS_LOCKED_DAYS,
                    f"{locked[0].isoformat()} is {locked[1].value.lower()} for user {user}; "
                    "unlock the day first",
                )
            if a.scheduler_shift_id:
                found = scheduler_shifts.get((a.scheduler_shift_id, user), "missing")
                if found != "ok":
                    out.add(
                        f"{p.path}{dot}scheduler_shift_id",
                        ErrorCode.SCHEDULER_SHIFT_NOT_FOUND,
                        f"no scheduled shift {a.scheduler_shift_id!r} for user {user}"
                        + (" (the user is not assigned to it)" if found == "not_assigned" else ""),
                    )
            shift = ending.get(a.start.timestamp) if a.kind is ActivityKind.BREAK else None
            if shift is not None:
                a = replace(
                    a,
                    job_id=shift.job_id,
                    scheduler_shift_id=shift.scheduler_shift_id,
                    from_shift_id=shift.id,
                )
            result[a.id] = a
    return [result[p.activity.id] for p in planned]


def reattributed_breaks(
    shift_id: str, shift: Activity | None, nearby: Iterable[Activity], stamp: int
) -> list[tuple[Activity, Activity]]:
    """The completed breaks whose attribution changes when the completed shift
    ``shift_id`` is corrected into ``shift`` (None: deleted), as (before,
    after) pairs: one that followed it and no longer starts as it ends loses
    its job and scheduler shift; one that starts as it now ends takes them
    (the creation rule, kept true after corrections). Open breaks change by
    punches only."""
    end = shift.end.timestamp if shift is not None and shift.end is not None else None
    changed = []
    for b in nearby:
        if b.kind is not ActivityKind.BREAK or b.end is None:
            continue
        after = b
        if shift is not None and b.start.timestamp == end:
            after = replace(
                b,
                job_id=shift.job_id,
                scheduler_shift_id=shift.scheduler_shift_id,
                from_shift_id=shift_id,
            )
        elif b.from_shift_id == shift_id:
            after = replace(b, job_id=None, scheduler_shift_id=None, from_shift_id=None)
        if after != b:
            changed.append((b, replace(after, modified_at=max(stamp, b.modified_at + 1))))
    return changed


def locked_day(a: Activity, statuses: Mapping[date, DayStatus]) -> tuple[date, DayStatus] | None:
    """The first locked or approved day the activity touches, with its status."""
    if not statuses:  # most users have no day closed: no dates to work out
        return None
    for day in touched_days(a):
        status = statuses.get(day)
        if status is DayStatus.LOCKED or status is DayStatus.APPROVED:
            return day, status
    return None


_INFINITY = 2**63 - 1


def _check_overlaps(items: Sequence[Planned], stored: Sequence[Activity], out: Collector) -> None:
    """Name every planned activity that overlaps another one of the same user."""
    # (start, end, path or None for a stored one, activity); empty intervals
    # (a live clock-out in the second of its clock-in) overlap nothing.
    spans: list[tuple[int, int, str | None, Activity]] = [
        (p.activity.start.timestamp, _end(p.activity), p.path, p.activity) for p in items
    ]
    spans += [(a.start.timestamp, _end(a), None, a) for a in stored]
    spans = [s for s in spans if s[1] > s[0]]
    spans.sort(key=lambda s: (s[0], s[1]))
    latest = None  # the span seen so far that ends last
    for span in spans:
        if latest is not None and span[0] < latest[1]:
            if span[2] is not None:
                out.add(span[2] or "start", ErrorCode.OVERLAPS_COMPLETED_ACTIVITY, _clash(latest))
            elif latest[2] is not None:
                out.add(latest[2] or "start", ErrorCode.OVERLAPS_COMPLETED_ACTIVITY, _clash(span))
        if latest is None or span[1] > latest[1]:
            latest = span


def _end(a: Activity) -> int:
    return a.end.timestamp if a.end is not None else _INFINITY


def _clash(other: tuple[int, int, str | None, Activity]) -> str:
    start, end, path, a = other
    what = "shift" if a.kind is ActivityKind.SHIFT else "manual break"
    if path is not None:
        return f"overlaps {path or 'the corrected activity'}, a {what} [{start}, {end})"
    if a.end is None:
        return f"overlaps the open {what} {a.id} (since {start})"
    return f"overlaps the stored {what} {a.id} [{start}, {end})"


# -- Events -------------------------------------------------------------------


def activity_json(a: Activity) -> dict[str, Json]:
    """An activity as event payloads carry it (the JSON mapping's names)."""
    return activity_row_json(ActivityRow.of(a))


def activity_row_json(r: ActivityRow) -> dict[str, Json]:
    """``activity_json`` from the flat row: a listed page answers thousands
    without making the objects of an Activity apiece. The row is unpacked
    once, not sliced per end: a third of the time of building a page's
    10,000 dicts (bench/README.md, HTTP list)."""
    (
        id_, time_clock_id, user_id, kind, job_id, break_type_id, scheduler_shift_id, from_shift,
        s_ts, s_tz, s_addr, s_lat, s_lon, s_acc, s_src, s_fence,
        e_ts, e_tz, e_addr, e_lat, e_lon, e_acc, e_src, e_fence,
        created_at, modified_at, notes,
    ) = r  # fmt: skip
    return {
        "id": id_,
        "kind": "shift" if kind == _SHIFT else "manualBreak",
        "timeClockId": time_clock_id,
        "userId": user_id,
        "start": _point_json(s_ts, s_tz, s_addr, s_lat, s_lon, s_acc, s_src, s_fence),
        "end": _point_json(e_ts, e_tz, e_addr, e_lat, e_lon, e_acc, e_src, e_fence),
        "isOpen": e_ts is None,
        "jobId": job_id,
        "manualBreakId": break_type_id,
        "schedulerShiftId": scheduler_shift_id,
        "isSwitchFromShift": from_shift is not None,
        "notes": notes,
        "createdAt": created_at,
        "modifiedAt": modified_at,
    }


_SHIFT = ActivityKind.SHIFT.value


def _point_json(
    ts: int | None,
    tz: str | None,
    address: str | None,
    lat: float | None,
    lon: float | None,
    accuracy: float | None,
    source: str | None,
    geofence_id: str | None,
) -> Json:
    """One end of a row (``point_fields``' order); None for an open end. A
    location is there when any of its address and coordinates is, as the
    row's ``activity()`` reads it."""
    if ts is None:
        return None
    return {
        "timestamp": ts,
        "timezone": tz,
        "locationData": {
            "address": address or "",
            "latitude": lat,
            "longitude": lon,
            "accuracy": accuracy,
        }
        if address is not None or lat is not None or lon is not None
        else None,
        "source": {"type": source},
        "geofenceId": geofence_id,
    }


def activity_event(
    kind: EventType, now: int, before: Activity | None, after: Activity | None
) -> Event:
    """One event of a created, corrected or deleted activity, with its values
    before and after the change (None where there is none)."""
    a = after if after is not None else before
    assert a is not None
    payload: dict[str, Json] = {
        "activityId": a.id,
        "timeClockId": a.time_clock_id,
        "userId": a.user_id,
        "before": activity_json(before) if before is not None else None,
        "after": activity_json(after) if after is not None else None,
    }
    return Event(kind.value, now, payload, a.user_id, a.time_clock_id)


def punch_events(kind: PunchKind, result: PunchResult) -> list[Event]:
    """The events of a punch: what a payroll or HR system needs to follow a
    timesheet without reading it back. A break taken from a shift closes the
    shift without a ``clockOut`` (the user did not clock out); ending it
    opens the next shift with ``shiftResumed``."""

    def event(kind: EventType, a: Activity, at: PunchPoint, **extra: Json) -> Event:
        payload: dict[str, Json] = {
            "activityId": a.id,
            "timeClockId": a.time_clock_id,
            "userId": a.user_id,
            "timestamp": at.timestamp,
            "jobId": a.job_id,
            "schedulerShiftId": a.scheduler_shift_id,
            "geofenceId": at.geofence_id,
            **extra,
            "activity": activity_json(a),
        }
        return Event(kind.value, at.timestamp, payload, a.user_id, a.time_clock_id)

    a = result.activity
    if kind is PunchKind.CLOCK_IN:
        return [event(EventType.CLOCK_IN, a, a.start)]
    if kind is PunchKind.CLOCK_OUT:
        assert a.end is not None
        return [event(EventType.CLOCK_OUT, a, a.end)]
    if kind is PunchKind.START_BREAK:
        shift = result.closed_shift
        return [
            event(
                EventType.BREAK_STARTED,
                a,
                a.start,
                manualBreakId=a.break_type_id,
                shiftId=shift.id if shift is not None else None,
            )
        ]
    assert a.end is not None
    resumed = result.resumed_shift
    out = [
        event(
            EventType.BREAK_ENDED,
            a,
            a.end,
            manualBreakId=a.break_type_id,
            resumedShiftId=resumed.id if resumed is not None else None,
        )
    ]
    if resumed is not None:
        out.append(event(EventType.SHIFT_RESUMED, resumed, resumed.start, breakId=a.id))
    return out


# -- Listing ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ListQuery:
    time_clock_id: int
    start_time: int
    end_time: int
    user_ids: tuple[int, ...] = ()
    job_ids: tuple[str, ...] = ()
    page_size: int = 0
    page_token: str = ""
    include_totals: bool = False


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a page ends: the last listed activity's start and id."""

    start_ts: int
    activity_id: str


def check_list_query(q: ListQuery) -> tuple[int, Cursor | None]:
    """The page size to use and the cursor to resume after, or INVALID_ARGUMENT."""
    out = Collector()
    if q.end_time <= q.start_time or q.end_time - q.start_time > MAX_LIST_WINDOW_S:
        out.add(
            "end_time",
            ErrorCode.INVALID_ARGUMENT,
            f"the window [{q.start_time}, {q.end_time}) must be non-empty and at most "
            f"{MAX_LIST_WINDOW_S // 86400} days long",
        )
    if not 0 <= q.page_size <= MAX_PAGE_SIZE:
        out.add("page_size", ErrorCode.INVALID_ARGUMENT, f"from 1 to {MAX_PAGE_SIZE} (0: default)")
    if len(q.user_ids) > MAX_LISTED_USERS:
        out.add("user_ids", ErrorCode.BATCH_TOO_LARGE, f"at most {MAX_LISTED_USERS} users")
    if len(q.job_ids) > MAX_LISTED_JOBS:
        out.add("job_ids", ErrorCode.BATCH_TOO_LARGE, f"at most {MAX_LISTED_JOBS} jobs")
    out.violations += long_id_violations(q.job_ids, "job_ids")
    cursor = None
    if q.page_token:
        cursor = _decode_cursor(q.page_token, _query_digest(q))
        if cursor is None:
            out.add(
                "page_token",
                ErrorCode.INVALID_ARGUMENT,
                "not a token this listing gave (a token is valid only with the query "
                "that produced it)",
            )
    out.raise_if_any("the listing")
    return q.page_size or DEFAULT_PAGE_SIZE, cursor


def next_page_token(q: ListQuery, start_ts: int, activity_id: str) -> str:
    """The cursor after the listed activity that starts at ``start_ts``."""
    body = json.dumps([start_ts, activity_id, _query_digest(q)], separators=(",", ":"))
    return base64.urlsafe_b64encode(body.encode()).decode().rstrip("=")


def _query_digest(q: ListQuery) -> str:
    key = [q.time_clock_id, q.start_time, q.end_time, sorted(q.user_ids), sorted(q.job_ids)]
    return hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]


def _decode_cursor(token: str, digest: str) -> Cursor | None:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        start, activity_id, stored_digest = json.loads(raw)
    except (binascii.Error, ValueError, TypeError):
        return None
    # A token is the client's to forge: its digest is of the query alone. So
    # what it holds is bounded as the store needs it (a bool is an int to
    # Python, 10**30 is past int64, NUL and surrogates are text no store
    # holds), not trusted because the digest matched.
    if (
        stored_digest != digest
        or type(start) is not int
        or not -(2**63) <= start < 2**63
        or not isinstance(activity_id, str)
        or not activity_id.isascii()
        or not activity_id.isprintable()
        or len(activity_id) > MAX_ID_LENGTH
    ):
        return None
    return Cursor(start, activity_id)


@dataclass(frozen=True, slots=True)
class DayTotals:
    day: date
    worked_s: int = 0
    paid_break_s: int = 0
    unpaid_break_s: int = 0


_new_day = positional_builder(DayTotals)


@dataclass(frozen=True, slots=True)
class UserTotals:
    user_id: int
    worked_s: int
    paid_break_s: int
    unpaid_break_s: int
    days: tuple[DayTotals, ...]


@dataclass(frozen=True, slots=True, eq=False)
class WindowTotals:
    """A window's totals as columns: every user with an activity (ascending)
    and the window's sums of each, then each (user, day) that counted a
    second, in that order. Kept as arrays rather than a ``UserTotals`` a user
    and a ``DayTotals`` a day: a month of 10,000 users is 300,000 days, and
    holding as many Python objects at once set off the cyclic collector's
    full passes, half the time of a call (bench/README.md, totals).
    ``per_user`` makes the objects."""

    #: The window's days in the time clock's zone; ``cells[:, 0]`` indexes it.
    days: list[date]
    user_ids: np.ndarray  # (users,) int64
    #: (users, 3) int64: worked, paid break, unpaid break seconds.
    sums: np.ndarray
    #: (cells, 4) int64: day index, worked, paid break, unpaid break seconds.
    cells: np.ndarray
    #: (users,) int64: where each user's cells end (its first is the last's end).
    ends: np.ndarray

    def __len__(self) -> int:
        return len(self.user_ids)

    def by_user(self) -> Iterator[tuple[int, int, int, int, range]]:
        """Each user's id, worked, paid and unpaid break seconds, and the
        range of its cells (indexes into ``day_columns``)."""
        begin = 0
        for user_id, (worked, paid, unpaid), stop in zip(
            self.user_ids.tolist(), self.sums.tolist(), self.ends.tolist(), strict=True
        ):
            yield user_id, worked, paid, unpaid, range(begin, stop)
            begin = stop

    def day_columns(self) -> tuple[list[int], list[int], list[int], list[int]]:
        """The cells' day indexes (into ``days``), worked, paid and unpaid
        break seconds: four long lists of ints, not a list a cell (whose
        300,000 containers the cyclic collector would walk)."""
        day, worked, paid, unpaid = self.cells.T.tolist()
        return day, worked, paid, unpaid

    def per_user(self) -> list[UserTotals]:
        day, worked, paid, unpaid = self.day_columns()
        return [
            UserTotals(
                user_id,
                w,
                p,
                u,
                tuple(_new_day(self.days[day[i]], worked[i], paid[i], unpaid[i]) for i in cells),
            )
            for user_id, w, p, u, cells in self.by_user()
        ]


def totals(tc: TimeClock, spans: Iterable[np.ndarray], start: int, end: int) -> WindowTotals:
    """Worked and break seconds per user and day within ``[start, end)``, days
    cut at midnight in the time clock's zone. ``spans``: the activities in
    chunks, in any order, each chunk an array of :data:`Span` rows (open
    activities already ending at the time they count to). Every user with
    an activity has totals, days only where it counted a second.

    Summed as arrays: the window's midnights are computed once and each
    activity is cut at those it crosses, where cutting each with datetime
    arithmetic cost 12 us an activity (bench/README.md, totals)."""
    midnights, days = _midnights(ZoneInfo(tc.timezone), start, end)
    read = [chunk for chunk in spans if len(chunk)]
    n_days = len(days)
    if not read:
        none = np.empty(0, np.int64)
        return WindowTotals(days, none, none.reshape(0, 3), none.reshape(0, 4), none)
    every = np.concatenate(read)
    ids, user = _ranked(every[:, 0])
    column = every[:, 1]
    lo, hi = np.maximum(every[:, 2], start), np.minimum(every[:, 3], end)
    counted = lo < hi
    user, column, lo, hi = user[counted], column[counted], lo[counted], hi[counted]
    # Day k is [midnights[k], midnights[k + 1]); an activity runs from its
    # first day to the last day it has a second in.
    first = np.searchsorted(midnights, lo, side="right") - 1
    last = np.searchsorted(midnights, hi, side="left") - 1
    cells, cut = [np.empty(0, np.int64)], [np.empty(0, np.int64)]
    crossing = np.arange(len(lo))
    k = 0
    while len(crossing):  # the k-th day of each activity that has one
        day = first[crossing] + k
        cells.append((user[crossing] * n_days + day) * 3 + column[crossing])
        cut.append(
            np.minimum(hi[crossing], midnights[day + 1]) - np.maximum(lo[crossing], midnights[day])
        )
        k += 1
        crossing = crossing[last[crossing] >= first[crossing] + k]
    # Summed as float64, exact: every sum is far below 2**53 seconds.
    summed = np.bincount(
        np.concatenate(cells), np.concatenate(cut), minlength=len(ids) * n_days * 3
    )
    table = summed.astype(np.int64).reshape(len(ids), n_days, 3)
    # The days that counted a second, in (user, day) order, and where each
    # user's run of them ends.
    us, ds = np.nonzero(table.any(axis=2))
    return WindowTotals(
        days,
        ids,
        table.sum(axis=1),
        np.column_stack((ds, table[us, ds])),
        np.searchsorted(us, np.arange(1, len(ids) + 1)),
    )


def _ranked(users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct ``users`` ascending, and each one's index among them
    (``np.unique(users, return_inverse=True)``). Where the ids lie close
    together, as a time clock's usually do, they are marked in a table over
    their range instead of sorted: 5 ms against unique's 50 for 600,000
    activities (bench/README.md, totals)."""
    low, high = int(users.min()), int(users.max())
    if high - low > 8 * len(users):
        return np.unique(users, return_inverse=True)
    offsets = users - low
    seen = np.zeros(high - low + 1, bool)
    seen[offsets] = True
    present = np.flatnonzero(seen)
    rank = np.zeros(high - low + 1, np.int64)
    rank[present] = np.arange(len(present))
    return present + low, rank[offsets]


def _midnights(zone: ZoneInfo, start: int, end: int) -> tuple[np.ndarray, list[date]]:
    """The local midnights around ``[start, end)`` in ``zone``, ascending, and
    the date of the day each opens: day k is [m[k], m[k + 1]), the first
    holding ``start``, the last ending at or after ``end``."""
    day = datetime.fromtimestamp(start, UTC).astimezone(zone).date()
    cuts = [int(datetime.combine(day, time(0), zone).timestamp())]
    days: list[date] = []
    while cuts[-1] < end or not days:
        days.append(day)
        day += timedelta(days=1)
        cuts.append(int(datetime.combine(day, time(0), zone).timestamp()))
    return np.array(cuts, dtype=np.int64), days


# -- Who is on the clock -------------------------------------------------------


class UserState(StrEnum):
    IDLE = "IDLE"
    ON_SHIFT = "ON_SHIFT"
    ON_BREAK = "ON_BREAK"


class UserStatus(NamedTuple):
    """One user's line of the board. A tuple rather than a frozen dataclass:
    a large board makes thousands at each call (its busy users, and every
    user where it is iterated), and a tuple is made in a third of the time
    of even a slotted dataclass (bench/README.md)."""

    user_id: int
    state: UserState
    #: The open shift or break, flat (``activity()`` gives the object).
    activity: ActivityRow | None = None
    break_type: ManualBreakType | None = None
    #: When a mandatory break may end (None when any time will do).
    endable_at: int | None = None


@functools.lru_cache(maxsize=64)
def _in_order(user_ids: frozenset[int]) -> tuple[int, ...]:
    """A time clock's users in answer order, sorted once: a frozenset keeps
    its hash, so a board finds them again at the cost of a lookup."""
    return tuple(sorted(user_ids))


def check_status_users(tc: TimeClock, user_ids: Sequence[int]) -> Sequence[int]:
    """The users to report: those named (each assigned), or all of the time clock's."""
    if len(user_ids) > MAX_LISTED_USERS:
        raise DomainError(
            ErrorCode.BATCH_TOO_LARGE,
            f"{len(user_ids)} users named; the limit is {MAX_LISTED_USERS} "
            "(name none for every user of the time clock)",
        )
    if not user_ids:
        return _in_order(tc.user_ids)
    out = Collector()
    for i, user in enumerate(user_ids):
        _rule(out, f"user_ids[{i}]", check_user, tc, user)
    out.raise_if_any("the users")
    return list(dict.fromkeys(user_ids))


@dataclass(frozen=True, slots=True)
class Board:
    """Who of a time clock's users is on the clock: ``users`` in answer
    order, ``busy`` the status of each one on a shift or a break; the rest
    are idle. Iterating gives every user's status. Idle users get no object
    of their own until iterated: most of a large board is idle, and an
    adapter answers them from the id alone (bench/README.md, GetUserStatuses)."""

    users: Sequence[int]
    busy: Mapping[int, UserStatus]

    def __iter__(self) -> Iterator[UserStatus]:
        busy, idle = self.busy, UserState.IDLE
        for user in self.users:
            yield busy.get(user) or UserStatus(user, idle)


def user_statuses(
    tc: TimeClock, users: Sequence[int], open_by_user: Mapping[int, ActivityRow]
) -> Board:
    types = {b.id: b for b in tc.manual_break_types}
    busy = {}
    shift, on_shift, on_break = ActivityKind.SHIFT.value, UserState.ON_SHIFT, UserState.ON_BREAK
    # The open activities, not the users, are walked: on a large board most
    # users are idle. The users are the time clock's own (checked), so as many
    # as it has are all of them.
    wanted = tc.user_ids if len(users) == len(tc.user_ids) else frozenset(users)
    # tuple.__new__ with every field: the named tuple's own constructor is
    # Python code, and a third dearer a status.
    status = tuple.__new__
    for user, a in open_by_user.items():
        if user not in wanted:
            continue
        if a.kind == shift:
            busy[user] = status(UserStatus, (user, on_shift, a, None, None))
            continue
        bt = types.get(a.break_type_id or "")
        endable = a.start_ts + bt.min_duration_s if bt is not None and bt.is_mandatory else None
        busy[user] = status(UserStatus, (user, on_break, a, bt, endable))
    return Board(users, busy)
