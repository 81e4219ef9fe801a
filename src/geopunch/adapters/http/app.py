"""The HTTP/JSON API at the spec's own paths, on FastAPI.

FastAPI (Starlette underneath, served by uvicorn) because it is the
maintained ASGI stack that gives typed request bodies (pydantic), an OpenAPI
document and async handlers: a punch awaits the same group commit as over
gRPC, on the HTTP server's own event loop. This adapter only converts: JSON
in, a use case of ``geopunch.service``, JSON out. Every rule, check and state
lives below it, shared with gRPC.

Bodies follow the spec: camelCase keys, integers as numbers, booleans always
present, ``schedulerShiftId`` null when none, geofence coordinates as
numeric strings. Errors are
``{"detail", "code", "requestId"}`` with the spec's status: every refusal
the punch tables list is 400, ``HAS_LOCKED_DAYS`` 409, a missing time clock
404, a missing or unknown key 401, a key without the scope 403.
"""

# No ``from __future__ import annotations``: FastAPI reads the handlers'
# annotations at run time, and some name types local to create_app.
import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, StrictBool, StrictFloat, StrictInt

from geopunch.domain.accounts import Principal, Scope
from geopunch.domain.errors import STATUS, ConcurrentChange, DomainError, ErrorCode
from geopunch.domain.models import Geofence, GeofenceDraft
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
from geopunch.service import geofences, punches
from geopunch.service.accounts import KeyRing

#: Statuses the spec's punch and break tables give, where they differ from
#: the general mapping (which serves gRPC): every refusal listed there is 400.
_PUNCH_STATUS = {
    code: 400
    for code in (
        ErrorCode.USER_NOT_ASSIGNED,
        ErrorCode.ALREADY_CLOCKED_IN,
        ErrorCode.NO_OPEN_SHIFT,
        ErrorCode.OPEN_BREAK,
        ErrorCode.OUTSIDE_GEOFENCE,
        ErrorCode.MANUAL_BREAKS_DISABLED,
        ErrorCode.MANUAL_BREAK_NOT_FOUND,
        ErrorCode.ALREADY_ON_BREAK,
        ErrorCode.NO_OPEN_BREAK,
        ErrorCode.MANDATORY_BREAK_TOO_SHORT,
        ErrorCode.JOB_NOT_FOUND,
        ErrorCode.OVERLAPS_COMPLETED_ACTIVITY,
        ErrorCode.SCHEDULER_SHIFT_NOT_FOUND,
    )
}


@dataclass(frozen=True, slots=True)
class HttpDeps:
    """What the HTTP adapter is built from (the gRPC services' own parts)."""

    uows: UnitOfWorkFactory
    fences: FenceEngine
    clock: Clock
    submit: AsyncTransactionRunner
    keys: KeyRing
    #: Set once the store and the index are ready.
    ready: Any
    #: Before a call: the catch-up with sibling workers, if one is due (or None).
    catch_up: Callable[[], Callable[[], None] | None] = lambda: None


# -- request bodies -------------------------------------------------------------------


class _Body(BaseModel):
    # Unknown keys are ignored, as a JSON API's clients expect; known ones
    # are type-checked strictly (a string is not a user id).
    model_config = ConfigDict(extra="ignore")


class LocationData(_Body):
    address: str = ""
    latitude: StrictFloat | StrictInt | None = None
    longitude: StrictFloat | StrictInt | None = None
    accuracy: StrictFloat | StrictInt | None = None


class ClockOutBody(_Body):
    userId: StrictInt
    timezone: str | None = None
    locationData: LocationData | None = None
    timestamp: StrictInt | None = None


class ClockInBody(ClockOutBody):
    jobId: str | None = None
    schedulerShiftId: str | None = None


class BreakStartBody(ClockOutBody):
    pass


class BreakEndBody(ClockOutBody):
    isResumeShift: StrictBool | None = None


class FenceLocation(_Body):
    address: str = ""
    # Numeric strings, as the spec has them ("40.7128"); numbers are taken too.
    latitude: str | StrictFloat | StrictInt | None = None
    longitude: str | StrictFloat | StrictInt | None = None


class FenceIn(_Body):
    name: str = ""
    location: FenceLocation = FenceLocation()
    isEnabled: StrictBool | None = None
    fenceSize: StrictInt | None = None
    jobIds: list[str] = []
    onGeofenceExitAction: str = ""


class CreateGeofencesBody(_Body):
    geofences: list[FenceIn]


def _coordinate(value: str | float | None, path: str) -> float | None:
    """A coordinate as a number; the range and finiteness are the rules' to check."""
    if value is None or isinstance(value, float | int):
        return None if value is None else float(value)
    try:
        return float(value)
    except ValueError:
        raise DomainError(
            ErrorCode.INVALID_COORDINATES,
            f'{path}: {value[:24]!r} is not a number; send a numeric string such as "40.7128"',
        ) from None


