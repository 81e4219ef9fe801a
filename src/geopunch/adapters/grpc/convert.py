"""proto <-> domain conversion. No rules here: validation lives in the domain."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import date

from geopunch.domain.builders import positional_builder
from geopunch.domain.models import (
    DayStatus,
    ExitDetectionSettings,
    Geofence,
    GeofenceDraft,
    GeofencePolicy,
    Job,
    ManualBreakType,
    TimeClock,
    flatten_jobs,
    nest_jobs,
)
from geopunch.v1 import admin_pb2, common_pb2, geofences_pb2

_POLICY_TO_DOMAIN = {
    admin_pb2.GEOFENCE_POLICY_UNSPECIFIED: GeofencePolicy.OFF,
    admin_pb2.OFF: GeofencePolicy.OFF,
    admin_pb2.REQUIRE_LOCATION: GeofencePolicy.REQUIRE_LOCATION,
    admin_pb2.REQUIRE_INSIDE: GeofencePolicy.REQUIRE_INSIDE,
}
_POLICY_TO_PROTO = {
    GeofencePolicy.OFF: admin_pb2.OFF,
    GeofencePolicy.REQUIRE_LOCATION: admin_pb2.REQUIRE_LOCATION,
    GeofencePolicy.REQUIRE_INSIDE: admin_pb2.REQUIRE_INSIDE,
}
DAY_STATUS_TO_DOMAIN = {
    admin_pb2.OPEN: DayStatus.OPEN,
    admin_pb2.LOCKED: DayStatus.LOCKED,
    admin_pb2.APPROVED: DayStatus.APPROVED,
}
_DAY_STATUS_TO_PROTO = {v: k for k, v in DAY_STATUS_TO_DOMAIN.items()}


def _optional(msg: object, name: str, default: float) -> float:
    return float(getattr(msg, name)) if msg.HasField(name) else default  # type: ignore[attr-defined]


def jobs_from_proto(
    jobs: Iterable[admin_pb2.Job], prefix: str
) -> tuple[tuple[Job, ...], list[str]]:
    return flatten_jobs(jobs, prefix, "sub_jobs")


def jobs_to_proto(jobs: Iterable[Job]) -> list[admin_pb2.Job]:
    return nest_jobs(
        jobs, lambda j, subs: admin_pb2.Job(id=j.id, name=j.name, color=j.color, sub_jobs=subs)
    )


def time_clock_from_proto(
    msg: admin_pb2.TimeClock, prefix: str = "time_clock"
) -> tuple[TimeClock, list[str]]:
    """The domain value and, for each of its flat jobs, its path in the request.

    An unknown geofence policy number is kept out: it raises ValueError here and
    the servicer reports it as INVALID_ARGUMENT.
    """
    jobs, paths = jobs_from_proto(msg.jobs, f"{prefix}.jobs")
    policy = _POLICY_TO_DOMAIN.get(msg.geofence_policy)
    if policy is None:
        raise ValueError(f"{prefix}.geofence_policy: unknown value {msg.geofence_policy}")
    defaults = ExitDetectionSettings()
    ed = msg.exit_detection
    tc = TimeClock(
        id=msg.id if msg.HasField("id") else 0,
        name=msg.name,
        timezone=msg.timezone,
        job_enforcement=msg.job_enforcement,
        jobs=jobs,
        user_ids=frozenset(msg.user_ids),
        manual_breaks_enabled=msg.manual_breaks_enabled,
        manual_break_types=tuple(
            ManualBreakType(b.id, b.name, b.is_mandatory, b.min_duration_seconds, b.is_paid)
            for b in msg.manual_break_types
        ),
        geofence_policy=policy,
        accuracy_tolerance_m=msg.accuracy_tolerance_m,
        exit_detection=ExitDetectionSettings(
            **{
                name: _optional(ed, name, getattr(defaults, name))
                for name in ExitDetectionSettings.__dataclass_fields__
            }
        ),
    )
    return tc, paths


def time_clock_to_proto(tc: TimeClock) -> admin_pb2.TimeClock:
    ed = tc.exit_detection
    return admin_pb2.TimeClock(
        id=tc.id,
        name=tc.name,
        timezone=tc.timezone,
        job_enforcement=tc.job_enforcement,
        jobs=jobs_to_proto(tc.jobs),
        user_ids=sorted(tc.user_ids),
        manual_breaks_enabled=tc.manual_breaks_enabled,
        manual_break_types=[
            admin_pb2.ManualBreakType(
                id=b.id,
                name=b.name,
                is_mandatory=b.is_mandatory,
                min_duration_seconds=b.min_duration_s,
                is_paid=b.is_paid,
            )
            for b in tc.manual_break_types
        ],
        geofence_policy=_POLICY_TO_PROTO[tc.geofence_policy],
        accuracy_tolerance_m=tc.accuracy_tolerance_m,
        exit_detection=admin_pb2.ExitDetectionSettings(
            high_accuracy_max_m=ed.high_accuracy_max_m,
            buffer_high_accuracy_m=ed.buffer_high_accuracy_m,
            low_accuracy_max_m=ed.low_accuracy_max_m,
            buffer_low_accuracy_m=ed.buffer_low_accuracy_m,
            buffer_unknown_accuracy_m=ed.buffer_unknown_accuracy_m,
        ),
    )


def day_statuses_to_proto(days: Mapping[date, DayStatus]) -> list[admin_pb2.UserDay]:
    return [
        admin_pb2.UserDay(date=d.isoformat(), status=_DAY_STATUS_TO_PROTO[s])
        for d, s in sorted(days.items())
    ]


#: Drafts are made a thousand to a request (CreateGeofences): set through the
#: slots, in half the frozen dataclass's own time (domain/builders.py).
_new_draft = positional_builder(GeofenceDraft)


def geofence_draft_from_proto(msg: geofences_pb2.Geofence) -> GeofenceDraft:
    loc = msg.location
    has = loc.HasField
    return _new_draft(
        msg.name,
        loc.address,
        loc.latitude if has("latitude") else None,
        loc.longitude if has("longitude") else None,
        msg.is_enabled if msg.HasField("is_enabled") else None,
        msg.fence_size if msg.HasField("fence_size") else None,
        tuple(msg.job_ids),
        msg.on_geofence_exit_action,
        loc.accuracy if has("accuracy") else None,
    )


def geofence_to_proto(f: Geofence) -> geofences_pb2.Geofence:
    return geofences_pb2.Geofence(
        id=f.id,
        name=f.name,
        is_enabled=f.is_enabled,
        fence_size=f.fence_size_m,
        job_ids=f.job_ids,
        on_geofence_exit_action=f.exit_action.value,
        location=common_pb2.Location(address=f.address, latitude=f.latitude, longitude=f.longitude),
    )
