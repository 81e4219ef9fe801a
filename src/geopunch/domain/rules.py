"""Validation rules of time clock settings and geofences.

Each validator collects every problem as a FieldViolation and raises one
DomainError naming all of them, so a caller fixes a whole request at once.
"""

from __future__ import annotations

import functools
import math
import re
import zoneinfo
from collections.abc import Callable, Iterable, Sequence
from datetime import date
from itertools import chain

from geopunch.domain.builders import positional_builder
from geopunch.domain.errors import DomainError, ErrorCode, FieldViolation
from geopunch.domain.models import (
    ExitAction,
    ExitDetectionSettings,
    Geofence,
    GeofenceDraft,
    Job,
    TimeClock,
    TreeSize,
)

MAX_GEOFENCES_PER_REQUEST = 1000
MIN_FENCE_SIZE_M = 75
MAX_FENCE_SIZE_M = 1524
DEFAULT_FENCE_SIZE_M = 150
MAX_JOB_IDS_PER_FENCE = 100
MAX_NAME_LENGTH = 255
MAX_ADDRESS_LENGTH = 1000
MAX_ID_LENGTH = 128
#: Largest time clock, scheduler or user id a caller may choose: JSON numbers
#: are exact below 2**53 in every client (JavaScript's doubles among them),
#: and the store keeps room above it, so server-assigned ids never run out.
MAX_ENTITY_ID = 2**53 - 1
MAX_ACCURACY_TOLERANCE_M = 10_000.0
MAX_DATES_PER_CALL = 366
#: Sizes of a time clock's or scheduler's lists (jobs count their sub-jobs).
MAX_JOBS = 1000
#: How deep sub-jobs nest: deeper than any organisation's job list, and well
#: inside what both APIs' decoders carry (protobuf stops at 100 nested
#: messages, pydantic at about 250 nested models).
MAX_JOB_DEPTH = 32
MAX_USERS = 100_000
MAX_BREAK_TYPES = 100
#: Larger Unix timestamps are milliseconds sent by mistake (1e12 seconds is
#: the year 33658; 1e12 milliseconds is September 2001).
MAX_SECONDS_TIMESTAMP = 10**12

_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_COLOR_RE = re.compile(r"^#(?:[0-9a-fA-F]{6}|[0-9a-fA-F]{3})$")


@functools.cache
def known_timezones() -> frozenset[str]:
    """The zone names of the tz database (the system's, and the ``tzdata``
    package's where installed). ``ZoneInfo`` opens any file under the zone
    directory, so by itself it also took ``right/UTC`` (a leap-second zone,
    27 seconds off civil time), ``posix/...`` copies and ``posixrules``, and
    ``localtime``, which names whatever zone the machine it runs on is set to.
    Read once (about 40 ms; start-up does it beside the kernels' warm-up)."""
    return frozenset(zoneinfo.available_timezones() - {"localtime"})


def is_valid_timezone(name: str) -> bool:
    """True for an IANA zone name known to this system's tz database."""
    return name in known_timezones()


def coordinate_problem(value: float | None, limit: float, what: str) -> str | None:
    """Why a latitude (limit 90) or longitude (limit 180) is unusable, or None."""
    if value is None:
        return f"{what} is required"
    if not math.isfinite(value):
        return f"{what} must be a finite number, got {value}"
    if not -limit <= value <= limit:
        return f"{what} {value} is outside [-{limit:g}, {limit:g}]"
    return None


class Collector:
    """Accumulates FieldViolations under a path prefix."""

    def __init__(self) -> None:
        self.violations: list[FieldViolation] = []

    def add(self, path: str, reason: ErrorCode, description: str) -> None:
        self.violations.append(FieldViolation(path, description, reason))

    def raise_if_any(self, what: str) -> None:
        if self.violations:
            raise DomainError.from_violations(self.violations, what)


def long_id_violations(ids: Sequence[str], path: str) -> list[FieldViolation]:
    """Ids looked up (not stored) may be anything a stored one could be: at
    most MAX_ID_LENGTH characters."""
    return [
        FieldViolation(
            f"{path}[{i}]", f"an id longer than {MAX_ID_LENGTH}", ErrorCode.INVALID_ARGUMENT
        )
        for i, value in enumerate(ids)
        if len(value) > MAX_ID_LENGTH
    ]


