"""Schedulers and their scheduled shifts: values and the rules of bulk creation.

A scheduler owns users and jobs; a shift names some of them. Shift times are
Unix seconds; a break is given as a wall-clock start (minutes after midnight
in the shift's zone) and a duration, and is resolved here to real seconds on
the local day that places it inside the shift, so shifts that cross midnight
or a DST change get the break the user sees on the wall clock.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime, time, timedelta
from enum import StrEnum
from functools import lru_cache
from zoneinfo import ZoneInfo

from geopunch.domain.errors import DomainError, ErrorCode, FieldViolation
from geopunch.domain.events import Event, EventType, Json
from geopunch.domain.models import Job, TreeSize
from geopunch.domain.punches import PunchLocation
from geopunch.domain.rules import (
    MAX_ADDRESS_LENGTH,
    MAX_NAME_LENGTH,
    MAX_SECONDS_TIMESTAMP,
    MAX_USERS,
    Collector,
    check_identity,
    check_ids,
    check_jobs,
    check_sizes,
    check_user_ids,
    color_problem,
    coordinate_problem,
    is_valid_color,
    is_valid_timezone,
    past_limit,
)

MAX_SHIFTS_PER_REQUEST = 500
MAX_OPEN_SPOTS = 100
MAX_SHIFT_SECONDS = 24 * 3600
#: 9999-12-30T00:00:00Z: later seconds leave no room in the calendar to place breaks.
MAX_CALENDAR_TIMESTAMP = 253_402_128_000
DEFAULT_SHIFT_COLOR = "#4B7AC5"
MINUTES_PER_DAY = 24 * 60
MAX_NOTE_LENGTH = 20_000
MAX_ITEMS = 100  # notes, breaks, statuses, layers, custom fields per shift


class BreakType(StrEnum):
    PAID = "paid"
    UNPAID = "unpaid"


_BREAK_TYPES = frozenset(t.value for t in BreakType)


@dataclass(frozen=True, slots=True)
class Scheduler:
    """``jobs`` is flat like a time clock's: sub-jobs follow their parents."""

    id: int
    name: str
    timezone: str
    jobs: tuple[Job, ...] = ()
    user_ids: frozenset[int] = frozenset()
    multi_user_shifts: bool = False


@dataclass(frozen=True, slots=True)
class ShiftBreak:
    """A break of a scheduled shift; ``start_ts``/``end_ts`` are resolved (0: not yet)."""

    name: str
    type: str
    start_minute: int
    duration_min: int
    start_ts: int = 0
    end_ts: int = 0


@dataclass(frozen=True, slots=True)
class ShiftLocation:
    is_referenced_to_job: bool
    gps: PunchLocation | None = None


@dataclass(frozen=True, slots=True)
class ShiftLayer:
    id: str
    value_id: str


@dataclass(frozen=True, slots=True)
class CustomField:
    id: str
    value: Json


@dataclass(frozen=True, slots=True)
class ScheduledShift:
    """A shift of a scheduler.

    As a caller sent it, ``None`` means omitted; once validated, the defaults
    are filled in (timezone, color, published and open flags, and on open
    shifts ``open_spots`` and ``is_require_admin_approval``) and the breaks
    carry real timestamps.
    """

    start_time: int
    end_time: int
    title: str | None = None
    job_id: str | None = None
    timezone: str | None = None
    is_published: bool | None = None
    is_open_shift: bool | None = None
    open_spots: int | None = None
    is_require_admin_approval: bool | None = None
    assigned_user_ids: tuple[int, ...] = ()
    location: ShiftLocation | None = None
    color: str | None = None
    notes: tuple[str, ...] = ()
    breaks: tuple[ShiftBreak, ...] = ()
    statuses: tuple[dict[str, Json], ...] = ()
    has_details: bool = False
    shift_layers: tuple[ShiftLayer, ...] = ()
    shift_source: str | None = None
    custom_fields: tuple[CustomField, ...] = ()
    id: str = ""
    scheduler_id: int = 0
    created_by: int | None = None
    created_at: int = 0
    updated_at: int = 0


