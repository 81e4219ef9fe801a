"""A request's lists counted by their lengths, before anything reads their
items: the guard's walk over every field of every item, and a handler's
conversion, are Python per item. A 7 MB message of 900,000 jobs took the
guard 2.1 s of a handler thread, during which the event loop both APIs share
waited for the GIL: a ping took 1.2 s. Counted first, it is refused in
microseconds, with the same answer the rules would give after converting.
Every gRPC call passes here (the interceptor) before its handler, so the
handlers and conversions leave the counting to the rules.

The HTTP API bounds the same lists with ``bodies.at_most`` before pydantic
validates any item.
"""

from __future__ import annotations

from collections.abc import Callable
from operator import attrgetter
from typing import Any

from geopunch.domain.models import measure_tree
from geopunch.domain.rules import MAX_JOBS, Collector, check_geofence_count, check_sizes
from geopunch.domain.shifts import DETAIL_LISTS, check_detail_counts, check_shift_count
from geopunch.domain.timesheets import check_activity_batch

_sub_jobs = attrgetter("sub_jobs")


def _settings(msg: Any, prefix: str, what: str) -> None:
    """A time clock's or a scheduler's lists: jobs (sub-jobs included), users
    and, for a time clock, break types."""
    jobs = measure_tree(msg.jobs, _sub_jobs, MAX_JOBS)
    break_types = len(getattr(msg, "manual_break_types", ()))
    check_sizes(prefix, what, jobs, len(msg.user_ids), break_types)


def _shifts(request: Any) -> None:
    shifts = request.shifts
    check_shift_count(len(shifts))
    out = Collector()
    for i, shift in enumerate(shifts):
        lists = (
            shift.notes,
            shift.statuses,
            shift.shift_details.shift_layers,
            shift.custom_fields,
            shift.breaks,
        )
        check_detail_counts(out, f"shifts[{i}]", zip(DETAIL_LISTS, map(len, lists), strict=True))
    out.raise_if_any("the shifts")


_BY_REQUEST: dict[str, Callable[[Any], None]] = {
    "geopunch.v1.CreateTimeClockRequest": lambda r: _settings(
        r.time_clock, "time_clock", "the time clock settings"
    ),
    "geopunch.v1.UpdateTimeClockRequest": lambda r: _settings(
        r.time_clock, "time_clock", "the time clock settings"
    ),
    "geopunch.v1.CreateSchedulerRequest": lambda r: _settings(
        r.scheduler, "scheduler", "the scheduler settings"
    ),
    "geopunch.v1.UpdateSchedulerRequest": lambda r: _settings(
        r.scheduler, "scheduler", "the scheduler settings"
    ),
    "geopunch.v1.CreateGeofencesRequest": lambda r: check_geofence_count(len(r.geofences)),
    "geopunch.v1.CreateShiftsRequest": _shifts,
    "geopunch.v1.CreateTimeActivitiesRequest": lambda r: check_activity_batch(r.time_activities),
}


def check_counts(message: Any) -> None:
    """Raise what the rules raise for a list past its limit, if the request
    has one; requests without lists of messages have nothing to count."""
    check = _BY_REQUEST.get(message.DESCRIPTOR.full_name)
    if check is not None:
        check(message)
