"""TimeClockService: punches in, shifts and breaks out, with idempotent retries."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from google.protobuf.message import Message

from geopunch.adapters.grpc.auth import account
from geopunch.domain.errors import DomainError, ErrorCode
from geopunch.domain.ports import AsyncTransactionRunner, Clock, FenceEngine, UnitOfWorkFactory
from geopunch.domain.punches import (
    Activity,
    PunchCommand,
    PunchKind,
    PunchLocation,
    PunchPoint,
    PunchResult,
)
from geopunch.logs import request_id_var
from geopunch.service import punches
from geopunch.v1 import timeclock_pb2, timeclock_pb2_grpc

R = TypeVar("R", bound=Message)


def location_from_proto(msg: Any) -> PunchLocation | None:
    if not msg.HasField("location_data"):
        return None
    loc = msg.location_data
    return PunchLocation(
        address=loc.address,
        latitude=loc.latitude if loc.HasField("latitude") else None,
        longitude=loc.longitude if loc.HasField("longitude") else None,
        accuracy=loc.accuracy if loc.HasField("accuracy") else None,
    )


def command_from_proto(kind: PunchKind, msg: Any) -> PunchCommand:
    return PunchCommand(
        kind=kind,
        time_clock_id=msg.time_clock_id,
        user_id=msg.user_id,
        timezone=msg.timezone,
        location=location_from_proto(msg),
        timestamp=msg.timestamp if msg.HasField("timestamp") else None,
        job_id=getattr(msg, "job_id", ""),
        scheduler_shift_id=getattr(msg, "scheduler_shift_id", ""),
        manual_break_id=getattr(msg, "manual_break_id", ""),
        is_resume_shift=(
            msg.is_resume_shift
            if kind is PunchKind.END_BREAK and msg.HasField("is_resume_shift")
            else None
        ),
        idempotency_key=msg.idempotency_key,
    )


# Answers are filled in place, field by field: a message passed to a
# constructor or to CopyFrom is copied whole, and a punch's answer nests three
# levels deep.


def fill_point(out: timeclock_pb2.PunchPoint, p: PunchPoint) -> None:
    out.timestamp = p.timestamp
    out.timezone = p.timezone
    out.source.type = p.source
    out.geofence_id = p.geofence_id or ""
    if p.location is not None:
        loc = out.location_data
        loc.address = p.location.address
        if p.location.latitude is not None:
            loc.latitude = p.location.latitude
        if p.location.longitude is not None:
            loc.longitude = p.location.longitude
        if p.location.accuracy is not None:
            loc.accuracy = p.location.accuracy


def fill_shift(shift: timeclock_pb2.Shift, a: Activity) -> None:
    shift.id = a.id
    shift.user_id = a.user_id
    fill_point(shift.start, a.start)
    shift.job_id = a.job_id or ""
    shift.created_at = a.created_at
    shift.modified_at = a.modified_at
    if a.end is not None:
        fill_point(shift.end, a.end)
    if a.scheduler_shift_id:
        shift.scheduler_shift_id = a.scheduler_shift_id


def shift_response(result: PunchResult, request_id: str) -> timeclock_pb2.ShiftResponse:
    response = timeclock_pb2.ShiftResponse(request_id=request_id)
    fill_shift(response.data.shift, result.activity)
    return response


def start_break_response(
    result: PunchResult, request_id: str
) -> timeclock_pb2.StartManualBreakResponse:
    brk = result.activity
    response = timeclock_pb2.StartManualBreakResponse(request_id=request_id)
    data = response.data
    data.id = brk.id
    fill_point(data.start, brk.start)
    data.is_switch_from_shift = result.closed_shift is not None
    data.manual_break_id = brk.break_type_id or ""
    data.job_id = brk.job_id or ""
    if result.closed_shift is not None:
        fill_shift(data.closed_shift, result.closed_shift)
    return response


def end_break_response(
    result: PunchResult, request_id: str
) -> timeclock_pb2.EndManualBreakResponse:
    brk = result.activity
    assert brk.end is not None
    response = timeclock_pb2.EndManualBreakResponse(request_id=request_id)
    data = response.data
    data.id = brk.id
    fill_point(data.end, brk.end)
    data.is_resume_shift = result.resumed_shift is not None
    if result.resumed_shift is not None:
        fill_shift(data.resumed_shift, result.resumed_shift)
    return response


_KINDS: dict[str, PunchKind] = {
    "clock_in": PunchKind.CLOCK_IN,
    "clock_out": PunchKind.CLOCK_OUT,
    "start_manual_break": PunchKind.START_BREAK,
    "end_manual_break": PunchKind.END_BREAK,
}


class TimeClockServicer(timeclock_pb2_grpc.TimeClockServiceServicer):
    """The four punches are coroutines: each is judged and written in a batch of
    the group committer's writer thread, and the event loop waits for none of
    them. Listing and validating read the store on the server's threads."""

    def __init__(
        self,
        uows: UnitOfWorkFactory,
        fences: FenceEngine,
        clock: Clock,
        committer: AsyncTransactionRunner,
    ) -> None:
        self._uows = uows
        self._fences = fences
        self._clock = clock
        self._committer = committer

    async def _punch(
        self,
        kind: PunchKind,
        request: Any,
        render: Callable[[PunchResult, str], R],
        response_type: type[R],
    ) -> R:
        """Run a punch and render its result (or the replayed one) once it is committed."""
        cmd = command_from_proto(kind, request)
        outcome = await punches.punch(
            self._committer, self._fences, self._clock, account(), cmd, request_id_var.get()
        )
        if outcome.legacy_answer is not None:
            return response_type.FromString(outcome.legacy_answer)
        assert outcome.result is not None
        return render(outcome.result, outcome.request_id)

    async def ClockIn(
        self, request: timeclock_pb2.ClockInRequest, context: Any
    ) -> timeclock_pb2.ShiftResponse:
        return await self._punch(
            PunchKind.CLOCK_IN, request, shift_response, timeclock_pb2.ShiftResponse
        )

    async def ClockOut(
        self, request: timeclock_pb2.ClockOutRequest, context: Any
    ) -> timeclock_pb2.ShiftResponse:
        return await self._punch(
            PunchKind.CLOCK_OUT, request, shift_response, timeclock_pb2.ShiftResponse
        )

    async def StartManualBreak(
        self, request: timeclock_pb2.StartManualBreakRequest, context: Any
    ) -> timeclock_pb2.StartManualBreakResponse:
        return await self._punch(
            PunchKind.START_BREAK,
            request,
            start_break_response,
            timeclock_pb2.StartManualBreakResponse,
        )

    async def EndManualBreak(
        self, request: timeclock_pb2.EndManualBreakRequest, context: Any
    ) -> timeclock_pb2.EndManualBreakResponse:
        return await self._punch(
            PunchKind.END_BREAK, request, end_break_response, timeclock_pb2.EndManualBreakResponse
        )

    def ListManualBreaks(
        self, request: timeclock_pb2.ListManualBreaksRequest, context: Any
    ) -> timeclock_pb2.ListManualBreaksResponse:
        tc = punches.list_manual_breaks(self._uows, account(), request.time_clock_id)
        return timeclock_pb2.ListManualBreaksResponse(
            request_id=request_id_var.get(),
            data=timeclock_pb2.ListManualBreaksResponse.Data(
                is_enabled=tc.manual_breaks_enabled,
                manual_breaks=[
                    timeclock_pb2.ManualBreakSetting(
                        id=b.id,
                        name=b.name,
                        is_mandatory=b.is_mandatory,
                        min_duration_seconds=b.min_duration_s,
                    )
                    for b in tc.manual_break_types
                ],
            ),
        )

    def ValidatePunch(
        self, request: timeclock_pb2.ValidatePunchRequest, context: Any
    ) -> timeclock_pb2.ValidatePunchResponse:
        which = request.WhichOneof("punch")
        if which is None:
            raise DomainError(ErrorCode.INVALID_ARGUMENT, "name the punch to validate")
        cmd = command_from_proto(_KINDS[which], getattr(request, which))
        data = timeclock_pb2.ValidatePunchResponse.Data(allowed=True)
        try:
            punches.validate_punch(self._uows, self._fences, self._clock, account(), cmd)
        except DomainError as err:
            data = timeclock_pb2.ValidatePunchResponse.Data(
                allowed=False, reason=err.code.value, message=err.message, metadata=err.metadata
            )
        return timeclock_pb2.ValidatePunchResponse(request_id=request_id_var.get(), data=data)