def check_ids(
    out: Collector, ids: Iterable[tuple[str, str]], what: str, seen: set[str] | None = None
) -> None:
    seen = set() if seen is None else seen
    for path, value in ids:
        if not value or value != value.strip():
            out.add(path, ErrorCode.INVALID_ARGUMENT, f"{what} id must be non-empty, no spaces")
        elif len(value) > MAX_ID_LENGTH:
            out.add(path, ErrorCode.INVALID_ARGUMENT, f"{what} id longer than {MAX_ID_LENGTH}")
        elif value in seen:
            out.add(path, ErrorCode.INVALID_ARGUMENT, f"{what} id {value!r} appears twice")
        seen.add(value)


def check_geofence_count(count: int, prefix: str = "geofences") -> None:
    """TOO_MANY_GEOFENCES for a batch past the limit: by the rules, and by an
    API before it converts any fence of the batch."""
    if count > MAX_GEOFENCES_PER_REQUEST:
        said = f"{count} geofences sent; the limit is {MAX_GEOFENCES_PER_REQUEST} per request"
        violation = FieldViolation(prefix, said, ErrorCode.TOO_MANY_GEOFENCES)
        raise DomainError.from_violations([violation], "the geofences")


def check_identity(out: Collector, prefix: str, id_: int, name: str, timezone: str) -> None:
    """A positive id, a usable name and an IANA zone (time clocks, schedulers)."""
    if not 0 < id_ <= MAX_ENTITY_ID:
        out.add(
            f"{prefix}.id",
            ErrorCode.INVALID_ARGUMENT,
            f"id must be a positive integer up to {MAX_ENTITY_ID}",
        )
    check_name(out, f"{prefix}.name", name, ErrorCode.INVALID_ARGUMENT)
    if not is_valid_timezone(timezone):
        out.add(
            f"{prefix}.timezone",
            ErrorCode.INVALID_TIMEZONE,
            f"{timezone!r} is not an IANA time zone name such as 'America/New_York'",
        )


def check_user_ids(out: Collector, path: str, user_ids: Iterable[int]) -> None:
    """Assigned users' ids within the range a caller may choose. The settings
    hold them as a set, so the problem names the ids rather than a position."""
    bad = sorted(u for u in user_ids if not 0 < u <= MAX_ENTITY_ID)
    if bad:
        shown = ", ".join(map(str, bad[:5])) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        out.add(
            path,
            ErrorCode.INVALID_ARGUMENT,
            f"user ids must be positive integers up to {MAX_ENTITY_ID}: {shown}",
        )


def past_limit(count: int, limit: int, whole: bool = True) -> str:
    """The sentence for a list longer than its limit (both APIs say it);
    ``whole`` False: ``count`` is where the counting stopped (a tree's,
    ``models.measure_tree``), so the list holds at least that many."""
    return f"{'' if whole else 'at least '}{count} entries; the limit is {limit}"


def is_valid_color(value: str) -> bool:
    """True for "#RRGGBB" or "#RGB" (hex digits in either case)."""
    return bool(_COLOR_RE.match(value))


def color_problem(value: str) -> str:
    return f"color {value!r} is not a hex color such as '#4B7AC5'"


def check_sizes(prefix: str, what: str, jobs: TreeSize, users: int, break_types: int = 0) -> None:
    """Lists within their limits, checked before anything walks them. ``jobs``
    counts sub-jobs too, and says how deep they nest."""
    out = Collector()
    for name, count, limit, whole in (
        ("jobs", jobs.count, MAX_JOBS, jobs.whole),
        ("user_ids", users, MAX_USERS, True),
        ("manual_break_types", break_types, MAX_BREAK_TYPES, True),
    ):
        if count > limit:
            out.add(
                f"{prefix}.{name}",
                ErrorCode.INVALID_ARGUMENT,
                past_limit(count, limit, whole),
            )
    if jobs.depth > MAX_JOB_DEPTH:
        deep = f"{'' if jobs.whole else 'at least '}{jobs.depth} levels deep"
        said = f"sub-jobs nest {deep}; the limit is {MAX_JOB_DEPTH}"
        out.add(f"{prefix}.jobs", ErrorCode.INVALID_ARGUMENT, said)
    out.raise_if_any(what)


