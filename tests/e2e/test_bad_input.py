"""The bad-input corpus: hundreds of malformed requests across every RPC,
each with the reason (and, where one field is at fault, the field path) it
must be answered with, sent to a real server on SQLite and on PostgreSQL.
Every case gets its reason, the server stays healthy and logs no unexpected
error, and a count of every table's rows shows nothing was written.

Part of the corpus is written by hand (what each field means); the rest is
derived from a full, valid request of each RPC by spoiling one field at a
time: NUL characters and over-long text in every string, NaN and infinity in
every number (the bounds every field shares)."""

from __future__ import annotations

import copy
import json
import math
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import grpc
import httpx
import pytest
from google.protobuf import field_mask_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc

from geopunch.v1 import (
    admin_pb2,
    common_pb2,
    geofences_pb2,
    location_pb2,
    scheduler_pb2,
    timeclock_pb2,
    webhooks_pb2,
)
from tests.conftest import API_KEY, Client, ServerProcess
from tests.e2e.test_accounts import row_counts
from tests.helpers import details, trailing

TC, SCHED, USER = 7001, 7002, 9170357
FENCE_SITE = (40.7128, -74.0060)
LONG = 20_001  # one past the longest text any field takes (a shift note)
M = TypeVar("M", bound=Message)


def now() -> int:
    return int(time.time())


@dataclass
class Case:
    name: str
    method: str  # "Service.Method" as on Client
    request: Message
    #: None: any refusal with a reason (the two stores must still agree).
    reason: str | None
    field: str | None = None


def _fill(msg: M, fields: dict[str, Any]) -> M:
    """``msg`` with ``fields`` set (lists replace, messages are copied in)."""
    for k, v in fields.items():
        if isinstance(v, list):
            del getattr(msg, k)[:]
            getattr(msg, k).extend(v)
        elif isinstance(v, Message):
            getattr(msg, k).CopyFrom(v)
        else:
            setattr(msg, k, v)
    return msg


def _loc(address: str = "1 Main St") -> common_pb2.Location:
    return common_pb2.Location(
        address=address, latitude=FENCE_SITE[0], longitude=FENCE_SITE[1], accuracy=5
    )


def _time_clock(**kw: Any) -> admin_pb2.TimeClock:
    tc = admin_pb2.TimeClock(
        id=TC + 100,
        name="Depot",
        timezone="America/New_York",
        job_enforcement=False,
        jobs=[
            admin_pb2.Job(
                id="job-a",
                name="A",
                color="#123456",
                sub_jobs=[admin_pb2.Job(id="job-a1", name="A1")],
            )
        ],
        user_ids=[USER],
        manual_breaks_enabled=True,
        manual_break_types=[admin_pb2.ManualBreakType(id="lunch", name="Lunch")],
        geofence_policy=admin_pb2.REQUIRE_LOCATION,
        accuracy_tolerance_m=10,
        exit_detection=admin_pb2.ExitDetectionSettings(high_accuracy_max_m=10),
    )
    return _fill(tc, kw)


def _job_chain(depth: int) -> admin_pb2.Job:
    """A job whose sub-jobs nest ``depth`` levels, one a level."""
    job = admin_pb2.Job(id=f"j{depth}", name="j")
    for level in range(depth - 1, 0, -1):
        job = admin_pb2.Job(id=f"j{level}", name="j", sub_jobs=[job])
    return job


def _scheduler(**kw: Any) -> admin_pb2.Scheduler:
    s = admin_pb2.Scheduler(
        id=SCHED + 100,
        name="Store",
        timezone="America/New_York",
        jobs=[admin_pb2.Job(id="job-s", name="Sales", color="#E91E63")],
        user_ids=[USER],
    )
    return _fill(s, kw)


def _fence(**kw: Any) -> geofences_pb2.Geofence:
    g = geofences_pb2.Geofence(
        name="Gate",
        fence_size=100,
        job_ids=["job-a"],
        on_geofence_exit_action="autoClockOut",
        location=_loc(),
    )
    return _fill(g, kw)


def _shift(**kw: Any) -> scheduler_pb2.ScheduledShift:
    t = now() + 86_400
    s = scheduler_pb2.ScheduledShift(
        start_time=t,
        end_time=t + 3600,
        title="Morning",
        job_id="job-s",
        timezone="America/New_York",
        assigned_user_ids=[USER],
        color="#E91E63",
    )
    s.notes.add(html="bring keys")
    s.custom_fields.add(id="cf-1").value.string_value = "x"
    s.statuses.add().update({"state": "ok"})
    return _fill(s, kw)


def _samples(**kw: Any) -> location_pb2.TrailSamples:
    t = now() - 60
    s = location_pb2.TrailSamples(
        user_ids=[USER, USER],
        time_clock_id=TC,
        timestamps=[t, t + 1],
        latitudes=[FENCE_SITE[0]] * 2,
        longitudes=[FENCE_SITE[1]] * 2,
        accuracies=[5, 5],
        job_ids=["job-a", "job-a"],
    )
    return _fill(s, kw)


def _check(**kw: Any) -> location_pb2.CheckLocationsRequest:
    r = location_pb2.CheckLocationsRequest(time_clock_id=TC, job_id="job-a")
    r.packed.latitudes.append(FENCE_SITE[0])
    r.packed.longitudes.append(FENCE_SITE[1])
    return _fill(r, kw)


def full_requests() -> list[tuple[str, Message]]:
    """A valid request of every unary RPC, with every string field filled."""
    t = now() - 600
    return [
        ("admin.CreateTimeClock", admin_pb2.CreateTimeClockRequest(time_clock=_time_clock())),
        (
            "admin.UpdateTimeClock",
            admin_pb2.UpdateTimeClockRequest(time_clock=_time_clock(id=TC)),
        ),
        (
            "admin.SetDayStatus",
            admin_pb2.SetDayStatusRequest(
                time_clock_id=TC, user_id=USER, dates=["2026-01-05"], status=admin_pb2.LOCKED
            ),
        ),
        ("admin.CreateScheduler", admin_pb2.CreateSchedulerRequest(scheduler=_scheduler())),
        (
            "admin.UpdateScheduler",
            admin_pb2.UpdateSchedulerRequest(scheduler=_scheduler(id=SCHED)),
        ),
        (
            "admin.CreateApiKey",
            admin_pb2.CreateApiKeyRequest(scopes=["read"], label="kiosk"),
        ),
        ("admin.RotateApiKey", admin_pb2.RotateApiKeyRequest(key_id="0123456789ab")),
        ("admin.RevokeApiKey", admin_pb2.RevokeApiKeyRequest(key_id="0123456789ab")),
        (
            "geofences.CreateGeofences",
            geofences_pb2.CreateGeofencesRequest(time_clock_id=TC, geofences=[_fence()]),
        ),
        (
            "geofences.GetGeofence",
            geofences_pb2.GetGeofenceRequest(time_clock_id=TC, fence_id="fence-x"),
        ),
        (
            "geofences.DeleteGeofence",
            geofences_pb2.DeleteGeofenceRequest(time_clock_id=TC, fence_id="fence-x"),
        ),
        ("locations.CheckLocations", _check(job_ids=["job-a"])),
        ("locations.EvaluateTrails", location_pb2.EvaluateTrailsRequest(samples=_samples())),
        ("locations.ReportLocations", location_pb2.ReportLocationsRequest(samples=_samples())),
        (
            "timeclock.ClockIn",
            timeclock_pb2.ClockInRequest(
                time_clock_id=TC,
                user_id=USER,
                job_id="job-a",
                timezone="America/New_York",
                scheduler_shift_id="s-1",
                location_data=_loc(),
                timestamp=t,
                idempotency_key="idem-1",
            ),
        ),
        (
            "timeclock.ClockOut",
            timeclock_pb2.ClockOutRequest(
                time_clock_id=TC,
                user_id=USER,
                timezone="America/New_York",
                location_data=_loc(),
                timestamp=t,
                idempotency_key="idem-2",
            ),
        ),
        (
            "timeclock.StartManualBreak",
            timeclock_pb2.StartManualBreakRequest(
                time_clock_id=TC,
                manual_break_id="lunch",
                user_id=USER,
                timezone="America/New_York",
                location_data=_loc(),
                timestamp=t,
                idempotency_key="idem-3",
            ),
        ),
        (
            "timeclock.EndManualBreak",
            timeclock_pb2.EndManualBreakRequest(
                time_clock_id=TC,
                user_id=USER,
                timezone="America/New_York",
                location_data=_loc(),
                timestamp=t,
                idempotency_key="idem-4",
            ),
        ),
        (
            "timeclock.ValidatePunch",
            timeclock_pb2.ValidatePunchRequest(
                clock_in=timeclock_pb2.ClockInRequest(
                    time_clock_id=TC, user_id=USER, job_id="job-a", location_data=_loc()
                )
            ),
        ),
        (
            "scheduler.CreateShifts",
            scheduler_pb2.CreateShiftsRequest(scheduler_id=SCHED, shifts=[_shift()]),
        ),
        ("timeclock.CreateTimeActivities", _activities(t)),
        (
            "timeclock.UpdateTimeActivity",
            timeclock_pb2.UpdateTimeActivityRequest(
                time_clock_id=TC,
                activity_id="shift-x",
                modified_at=t,
                start=_ta_point(t - 3600),
                end=_ta_point(t - 60),
                job_id="job-a",
                notes="moved",
            ),
        ),
        (
            "timeclock.DeleteTimeActivity",
            timeclock_pb2.DeleteTimeActivityRequest(
                time_clock_id=TC, activity_id="shift-x", modified_at=t
            ),
        ),
        (
            "timeclock.ListTimeActivities",
            timeclock_pb2.ListTimeActivitiesRequest(
                time_clock_id=TC, start_time=t - 86_400, end_time=t, job_ids=["job-a"]
            ),
        ),
    ]