def check_shift_count(count: int, prefix: str = "shifts") -> None:
    """TOO_MANY_SHIFTS for a batch past the limit: by the rules, and by an API
    before it converts any shift of the batch."""
    if count > MAX_SHIFTS_PER_REQUEST:
        said = f"{count} shifts sent; the limit is {MAX_SHIFTS_PER_REQUEST} per request"
        violation = FieldViolation(prefix, said, ErrorCode.TOO_MANY_SHIFTS)
        raise DomainError.from_violations([violation], "the shifts")


def validate_scheduler(s: Scheduler, job_paths: Sequence[str], prefix: str = "scheduler") -> None:
    """Raise DomainError unless every setting of ``s`` is usable."""
    check_sizes(prefix, "the scheduler settings", TreeSize(len(s.jobs)), len(s.user_ids))
    out = Collector()
    check_identity(out, prefix, s.id, s.name, s.timezone)
    check_jobs(out, s.jobs, job_paths)
    check_user_ids(out, f"{prefix}.user_ids", s.user_ids)
    out.raise_if_any("the scheduler settings")


def resolve_break(
    start_time: int, end_time: int, zone: ZoneInfo, start_minute: int, duration_min: int
) -> tuple[int, int]:
    """The break's real ``(start, end)`` in Unix seconds.

    The break starts at the first wall-clock occurrence of ``start_minute`` in
    ``zone`` that falls within ``[start_time, end_time)``, so a 01:00 break of a
    22:00-06:00 shift lands on the second day. When no occurrence falls in the
    shift (the API accepts such breaks), the shift's first local day is used.
    A wall time skipped by a DST change moves forward by the change (02:30 on a
    spring-forward night is 03:30); a repeated one takes its first occurrence.
    """
    first_day = datetime.fromtimestamp(start_time, zone).date()
    return _place_break(start_time, end_time, zone, first_day, start_minute, duration_min)


def _place_break(
    start_time: int, end_time: int, zone: ZoneInfo, first_day: date, minute: int, duration: int
) -> tuple[int, int]:
    begin = _wall_time(zone, first_day, minute)
    if not start_time <= begin < end_time:
        later = _wall_time(zone, first_day + timedelta(days=1), minute)
        if start_time <= later < end_time:
            begin = later
    return begin, begin + duration * 60


