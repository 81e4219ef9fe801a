"""SchedulerService, and proto <-> domain conversion of schedulers and shifts."""

from __future__ import annotations

from typing import Any, cast

from google.protobuf import json_format, struct_pb2

from geopunch.adapters.grpc.auth import account
from geopunch.adapters.grpc.convert import jobs_from_proto, jobs_to_proto
from geopunch.domain.events import Json
from geopunch.domain.ports import Clock, UnitOfWorkFactory
from geopunch.domain.punches import PunchLocation
from geopunch.domain.shifts import (
    CustomField,
    ScheduledShift,
    Scheduler,
    ShiftBreak,
    ShiftLayer,
    ShiftLocation,
)
from geopunch.logs import request_id_var
from geopunch.service import scheduler as use_cases
from geopunch.v1 import admin_pb2, common_pb2, scheduler_pb2, scheduler_pb2_grpc


def scheduler_from_proto(
    msg: admin_pb2.Scheduler, prefix: str = "scheduler"
) -> tuple[Scheduler, list[str]]:
    jobs, paths = jobs_from_proto(msg.jobs, f"{prefix}.jobs")
    s = Scheduler(
        id=msg.id if msg.HasField("id") else 0,
        name=msg.name,
        timezone=msg.timezone,
        jobs=jobs,
        user_ids=frozenset(msg.user_ids),
        multi_user_shifts=msg.multi_user_shifts,
    )
    return s, paths


def scheduler_to_proto(s: Scheduler) -> admin_pb2.Scheduler:
    return admin_pb2.Scheduler(
        id=s.id,
        name=s.name,
        timezone=s.timezone,
        jobs=jobs_to_proto(s.jobs),
        user_ids=sorted(s.user_ids),
        multi_user_shifts=s.multi_user_shifts,
    )


def _opt(msg: Any, name: str) -> Any:
    return getattr(msg, name) if msg.HasField(name) else None


def shift_from_proto(msg: scheduler_pb2.ScheduledShift) -> ScheduledShift:
    """A shift as the caller sent it; output-only fields are ignored."""
    location = None
    if msg.HasField("location_data"):
        ld = msg.location_data
        gps = None
        if ld.HasField("gps"):
            g = ld.gps
            gps = PunchLocation(g.address, _opt(g, "latitude"), _opt(g, "longitude"))
        location = ShiftLocation(ld.is_referenced_to_job, gps)
    details = msg.shift_details
    return ScheduledShift(
        start_time=msg.start_time,
        end_time=msg.end_time,
        title=_opt(msg, "title"),
        job_id=_opt(msg, "job_id"),
        timezone=_opt(msg, "timezone"),
        is_published=_opt(msg, "is_published"),
        is_open_shift=_opt(msg, "is_open_shift"),
        open_spots=_opt(msg, "open_spots"),
        is_require_admin_approval=_opt(msg, "is_require_admin_approval"),
        assigned_user_ids=tuple(msg.assigned_user_ids),
        location=location,
        color=_opt(msg, "color"),
        notes=tuple(n.html for n in msg.notes),
        breaks=tuple(ShiftBreak(b.name, b.type, b.start_time, b.duration) for b in msg.breaks),
        statuses=tuple(json_format.MessageToDict(s) for s in msg.statuses),
        has_details=msg.HasField("shift_details"),
        shift_layers=tuple(ShiftLayer(x.id, x.value.id) for x in details.shift_layers),
        shift_source=_opt(details, "shift_source"),
        custom_fields=tuple(
            CustomField(c.id, _from_value(c.value) if c.HasField("value") else None)
            for c in msg.custom_fields
        ),
    )


def shift_to_proto(s: ScheduledShift) -> scheduler_pb2.ScheduledShift:
    msg = scheduler_pb2.ScheduledShift(
        id=s.id,
        start_time=s.start_time,
        end_time=s.end_time,
        timezone=s.timezone,
        is_published=bool(s.is_published),
        is_open_shift=bool(s.is_open_shift),
        assigned_user_ids=s.assigned_user_ids,
        color=s.color,
        notes=[scheduler_pb2.ShiftNote(html=n) for n in s.notes],
        breaks=[
            scheduler_pb2.ShiftBreak(
                name=b.name,
                type=b.type,
                start_time=b.start_minute,
                duration=b.duration_min,
                start_timestamp=b.start_ts,
                end_timestamp=b.end_ts,
            )
            for b in s.breaks
        ],
        creation_time=s.created_at,
        update_time=s.updated_at,
    )
    for name in ("title", "job_id", "open_spots", "is_require_admin_approval", "created_by"):
        value = getattr(s, name)
        if value is not None:
            setattr(msg, name, value)
    if s.location is not None:
        ld = msg.location_data
        ld.is_referenced_to_job = s.location.is_referenced_to_job
        gps = s.location.gps
        if gps is not None:
            ld.gps.CopyFrom(common_pb2.Location(address=gps.address))
            if gps.latitude is not None:
                ld.gps.latitude = gps.latitude
            if gps.longitude is not None:
                ld.gps.longitude = gps.longitude
    for status in s.statuses:
        msg.statuses.add().update(cast(Any, status))
    if s.has_details:
        msg.shift_details.SetInParent()
        for layer in s.shift_layers:
            msg.shift_details.shift_layers.add(id=layer.id).value.id = layer.value_id
        if s.shift_source is not None:
            msg.shift_details.shift_source = s.shift_source
    for cf in s.custom_fields:
        field = msg.custom_fields.add(id=cf.id)
        if cf.value is not None:
            _to_value(cf.value, field.value)
    return msg


def _from_value(v: struct_pb2.Value) -> Json:
    """A google.protobuf.Value as plain JSON data; scalars without json_format's detour."""
    kind = v.WhichOneof("kind")
    if kind == "string_value":
        return v.string_value
    if kind == "number_value":
        return v.number_value
    if kind == "bool_value":
        return v.bool_value
    if kind == "null_value" or kind is None:
        return None
    return json_format.MessageToDict(v)


def _to_value(data: Json, out: struct_pb2.Value) -> None:
    # bool before int: True is an int too
    if isinstance(data, str):
        out.string_value = data
    elif isinstance(data, bool):
        out.bool_value = data
    elif isinstance(data, int | float):
        out.number_value = data
    else:
        json_format.ParseDict(cast(Any, data), out)


def _reply(shifts: list[ScheduledShift]) -> scheduler_pb2.ShiftsResponse:
    return scheduler_pb2.ShiftsResponse(
        request_id=request_id_var.get(),
        data=scheduler_pb2.ShiftsResponse.Data(shifts=[shift_to_proto(s) for s in shifts]),
    )


class SchedulerServicer(scheduler_pb2_grpc.SchedulerServiceServicer):
    def __init__(self, uows: UnitOfWorkFactory, clock: Clock) -> None:
        self._uows = uows
        self._clock = clock

    def CreateShifts(
        self, request: scheduler_pb2.CreateShiftsRequest, context: Any
    ) -> scheduler_pb2.ShiftsResponse:
        created = use_cases.create_shifts(
            self._uows,
            self._clock,
            account(),
            request.scheduler_id,
            [shift_from_proto(s) for s in request.shifts],
            notify_users=request.notify_users if request.HasField("notify_users") else True,
            created_by=_opt(request, "created_by"),
        )
        return _reply(created)

    def ListShifts(
        self, request: scheduler_pb2.ListShiftsRequest, context: Any
    ) -> scheduler_pb2.ShiftsResponse:
        return _reply(
            use_cases.list_shifts(
                self._uows, account(), request.scheduler_id, request.start_time, request.end_time
            )
        )