def check_jobs(out: Collector, jobs: Sequence[Job], paths: Sequence[str]) -> None:
    """Job ids unique and well-formed, names and colors valid; ``paths`` gives
    each job's place in the request."""
    pairs = list(zip(paths, jobs, strict=True))
    check_ids(out, ((f"{p}.id", j.id) for p, j in pairs), "job")
    for path, job in pairs:
        if job.color and not is_valid_color(job.color):
            out.add(f"{path}.color", ErrorCode.INVALID_ARGUMENT, color_problem(job.color))
        if len(job.name) > MAX_NAME_LENGTH:
            out.add(f"{path}.name", ErrorCode.INVALID_ARGUMENT, "job name is too long")


def check_name(out: Collector, path: str, name: str, reason: ErrorCode) -> None:
    if not name.strip():
        out.add(path, reason, "name must have at least one non-blank character")
    elif len(name) > MAX_NAME_LENGTH:
        out.add(path, reason, f"name is {len(name)} characters; the limit is {MAX_NAME_LENGTH}")


def validate_time_clock(
    tc: TimeClock, job_paths: Sequence[str], prefix: str = "time_clock"
) -> None:
    """Raise DomainError unless every setting of ``tc`` is usable.

    ``job_paths`` gives the request path of each entry of ``tc.jobs`` (jobs are
    nested in requests but flat in the model).
    """
    check_sizes(
        prefix,
        "the time clock settings",
        TreeSize(len(tc.jobs)),
        len(tc.user_ids),
        len(tc.manual_break_types),
    )
    out = Collector()
    check_identity(out, prefix, tc.id, tc.name, tc.timezone)
    check_jobs(out, tc.jobs, job_paths)
    if tc.job_enforcement and not tc.jobs:
        out.add(f"{prefix}.jobs", ErrorCode.INVALID_ARGUMENT, "job enforcement needs jobs")
    check_user_ids(out, f"{prefix}.user_ids", tc.user_ids)
    bt_prefix = f"{prefix}.manual_break_types"
    check_ids(
        out, ((f"{bt_prefix}[{i}].id", b.id) for i, b in enumerate(tc.manual_break_types)), "break"
    )
    for i, bt in enumerate(tc.manual_break_types):
        check_name(out, f"{bt_prefix}[{i}].name", bt.name, ErrorCode.INVALID_ARGUMENT)
        if bt.min_duration_s < 0 or bt.min_duration_s > 24 * 3600:
            out.add(
                f"{bt_prefix}[{i}].min_duration_seconds",
                ErrorCode.INVALID_ARGUMENT,
                "minimum duration must be within 0..86400 seconds",
            )
        elif bt.is_mandatory and bt.min_duration_s == 0:
            out.add(
                f"{bt_prefix}[{i}].min_duration_seconds",
                ErrorCode.INVALID_ARGUMENT,
                "a mandatory break needs a minimum duration above 0 seconds",
            )
    tol = tc.accuracy_tolerance_m
    if not (math.isfinite(tol) and 0 <= tol <= MAX_ACCURACY_TOLERANCE_M):
        out.add(
            f"{prefix}.accuracy_tolerance_m",
            ErrorCode.INVALID_ARGUMENT,
            f"accuracy tolerance must be within 0..{MAX_ACCURACY_TOLERANCE_M:g} metres",
        )
    _check_exit_settings(out, tc.exit_detection, f"{prefix}.exit_detection")
    out.raise_if_any("the time clock settings")