@lru_cache(maxsize=8192)
def _wall_time(zone: ZoneInfo, day: date, minute: int) -> int:
    """Unix seconds of a wall-clock time (first occurrence; gaps move forward)."""
    return int(datetime.combine(day, time(minute // 60, minute % 60), zone).timestamp())


def validate_shifts(
    scheduler: Scheduler,
    drafts: Sequence[ScheduledShift],
    *,
    new_id: Callable[[], str] = str,
    now: int = 0,
    created_by: int | None = None,
    prefix: str = "shifts",
) -> list[ScheduledShift]:
    """Check every draft; return them with the defaults filled in, each with
    an id from ``new_id`` and ``now`` as creation and update time.

    Raises one DomainError naming every problem of every shift
    (``shifts[3].end_time``) when any draft is invalid.
    """
    out = Collector()
    if not drafts:
        out.add(prefix, ErrorCode.INVALID_ARGUMENT, "at least one shift is required")
    check_shift_count(len(drafts), prefix)
    ctx = _Context(scheduler, {j.id: j for j in scheduler.jobs}, {}, new_id, now, created_by)
    done = [_validate_one(ctx, d, f"{prefix}[{i}]", out) for i, d in enumerate(drafts)]
    out.raise_if_any("the shifts")
    return done


@dataclass(slots=True)
class _Context:
    """What every shift of one request is checked against."""

    scheduler: Scheduler
    jobs: dict[str, Job]
    zones: dict[str, ZoneInfo]
    new_id: Callable[[], str]
    now: int
    created_by: int | None


def _validate_one(ctx: _Context, d: ScheduledShift, path: str, out: Collector) -> ScheduledShift:
    sch, zones = ctx.scheduler, ctx.zones
    times_ok = _check_times(d, path, out)
    job = None
    if d.job_id is not None:
        job = ctx.jobs.get(d.job_id)
        if job is None:
            out.add(
                f"{path}.job_id",
                ErrorCode.JOB_NOT_IN_SCHEDULER,
                f"job {d.job_id!r} is not a job of scheduler {sch.id}",
            )
    title = (d.title or "").strip()
    if not title and d.job_id is None:
        out.add(f"{path}.title", ErrorCode.TITLE_OR_JOB_REQUIRED, "a title or a job_id is required")
    elif d.title is not None and len(d.title) > MAX_NAME_LENGTH:
        out.add(f"{path}.title", ErrorCode.INVALID_ARGUMENT, f"title over {MAX_NAME_LENGTH} chars")
    tz = sch.timezone if d.timezone is None else d.timezone
    zone = zones.get(tz)
    if zone is None and is_valid_timezone(tz):
        zone = zones[tz] = ZoneInfo(tz)
    if zone is None:
        out.add(
            f"{path}.timezone",
            ErrorCode.INVALID_TIMEZONE,
            f"{tz!r} is not an IANA time zone name such as 'America/New_York'",
        )
    is_open = bool(d.is_open_shift)
    published = bool(d.is_published)
    _check_users(sch, d, path, out, is_open=is_open, published=published)
    open_spots, approval = _check_open_fields(sch, d, path, out, is_open=is_open)
    color = d.color
    if color is not None and not is_valid_color(color):
        out.add(f"{path}.color", ErrorCode.INVALID_ARGUMENT, color_problem(color))
    if color is None:
        color = job.color if job is not None and job.color else DEFAULT_SHIFT_COLOR
    _check_location(d, path, out)
    _check_details(d, path, out)
    breaks = _check_breaks(d, path, out, zone, times_ok)
    return replace(
        d,
        timezone=tz,
        is_published=published,
        is_open_shift=is_open,
        open_spots=open_spots,
        is_require_admin_approval=approval,
        color=color,
        breaks=breaks,
        scheduler_id=sch.id,
        id=ctx.new_id(),
        created_by=ctx.created_by,
        created_at=ctx.now,
        updated_at=ctx.now,
    )


def _check_times(d: ScheduledShift, path: str, out: Collector) -> bool:
    ok = True
    for name, value in (("start_time", d.start_time), ("end_time", d.end_time)):
        if value > MAX_SECONDS_TIMESTAMP:
            out.add(
                f"{path}.{name}",
                ErrorCode.TIMESTAMP_NOT_SECONDS,
                f"{name} {value} looks like milliseconds; send Unix seconds",
            )
            ok = False
        elif not 0 < value <= MAX_CALENDAR_TIMESTAMP:
            out.add(
                f"{path}.{name}",
                ErrorCode.INVALID_ARGUMENT,
                f"{name} must be a Unix time in seconds between 1970 and the year 9999",
            )
            ok = False
    if not ok:
        return False
    length = d.end_time - d.start_time
    if length <= 0:
        out.add(
            f"{path}.end_time",
            ErrorCode.INVALID_TIME_RANGE,
            f"end_time {d.end_time} must be after start_time {d.start_time}",
        )
        return False
    if length > MAX_SHIFT_SECONDS:
        out.add(
            f"{path}.end_time",
            ErrorCode.SHIFT_TOO_LONG,
            f"the shift lasts {length / 3600:.2f} hours; the limit is 24 hours",
        )
        return False
    return True


def _check_users(
    sch: Scheduler, d: ScheduledShift, path: str, out: Collector, *, is_open: bool, published: bool
) -> None:
    field_path = f"{path}.assigned_user_ids"
    users = d.assigned_user_ids
    if len(users) > MAX_USERS:  # more than a scheduler may have, so some twice or unknown
        out.add(field_path, ErrorCode.INVALID_ARGUMENT, past_limit(len(users), MAX_USERS))
        return
    if len(set(users)) != len(users):
        out.add(field_path, ErrorCode.INVALID_ARGUMENT, "a user id appears twice")
    unknown = sorted({u for u in users if u not in sch.user_ids})
    if unknown:
        shown = ", ".join(map(str, unknown[:10]))
        more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
        out.add(
            field_path,
            ErrorCode.ASSIGNED_USERS_NOT_FOUND,
            f"users [{shown}]{more} do not exist in scheduler {sch.id}",
        )
    if is_open and users:
        out.add(field_path, ErrorCode.OPEN_SHIFT_HAS_USERS, "an open shift has no assigned users")
    elif published and not is_open and not users:
        out.add(
            field_path,
            ErrorCode.PUBLISHED_SHIFT_NEEDS_USER,
            "a published shift that is not open needs at least one assigned user",
        )
    if len(users) > 1 and not sch.multi_user_shifts:
        out.add(
            field_path,
            ErrorCode.FEATURE_REQUIRED,
            f"{len(users)} assigned users need the multi_user_shifts feature of the scheduler",
        )


def _check_open_fields(
    sch: Scheduler, d: ScheduledShift, path: str, out: Collector, *, is_open: bool
) -> tuple[int | None, bool | None]:
    """Validated ``open_spots`` and ``is_require_admin_approval`` with defaults."""
    spots = d.open_spots
    if spots is not None:
        spots_path = f"{path}.open_spots"
        if not is_open:
            out.add(
                spots_path,
                ErrorCode.OPEN_SPOTS_NOT_OPEN_SHIFT,
                "open_spots can only be set on an open shift",
            )
        elif spots < 1:
            out.add(spots_path, ErrorCode.INVALID_ARGUMENT, "open_spots must be at least 1")
        elif spots > MAX_OPEN_SPOTS:
            out.add(
                spots_path,
                ErrorCode.OPEN_SPOTS_LIMIT,
                f"open_spots is {spots}; the limit is {MAX_OPEN_SPOTS}",
            )
        elif spots > 1 and not sch.multi_user_shifts:
            out.add(
                spots_path,
                ErrorCode.FEATURE_REQUIRED,
                f"{spots} open spots need the multi_user_shifts feature of the scheduler",
            )
    approval = d.is_require_admin_approval
    if approval and not is_open:
        out.add(
            f"{path}.is_require_admin_approval",
            ErrorCode.INVALID_ARGUMENT,
            "admin approval applies to open shifts only",
        )
    if is_open:
        return (1 if spots is None else spots), bool(approval)
    return spots, approval


def _check_location(d: ScheduledShift, path: str, out: Collector) -> None:
    loc = d.location
    if loc is None:
        return
    lpath = f"{path}.location_data"
    if loc.is_referenced_to_job and d.job_id is None:
        out.add(
            f"{lpath}.is_referenced_to_job",
            ErrorCode.INVALID_ARGUMENT,
            "a shift referenced to its job's location needs a job_id",
        )
    gps = loc.gps
    if gps is None:
        if not loc.is_referenced_to_job:
            out.add(
                f"{lpath}.gps",
                ErrorCode.INVALID_LOCATION,
                "gps is required unless the shift is referenced to its job's location",
            )
        return
    if len(gps.address) > MAX_ADDRESS_LENGTH:
        out.add(f"{lpath}.gps.address", ErrorCode.INVALID_LOCATION, "address is too long")
    if gps.latitude is None and gps.longitude is None:
        if not gps.address.strip():
            out.add(f"{lpath}.gps", ErrorCode.INVALID_LOCATION, "an address or coordinates needed")
        return
    for value, limit, name in (
        (gps.latitude, 90.0, "latitude"),
        (gps.longitude, 180.0, "longitude"),
    ):
        problem = coordinate_problem(value, limit, name)
        if problem:
            out.add(f"{lpath}.gps.{name}", ErrorCode.INVALID_LOCATION, problem)


def check_detail_counts(out: Collector, path: str, counts: Iterable[tuple[str, int]]) -> None:
    """Each of a shift's lists (named by their paths under the shift, as in
    DETAIL_LISTS) within MAX_ITEMS: by the rules, and by an API before it
    converts any item."""
    for name, count in counts:
        if count > MAX_ITEMS:
            out.add(f"{path}.{name}", ErrorCode.INVALID_ARGUMENT, past_limit(count, MAX_ITEMS))


#: A shift's lists, by their paths under the shift.
DETAIL_LISTS = ("notes", "statuses", "shift_details.shift_layers", "custom_fields", "breaks")


def _check_details(d: ScheduledShift, path: str, out: Collector) -> None:
    lists = (d.notes, d.statuses, d.shift_layers, d.custom_fields, d.breaks)
    check_detail_counts(out, path, zip(DETAIL_LISTS, map(len, lists), strict=True))
    for i, note in enumerate(d.notes):
        if len(note) > MAX_NOTE_LENGTH:
            out.add(
                f"{path}.notes[{i}].html",
                ErrorCode.INVALID_ARGUMENT,
                f"a note has at most {MAX_NOTE_LENGTH} characters",
            )
    check_ids(
        out,
        (
            (f"{path}.shift_details.shift_layers[{i}].id", x.id)
            for i, x in enumerate(d.shift_layers)
        ),
        "shift layer",
    )
    check_ids(
        out,
        ((f"{path}.custom_fields[{i}].id", x.id) for i, x in enumerate(d.custom_fields)),
        "custom field",
    )


def _check_breaks(
    d: ScheduledShift, path: str, out: Collector, zone: ZoneInfo | None, times_ok: bool
) -> tuple[ShiftBreak, ...]:
    """Validate the breaks; resolve them to real seconds when the shift's times
    and zone are valid."""
    types = _BREAK_TYPES
    usable: list[bool] = []
    for j, b in enumerate(d.breaks):
        bpath = f"{path}.breaks[{j}]"
        if b.type not in types:
            out.add(f"{bpath}.type", ErrorCode.INVALID_ARGUMENT, "type is 'paid' or 'unpaid'")
        if len(b.name) > MAX_NAME_LENGTH:
            out.add(f"{bpath}.name", ErrorCode.INVALID_ARGUMENT, "break name is too long")
        start_ok = 0 <= b.start_minute < MINUTES_PER_DAY
        if not start_ok:
            out.add(
                f"{bpath}.start_time",
                ErrorCode.INVALID_ARGUMENT,
                f"start_time is minutes after midnight, 0..{MINUTES_PER_DAY - 1}",
            )
        duration_ok = 0 < b.duration_min <= MINUTES_PER_DAY
        if not duration_ok:
            out.add(
                f"{bpath}.duration", ErrorCode.INVALID_ARGUMENT, f"duration is 1..{MINUTES_PER_DAY}"
            )
        usable.append(start_ok and duration_ok)
    if not times_ok:
        return d.breaks
    length = d.end_time - d.start_time
    total_min = sum(b.duration_min for b, ok in zip(d.breaks, usable, strict=True) if ok)
    if total_min * 60 > length:
        out.add(
            f"{path}.breaks",
            ErrorCode.BREAKS_EXCEED_SHIFT,
            f"breaks total {total_min} minutes; the shift lasts {length // 60} minutes",
        )
        return d.breaks
    if zone is None or not d.breaks:
        return d.breaks
    first_day = datetime.fromtimestamp(d.start_time, zone).date()
    resolved = []
    for b, ok in zip(d.breaks, usable, strict=True):
        if ok:
            begin, end = _place_break(
                d.start_time, d.end_time, zone, first_day, b.start_minute, b.duration_min
            )
            b = ShiftBreak(b.name, b.type, b.start_minute, b.duration_min, begin, end)
        resolved.append(b)
    return tuple(resolved)


def published_events(shifts: Sequence[ScheduledShift], now: int) -> list[Event]:
    """One ``shiftPublished`` event per assigned user of each published shift."""
    events: list[Event] = []
    for s in shifts:
        if not s.is_published:
            continue
        for user in s.assigned_user_ids:
            events.append(
                Event(
                    type=EventType.SHIFT_PUBLISHED.value,
                    occurred_at=now,
                    user_id=user,
                    scheduler_id=s.scheduler_id,
                    payload={
                        "shiftId": s.id,
                        "schedulerId": s.scheduler_id,
                        "userId": user,
                        "startTime": s.start_time,
                        "endTime": s.end_time,
                        "timezone": s.timezone,
                        "title": s.title,
                        "jobId": s.job_id,
                    },
                )
            )
    return events
