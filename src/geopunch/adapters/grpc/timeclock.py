"""TimeClockService: punches in, shifts and breaks out, with idempotent retries."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from google.protobuf.message import Message

from geopunch.adapters.activity_messages import (
    encode_page,
    fill_activity_row,
    fill_point_fields,
)
from geopunch.adapters.board_lines import BoardLines
from geopunch.adapters.grpc.auth import account
from geopunch.adapters.grpc.totals_wire import encode_totals
from geopunch.domain.errors import DomainError, ErrorCode
from geopunch.domain.models import ManualBreakType
from geopunch.domain.ports import AsyncTransactionRunner, Clock, FenceEngine, UnitOfWorkFactory
from geopunch.domain.punches import (
    Activity,
    ActivityRow,
    PunchCommand,
    PunchKind,
    PunchLocation,
    PunchPoint,
    PunchResult,
    point_fields,
)
from geopunch.domain.timesheets import (
    Board,
    BreakDraft,
    Correction,
    ListQuery,
    PointDraft,
    ShiftDraft,
    UserActivities,
    UserState,
    UserStatus,
)
from geopunch.logs import request_id_var
from geopunch.service import punches, timesheets
from geopunch.v1 import timeclock_pb2, timeclock_pb2_grpc

R = TypeVar("R", bound=Message)


def location_from_proto(msg: Any) -> PunchLocation | None:
    """The ``location_data`` of a punch or time activity point, None when unset."""
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
    fill_point_fields(out, *point_fields(p))


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


def point_draft(msg: timeclock_pb2.TimeActivityPoint) -> PointDraft:
    return PointDraft(msg.timestamp, msg.timezone, location_from_proto(msg))


def groups_from_proto(msg: timeclock_pb2.CreateTimeActivitiesRequest) -> list[UserActivities]:
    return [
        UserActivities(
            g.user_id,
            tuple(
                ShiftDraft(
                    point_draft(s.start),
                    point_draft(s.end),
                    s.job_id,
                    s.scheduler_shift_id,
                    s.notes,
                )
                for s in g.shifts
            ),
            tuple(
                BreakDraft(b.manual_break_id, point_draft(b.start), point_draft(b.end), b.notes)
                for b in g.manual_breaks
            ),
        )
        for g in msg.time_activities
    ]


def fill_activity(out: timeclock_pb2.TimeActivity, a: Activity) -> None:
    fill_activity_row(out, ActivityRow.of(a))


_STATES = {state: timeclock_pb2.UserStatus.State.Value(state.value) for state in UserState}


def fill_status(out: timeclock_pb2.UserStatus, s: UserStatus) -> None:
    out.user_id = s.user_id
    out.state = _STATES[s.state]
    if s.activity is not None:
        fill_activity_row(out.activity, s.activity)
    if s.break_type is not None:
        fill_break_setting(out.manual_break, s.break_type)
    if s.endable_at is not None:
        out.endable_at = s.endable_at


def _encode_line(s: UserStatus) -> bytes:
    """One status as the bytes of an answer holding only it."""
    one = timeclock_pb2.GetUserStatusesResponse()
    fill_status(one.data.statuses.add(), s)
    return one.SerializeToString()


_LINES = BoardLines("grpc", _encode_line)


def encode_statuses(request_id: str, board: Board) -> bytes:
    """The encoded ``GetUserStatusesResponse`` of a board, from its encoded
    lines. Protobuf parses concatenated messages as one, merged: the ``data``
    of each line's answer merges into one, its ``statuses`` appended in
    order. Setting each open activity's fields took most of a large board's
    call (bench/README.md, GetUserStatuses); joining kept lines is a copy."""
    head = timeclock_pb2.GetUserStatusesResponse(request_id=request_id).SerializeToString()
    return head + b"".join(_LINES.lines(board))


def fill_break_setting(out: timeclock_pb2.ManualBreakSetting, b: ManualBreakType) -> None:
    out.id = b.id
    out.name = b.name
    out.is_mandatory = b.is_mandatory
    out.min_duration_seconds = b.min_duration_s
    out.is_paid = b.is_paid


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
        response = timeclock_pb2.ListManualBreaksResponse(request_id=request_id_var.get())
        response.data.is_enabled = tc.manual_breaks_enabled
        for b in tc.manual_break_types:
            fill_break_setting(response.data.manual_breaks.add(), b)
        return response

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

    def CreateTimeActivities(
        self, request: timeclock_pb2.CreateTimeActivitiesRequest, context: Any
    ) -> timeclock_pb2.CreateTimeActivitiesResponse:
        created = timesheets.create_time_activities(
            self._uows,
            self._fences,
            self._clock,
            account(),
            request.time_clock_id,
            groups_from_proto(request),
            request.idempotency_key,
        )
        response = timeclock_pb2.CreateTimeActivitiesResponse(request_id=request_id_var.get())
        for a in created:
            fill_activity(response.data.time_activities.add(), a)
        return response

    def UpdateTimeActivity(
        self, request: timeclock_pb2.UpdateTimeActivityRequest, context: Any
    ) -> timeclock_pb2.TimeActivityResponse:
        change = Correction(
            activity_id=request.activity_id,
            modified_at=request.modified_at,
            start=point_draft(request.start),
            end=point_draft(request.end),
            job_id=request.job_id,
            manual_break_id=request.manual_break_id,
            scheduler_shift_id=request.scheduler_shift_id,
            notes=request.notes,
        )
        corrected = timesheets.update_time_activity(
            self._uows, self._fences, self._clock, account(), request.time_clock_id, change
        )
        return _activity_response(corrected)

    def DeleteTimeActivity(
        self, request: timeclock_pb2.DeleteTimeActivityRequest, context: Any
    ) -> timeclock_pb2.TimeActivityResponse:
        deleted = timesheets.delete_time_activity(
            self._uows,
            self._fences,
            self._clock,
            account(),
            request.time_clock_id,
            request.activity_id,
            request.modified_at,
        )
        return _activity_response(deleted)

    # The answer's bytes rather than the message, joined from the lines the
    # store keeps (see activity_messages).
    def ListTimeActivities(  # type: ignore[override]
        self, request: timeclock_pb2.ListTimeActivitiesRequest, context: Any
    ) -> bytes:
        query = ListQuery(
            time_clock_id=request.time_clock_id,
            start_time=request.start_time,
            end_time=request.end_time,
            user_ids=tuple(request.user_ids),
            job_ids=tuple(request.job_ids),
            page_size=request.page_size,
            page_token=request.page_token,
            include_totals=request.include_totals,
        )
        page = timesheets.list_time_activities(
            self._uows, self._fences, self._clock, account(), query, as_lines=True
        )
        assert page.lines is not None
        rest = timeclock_pb2.ListTimeActivitiesResponse.Data(next_page_token=page.next_page_token)
        totals = encode_totals(page.totals) if page.totals is not None else b""
        return encode_page(request_id_var.get(), page.lines, rest, totals)

    # The answer's bytes rather than the message: the interceptor lets an
    # encoded answer through its serializer (see encode_statuses).
    def GetUserStatuses(  # type: ignore[override]
        self, request: timeclock_pb2.GetUserStatusesRequest, context: Any
    ) -> bytes:
        statuses = timesheets.get_user_statuses(
            self._uows, self._fences, account(), request.time_clock_id, list(request.user_ids)
        )
        # Encoded here, on the handler's thread, not by grpc on the event loop.
        return encode_statuses(request_id_var.get(), statuses)


def _activity_response(a: Activity) -> timeclock_pb2.TimeActivityResponse:
    response = timeclock_pb2.TimeActivityResponse(request_id=request_id_var.get())
    fill_activity(response.data.time_activity, a)
    return response