def _check_exit_settings(out: Collector, s: ExitDetectionSettings, prefix: str) -> None:
    for name in (
        "high_accuracy_max_m",
        "buffer_high_accuracy_m",
        "low_accuracy_max_m",
        "buffer_low_accuracy_m",
        "buffer_unknown_accuracy_m",
    ):
        value = getattr(s, name)
        if not (math.isfinite(value) and 0 <= value <= MAX_ACCURACY_TOLERANCE_M):
            out.add(
                f"{prefix}.{name}",
                ErrorCode.INVALID_ARGUMENT,
                f"must be within 0..{MAX_ACCURACY_TOLERANCE_M:g} metres, got {value}",
            )
    if s.high_accuracy_max_m > s.low_accuracy_max_m:
        out.add(
            f"{prefix}.high_accuracy_max_m",
            ErrorCode.INVALID_ARGUMENT,
            "high_accuracy_max_m must not exceed low_accuracy_max_m",
        )


def check_user(tc: TimeClock, user_id: int) -> None:
    """USER_NOT_ASSIGNED unless the user is assigned to the time clock."""
    if user_id not in tc.user_ids:
        raise DomainError(
            ErrorCode.USER_NOT_ASSIGNED,
            f"user {user_id} is not assigned to time clock {tc.id}",
            {"userId": str(user_id), "timeClockId": str(tc.id)},
        )


def parse_dates(values: Sequence[str], prefix: str = "dates") -> list[date]:
    """Parse "YYYY-MM-DD" strings, naming every bad one."""
    out = Collector()
    if not values:
        out.add(prefix, ErrorCode.INVALID_ARGUMENT, "at least one date is required")
    if len(values) > MAX_DATES_PER_CALL:
        out.add(prefix, ErrorCode.BATCH_TOO_LARGE, f"at most {MAX_DATES_PER_CALL} dates per call")
    days: list[date] = []
    for i, text in enumerate(values):
        try:
            if not _DATE_RE.match(text):
                raise ValueError(text)
            days.append(date.fromisoformat(text))
        except ValueError:
            out.add(
                f"{prefix}[{i}]", ErrorCode.INVALID_ARGUMENT, f"{text!r} is not a YYYY-MM-DD date"
            )
    out.raise_if_any("the dates")
    return days


_new_geofence = positional_builder(Geofence)


def validate_geofences(
    drafts: Sequence[GeofenceDraft],
    tc: TimeClock,
    new_id: Callable[[], str],
    prefix: str = "geofences",
) -> list[Geofence]:
    """Check drafts against the rules and the time clock; return stored-form fences.

    Raises a DomainError naming every invalid field when any draft is invalid.
    """
    out = Collector()
    if not drafts:
        out.add(prefix, ErrorCode.INVALID_ARGUMENT, "at least one geofence is required")
    check_geofence_count(len(drafts), prefix)
    if not _all_usable(drafts, tc):
        _geofence_problems(out, drafts, tc, prefix)
    out.raise_if_any("the geofences")
    return [
        _new_geofence(
            new_id(),
            tc.id,
            d.name,
            True if d.is_enabled is None else d.is_enabled,
            DEFAULT_FENCE_SIZE_M if d.fence_size_m is None else d.fence_size_m,
            d.job_ids,
            _EXIT_ACTIONS[d.exit_action or _NO_ACTION],
            d.address,
            float(d.latitude),  # type: ignore[arg-type]  # checked: not None
            float(d.longitude),  # type: ignore[arg-type]
        )
        for d in drafts
    ]


_EXIT_ACTIONS = {a.value: a for a in ExitAction}
_NO_ACTION = ExitAction.NO_ACTION.value


def _all_usable(drafts: Sequence[GeofenceDraft], tc: TimeClock) -> bool:
    """Whether :func:`_geofence_problems` would find nothing, asked a rule at
    a time over all drafts: a bulk load's thousand-fence requests are valid,
    and walking each draft through every rule with its path was a sixth of
    the server's time in storing them. Only drafts this refuses are walked,
    for the paths and reasons of their problems; the two agree on every
    draft (``tests/unit/test_rules.py``)."""
    known = tc.job_ids
    jobs = [d.job_ids for d in drafts]
    return (
        all(n.strip() and len(n) <= MAX_NAME_LENGTH for n in [d.name for d in drafts])
        and all(a.strip() and len(a) <= MAX_ADDRESS_LENGTH for a in [d.address for d in drafts])
        and all(v is not None and -90.0 <= v <= 90.0 for v in [d.latitude for d in drafts])
        and all(v is not None and -180.0 <= v <= 180.0 for v in [d.longitude for d in drafts])
        and all(a is None or (math.isfinite(a) and a >= 0) for a in [d.accuracy for d in drafts])
        and all(
            s is None or MIN_FENCE_SIZE_M <= s <= MAX_FENCE_SIZE_M
            for s in [d.fence_size_m for d in drafts]
        )
        and all(len(j) <= MAX_JOB_IDS_PER_FENCE for j in jobs)
        and known.issuperset(chain.from_iterable(jobs))
        and all(len(j) < 2 or len(set(j)) == len(j) for j in jobs)
        and (not tc.job_enforcement or all(jobs))
        and all((a or _NO_ACTION) in _EXIT_ACTIONS for a in [d.exit_action for d in drafts])
    )