def _ta_point(ts: int) -> timeclock_pb2.TimeActivityPoint:
    return timeclock_pb2.TimeActivityPoint(
        timestamp=ts, timezone="America/New_York", location_data=_loc()
    )


def _activities(t: int, **kw: Any) -> timeclock_pb2.CreateTimeActivitiesRequest:
    """A completed shift and a break of the corpus's user (a scheduler shift
    that does not exist, so that the whole request is never stored)."""
    group = timeclock_pb2.UserTimeActivities(
        user_id=USER,
        shifts=[
            timeclock_pb2.TimeActivityShift(
                start=_ta_point(t - 7200),
                end=_ta_point(t - 3600),
                job_id="job-a",
                scheduler_shift_id="s-1",
                notes="imported",
            )
        ],
        manual_breaks=[
            timeclock_pb2.TimeActivityBreak(
                manual_break_id="lunch", start=_ta_point(t - 3600), end=_ta_point(t - 3000)
            )
        ],
    )
    return _fill(
        timeclock_pb2.CreateTimeActivitiesRequest(
            time_clock_id=TC, time_activities=[group], idempotency_key="idem-ta"
        ),
        kw,
    )


def _string_and_float_paths(msg: Message, prefix: str = "") -> Iterator[tuple[str, Any, str]]:
    """(path, field descriptor, kind) of every set string and singular float."""
    for fd, value in msg.ListFields():
        path = f"{prefix}{fd.name}"
        repeated = fd.is_repeated
        if fd.type == FieldDescriptor.TYPE_STRING:
            yield (f"{path}[0]" if repeated else path), fd, "text"
        elif fd.type == FieldDescriptor.TYPE_DOUBLE and not repeated:
            yield path, fd, "number"
        elif fd.type == FieldDescriptor.TYPE_MESSAGE:
            if fd.message_type is None or fd.message_type.full_name.startswith("google.protobuf."):
                continue
            first = value[0] if repeated else value
            yield from _string_and_float_paths(first, f"{path}[0]." if repeated else f"{path}.")


def _spoiled(msg: Message, path: str, value: Any) -> Message:
    out = type(msg)()
    out.CopyFrom(msg)
    target: Any = out
    parts = path.split(".")
    for part in parts[:-1]:
        name, _, idx = part.partition("[")
        target = getattr(target, name)
        if idx:
            target = target[int(idx[:-1])]
    name, _, idx = parts[-1].partition("[")
    if idx:
        getattr(target, name)[int(idx[:-1])] = value
    else:
        setattr(target, name, value)
    return out


#: The reason a non-finite number gets, by RPC (and whether the answer names
#: the field): a coordinate of a fence, of a punch, or a setting.
NUMBER_REASONS = {
    "geofences.CreateGeofences": ("INVALID_COORDINATES", True),
    "timeclock.ClockIn": ("INVALID_LOCATION", False),
    "timeclock.ClockOut": ("INVALID_LOCATION", False),
    "timeclock.StartManualBreak": ("INVALID_LOCATION", False),
    "timeclock.EndManualBreak": ("INVALID_LOCATION", False),
    "timeclock.ValidatePunch": ("INVALID_LOCATION", False),
    "timeclock.CreateTimeActivities": ("INVALID_LOCATION", False),
    # The activity is looked up first, and the corpus's does not exist.
    "timeclock.UpdateTimeActivity": (None, False),
    "admin.CreateTimeClock": ("INVALID_ARGUMENT", True),
    "admin.UpdateTimeClock": ("INVALID_ARGUMENT", True),
}


def derived_cases() -> list[Case]:
    cases = []
    for method, full in full_requests():
        for path, _, kind in _string_and_float_paths(full):
            if kind == "text":
                cases.append(
                    Case(
                        f"{method} {path} NUL",
                        method,
                        _spoiled(full, path, "ok\x00"),
                        "INVALID_ARGUMENT",
                        path,
                    )
                )
                # Each field's own rule says how long it may be, with its own
                # reason; whatever that is, both stores must give it.
                cases.append(
                    Case(
                        f"{method} {path} too long", method, _spoiled(full, path, "x" * LONG), None
                    )
                )
                continue
            reason, named = NUMBER_REASONS[method]
            for label, number in (("NaN", math.nan), ("inf", math.inf), ("-inf", -math.inf)):
                cases.append(
                    Case(
                        f"{method} {path} {label}",
                        method,
                        _spoiled(full, path, number),
                        reason,
                        path if named else None,
                    )
                )
    return cases