def _draft(g: FenceIn, i: int) -> GeofenceDraft:
    where = f"geofences[{i}].location"
    return GeofenceDraft(
        name=g.name,
        address=g.location.address,
        latitude=_coordinate(g.location.latitude, f"{where}.latitude"),
        longitude=_coordinate(g.location.longitude, f"{where}.longitude"),
        is_enabled=g.isEnabled,
        fence_size_m=g.fenceSize,
        job_ids=tuple(g.jobIds),
        exit_action=g.onGeofenceExitAction,
    )


# -- answers --------------------------------------------------------------------------


def _fence(f: Geofence) -> dict[str, Any]:
    return {
        "id": f.id,
        "name": f.name,
        "isEnabled": f.is_enabled,
        "fenceSize": f.fence_size_m,
        "jobIds": list(f.job_ids),
        "onGeofenceExitAction": f.exit_action.value,
        "location": {
            "address": f.address,
            "latitude": repr(f.latitude),
            "longitude": repr(f.longitude),
        },
    }


def _location(loc: PunchLocation) -> dict[str, Any]:
    out: dict[str, Any] = {
        "address": loc.address,
        "latitude": loc.latitude,
        "longitude": loc.longitude,
    }
    if loc.accuracy is not None:
        out["accuracy"] = loc.accuracy
    return out


def _point(p: PunchPoint, source: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {"timestamp": p.timestamp, "timezone": p.timezone}
    if p.location is not None:
        out["locationData"] = _location(p.location)
    if source:
        out["source"] = {"type": p.source}
    return out


def _shift(a: Activity) -> dict[str, Any]:
    out: dict[str, Any] = {"id": a.id, "userId": a.user_id, "start": _point(a.start)}
    if a.end is not None:
        out["end"] = _point(a.end)
    out.update(
        jobId=a.job_id,
        schedulerShiftId=a.scheduler_shift_id,
        createdAt=a.created_at,
        modifiedAt=a.modified_at,
    )
    return out


def _shift_data(r: PunchResult) -> dict[str, Any]:
    return {"shift": _shift(r.activity)}


def _break_started(r: PunchResult) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": r.activity.id,
        "start": _point(r.activity.start, source=False),
        "isSwitchFromShift": r.closed_shift is not None,
    }
    if r.closed_shift is not None:
        out["closedShift"] = _shift(r.closed_shift)
    return out


def _break_ended(r: PunchResult) -> dict[str, Any]:
    assert r.activity.end is not None
    out: dict[str, Any] = {
        "id": r.activity.id,
        "end": _point(r.activity.end, source=False),
        "isResumeShift": r.resumed_shift is not None,
    }
    if r.resumed_shift is not None:
        out["resumedShift"] = _shift(r.resumed_shift)
    return out


def _error(status: int, code: str, detail: str) -> JSONResponse:
    rid = request_id_var.get()
    return JSONResponse(
        {"detail": detail, "code": code, "requestId": rid},
        status_code=status,
        headers={"X-Request-ID": rid},
    )


# -- the app --------------------------------------------------------------------------