def _geofence_problems(
    out: Collector, drafts: Sequence[GeofenceDraft], tc: TimeClock, prefix: str
) -> None:
    """Every problem of every draft, with its path and reason."""
    known_jobs = tc.job_ids
    for i, d in enumerate(drafts):
        path = f"{prefix}[{i}]"
        check_name(out, f"{path}.name", d.name, ErrorCode.INVALID_NAME)
        if not d.address.strip():
            out.add(f"{path}.location.address", ErrorCode.INVALID_LOCATION, "address is required")
        elif len(d.address) > MAX_ADDRESS_LENGTH:
            out.add(
                f"{path}.location.address",
                ErrorCode.INVALID_LOCATION,
                f"address longer than {MAX_ADDRESS_LENGTH} characters",
            )
        for value, limit, field_name in (
            (d.latitude, 90.0, "latitude"),
            (d.longitude, 180.0, "longitude"),
        ):
            problem = coordinate_problem(value, limit, field_name)
            if problem:
                out.add(f"{path}.location.{field_name}", ErrorCode.INVALID_COORDINATES, problem)
        if d.accuracy is not None and not (math.isfinite(d.accuracy) and d.accuracy >= 0):
            out.add(
                f"{path}.location.accuracy",
                ErrorCode.INVALID_COORDINATES,
                f"accuracy {d.accuracy} must be a number >= 0 (a fence does not use it)",
            )
        size = DEFAULT_FENCE_SIZE_M if d.fence_size_m is None else d.fence_size_m
        if not MIN_FENCE_SIZE_M <= size <= MAX_FENCE_SIZE_M:
            out.add(
                f"{path}.fence_size",
                ErrorCode.INVALID_FENCE_SIZE,
                f"fence size {size} m is outside {MIN_FENCE_SIZE_M}..{MAX_FENCE_SIZE_M} m",
            )
        if len(d.job_ids) > MAX_JOB_IDS_PER_FENCE:
            out.add(
                f"{path}.job_ids",
                ErrorCode.TOO_MANY_JOB_IDS,
                f"{len(d.job_ids)} job ids; the limit is {MAX_JOB_IDS_PER_FENCE}",
            )
        else:
            if not known_jobs.issuperset(d.job_ids):
                unknown = sorted({j for j in d.job_ids if j not in known_jobs})
                out.add(
                    f"{path}.job_ids",
                    ErrorCode.JOBS_NOT_IN_TIME_CLOCK,
                    f"jobs {unknown} are not jobs of time clock {tc.id}",
                )
            if len(d.job_ids) > 1 and len(set(d.job_ids)) != len(d.job_ids):
                out.add(f"{path}.job_ids", ErrorCode.INVALID_ARGUMENT, "a job id appears twice")
        if tc.job_enforcement and not d.job_ids:
            out.add(
                f"{path}.job_ids",
                ErrorCode.JOB_IDS_REQUIRED,
                f"time clock {tc.id} enforces jobs, so every geofence needs job ids",
            )
        if (d.exit_action or _NO_ACTION) not in _EXIT_ACTIONS:
            out.add(
                f"{path}.on_geofence_exit_action",
                ErrorCode.INVALID_EXIT_ACTION,
                f"{d.exit_action!r} is not one of {sorted(_EXIT_ACTIONS)}",
            )