def _json_cases() -> list[Case]:
    out = []
    deep: Any = "leaf"
    for _ in range(20):
        deep = [deep]
    for label, value, field in (
        ("NaN custom field", math.nan, "shifts[0].custom_fields[0].value"),
        ("infinite custom field", math.inf, "shifts[0].custom_fields[0].value"),
        ("deep custom field", deep, "shifts[0].custom_fields[0].value"),
        ("huge custom field", "x" * 17_000, "shifts[0].custom_fields[0].value"),
        ("big custom field", ["y" * 1000] * 20, "shifts[0].custom_fields[0].value"),
    ):
        s = _shift()
        del s.custom_fields[:]
        cf = s.custom_fields.add(id="cf")
        if isinstance(value, float):
            cf.value.number_value = value
        elif isinstance(value, list):
            cf.value.list_value.extend(value)
        else:
            cf.value.string_value = value
        req = scheduler_pb2.CreateShiftsRequest(scheduler_id=SCHED, shifts=[s])
        out.append(
            Case(f"CreateShifts {label}", "scheduler.CreateShifts", req, "INVALID_ARGUMENT", field)
        )
    for label, status in (
        ("NaN status", {"a": math.nan}),
        ("NUL key in status", {"a\x00": 1}),
        (
            "deep status",
            {
                "a": {
                    "b": {
                        "c": {
                            "d": {
                                "e": {
                                    "f": {
                                        "g": {
                                            "h": {
                                                "i": {
                                                    "j": {
                                                        "k": {
                                                            "l": {
                                                                "m": {"n": {"o": {"p": {"q": 1}}}}
                                                            }
                                                        }
                                                    }
                                                }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            },
        ),
    ):
        s = _shift()
        del s.statuses[:]
        s.statuses.add().update(status)
        req = scheduler_pb2.CreateShiftsRequest(scheduler_id=SCHED, shifts=[s])
        out.append(
            Case(
                f"CreateShifts {label}",
                "scheduler.CreateShifts",
                req,
                "INVALID_ARGUMENT",
                "shifts[0].statuses[0]",
            )
        )
    return out


def hand_cases() -> list[Case]:
    """What the fields mean, RPC by RPC."""
    t = now()
    c: list[Case] = []

    def add(name: str, method: str, req: Message, reason: str, field: str | None = None) -> None:
        c.append(Case(name, method, req, reason, field))

    ctc = "admin.CreateTimeClock"
    for label, tc, reason in (
        ("id 0 is assigned, so a negative one", _time_clock(id=-1), "INVALID_ARGUMENT"),
        ("id beyond 2^53-1", _time_clock(id=2**53), "INVALID_ARGUMENT"),
        ("id int64 max", _time_clock(id=2**63 - 1), "INVALID_ARGUMENT"),
        ("empty name", _time_clock(name=""), "INVALID_ARGUMENT"),
        ("long name", _time_clock(name="n" * 256), "INVALID_ARGUMENT"),
        ("bad timezone", _time_clock(timezone="Mars/Olympus"), "INVALID_TIMEZONE"),
        ("long timezone", _time_clock(timezone="A" * 4000), "INVALID_TIMEZONE"),
        ("NaN tolerance", _time_clock(accuracy_tolerance_m=math.nan), "INVALID_ARGUMENT"),
        ("negative tolerance", _time_clock(accuracy_tolerance_m=-1), "INVALID_ARGUMENT"),
        ("huge tolerance", _time_clock(accuracy_tolerance_m=1e9), "INVALID_ARGUMENT"),
        ("unknown policy", _time_clock(geofence_policy=99), "INVALID_ARGUMENT"),
        ("exists already", _time_clock(id=TC), "TIME_CLOCK_ALREADY_EXISTS"),
    ):
        add(
            f"CreateTimeClock {label}", ctc, admin_pb2.CreateTimeClockRequest(time_clock=tc), reason
        )
    dup_jobs = _time_clock()
    dup_jobs.jobs.add(id="job-a", name="again")
    add(
        "CreateTimeClock duplicate job ids",
        ctc,
        admin_pb2.CreateTimeClockRequest(time_clock=dup_jobs),
        "INVALID_ARGUMENT",
    )
    long_job = _time_clock()
    long_job.jobs.add(id="j" * 129, name="long id")
    add(
        "CreateTimeClock job id over 128",
        ctc,
        admin_pb2.CreateTimeClockRequest(time_clock=long_job),
        "INVALID_ARGUMENT",
    )
    bad_color = _time_clock()
    bad_color.jobs[0].color = "#" + "F" * 4000
    add(
        "CreateTimeClock bad colour",
        ctc,
        admin_pb2.CreateTimeClockRequest(time_clock=bad_color),
        "INVALID_ARGUMENT",
    )
    for label, user in (("negative", -5), ("beyond 2^53-1", 2**53), ("int64 max", 2**63 - 1)):
        bad_user = _time_clock()
        bad_user.user_ids.append(user)
        add(
            f"CreateTimeClock {label} user",
            ctc,
            admin_pb2.CreateTimeClockRequest(time_clock=bad_user),
            "INVALID_ARGUMENT",
            "time_clock.user_ids",
        )
        add(
            f"CreateScheduler {label} user",
            "admin.CreateScheduler",
            admin_pb2.CreateSchedulerRequest(scheduler=_scheduler(user_ids=[USER, user])),
            "INVALID_ARGUMENT",
            "scheduler.user_ids",
        )
    mandatory = _time_clock()
    mandatory.manual_break_types.add(id="rest", name="Rest", is_mandatory=True)
    add(
        "CreateTimeClock mandatory break without duration",
        ctc,
        admin_pb2.CreateTimeClockRequest(time_clock=mandatory),
        "INVALID_ARGUMENT",
    )
    exit_nan = _time_clock()
    exit_nan.exit_detection.buffer_low_accuracy_m = -3
    add(
        "CreateTimeClock negative exit buffer",
        ctc,
        admin_pb2.CreateTimeClockRequest(time_clock=exit_nan),
        "INVALID_ARGUMENT",
    )
    add(
        "CreateTimeClock no time clock", ctc, admin_pb2.CreateTimeClockRequest(), "INVALID_ARGUMENT"
    )
    for label, field, tc in (
        ("100,001 users", "user_ids", _time_clock(user_ids=list(range(1, 100_002)))),
        (
            "1001 jobs",
            "jobs",
            _time_clock(jobs=[admin_pb2.Job(id=f"j{i}", name="j") for i in range(1001)]),
        ),
        (
            # Counted with their sub-jobs, before any is read.
            "1001 nested jobs",
            "jobs",
            _time_clock(
                jobs=[
                    admin_pb2.Job(
                        id="top",
                        name="j",
                        sub_jobs=[admin_pb2.Job(id=f"j{i}", name="j") for i in range(1000)],
                    )
                ]
            ),
        ),
        ("33-deep jobs", "jobs", _time_clock(jobs=[_job_chain(33)])),
        (
            "101 break types",
            "manual_break_types",
            _time_clock(
                manual_break_types=[
                    admin_pb2.ManualBreakType(id=f"b{i}", name="b") for i in range(101)
                ]
            ),
        ),
    ):
        add(
            f"CreateTimeClock {label}",
            ctc,
            admin_pb2.CreateTimeClockRequest(time_clock=tc),
            "INVALID_ARGUMENT",
            f"time_clock.{field}",
        )
    add(
        "CreateScheduler 33-deep jobs",
        "admin.CreateScheduler",
        admin_pb2.CreateSchedulerRequest(scheduler=_scheduler(jobs=[_job_chain(33)])),
        "INVALID_ARGUMENT",
        "scheduler.jobs",
    )
    add(
        "CreateScheduler 100,001 users",
        "admin.CreateScheduler",
        admin_pb2.CreateSchedulerRequest(scheduler=_scheduler(user_ids=list(range(1, 100_002)))),
        "INVALID_ARGUMENT",
        "scheduler.user_ids",
    )

    add(
        "UpdateTimeClock missing",
        "admin.UpdateTimeClock",
        admin_pb2.UpdateTimeClockRequest(time_clock=_time_clock(id=TC + 55)),
        "TIME_CLOCK_NOT_FOUND",
    )
    add(
        "UpdateTimeClock bad zone",
        "admin.UpdateTimeClock",
        admin_pb2.UpdateTimeClockRequest(time_clock=_time_clock(id=TC, timezone="nowhere")),
        "INVALID_TIMEZONE",
    )
    add(
        "UpdateTimeClock drops a job in use",
        "admin.UpdateTimeClock",
        admin_pb2.UpdateTimeClockRequest(time_clock=_time_clock(id=TC, jobs=[])),
        "JOB_IN_USE",
    )
    for label, tc_id in (("missing", TC + 55), ("negative", -1), ("int64 min", -(2**63))):
        add(
            f"GetTimeClock {label}",
            "admin.GetTimeClock",
            admin_pb2.GetTimeClockRequest(time_clock_id=tc_id),
            "TIME_CLOCK_NOT_FOUND",
        )
    sds = "admin.SetDayStatus"
    for label, req, reason in (
        (
            "bad date",
            admin_pb2.SetDayStatusRequest(
                time_clock_id=TC, user_id=USER, dates=["2026-02-30"], status=admin_pb2.LOCKED
            ),
            "INVALID_ARGUMENT",
        ),
        (
            "not a date",
            admin_pb2.SetDayStatusRequest(
                time_clock_id=TC, user_id=USER, dates=["x" * 4000], status=admin_pb2.LOCKED
            ),
            "INVALID_ARGUMENT",
        ),
        (
            "no status",
            admin_pb2.SetDayStatusRequest(time_clock_id=TC, user_id=USER, dates=["2026-01-05"]),
            "INVALID_ARGUMENT",
        ),
        (
            "unknown status",
            admin_pb2.SetDayStatusRequest(
                time_clock_id=TC,
                user_id=USER,
                dates=["2026-01-05"],
                status=cast(admin_pb2.DayStatus.ValueType, 42),
            ),
            "INVALID_ARGUMENT",
        ),
        (
            "too many dates",
            admin_pb2.SetDayStatusRequest(
                time_clock_id=TC, user_id=USER, dates=["2026-01-05"] * 367, status=admin_pb2.LOCKED
            ),
            "BATCH_TOO_LARGE",
        ),
        (
            "unassigned user",
            admin_pb2.SetDayStatusRequest(
                time_clock_id=TC, user_id=1, dates=["2026-01-05"], status=admin_pb2.LOCKED
            ),
            "USER_NOT_ASSIGNED",
        ),
        (
            "missing clock",
            admin_pb2.SetDayStatusRequest(
                time_clock_id=TC + 55, user_id=USER, dates=["2026-01-05"], status=admin_pb2.LOCKED
            ),
            "TIME_CLOCK_NOT_FOUND",
        ),
    ):
        add(f"SetDayStatus {label}", sds, req, reason)
    add(
        "ListDayStatuses missing clock",
        "admin.ListDayStatuses",
        admin_pb2.ListDayStatusesRequest(time_clock_id=TC + 55, user_id=USER),
        "TIME_CLOCK_NOT_FOUND",
    )

    cs = "admin.CreateScheduler"
    for label, s, reason in (
        ("negative id", _scheduler(id=-2), "INVALID_ARGUMENT"),
        ("id beyond 2^53-1", _scheduler(id=2**60), "INVALID_ARGUMENT"),
        ("empty name", _scheduler(name=""), "INVALID_ARGUMENT"),
        ("bad zone", _scheduler(timezone="Nowhere/City"), "INVALID_TIMEZONE"),
        ("exists", _scheduler(id=SCHED), "SCHEDULER_ALREADY_EXISTS"),
    ):
        add(f"CreateScheduler {label}", cs, admin_pb2.CreateSchedulerRequest(scheduler=s), reason)
    add(
        "UpdateScheduler missing",
        "admin.UpdateScheduler",
        admin_pb2.UpdateSchedulerRequest(scheduler=_scheduler(id=SCHED + 55)),
        "SCHEDULER_NOT_FOUND",
    )
    add(
        "GetScheduler missing",
        "admin.GetScheduler",
        admin_pb2.GetSchedulerRequest(scheduler_id=SCHED + 55),
        "SCHEDULER_NOT_FOUND",
    )

    for label, key_req, reason in (
        ("no scopes", admin_pb2.CreateApiKeyRequest(), "INVALID_ARGUMENT"),
        ("unknown scope", admin_pb2.CreateApiKeyRequest(scopes=["root"]), "INVALID_ARGUMENT"),
        (
            "long label",
            admin_pb2.CreateApiKeyRequest(scopes=["read"], label="l" * 300),
            "INVALID_ARGUMENT",
        ),
    ):
        add(f"CreateApiKey {label}", "admin.CreateApiKey", key_req, reason)
    for m in ("RotateApiKey", "RevokeApiKey"):
        req_t = getattr(admin_pb2, f"{m}Request")
        add(f"{m} unknown", f"admin.{m}", req_t(key_id="ffffffffffff"), "API_KEY_NOT_FOUND")
        add(f"{m} long id", f"admin.{m}", req_t(key_id="f" * 5000), "API_KEY_NOT_FOUND")
        add(f"{m} empty id", f"admin.{m}", req_t(), "API_KEY_NOT_FOUND")

    cg = "geofences.CreateGeofences"
    for label, fence, reason in (
        ("size 0", _fence(fence_size=0), "INVALID_FENCE_SIZE"),
        ("size over the limit", _fence(fence_size=1525), "INVALID_FENCE_SIZE"),
        ("negative size", _fence(fence_size=-100), "INVALID_FENCE_SIZE"),
        ("empty name", _fence(name=""), "INVALID_NAME"),
        ("long name", _fence(name="g" * 256), "INVALID_NAME"),
        ("long address", _fence(location=_loc("a" * 1001)), "INVALID_LOCATION"),
        (
            "latitude 91",
            _fence(location=common_pb2.Location(address="x", latitude=91, longitude=0)),
            "INVALID_COORDINATES",
        ),
        (
            "longitude -181",
            _fence(location=common_pb2.Location(address="x", latitude=0, longitude=-181)),
            "INVALID_COORDINATES",
        ),
        ("no location", _fence(location=common_pb2.Location(address="x")), "INVALID_COORDINATES"),
        ("unknown exit action", _fence(on_geofence_exit_action="explode"), "INVALID_EXIT_ACTION"),
        ("unknown job", _fence(job_ids=["job-zzz"]), "JOBS_NOT_IN_TIME_CLOCK"),
        ("too many jobs", _fence(job_ids=[f"j{i}" for i in range(101)]), "TOO_MANY_JOB_IDS"),
        ("long job id", _fence(job_ids=["j" * 5000]), "JOBS_NOT_IN_TIME_CLOCK"),
    ):
        add(
            f"CreateGeofences {label}",
            cg,
            geofences_pb2.CreateGeofencesRequest(time_clock_id=TC, geofences=[fence]),
            reason,
        )
    add(
        "CreateGeofences none",
        cg,
        geofences_pb2.CreateGeofencesRequest(time_clock_id=TC),
        "INVALID_ARGUMENT",
    )
    add(
        "CreateGeofences 1001",
        cg,
        geofences_pb2.CreateGeofencesRequest(time_clock_id=TC, geofences=[_fence()] * 1001),
        "TOO_MANY_GEOFENCES",
    )
    add(
        "CreateGeofences missing clock",
        cg,
        geofences_pb2.CreateGeofencesRequest(time_clock_id=TC + 55, geofences=[_fence()]),
        "TIME_CLOCK_NOT_FOUND",
    )
    add(
        "GetGeofence missing",
        "geofences.GetGeofence",
        geofences_pb2.GetGeofenceRequest(time_clock_id=TC, fence_id="nope"),
        "GEOFENCE_NOT_FOUND",
    )
    add(
        "GetGeofence long id",
        "geofences.GetGeofence",
        geofences_pb2.GetGeofenceRequest(time_clock_id=TC, fence_id="f" * 10_000),
        "GEOFENCE_NOT_FOUND",
    )
    add(
        "DeleteGeofence missing",
        "geofences.DeleteGeofence",
        geofences_pb2.DeleteGeofenceRequest(time_clock_id=TC, fence_id="nope"),
        "GEOFENCE_NOT_FOUND",
    )
    add(
        "ListGeofences missing clock",
        "geofences.ListGeofences",
        geofences_pb2.ListGeofencesRequest(time_clock_id=TC + 55),
        "TIME_CLOCK_NOT_FOUND",
    )

    cl = "locations.CheckLocations"
    add("CheckLocations missing clock", cl, _check(time_clock_id=TC + 55), "TIME_CLOCK_NOT_FOUND")
    add("CheckLocations unknown job", cl, _check(job_id="job-zzz"), "JOB_NOT_FOUND")
    mismatched = _check()
    mismatched.packed.longitudes.append(1.0)
    add("CheckLocations columns of different lengths", cl, mismatched, "INVALID_ARGUMENT")
    raw = location_pb2.CheckLocationsRequest(time_clock_id=TC)
    raw.raw.latitudes_f64 = b"\x00" * 12
    raw.raw.longitudes_f64 = b"\x00" * 12
    add("CheckLocations raw column not a multiple of 8", cl, raw, "INVALID_ARGUMENT")
    add(
        "CheckLocations too many job ids",
        cl,
        _check(job_ids=[f"j{i}" for i in range(10_001)]),
        "BATCH_TOO_LARGE",
    )

    for m, req_t in (
        ("EvaluateTrails", location_pb2.EvaluateTrailsRequest),
        ("ReportLocations", location_pb2.ReportLocationsRequest),
    ):
        method = f"locations.{m}"
        for label, samples, reason in (
            ("columns of different lengths", _samples(timestamps=[t]), "INVALID_ARGUMENT"),
            ("latitudes of a wrong length", _samples(latitudes=[1.0]), "INVALID_ARGUMENT"),
            ("job ids of a wrong length", _samples(job_ids=["job-a"]), "INVALID_ARGUMENT"),
        ):
            add(f"{m} {label}", method, req_t(samples=samples), reason)

    punches: list[tuple[str, type[Message], dict[str, Any]]] = [
        ("ClockIn", timeclock_pb2.ClockInRequest, {}),
        ("ClockOut", timeclock_pb2.ClockOutRequest, {}),
        ("StartManualBreak", timeclock_pb2.StartManualBreakRequest, {"manual_break_id": "lunch"}),
        ("EndManualBreak", timeclock_pb2.EndManualBreakRequest, {}),
    ]
    for m, req_t, extra in punches:
        method = f"timeclock.{m}"
        base = {"time_clock_id": TC, "user_id": USER, **extra}
        for label, kw, reason in (
            ("missing clock", {"time_clock_id": TC + 55}, "TIME_CLOCK_NOT_FOUND"),
            ("unassigned user", {"user_id": 12345}, "USER_NOT_ASSIGNED"),
            ("future", {"timestamp": t + 3600}, "INVALID_TIMESTAMP_FUTURE"),
            ("older than 12 hours", {"timestamp": t - 13 * 3600}, "INVALID_TIMESTAMP_TOO_OLD"),
            ("in milliseconds", {"timestamp": t * 1000}, "INVALID_TIMESTAMP_FUTURE"),
            ("negative", {"timestamp": -5}, "INVALID_TIMESTAMP_TOO_OLD"),
            ("bad zone", {"timezone": "Atlantis/Capital"}, "INVALID_TIMEZONE"),
            ("long idempotency key", {"idempotency_key": "k" * 129}, "INVALID_ARGUMENT"),
            (
                "latitude only",
                {"location_data": common_pb2.Location(latitude=1)},
                "INVALID_LOCATION",
            ),
            (
                "latitude 95",
                {"location_data": common_pb2.Location(latitude=95, longitude=0)},
                "INVALID_LOCATION",
            ),
            (
                "negative accuracy",
                {"location_data": common_pb2.Location(latitude=1, longitude=1, accuracy=-1)},
                "INVALID_LOCATION",
            ),
            ("long address", {"location_data": _loc("a" * 1001)}, "INVALID_LOCATION"),
        ):
            add(f"{m} {label}", method, req_t(**{**base, **kw}), reason)
    add(
        "ClockIn unknown job",
        "timeclock.ClockIn",
        timeclock_pb2.ClockInRequest(time_clock_id=TC, user_id=USER, job_id="job-zzz"),
        "JOB_NOT_FOUND",
    )
    add(
        "ClockOut with no open shift",
        "timeclock.ClockOut",
        timeclock_pb2.ClockOutRequest(time_clock_id=TC, user_id=USER),
        "NO_OPEN_SHIFT",
    )
    add(
        "StartManualBreak unknown break",
        "timeclock.StartManualBreak",
        timeclock_pb2.StartManualBreakRequest(
            time_clock_id=TC, user_id=USER, manual_break_id="nap"
        ),
        "MANUAL_BREAK_NOT_FOUND",
    )
    add(
        "ListManualBreaks missing clock",
        "timeclock.ListManualBreaks",
        timeclock_pb2.ListManualBreaksRequest(time_clock_id=TC + 55),
        "TIME_CLOCK_NOT_FOUND",
    )
    add(
        "ValidatePunch empty",
        "timeclock.ValidatePunch",
        timeclock_pb2.ValidatePunchRequest(),
        "INVALID_ARGUMENT",
    )

    cta = "timeclock.CreateTimeActivities"
    group = timeclock_pb2.UserTimeActivities

    def one_shift(start: int, end: int, user: int = USER) -> Any:
        return [
            group(
                user_id=user,
                shifts=[
                    timeclock_pb2.TimeActivityShift(start=_ta_point(start), end=_ta_point(end))
                ],
            )
        ]

    prefix = "time_activities[0].shifts[0]"
    for label, groups, reason, where in (
        ("none", [], "INVALID_ARGUMENT", "time_activities"),
        ("an empty group", [group(user_id=USER)], "INVALID_ARGUMENT", "time_activities"),
        ("unassigned user", one_shift(t - 99, t - 9, 42), "USER_NOT_ASSIGNED", None),
        ("end before start", one_shift(t - 9, t - 99), "INVALID_TIME_RANGE", None),
        ("empty interval", one_shift(t - 9, t - 9), "INVALID_TIME_RANGE", None),
        ("in the future", one_shift(t - 99, t + 3600), "INVALID_TIMESTAMP_FUTURE", None),
        ("milliseconds", one_shift(t * 1000, t * 1000 + 9), "TIMESTAMP_NOT_SECONDS", None),
        ("negative", one_shift(-99, -9), "INVALID_ARGUMENT", None),
        ("zero", one_shift(0, 9), "INVALID_ARGUMENT", f"{prefix}.start.timestamp"),
        ("25 hours", one_shift(t - 25 * 3600, t), "SHIFT_TOO_LONG", f"{prefix}.end.timestamp"),
        (
            "1001 shifts",
            [group(user_id=USER, shifts=one_shift(t - 99, t - 9)[0].shifts[:1] * 1001)],
            "BATCH_TOO_LARGE",
            "time_activities",
        ),
        ("1001 groups", [group(user_id=USER)] * 1001, "BATCH_TOO_LARGE", "time_activities"),
    ):
        add(
            f"CreateTimeActivities {label}",
            cta,
            _activities(t, time_activities=groups),
            reason,
            where,
        )
    add(
        "CreateTimeActivities missing clock",
        cta,
        _activities(t, time_clock_id=TC + 55, time_activities=one_shift(t - 99, t - 9)),
        "TIME_CLOCK_NOT_FOUND",
    )
    missing: dict[str, Any] = {"time_clock_id": TC, "activity_id": "shift-nope", "modified_at": t}
    points: dict[str, Any] = {"start": _ta_point(t - 99), "end": _ta_point(t - 9)}
    add(
        "UpdateTimeActivity missing",
        "timeclock.UpdateTimeActivity",
        timeclock_pb2.UpdateTimeActivityRequest(**missing, **points),
        "TIME_ACTIVITY_NOT_FOUND",
    )
    add(
        "UpdateTimeActivity missing clock",
        "timeclock.UpdateTimeActivity",
        timeclock_pb2.UpdateTimeActivityRequest(**{**missing, "time_clock_id": TC + 55}, **points),
        "TIME_CLOCK_NOT_FOUND",
    )
    add(
        "DeleteTimeActivity missing",
        "timeclock.DeleteTimeActivity",
        timeclock_pb2.DeleteTimeActivityRequest(**missing),
        "TIME_ACTIVITY_NOT_FOUND",
    )
    lta = "timeclock.ListTimeActivities"
    for label, fields, reason, where in (
        ("empty window", {"start_time": t, "end_time": t}, "INVALID_ARGUMENT", "end_time"),
        ("reversed window", {"start_time": t, "end_time": t - 9}, "INVALID_ARGUMENT", "end_time"),
        ("93 days", {"start_time": t - 93 * 86_400, "end_time": t}, "INVALID_ARGUMENT", "end_time"),
        ("page of -1", {"page_size": -1}, "INVALID_ARGUMENT", "page_size"),
        ("page of 10,001", {"page_size": 10_001}, "INVALID_ARGUMENT", "page_size"),
        ("a made-up token", {"page_token": "eyJ4IjoxfQ"}, "INVALID_ARGUMENT", "page_token"),
        ("a token of NUL", {"page_token": "\x00"}, "INVALID_ARGUMENT", None),
        ("10,001 users", {"user_ids": list(range(1, 10_002))}, "BATCH_TOO_LARGE", "user_ids"),
        ("missing clock", {"time_clock_id": TC + 55}, "TIME_CLOCK_NOT_FOUND", None),
    ):
        lta_req = timeclock_pb2.ListTimeActivitiesRequest(
            time_clock_id=TC, start_time=t - 86_400, end_time=t
        )
        add(f"ListTimeActivities {label}", lta, _fill(lta_req, fields), reason, where)
    gus = "timeclock.GetUserStatuses"
    for label, fields, reason, where in (
        ("unassigned user", {"user_ids": [USER, 42]}, "USER_NOT_ASSIGNED", "user_ids[1]"),
        ("10,001 users", {"user_ids": list(range(1, 10_002))}, "BATCH_TOO_LARGE", None),
        ("missing clock", {"time_clock_id": TC + 55}, "TIME_CLOCK_NOT_FOUND", None),
    ):
        gus_req = timeclock_pb2.GetUserStatusesRequest(time_clock_id=TC)
        add(f"GetUserStatuses {label}", gus, _fill(gus_req, fields), reason, where)

    sh = "scheduler.CreateShifts"
    for label, shift, reason in (
        ("end before start", _shift(end_time=t), "INVALID_TIME_RANGE"),
        ("longer than 24 hours", _shift(end_time=t + 86_400 + 25 * 3600), "SHIFT_TOO_LONG"),
        (
            "in milliseconds",
            _shift(start_time=(t + 86_400) * 1000, end_time=(t + 90_000) * 1000),
            "TIMESTAMP_NOT_SECONDS",
        ),
        ("unknown job", _shift(job_id="job-zzz"), "JOB_NOT_IN_SCHEDULER"),
        ("bad zone", _shift(timezone="Nowhere"), "INVALID_TIMEZONE"),
        ("bad colour", _shift(color="red"), "INVALID_ARGUMENT"),
        ("long title", _shift(title="t" * 256), "INVALID_ARGUMENT"),
        (
            "too many spots",
            _shift(is_open_shift=True, open_spots=101, assigned_user_ids=[]),
            "OPEN_SPOTS_LIMIT",
        ),
    ):
        add(
            f"CreateShifts {label}",
            sh,
            scheduler_pb2.CreateShiftsRequest(scheduler_id=SCHED, shifts=[shift]),
            reason,
        )
    add(
        "CreateShifts none",
        sh,
        scheduler_pb2.CreateShiftsRequest(scheduler_id=SCHED),
        "INVALID_ARGUMENT",
    )
    add(
        "CreateShifts 501",
        sh,
        scheduler_pb2.CreateShiftsRequest(scheduler_id=SCHED, shifts=[_shift()] * 501),
        "TOO_MANY_SHIFTS",
    )
    add(
        "CreateShifts 100,001 assigned users",
        sh,
        scheduler_pb2.CreateShiftsRequest(
            scheduler_id=SCHED, shifts=[_shift(assigned_user_ids=list(range(1, 100_002)))]
        ),
        "INVALID_ARGUMENT",
        "shifts[0].assigned_user_ids",
    )
    add(
        "CreateShifts missing scheduler",
        sh,
        scheduler_pb2.CreateShiftsRequest(scheduler_id=SCHED + 55, shifts=[_shift()]),
        "SCHEDULER_NOT_FOUND",
    )
    many_notes = _shift()
    for _ in range(101):
        many_notes.notes.add(html="n")
    add(
        "CreateShifts 101 notes",
        sh,
        scheduler_pb2.CreateShiftsRequest(scheduler_id=SCHED, shifts=[many_notes]),
        "INVALID_ARGUMENT",
    )
    add(
        "ListShifts window over 92 days",
        "scheduler.ListShifts",
        scheduler_pb2.ListShiftsRequest(scheduler_id=SCHED, start_time=t, end_time=t + 93 * 86_400),
        "INVALID_ARGUMENT",
    )
    add(
        "ListShifts empty window",
        "scheduler.ListShifts",
        scheduler_pb2.ListShiftsRequest(scheduler_id=SCHED, start_time=t, end_time=t),
        "INVALID_ARGUMENT",
    )
    add(
        "ListShifts missing scheduler",
        "scheduler.ListShifts",
        scheduler_pb2.ListShiftsRequest(scheduler_id=SCHED + 55, start_time=t, end_time=t + 86_400),
        "SCHEDULER_NOT_FOUND",
    )
    # Webhook subscriptions
    wh = webhooks_pb2
    sub = wh.WebhookSubscription
    cws = "webhooks.CreateWebhookSubscription"
    for label, sub_msg, where in (
        ("no url", sub(), "subscription.url"),
        ("an ftp url", sub(url="ftp://example.com/x"), "subscription.url"),
        ("a url with credentials", sub(url="http://u:p@example.com/"), "subscription.url"),
        (
            "an unknown event type",
            sub(url="http://127.0.0.1:9/", event_types=["nope"]),
            "subscription.event_types",
        ),
        (
            "a short secret",
            sub(url="http://127.0.0.1:9/", secret="whsec_QUJD"),
            "subscription.secret",
        ),
        (
            "1,001 time clocks",
            sub(url="http://127.0.0.1:9/", time_clock_ids=range(1001)),
            "subscription.time_clock_ids",
        ),
    ):
        add(
            f"CreateWebhookSubscription {label}",
            cws,
            wh.CreateWebhookSubscriptionRequest(subscription=sub_msg),
            "BATCH_TOO_LARGE" if "1,001" in label else "INVALID_ARGUMENT",
            where,
        )
    missing_sub = "whsub_" + "0" * 32
    nf = "WEBHOOK_SUBSCRIPTION_NOT_FOUND"
    add(
        "GetWebhookSubscription missing",
        "webhooks.GetWebhookSubscription",
        wh.GetWebhookSubscriptionRequest(id=missing_sub),
        nf,
    )
    add(
        "GetWebhookSubscription a 10,000-character id",
        "webhooks.GetWebhookSubscription",
        wh.GetWebhookSubscriptionRequest(id="x" * 10_000),
        nf,
    )
    add(
        "UpdateWebhookSubscription missing",
        "webhooks.UpdateWebhookSubscription",
        wh.UpdateWebhookSubscriptionRequest(id=missing_sub, subscription=sub(url="http://a.b/")),
        nf,
    )
    add(
        "UpdateWebhookSubscription an unknown mask path",
        "webhooks.UpdateWebhookSubscription",
        wh.UpdateWebhookSubscriptionRequest(
            id=missing_sub, update_mask=field_mask_pb2.FieldMask(paths=["cursor"])
        ),
        "INVALID_ARGUMENT",
    )
    add(
        "DeleteWebhookSubscription missing",
        "webhooks.DeleteWebhookSubscription",
        wh.DeleteWebhookSubscriptionRequest(id=missing_sub),
        nf,
    )
    add(
        "ListWebhookDeliveries missing",
        "webhooks.ListWebhookDeliveries",
        wh.ListWebhookDeliveriesRequest(id=missing_sub),
        nf,
    )
    add(
        "ListWebhookDeliveries page size 501",
        "webhooks.ListWebhookDeliveries",
        wh.ListWebhookDeliveriesRequest(id=missing_sub, page_size=501),
        "INVALID_ARGUMENT",
    )
    # Not ASCII digits ('\u00b2' passes str.isdigit; int refuses it), past int64.
    for token in ("abc", "\u00b2", "\u0661\u0662", "9999999999999999999"):
        add(
            f"ListWebhookDeliveries a foreign token {token!a}",
            "webhooks.ListWebhookDeliveries",
            wh.ListWebhookDeliveriesRequest(id=missing_sub, page_token=token),
            "INVALID_ARGUMENT",
        )
    add(
        "ReplayWebhookSubscription from seq 0",
        "webhooks.ReplayWebhookSubscription",
        wh.ReplayWebhookSubscriptionRequest(id=missing_sub, from_seq=0),
        "INVALID_ARGUMENT",
    )
    add(
        "ReplayWebhookSubscription missing",
        "webhooks.ReplayWebhookSubscription",
        wh.ReplayWebhookSubscriptionRequest(id=missing_sub, from_seq=1),
        nf,
    )
    add(
        "ListWebhookSubscriptions (nothing to get wrong)",
        "webhooks.ListWebhookSubscriptions",
        wh.ListWebhookSubscriptionsRequest(),
        "OK",
    )
    return c


WATCH_CASES = [
    ("unknown type", location_pb2.WatchEventsRequest(types=["everything"]), "INVALID_ARGUMENT"),
    (
        "NUL in a type",
        location_pb2.WatchEventsRequest(types=["geofenceExit\x00"]),
        "INVALID_ARGUMENT",
    ),
    (
        "70,000 time clocks",
        location_pb2.WatchEventsRequest(time_clock_ids=range(1, 70_001)),
        "BATCH_TOO_LARGE",
    ),
]


#: Each store's answers, by case name (the two runs must agree).
ANSWERS: dict[str, dict[str, tuple[str, str | None, str]]] = {}


def corpus() -> list[Case]:
    return hand_cases() + _json_cases() + derived_cases()


def _setup(c: Client) -> None:
    """The store the corpus runs against: one clock with a fence, a scheduler."""
    c(c.admin.CreateTimeClock, admin_pb2.CreateTimeClockRequest(time_clock=_time_clock(id=TC)))
    c(c.admin.CreateScheduler, admin_pb2.CreateSchedulerRequest(scheduler=_scheduler(id=SCHED)))
    c(
        c.geofences.CreateGeofences,
        geofences_pb2.CreateGeofencesRequest(time_clock_id=TC, geofences=[_fence()]),
    )


def _answer(c: Client, case: Case) -> tuple[str, str | None, str]:
    service, _, name = case.method.partition(".")
    method: Callable[..., Any] = getattr(getattr(c, service), name)
    try:
        reply = method(case.request, metadata=c.metadata, timeout=30)
    except grpc.RpcError as err:
        info, violations = details(err)
        fields = [f for f, _ in violations]
        size = len(err.details() or "") + sum(len(str(v)) for _, v in trailing(err))
        assert size < 4096, f"{case.name}: an answer of {size} bytes"
        return info.reason, (fields[0] if fields else None), err.code().name
    if isinstance(reply, timeclock_pb2.ValidatePunchResponse) and not reply.data.allowed:
        return reply.data.reason, None, "OK, not allowed"  # what the punch would be told
    return "OK", None, "OK"


# -- the same bounds over HTTP -----------------------------------------------------


@dataclass
class HttpCase:
    name: str
    method: str
    path: str
    body: Any  # None: no body; bytes: sent as they are
    field: str  # the field the refusal must name


def _http_bodies() -> list[tuple[str, str, Any, str]]:
    """A full, valid body of every HTTP route that takes one (method, path,
    body, the path of the body's root in problems: "" or "shifts")."""
    tc, s = f"/time-clock/v1/time-clocks/{TC}", f"/scheduler/v1/schedulers/{SCHED}"
    here = {"address": "gate", "latitude": FENCE_SITE[0], "longitude": FENCE_SITE[1]}
    point = {"timestamp": now() - 7200, "timezone": "America/New_York", "locationData": here}
    later = {**point, "timestamp": now() - 3600}
    clock = {
        "id": TC + 200,
        "name": "Depot",
        "timezone": "America/New_York",
        "jobs": [{"id": "job-a", "name": "A", "color": "#123456", "subJobs": [{"id": "k"}]}],
        "userIds": [USER],
        "manualBreaksEnabled": True,
        "manualBreakTypes": [{"id": "lunch", "name": "Lunch"}],
    }
    scheduler = {"id": SCHED + 200, "name": "Store", "timezone": "UTC", "jobs": [{"id": "j"}]}
    shift = {
        "startTime": now() + 86_400,
        "endTime": now() + 90_000,
        "title": "Open",
        "jobId": "job-s",
        "timezone": "America/New_York",
        "assignedUserIds": [USER],
        "locationData": {"gps": {"address": "1 Main St", "latitude": 40.7, "longitude": -74}},
        "color": "#123456",
        "notes": [{"html": "<p>note</p>"}],
        "breaks": [{"name": "Lunch", "type": "paid", "startTime": 60, "duration": 30}],
        "statuses": [{"name": "ok"}],
        "shiftDetails": {"shiftLayers": [{"id": "l", "value": {"id": "v"}}], "shiftSource": "x"},
        "customFields": [{"id": "c", "value": "v"}],
    }
    punch = {"userId": USER, "timezone": "America/New_York", "locationData": here}
    fence = {
        "name": "Gate",
        "location": {"address": "1 Main St", "latitude": "40.7128", "longitude": "-74.006"},
        "jobIds": ["job-a"],
        "onGeofenceExitAction": "autoClockOut",
    }
    activity = {"start": point, "end": later, "jobId": "job-a", "notes": "n"}
    hook = {"url": "https://hooks.example.com/x", "eventTypes": ["clockIn"], "secret": "s"}
    return [
        ("POST", "/geopunch/v1/time-clocks", clock, ""),
        ("PUT", f"/geopunch/v1/time-clocks/{TC + 200}", clock, ""),
        ("POST", "/geopunch/v1/schedulers", scheduler, ""),
        ("PUT", f"/geopunch/v1/schedulers/{SCHED + 200}", scheduler, ""),
        (
            "POST",
            f"/geopunch/v1/time-clocks/{TC}/users/{USER}/days",
            {"dates": ["2026-01-05"], "status": "LOCKED"},
            "",
        ),
        ("POST", f"{tc}/clock-in", {**punch, "jobId": "job-a", "schedulerShiftId": "x"}, ""),
        ("POST", f"{tc}/clock-out", punch, ""),
        ("POST", f"{tc}/manual-breaks/lunch/clock-in", punch, ""),
        ("POST", f"{tc}/manual-breaks/clock-out", punch, ""),
        (
            "POST",
            f"/geopunch/v1/time-clocks/{TC}/validate-punch",
            {**punch, "kind": "breakStart", "manualBreakId": "lunch", "jobId": "j"},
            "",
        ),
        ("POST", f"{tc}/geofences", {"geofences": [fence]}, ""),
        ("POST", f"{s}/shifts", [shift], "shifts"),
        (
            "POST",
            f"{tc}/time-activities",
            {
                "timeActivities": [
                    {
                        "userId": USER,
                        "shifts": [{**activity, "schedulerShiftId": "x"}],
                        "manualBreaks": [{"manualBreakId": "lunch", "start": point, "end": later}],
                    }
                ]
            },
            "",
        ),
        (
            "PUT",
            f"{tc}/time-activities/abc",
            {**activity, "modifiedAt": 1, "manualBreakId": "lunch", "schedulerShiftId": "x"},
            "",
        ),
        ("POST", "/geopunch/v1/api-keys", {"scopes": ["read"], "label": "kiosk"}, ""),
        ("POST", "/webhooks/v1/subscriptions", hook, ""),
        ("PATCH", "/webhooks/v1/subscriptions/abc", {**hook, "status": "active"}, ""),
    ]


def _strings(value: Any, path: str) -> Iterator[tuple[str, list[Any]]]:
    """The path of every string of a JSON value, and how to reach it."""
    if isinstance(value, str):
        yield path, []
    elif isinstance(value, dict):
        for k, v in value.items():
            for p, steps in _strings(v, f"{path}.{k}" if path else k):
                yield p, [k, *steps]
    elif isinstance(value, list):
        for i, v in enumerate(value):
            for p, steps in _strings(v, f"{path}[{i}]"):
                yield p, [i, *steps]


def _appended(body: Any, steps: list[Any], bad: str) -> Any:
    """A copy of JSON ``body`` with ``bad`` added to the string ``steps`` reach."""
    out = copy.deepcopy(body)
    at = out
    for step in steps[:-1]:
        at = at[step]
    at[steps[-1]] = at[steps[-1]] + bad
    return out


def http_corpus() -> list[HttpCase]:
    """Every string of every HTTP body, path and query spoiled in turn with a
    NUL and with a lone surrogate (which JSON can spell and no UTF-8 holds),
    and JSON values past the bounds both APIs share."""
    cases: list[HttpCase] = []
    for method, path, body, root in _http_bodies():
        for field, steps in _strings(body, root):
            # Inside a JSON value kept unread, the value as a whole is named.
            named = re.sub(r"(\.statuses\[\d+\]|\.customFields\[\d+\]\.value)\..*", r"\1", field)
            for label, bad in (("NUL", "\x00"), ("surrogate", "\ud800")):
                cases.append(
                    HttpCase(
                        f"{method} {path} {field} {label}",
                        method,
                        path,
                        _appended(body, steps, bad),
                        named,
                    )
                )
        if root == "shifts":
            shift = body[0]
            deep: Any = "x"
            for _ in range(20):
                deep = [deep]
            for label, status, field in [
                ("deep", {"a": deep}, "shifts[0].statuses[0]"),
                ("long text", {"a": "x" * 10_001}, "shifts[0].statuses[0]"),
                ("NUL key", {"a\x00": 1}, "shifts[0].statuses[0]"),
            ]:
                cases.append(
                    HttpCase(
                        f"status {label}", method, path, [{**shift, "statuses": [status]}], field
                    )
                )
            big = {"id": "c", "value": ["x" * 1000] * 20}
            cases.append(
                HttpCase(
                    "custom field past 16 KiB",
                    method,
                    path,
                    [{**shift, "customFields": [big]}],
                    "shifts[0].customFields[0].value",
                )
            )
            # NaN is not JSON; Python's parser takes it, the bound refuses it.
            raw = json.dumps([{**shift, "statuses": [{"a": math.nan}]}]).encode()
            cases.append(HttpCase("status NaN", method, path, raw, "shifts[0].statuses[0]"))
    tc = f"/time-clock/v1/time-clocks/{TC}"
    nul = "%00"
    for method, path, field in [
        ("POST", f"{tc}/manual-breaks/a{nul}/clock-in", "manualBreakId"),
        ("GET", f"{tc}/geofences/a{nul}", "fenceId"),
        ("DELETE", f"{tc}/geofences/a{nul}", "fenceId"),
        ("DELETE", f"{tc}/time-activities/a{nul}?modifiedAt=1", "activityId"),
        ("GET", f"{tc}/time-activities?startTime=0&endTime=60&jobIds=a{nul}", "jobIds[0]"),
        ("GET", f"{tc}/time-activities?startTime=0&endTime=60&pageToken=a{nul}", "pageToken"),
        ("POST", f"/geopunch/v1/api-keys/a{nul}/rotate", "keyId"),
        ("DELETE", f"/geopunch/v1/api-keys/a{nul}", "keyId"),
        ("GET", f"/webhooks/v1/subscriptions/a{nul}", "subscriptionId"),
        ("GET", f"/webhooks/v1/subscriptions/a/deliveries?pageToken=a{nul}", "pageToken"),
        ("GET", f"/geopunch/v1/events?types=clockIn&types=a{nul}", "types[1]"),
        ("POST", f"/geopunch/v1/time-clocks/{TC}/check-locations?jobId=a{nul}", "jobId"),
    ]:
        body = {"userId": USER} if "clock-in" in path else None
        if "check-locations" in path:
            body = {"points": [{"latitude": 1.0, "longitude": 1.0}]}
        cases.append(HttpCase(f"{method} {path}", method, path, body, field))
    return cases


def _http_answer(http: httpx.Client, case: HttpCase) -> str | None:
    """What is wrong with the answer to ``case``, or None."""
    content = case.body if isinstance(case.body, bytes) else None
    if case.body is not None and content is None:
        content = json.dumps(case.body).encode()  # ASCII: a lone surrogate stays escaped
    headers = {"Content-Type": "application/json"} if content is not None else {}
    r = http.request(case.method, case.path, content=content, headers=headers)
    if r.status_code != 400:
        return f"{case.name}: {r.status_code} {r.text[:200]}"
    found = r.json()
    fields = {e["field"] for e in found.get("errors", [])}
    if found["code"] != "INVALID_ARGUMENT" or case.field not in fields:
        return f"{case.name}: {found['code']} at {sorted(fields)}, want {case.field}"
    return None


def test_the_http_corpus_spoils_every_route_that_takes_a_body(http: httpx.Client) -> None:
    spec = http.get("/openapi.json").json()
    taking = {
        (verb.upper(), path)
        for path, item in spec["paths"].items()
        for verb, op in item.items()
        if "requestBody" in op
    }
    templates = {(m, re.sub(r"/(\d+|abc|lunch)(?=/|$)", "/{}", p)) for m, p, _, _ in _http_bodies()}
    wanted = {(m, re.sub(r"\{[^}]+\}", "{}", p)) for m, p in taking}
    # Those whose bodies hold no text (a replay's sequence, a batch of points).
    wanted -= {
        ("POST", "/webhooks/v1/subscriptions/{}/replay"),
        ("POST", "/geopunch/v1/time-clocks/{}/check-locations"),
    }
    assert wanted <= templates, wanted - templates
    assert len(http_corpus()) >= 150


def test_the_corpus_is_large_and_covers_every_rpc() -> None:
    cases = corpus()
    assert len(cases) + len(WATCH_CASES) >= 300
    covered = {c.method.partition(".")[2] for c in cases} | {"WatchEvents"}
    from geopunch.adapters.grpc.auth import SCOPES

    assert set(SCOPES) - {"Ping", "ListApiKeys"} <= covered


@pytest.fixture
def corpus_server(store_url: str, tmp_path: Path) -> Iterator[tuple[ServerProcess, Client]]:
    srv = ServerProcess(db_url=store_url)
    srv.start(tmp_path)
    c = Client(srv.address)
    try:
        yield srv, c
    finally:
        c.close()
        srv.terminate()


def test_every_bad_request_gets_its_reason_and_writes_nothing(
    corpus_server: tuple[ServerProcess, Client], store_url: str
) -> None:
    srv, c = corpus_server
    _setup(c)
    before = row_counts(store_url)
    wrong = []
    answers = ANSWERS.setdefault(store_url.partition(":")[0], {})
    for case in corpus():
        reason, field, code = _answer(c, case)
        answers[case.name] = (reason, field, code)
        if case.reason is None:
            if code == "OK" or reason in ("INTERNAL", "UNKNOWN"):
                wrong.append(f"{case.name}: got {reason} ({code}), want a refusal")
        elif reason != case.reason or (case.field is not None and field != case.field):
            wrong.append(
                f"{case.name}: got {reason} at {field} ({code}), want {case.reason} at {case.field}"
            )
    for label, req, want in WATCH_CASES:
        stream = c.locations.WatchEvents(req, metadata=c.metadata, timeout=5)
        try:
            next(iter(stream))
            wrong.append(f"WatchEvents {label}: an event")
        except grpc.RpcError as err:
            got = details(err)[0].reason
            if got != want:
                wrong.append(f"WatchEvents {label}: got {got}, want {want}")
    with httpx.Client(
        base_url=f"http://{srv.http_address}", headers={"X-API-KEY": API_KEY}, timeout=30
    ) as http:
        wrong.extend(w for case in http_corpus() if (w := _http_answer(http, case)))
    assert wrong == [], "\n".join(wrong)
    if len(ANSWERS) == 2:  # both stores ran: they accept and refuse the same
        sqlite, postgres = ANSWERS.values()
        assert sqlite == postgres
    assert row_counts(store_url) == before
    with grpc.insecure_channel(srv.address) as ch:
        health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    logs = srv.logs()
    assert "unexpected error" not in logs and "Traceback" not in logs