def create_app(deps: HttpDeps) -> FastAPI:
    app = FastAPI(
        title="geopunch",
        description="Punches, breaks and geofences over HTTP/JSON at the spec's paths.",
        version="1",
    )

    @app.middleware("http")
    async def request_id(request: Request, call_next: Callable[[Request], Awaitable[Any]]) -> Any:
        token = request_id_var.set(str(uuid.uuid4()))
        try:
            response = await call_next(request)
            response.headers["X-Request-ID"] = request_id_var.get()
            return response
        finally:
            request_id_var.reset(token)

    @app.exception_handler(DomainError)
    async def domain_error(request: Request, exc: DomainError) -> JSONResponse:
        status = STATUS[exc.code].http_status
        if request.url.path.startswith("/time-clock/"):
            status = _PUNCH_STATUS.get(exc.code, status)
        return _error(status, exc.code.value, exc.message)

    @app.exception_handler(ConcurrentChange)
    async def lost_race(request: Request, exc: ConcurrentChange) -> JSONResponse:
        return _error(
            409,
            ErrorCode.CONCURRENT_MODIFICATION.value,
            "the change met concurrent changes of the same data; retry",
        )

    @app.exception_handler(RequestValidationError)
    async def bad_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        detail = f"{where}: {first.get('msg', 'invalid')}" if where else "invalid request body"
        return _error(400, ErrorCode.INVALID_ARGUMENT.value, detail[:300])

    def principal(scope: Scope) -> Callable[..., Awaitable[Principal]]:
        async def check(
            x_api_key: Annotated[str | None, Header(alias="X-API-KEY")] = None,
        ) -> Principal:
            if not deps.ready.is_set():
                raise DomainError(ErrorCode.UNAVAILABLE, "the server is starting; retry shortly")
            who = deps.keys.authenticate(x_api_key) if x_api_key else None
            if who is None:
                raise DomainError(
                    ErrorCode.API_KEY_INVALID,
                    "missing or unknown API key: send it in the X-API-KEY header",
                )
            who.require(scope, "this endpoint")
            due = deps.catch_up()
            if due is not None:  # a sibling worker changed a time clock meanwhile
                await asyncio.to_thread(due)
            return who

        return check

    Puncher = Annotated[Principal, Depends(principal(Scope.PUNCH))]
    ClockId = Annotated[int, Path(ge=0, le=2**63 - 1)]
    IdemKey = Annotated[str, Header(alias="Idempotency-Key")]

    async def punch(
        who: Principal,
        kind: PunchKind,
        tc: int,
        body: ClockOutBody,
        key: str,
        **extra: Any,
    ) -> PunchResult:
        loc = body.locationData
        cmd = PunchCommand(
            kind=kind,
            time_clock_id=tc,
            user_id=body.userId,
            timezone=body.timezone or "",
            location=None
            if loc is None
            else PunchLocation(
                loc.address,
                None if loc.latitude is None else float(loc.latitude),
                None if loc.longitude is None else float(loc.longitude),
                None if loc.accuracy is None else float(loc.accuracy),
            ),
            timestamp=body.timestamp,
            idempotency_key=key,
            **extra,
        )
        outcome = await punches.punch(
            deps.submit, deps.fences, deps.clock, who.account_id, cmd, request_id_var.get()
        )
        if outcome.replayed and outcome.request_id:
            request_id_var.set(outcome.request_id)  # the first answer's id, as over gRPC
        if outcome.result is None:  # stored by a release that kept only gRPC bytes
            raise DomainError(
                ErrorCode.IDEMPOTENCY_KEY_REUSED,
                "this key's answer was stored in a form only the gRPC API can replay",
            )
        return outcome.result

    def answer(data: dict[str, Any]) -> dict[str, Any]:
        return {"requestId": request_id_var.get(), "data": data}

    base = "/time-clock/v1/time-clocks/{timeClockId}"

    @app.post(f"{base}/clock-in")
    async def clock_in(
        who: Puncher, timeClockId: ClockId, body: ClockInBody, key: IdemKey = ""
    ) -> dict[str, Any]:
        r = await punch(
            who,
            PunchKind.CLOCK_IN,
            timeClockId,
            body,
            key,
            job_id=body.jobId or "",
            scheduler_shift_id=body.schedulerShiftId or "",
        )
        return answer(_shift_data(r))

    @app.post(f"{base}/clock-out")
    async def clock_out(
        who: Puncher, timeClockId: ClockId, body: ClockOutBody, key: IdemKey = ""
    ) -> dict[str, Any]:
        r = await punch(who, PunchKind.CLOCK_OUT, timeClockId, body, key)
        return answer(_shift_data(r))

    @app.post(f"{base}/manual-breaks/{{manualBreakId}}/clock-in")
    async def start_break(
        who: Puncher,
        timeClockId: ClockId,
        manualBreakId: Annotated[str, Path(max_length=128)],
        body: BreakStartBody,
        key: IdemKey = "",
    ) -> dict[str, Any]:
        r = await punch(
            who, PunchKind.START_BREAK, timeClockId, body, key, manual_break_id=manualBreakId
        )
        return answer(_break_started(r))

    @app.post(f"{base}/manual-breaks/clock-out")
    async def end_break(
        who: Puncher, timeClockId: ClockId, body: BreakEndBody, key: IdemKey = ""
    ) -> dict[str, Any]:
        r = await punch(
            who, PunchKind.END_BREAK, timeClockId, body, key, is_resume_shift=body.isResumeShift
        )
        return answer(_break_ended(r))

    Reader = Annotated[Principal, Depends(principal(Scope.READ))]
    Admin = Annotated[Principal, Depends(principal(Scope.ADMIN))]
    FenceId = Annotated[str, Path(max_length=1000)]

    # Geofences: blocking use cases, which FastAPI runs on its thread pool.
    @app.get(f"{base}/geofences")
    def list_fences(who: Reader, timeClockId: ClockId) -> dict[str, Any]:
        fences = geofences.list_geofences(deps.uows, who.account_id, timeClockId)
        return answer({"geofences": [_fence(f) for f in fences]})

    @app.post(f"{base}/geofences")
    def create_fences(
        who: Admin, timeClockId: ClockId, body: CreateGeofencesBody
    ) -> dict[str, Any]:
        drafts = [_draft(g, i) for i, g in enumerate(body.geofences)]
        made = geofences.create_geofences(
            deps.uows, who.account_id, timeClockId, drafts, deps.fences
        )
        return answer({"geofences": [{"fenceId": f.id, "name": f.name} for f in made]})

    @app.get(f"{base}/geofences/{{fenceId}}")
    def get_fence(who: Reader, timeClockId: ClockId, fenceId: FenceId) -> dict[str, Any]:
        fence = geofences.get_geofence(deps.uows, who.account_id, timeClockId, fenceId)
        return answer({"geofence": _fence(fence)})

    @app.delete(f"{base}/geofences/{{fenceId}}")
    def delete_fence(who: Admin, timeClockId: ClockId, fenceId: FenceId) -> dict[str, Any]:
        geofences.delete_geofence(deps.uows, who.account_id, timeClockId, fenceId, deps.fences)
        return answer({})

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        if deps.ready.is_set():
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "starting"}, status_code=503)

    return app
