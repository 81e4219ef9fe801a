"""The HTTP/JSON API at the spec's own paths, on FastAPI.

FastAPI (Starlette underneath, served by uvicorn) because it is the
maintained ASGI stack that gives typed request bodies (pydantic), an OpenAPI
document and async handlers: a punch awaits the same group commit as over
gRPC, on the event loop the gRPC server runs on. This adapter only converts: JSON
in, a use case of ``geopunch.service``, JSON out. Every rule, check and state
lives below it, shared with gRPC.

Routes at the spec's paths serve the spec's bodies (``bodies`` and
``answers`` hold the conversions). Everything else a user needs (time clock,
scheduler and key set-up, locked days, punch validation, location checks and
the event stream) lives under ``/geopunch/v1``.

Errors are ``{"detail", "code", "requestId"}`` (plus ``errors``, the field
paths, when the rules named fields) with the spec's status: every refusal
the punch tables list is 400, ``HAS_LOCKED_DAYS`` 409, a missing time clock
404, a missing or unknown key 401, a key without the scope 403.
"""

# No ``from __future__ import annotations``: FastAPI reads the handlers'
# annotations at run time, and some name types local to create_app.
import asyncio
import contextvars
import logging
import re
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Annotated, Any

import numpy as np
from fastapi import Body, Depends, FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader
from pydantic import Field, WithJsonSchema
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.routing import BaseRoute, Match

from geopunch import metrics
from geopunch.adapters.http import answers, shapes
from geopunch.adapters.http.bodies import (
    BreakEndBody,
    BreakStartBody,
    CheckLocationsBody,
    ClockInBody,
    ClockOutBody,
    CreateGeofencesBody,
    CreateTimeActivitiesBody,
    DayStatusBody,
    DuplicateKey,
    NewWebhookIn,
    ReplayBody,
    SchedulerIn,
    ShiftIn,
    Text,
    TimeClockIn,
    Unknown,
    UpdateTimeActivityBody,
    ValidatePunchBody,
    WebhookSubscriptionIn,
    at_most,
    decode_json,
    duplicate_key_refusal,
    fence_draft,
    unknown_fields,
)
from geopunch.adapters.http.document import finish, ok, query_parameters, refusal
from geopunch.adapters.http.examples import EXAMPLES
from geopunch.adapters.http.params import (
    BOOLEAN,
    DECIMAL,
    FIELD_VALIDATION,
    IGNORE,
    STRICT,
    WARN,
    field_validation,
    field_validation_problem,
    query_problems,
)
from geopunch.adapters.spelling import meant
from geopunch.adapters.wakeup import Wakeup
from geopunch.domain.accounts import Principal, Scope, scopes_of
from geopunch.domain.bounds import int64_text, text_problem
from geopunch.domain.errors import (
    RETRY_AFTER_S,
    STATUS,
    ConcurrentChange,
    DomainError,
    ErrorCode,
    FieldViolation,
    StoreUnavailable,
)
from geopunch.domain.events import check_watch_filter, event_json, json_bytes
from geopunch.domain.models import DayStatus
from geopunch.domain.ports import (
    AsyncTransactionRunner,
    Clock,
    FenceEngine,
    TransactionRunner,
    UnitOfWorkFactory,
)
from geopunch.domain.punches import PunchCommand, PunchKind, PunchResult
from geopunch.domain.shifts import MAX_SHIFTS_PER_REQUEST, check_shift_count
from geopunch.domain.timesheets import ListQuery
from geopunch.logs import RateLimitedLog, new_request_id, request_id_var
from geopunch.service import (
    accounts,
    admin,
    geofences,
    punches,
    scheduler,
    timesheets,
    webhooks,
)
from geopunch.service.accounts import KeyRing
from geopunch.service.events import (
    EVENT_PAGE,
    IDLE_RECHECK_S,
    StreamSlots,
    check_resumable,
    events_after,
)
from geopunch.service.locations import LocationBatch, check_locations
from geopunch.service.webhooks import UrlGuard

_PUNCH_KINDS = {
    "clockIn": PunchKind.CLOCK_IN,
    "clockOut": PunchKind.CLOCK_OUT,
    "breakStart": PunchKind.START_BREAK,
    "breakEnd": PunchKind.END_BREAK,
}
#: How often an idle event stream sends a comment line, so that proxies and
#: clients see the connection alive.
SSE_KEEPALIVE_S = 15.0


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
    #: Moves when a commit appended events; set when the server stops.
    wakeup: Wakeup | None = None
    stopping: threading.Event | None = None
    #: Largest request body, in bytes (as gRPC's largest message).
    max_body_bytes: int = 64 * 1024 * 1024
    #: Checks webhook URLs' hosts (None: private addresses are allowed).
    webhook_guard: UrlGuard = None
    #: Event streams each key holds, counted with the gRPC API's.
    streams: StreamSlots = field(default_factory=StreamSlots)
    #: Commits admin writes, batched; None: one transaction a call.
    commit: TransactionRunner | None = None
    #: Web origins whose pages may call the API (CORS); "*" for any.
    allow_origins: tuple[str, ...] = ()


def _error(
    status: int, code: str, detail: Any, errors: list[dict[str, str]] | None = None
) -> JSONResponse:
    rid = request_id_var.get()
    body: dict[str, Any] = {"detail": detail, "code": code, "requestId": rid}
    if errors:
        body["errors"] = errors
    headers = {"X-Request-ID": rid}
    if status == 503:  # the server starting or the store away: soon, not now
        headers["Retry-After"] = str(RETRY_AFTER_S)
    return JSONResponse(body, status_code=status, headers=headers)


def _body_too_large(limit: int) -> JSONResponse:
    return _error(413, ErrorCode.INVALID_ARGUMENT.value, f"the body must be at most {limit} bytes")


def _refusal(exc: DomainError, path: str) -> JSONResponse:
    status = STATUS[exc.code].http_status
    detail = answers.error_detail(exc, path, status)
    return _error(status, exc.code.value, detail, answers.violations(exc))


def _framework_reason(request: Request, exc: StarletteHTTPException) -> tuple[str, str]:
    """The reason and a sentence for a refusal Starlette or FastAPI made."""
    where = f"{request.method} {request.url.path}"
    if exc.status_code == 404:
        slash = (
            "; paths end without a slash"
            if request.url.path.endswith("/") and request.url.path != "/"
            else ""
        )
        hint = _route_meant(request)
        listed = f"did you mean {hint}?" if hint else "/openapi.json lists them"
        return ErrorCode.ROUTE_NOT_FOUND.value, f"no route {where}{slash}; {listed}"
    if exc.status_code == 405:
        allowed = next((v for k, v in (exc.headers or {}).items() if k.lower() == "allow"), "")
        return ErrorCode.METHOD_NOT_ALLOWED.value, f"{where} is not served; allowed: {allowed}"
    if exc.status_code == 400:
        # FastAPI's answer to a body json.loads could not take (not UTF-8,
        # or nested past the parser's depth).
        said = "the body could not be read as JSON: it is not UTF-8, or it nests too deeply"
        return ErrorCode.INVALID_ARGUMENT.value, said
    code = ErrorCode.INTERNAL if exc.status_code >= 500 else ErrorCode.INVALID_ARGUMENT
    return code.value, str(exc.detail)[:300]


def _route_meant(request: Request) -> str | None:
    """The one documented route a path that matched none likely stands for:
    as many segments, each of its words the same but for case and hyphens
    or spelled closely (``spelling.meant``: ``clockin``, ``timeclocks``), its
    parameters anything; with its methods, unless it takes the request's."""
    sent = request.url.path.rstrip("/").split("/")
    if len(sent) > _ROUTE_SEGMENTS_MAX:
        return None
    found: dict[str, set[str]] = {}
    for route in request.app.router.routes:
        template = getattr(route, "path_format", None)
        if not template or not getattr(route, "include_in_schema", False):
            continue
        words = template.split("/")
        if len(words) == len(sent) and all(
            w.startswith("{") or w == s or meant(s, (w,)) == w
            for w, s in zip(words, sent, strict=True)
        ):
            found.setdefault(template, set()).update(getattr(route, "methods", None) or ())
    if len(found) != 1:
        return None
    ((template, methods),) = found.items()
    said = request.method if request.method in methods else ", ".join(sorted(methods))
    return f"{said} {template}"


#: Segments of the longest documented path, and some: a longer one names none.
_ROUTE_SEGMENTS_MAX = 12


def _allowed_methods(request: Request) -> str:
    """Every method served at the request's path. Starlette's 405 names only
    the first route whose path matched, though a path's methods are often
    routes of their own (GET and POST of a collection)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        if isinstance(route, BaseRoute) and route.matches(request.scope)[0] is not Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    if "GET" in methods:
        methods.add("HEAD")  # served as GET without the body
    return ", ".join(sorted(methods))


def _unavailable(exc: StoreUnavailable, path: str) -> JSONResponse:
    return _refusal(exc.refusal(), path)


def _lost_race() -> JSONResponse:
    return _error(
        409,
        ErrorCode.CONCURRENT_MODIFICATION.value,
        "the change met concurrent changes of the same data; retry",
    )


def _punch_command(
    kind: PunchKind, tc: int, body: Any, key: str, manual_break_id: str = ""
) -> PunchCommand:
    """The command of a punch body (or of a validate-punch body, which has
    every kind's fields); the fields of other kinds are not read."""
    extra: dict[str, Any] = {}
    if kind is PunchKind.CLOCK_IN:
        extra = {"job_id": body.jobId or "", "scheduler_shift_id": body.schedulerShiftId or ""}
    elif kind is PunchKind.START_BREAK:
        extra = {"manual_break_id": manual_break_id}
    elif kind is PunchKind.END_BREAK:
        extra = {"is_resume_shift": body.isResumeShift}
    loc = body.locationData
    return PunchCommand(
        kind=kind,
        time_clock_id=tc,
        user_id=body.userId,
        timezone=body.timezone or "",
        location=None if loc is None else loc.to_domain(),
        timestamp=body.timestamp,
        idempotency_key=key,
        **extra,
    )


class HeldStream(StreamingResponse):
    """A stream that gives back its slot (``StreamSlots``) however it ends:
    the body's generator never runs its own cleanup when the client is gone
    before the first byte, but this call always returns or raises."""

    media_type = "text/event-stream"  # what the OpenAPI document names

    def __init__(self, content: AsyncIterator[bytes], give_back: Callable[[], None], **kw: Any):
        super().__init__(content, **kw)
        self._give_back = give_back

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._give_back()


class JsonAnswer(Response):
    """A JSON answer, compact UTF-8 (``json_bytes``, as every answer and event is written)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return json_bytes(content)


#: Headers that carry one value. Sent twice, which one counts was up to
#: each reader (the key check took the first, the punch lane's idempotency
#: key the last), and a proxy that adds its own beside the client's would
#: have one of them silently ignored: such a request is refused.
_ONE_VALUE = {
    name.lower().encode(): name
    for name in ("X-API-KEY", "Idempotency-Key", "Last-Event-ID", "X-Request-ID", "Content-Type")
}


class RequestContext:
    """Gives each call its request id (echoed as ``X-Request-ID``) and refuses
    a body over the limit, or one sent without a valid key, before it is
    read: parsing a body runs on the event loop both APIs share (27 MB of
    JSON took about a second), and no caller without a key may hold it.
    Writes each call's access line; those of calls without a key are
    rate-limited per client host, as gRPC's are.

    A plain ASGI middleware: Starlette's ``BaseHTTPMiddleware`` runs the app in
    a task of its own and copies every body, which cost a fifth of a punch's
    time over HTTP (py-spy). Here the app runs in the caller's task, so a
    request id the handler changes (an idempotent replay) is the one echoed.
    """

    def __init__(self, app: Any, max_body_bytes: int, keys: KeyRing, ready: Any) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.keys = keys
        self.ready = ready
        self.unwelcome = RateLimitedLog(log)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # HEAD is GET without the body, which uvicorn leaves out (reading
        # the method from its own scope); FastAPI's routes take GET alone.
        app_scope = {**scope, "method": "GET", HEAD: True} if scope["method"] == "HEAD" else scope
        offered = next((v for k, v in scope["headers"] if k == b"x-request-id"), None)
        token = request_id_var.set(new_request_id(offered))
        caller = caller_var.set(None)
        started, status = time.perf_counter(), 500
        try:
            size, chunked, secret, encoded = b"0", False, b"", b""
            seen: set[bytes] = set()
            twice = b""
            for name, value in scope["headers"]:
                if name in _ONE_VALUE:
                    if name in seen:
                        twice = twice or name
                    seen.add(name)
                if name == b"content-length":
                    size = value
                elif name == b"transfer-encoding":
                    chunked = True
                elif name == b"x-api-key":
                    secret = value
                elif name == b"content-encoding" and value.lower() != b"identity":
                    encoded = value
            if twice:
                status = 400
                said = f"{_ONE_VALUE[twice]} is sent more than once; send it once"
                await _error(400, ErrorCode.INVALID_ARGUMENT.value, said)(scope, receive, send)
                return
            if not size.isdigit() or int(size) > self.max_body_bytes:
                refusal = _body_too_large(self.max_body_bytes)
                status = 413
                await refusal(scope, receive, send)
                return
            if encoded and (chunked or size != b"0"):
                # Read as it came, a compressed body was refused as JSON
                # that is not UTF-8: a puzzle for the sender.
                refusal = _error(
                    415,
                    ErrorCode.INVALID_ARGUMENT.value,
                    f"bodies are taken uncompressed; this one has Content-Encoding: "
                    f"{encoded.decode('latin-1')[:40]}",
                )
                status = 415
                await refusal(scope, receive, send)
                return
            if (chunked or size != b"0") and self.ready.is_set():
                who = self.keys.authenticate(secret.decode("latin-1")) if secret else None
                if who is None:
                    refused = _refusal(_no_key(), scope["path"])
                    status = refused.status_code
                    await refused(scope, receive, send)
                    return
                caller_var.set(who)  # the route's key check takes it from here

            answered = False

            async def send_with_id(message: Any) -> None:
                nonlocal status, answered
                if message["type"] == "http.response.start":
                    status, answered = message["status"], True
                    headers = [h for h in message.get("headers", []) if h[0] != b"x-request-id"]
                    headers.append((b"x-request-id", request_id_var.get().encode()))
                    message = {**message, "headers": headers}
                await send(message)

            try:
                await self.app(app_scope, receive, send_with_id)
            except Exception:
                # Every unexpected error ends here, answered or not: FastAPI's
                # handler (``internal_error``) answers for its routes and
                # raises on, the punch lane does not answer. Logged once, with
                # the stack; uvicorn would log it again and close the
                # connection if it were raised further.
                log.exception("unexpected error in %s %s", scope["method"], scope["path"])
                if not answered:
                    unexpected = DomainError.unexpected(request_id_var.get())
                    await _refusal(unexpected, scope["path"])(scope, receive, send_with_id)
        finally:
            # The route's template (FastAPI's, or the lane's), never the raw
            # path: ids in paths would make a metric per resource.
            route = app_scope.get("route")
            method = getattr(route, "path_format", None) or app_scope.get(LANE_ROUTE) or "unmatched"
            elapsed = time.perf_counter() - started
            metrics.CALLS.labels("http", method, str(status)).inc()
            metrics.CALL_SECONDS.labels("http", method).observe(elapsed)
            fields: dict[str, object] = {
                "method": f"{scope['method']} {method}",
                "status": status,
                "ms": round(elapsed * 1000, 2),
            }
            unknown = app_scope.get(UNKNOWN_KEYS)
            if unknown:  # which client sends what it should not, for its operator
                root = _body_root(scope["path"])
                fields["unknown_fields"] = answers.unknown_field_paths(unknown[:3], root)
                fields["unknown_field_count"] = len(unknown)
            who = caller_var.get()
            if who is not None:
                fields.update(account=who.account_id, key=who.key_id)
                log.info("http", extra={"fields": fields})
            else:  # no key: as gRPC's calls without one, lest they flood the log
                client = scope.get("client") or ("", 0)
                self.unwelcome.note(f"{client[0]}:{client[1]}", logging.INFO, "http", fields)
            caller_var.reset(caller)
            request_id_var.reset(token)


def _no_key() -> DomainError:
    """The refusal of a request without a valid key (the route's or, for a
    request with a body, the middleware's before the body is read)."""
    return DomainError(
        ErrorCode.API_KEY_INVALID, "missing or unknown API key: send it in the X-API-KEY header"
    )


#: The caller of the current request, once its key is known (for the access log).
caller_var: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "http_caller", default=None
)
log = logging.getLogger("geopunch")
#: Where the punch lane leaves the route it served in the ASGI scope.
LANE_ROUTE = "geopunch.route"
#: In the scope FastAPI gets: the request was HEAD, routed as GET.
HEAD = "geopunch.head"
#: The four punch paths (the time clock id, and a break's type when one
#: starts: any text, "/" included, see start_break).
_PUNCH_PATH = re.compile(
    r"/time-clock/v1/time-clocks/(?P<tc>0|[1-9][0-9]{0,18})/"
    r"(?P<what>clock-in|clock-out|manual-breaks/clock-out|manual-breaks/(?P<brk>.+)/clock-in)"
)
#: What the lane takes a punch from: a request's path, headers (as ASGI gives
#: them) and body; it answers, or returns None to leave the request to FastAPI.
Lane = Callable[["re.Match[str]", dict[bytes, bytes], bytes], Awaitable[Response | None]]


class PunchLane:
    """Serves the four punches without FastAPI's per-request machinery.

    FastAPI's dependency solving and validation were about a quarter of the
    server's time per HTTP punch (py-spy), enough to keep HTTP punches under
    0.6 of gRPC's throughput. A punch whose path, headers and body are all
    well-formed is validated with the same body model (pydantic, from bytes)
    and run with the same key check, command and answer as the FastAPI route;
    anything else (a bad body, an odd content type) goes on to that route,
    body included, so every refusal keeps its one shape. The routes stay the
    documented API.
    """

    def __init__(self, app: Any, lane: Lane, max_body_bytes: int) -> None:
        self.app = app
        self.lane = lane
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        match = None
        # A punch takes no query parameter: one sent goes on to the route,
        # which refuses it as every route does (``known_query``).
        if scope["type"] == "http" and scope["method"] == "POST" and not scope["query_string"]:
            match = _PUNCH_PATH.fullmatch(scope["path"])
        if match is None:
            await self.app(scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunk = message.get("body", b"")
            chunks.append(chunk)
            size += len(chunk)
            if size > self.max_body_bytes:  # sent in chunks, without a length
                await _body_too_large(self.max_body_bytes)(scope, receive, send)
                return
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        response = await self.lane(match, dict(scope["headers"]), body)
        if response is not None:
            what = "manual-breaks/{manualBreakId}/clock-in" if match["brk"] else match["what"]
            scope[LANE_ROUTE] = f"/time-clock/v1/time-clocks/{{timeClockId}}/{what}"
            await response(scope, receive, send)
            return
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


# -- the app --------------------------------------------------------------------------


def _is_json(content_type: str | None) -> bool:
    """A body FastAPI reads as JSON: no content type, or application/json
    or application/...+json."""
    if not content_type:
        return True
    kind = content_type.partition(";")[0].strip().lower()
    return kind == "application/json" or (
        kind.startswith("application/") and kind.endswith("+json")
    )


#: Bodies from this size are decoded on a worker thread: the pairs hook is
#: Python, so the event loop gets the interpreter between its calls.
_DECODE_APART_BYTES = 1 << 20


class _OnceReadRequest(Request):
    """A request whose JSON body is decoded by ``bodies.decode_json`` before
    FastAPI reads it (Starlette keeps what ``json()`` returned, so FastAPI
    takes it as decoded here and the body is parsed once)."""

    #: Where the body has keys its type does not take (``bodies.unknown_fields``).
    unknown: tuple[Unknown, ...] = ()

    async def decode_body(self, kind: Any) -> None:
        """Decode the body, and find the keys that ``kind``, the route's body
        type, does not take."""
        raw = await self.body()
        if not raw or not _is_json(self.headers.get("content-type")):
            return

        look = _mode(self) != IGNORE  # the walk costs about 3 ms a 1,000 activities

        def read() -> tuple[Any, tuple[Unknown, ...]]:
            data = decode_json(raw)
            return data, tuple(unknown_fields(data, kind)) if look else ()

        try:
            if len(raw) < _DECODE_APART_BYTES:
                self._json, self.unknown = read()
            else:
                self._json, self.unknown = await asyncio.to_thread(read)
        except DuplicateKey as exc:
            raise duplicate_key_refusal(exc) from None
        except (ValueError, RecursionError):
            pass  # FastAPI parses it again and says what is wrong with it


class _OnceReadRoute(APIRoute):
    """A route that takes a body decodes it with ``_OnceReadRequest``: done
    inside FastAPI's handler, a refusal would have been turned into its own
    400 that only says the body could not be parsed. FastAPI documents
    subclassing ``APIRoute`` for custom handling of the request body."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if self.body_field is None:
            return handler
        kind = self.body_field.field_info.annotation

        async def handle(request: Request) -> Response:
            once = _OnceReadRequest(request.scope, request.receive)
            await once.decode_body(kind)
            if once.unknown:  # for the answer, a refusal's too (``with_warnings``)
                once.scope[UNKNOWN_KEYS] = once.unknown
            return with_warnings(once, await handler(once))

        return handle


#: Where in the ASGI scope a route leaves the keys its body does not take.
UNKNOWN_KEYS = "geopunch.unknown_keys"


def with_warnings(request: Request, response: Response) -> Response:
    """``response`` with a ``Warning`` header for each key the request's
    body does not take, unless the call asked for another mode (Strict
    was refused before it ran, by ``known_query``, as was a mode that is
    not one)."""
    unknown = request.scope.get(UNKNOWN_KEYS)
    if unknown and _mode(request) == WARN:
        for warning in answers.unknown_field_warnings(unknown, _body_root(request.url.path)):
            response.headers.append("Warning", warning)
    return response


def _mode(request: Request) -> str | None:
    return field_validation(request.query_params.getlist(FIELD_VALIDATION))


def _body_root(path: str) -> str:
    """What the rules call a body that is a list: the shifts of a scheduler."""
    return "shifts" if path.startswith("/scheduler/") else ""


def create_app(deps: HttpDeps) -> Any:
    """The ASGI app: the request context around the punch lane around FastAPI."""
    queries: dict[tuple[str, str], dict[str, bool]] = {}

    def known_query(request: Request) -> None:
        """A query holds only parameters the document lists for the call,
        each taking one value unless it takes a list. Unchecked, a
        misspelled filter (``userId`` for ``userIds``) was silently dropped
        and the call answered for everyone, and of a value given twice one
        was silently taken. Every call that takes a key checks it, after the
        key; the health checks and /metrics, which probes and scrapers call,
        take any query."""
        if not request.scope.get("query_string"):
            return
        if not queries:
            queries.update(query_parameters(app.openapi()))
        route = request.scope.get("route")
        names = queries.get((request.method, getattr(route, "path_format", "")))
        if names is None:  # not a documented operation (/metrics)
            return
        problems = query_problems(names, request.query_params.multi_items())
        if problems:
            raise DomainError.from_violations(problems, "the query")
        refusal = field_validation_problem(request.query_params.getlist(FIELD_VALIDATION))
        if refusal is not None:
            raise refusal
        unknown = getattr(request, "unknown", None)
        if _mode(request) == STRICT and unknown:
            raise answers.unknown_field_refusal(unknown, _body_root(request.url.path))

    app = FastAPI(
        # Starlette answered a path with a trailing slash by a redirect to the
        # path without it, built from the request's Host header: a client
        # that follows it would carry its X-API-KEY to whatever host that
        # header named (and to plain http behind TLS). Such a path is a 404
        # that says why (``_framework_reason``).
        redirect_slashes=False,
        # A body without a Content-Type is read as JSON, as the punch lane
        # reads it: refused only when the lane left it to the route (a bad
        # field, a large body), such a punch was told to send a Content-Type
        # instead of what was wrong. FastAPI's strict default guards apps
        # that browsers can post to without a CORS preflight; every call
        # here sends X-API-KEY, a header that needs one.
        strict_content_type=False,
        title="geopunch",
        description=(
            "Punches, breaks, geofences and scheduled shifts over HTTP/JSON at the "
            "spec's paths, and geopunch's own set-up, checks and event stream under "
            "/geopunch/v1. Every call sends its API key in the X-API-KEY header. "
            "Large location batches belong on the gRPC API's raw columns."
        ),
        version="1",
        # FastAPI's own OpenTelemetry hooks look up the global providers on
        # every request (7 % of an HTTP punch, py-spy) though geopunch
        # configures none.
        telemetry={"tracing": False, "metrics": False, "logs": False},
        # Counted as read: a body sent in chunks has no length to refuse it
        # by up front (RequestContext refuses one whose length is too large).
        max_body_size=deps.max_body_bytes,
        responses={
            status: refusal(what)
            for status, what in (
                (400, "the body, a parameter or a rule refused the call"),
                (401, "missing or unknown API key"),
                (403, "the key lacks the scope"),
                (404, "the resource of the path does not exist"),
                (409, "a locked day, an existing id or a concurrent change"),
                (408, "the request did not arrive whole in time"),
                (413, "the body is too large"),
                (414, "the URL is too long"),
                (415, "the body is compressed"),
                (429, "too many open event streams for the key"),
                (431, "the request's head is too large"),
                (500, "an unexpected error, logged under the request id"),
                (
                    503,
                    "the server is starting, or the store cannot answer now; retry "
                    "after the seconds of the Retry-After header",
                ),
            )
        },
    )

    build_document = app.openapi

    def exact_document() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = finish(build_document())
        return app.openapi_schema

    app.openapi = exact_document  # type: ignore[method-assign]
    app.router.route_class = _OnceReadRoute  # before any route is added

    @app.exception_handler(DomainError)
    async def domain_error(request: Request, exc: DomainError) -> Response:
        return with_warnings(request, _refusal(exc, request.url.path))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        # Starlette answers with this and raises the error on, to the
        # middleware that logs it.
        return _refusal(DomainError.unexpected(request_id_var.get()), request.url.path)

    @app.exception_handler(ConcurrentChange)
    async def lost_race(request: Request, exc: ConcurrentChange) -> Response:
        return with_warnings(request, _lost_race())

    @app.exception_handler(StoreUnavailable)
    async def store_unavailable(request: Request, exc: StoreUnavailable) -> Response:
        return with_warnings(request, _unavailable(exc, request.url.path))

    @app.exception_handler(RequestValidationError)
    async def bad_body(request: Request, exc: RequestValidationError) -> Response:
        # As the rules' own problems, so that the route's detail has its one
        # shape (a list for a batch of geofences, keyed by shift for shifts).
        root = _body_root(request.url.path)
        unknown = request.scope.get(UNKNOWN_KEYS, ())
        problems = [answers.validation_problem(e, root, unknown) for e in exc.errors()[:8]] or [
            FieldViolation("", "invalid request", ErrorCode.INVALID_ARGUMENT)
        ]
        refusal = DomainError.from_violations(problems, "the request")
        return with_warnings(request, _refusal(refusal, request.url.path))

    @app.exception_handler(StarletteHTTPException)
    async def framework_refusal(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """Starlette's own refusals (no such path or method, a body it could
        not read) in the error body every other refusal has."""
        if exc.status_code == 413:  # FastAPI's body limit
            return _body_too_large(deps.max_body_bytes)
        if exc.status_code == 405:
            exc.headers = {"Allow": _allowed_methods(request)}
        answer = _error(exc.status_code, *_framework_reason(request, exc))
        answer.headers.update(exc.headers or {})
        return answer

    # A security scheme (documented as such in the OpenAPI document) that reads
    # the header directly: cheaper per call than a validated Header parameter.
    api_key_header = APIKeyHeader(name="X-API-KEY", auto_error=False)

    async def authorize(x_api_key: str | None, scope: Scope) -> Principal:
        if not deps.ready.is_set():
            raise DomainError(ErrorCode.UNAVAILABLE, "the server is starting; retry shortly")
        # Known already when the middleware checked the key of a request
        # with a body (the same header): a punch's key is checked once.
        who = caller_var.get()
        if who is None:
            who = deps.keys.authenticate(x_api_key) if x_api_key else None
            if who is None:
                raise _no_key()
            caller_var.set(who)  # for the access log line
        who.require(scope, "this endpoint")
        due = deps.catch_up()
        if due is not None:  # a sibling worker changed a time clock meanwhile
            await asyncio.to_thread(due)
        return who

    def principal(scope: Scope) -> Callable[..., Awaitable[Principal]]:
        async def check(
            request: Request, x_api_key: Annotated[str | None, Depends(api_key_header)]
        ) -> Principal:
            who = await authorize(x_api_key, scope)
            known_query(request)  # after the key: a keyless call is told that first
            return who

        return check

    Reader = Annotated[Principal, Depends(principal(Scope.READ))]
    Puncher = Annotated[Principal, Depends(principal(Scope.PUNCH))]
    Admin = Annotated[Principal, Depends(principal(Scope.ADMIN))]
    Int64Path = Annotated[int, Path(ge=0, le=2**63 - 1), DECIMAL]
    #: An id in a query's list, bounded like one in a path: an unbounded one
    #: (10**30) reached the store's driver and failed there as a 500.
    QueryId = Annotated[int, Field(ge=0, le=2**63 - 1), DECIMAL]
    IdPath = Annotated[Text, Path(max_length=1000)]
    #: Documented with the names a key's scope may have; the account's rules
    #: refuse any other in their own words.
    ScopeName = Annotated[Text, WithJsonSchema({"type": "string", "enum": list(Scope)})]
    IdemKey = Annotated[
        str,
        Header(
            alias="Idempotency-Key",
            max_length=256,
            description="A retried punch with the same key gets the first answer again.",
        ),
    ]

    async def punch(who: Principal, cmd: PunchCommand) -> PunchResult:
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

    def answer(data: Any) -> Response:
        # A ready response: FastAPI's validation and encoding of a returned
        # dict cost more than the rest of a punch's HTTP handling (measured).
        return JsonAnswer({"requestId": request_id_var.get(), "data": data})

    # -- the spec: clocking and manual breaks -------------------------------------------

    base = "/time-clock/v1/time-clocks/{timeClockId}"

    @app.post(f"{base}/clock-in", tags=["time clock"], responses=ok(shapes.ShiftData))
    async def clock_in(
        who: Puncher,
        timeClockId: Int64Path,
        body: Annotated[ClockInBody, Body(openapi_examples=EXAMPLES["clock-in"])],
        key: IdemKey = "",
    ) -> Response:
        """Start a shift (live, or at a past `timestamp` within 12 hours)."""
        cmd = _punch_command(PunchKind.CLOCK_IN, timeClockId, body, key)
        return answer(answers.shift_data(await punch(who, cmd)))

    @app.post(f"{base}/clock-out", tags=["time clock"], responses=ok(shapes.ShiftData))
    async def clock_out(
        who: Puncher,
        timeClockId: Int64Path,
        body: Annotated[ClockOutBody, Body(openapi_examples=EXAMPLES["clock-out"])],
        key: IdemKey = "",
    ) -> Response:
        """End the user's open shift."""
        cmd = _punch_command(PunchKind.CLOCK_OUT, timeClockId, body, key)
        return answer(answers.shift_data(await punch(who, cmd)))

    @app.get(f"{base}/manual-breaks", tags=["time clock"], responses=ok(shapes.ManualBreaksOut))
    def manual_break_settings(who: Reader, timeClockId: Int64Path) -> Response:
        """Whether manual breaks are enabled, and the break types to start."""
        tc = punches.list_manual_breaks(deps.uows, who.account_id, timeClockId)
        return answer(answers.manual_breaks(tc))

    # A break type's id is the caller's to choose, "/" included, and ASGI
    # servers hand the path over decoded: "lunch%2F30" arrives as "lunch/30",
    # which a one-segment parameter never matched (a 404 for a break that
    # exists). The path convertor takes the id whole up to "/clock-in".
    @app.post(
        f"{base}/manual-breaks/{{manualBreakId:path}}/clock-in",
        tags=["time clock"],
        responses=ok(shapes.BreakStartedOut),
    )
    async def start_break(
        who: Puncher,
        timeClockId: Int64Path,
        manualBreakId: Annotated[Text, Path(max_length=128)],
        body: Annotated[BreakStartBody, Body(openapi_examples=EXAMPLES["break-start"])],
        key: IdemKey = "",
    ) -> Response:
        """Start a manual break; an open shift is closed at the same second."""
        cmd = _punch_command(
            PunchKind.START_BREAK, timeClockId, body, key, manual_break_id=manualBreakId
        )
        return answer(answers.break_started(await punch(who, cmd)))

    @app.post(
        f"{base}/manual-breaks/clock-out",
        tags=["time clock"],
        responses=ok(shapes.BreakEndedOut),
    )
    async def end_break(
        who: Puncher,
        timeClockId: Int64Path,
        body: Annotated[BreakEndBody, Body(openapi_examples=EXAMPLES["break-end"])],
        key: IdemKey = "",
    ) -> Response:
        """End the open manual break; the interrupted shift resumes unless told not to."""
        cmd = _punch_command(PunchKind.END_BREAK, timeClockId, body, key)
        return answer(answers.break_ended(await punch(who, cmd)))

    # The punch routes above, served by PunchLane when the request is well-formed.
    lanes: dict[str, tuple[type[ClockOutBody], PunchKind, Callable[[PunchResult], Any]]] = {
        "clock-in": (ClockInBody, PunchKind.CLOCK_IN, answers.shift_data),
        "clock-out": (ClockOutBody, PunchKind.CLOCK_OUT, answers.shift_data),
        "manual-breaks/clock-out": (BreakEndBody, PunchKind.END_BREAK, answers.break_ended),
    }
    start_lane = (BreakStartBody, PunchKind.START_BREAK, answers.break_started)

    async def punch_lane(
        match: "re.Match[str]", headers: dict[bytes, bytes], body: bytes
    ) -> Response | None:
        tc = int(match["tc"])
        break_id = match["brk"] or ""
        key = headers.get(b"idempotency-key", b"").decode("latin-1")
        content_type = headers.get(b"content-type", b"application/json")
        if (
            tc > 2**63 - 1
            or len(break_id) > 128
            or text_problem(break_id)
            or len(key) > 256
            or not content_type.lower().startswith(b"application/json")
            # A punch's body is a few hundred bytes; a large one is decoded
            # on a worker thread by the route, off the event loop.
            or len(body) >= _DECODE_APART_BYTES
        ):
            return None
        model, kind, render = start_lane if break_id else lanes[match["what"]]
        try:
            parsed = model.model_validate_json(body)
            # A key named twice: the route refuses it; keys the body does
            # not take: the route says so in its answer.
            if unknown_fields(decode_json(body), model):
                return None
        except ValueError:  # ValidationError, DuplicateKey, or JSON only pydantic took
            return None
        try:
            x_api_key = headers.get(b"x-api-key", b"").decode("latin-1") or None
            who = await authorize(x_api_key, Scope.PUNCH)
            cmd = _punch_command(kind, tc, parsed, key, manual_break_id=break_id)
            return answer(render(await punch(who, cmd)))
        except DomainError as exc:
            return _refusal(exc, match.string)
        except ConcurrentChange:
            return _lost_race()
        except StoreUnavailable as exc:
            return _unavailable(exc, match.string)

    # -- the spec: geofences (blocking use cases, run on FastAPI's thread pool) ---------

    @app.get(f"{base}/geofences", tags=["geofences"], responses=ok(shapes.FencesOut))
    def list_fences(who: Reader, timeClockId: Int64Path) -> Response:
        fences = geofences.list_geofences(deps.uows, who.account_id, timeClockId)
        return answer({"geofences": [answers.fence(f) for f in fences]})

    @app.post(f"{base}/geofences", tags=["geofences"], responses=ok(shapes.FencesMadeOut))
    def create_fences(
        who: Admin,
        timeClockId: Int64Path,
        body: Annotated[CreateGeofencesBody, Body(openapi_examples=EXAMPLES["geofences"])],
    ) -> Response:
        """Create 1 to 1000 geofences, all or none."""
        drafts = [fence_draft(g, i) for i, g in enumerate(body.geofences)]
        made = geofences.create_geofences(
            deps.uows, who.account_id, timeClockId, drafts, deps.fences, deps.commit
        )
        return answer({"geofences": [{"fenceId": f.id, "name": f.name} for f in made]})

    @app.get(
        f"{base}/geofences/{{fenceId}}",
        tags=["geofences"],
        responses=ok(shapes.OneFenceOut),
    )
    def get_fence(who: Reader, timeClockId: Int64Path, fenceId: IdPath) -> Response:
        fence = geofences.get_geofence(deps.uows, who.account_id, timeClockId, fenceId)
        return answer({"geofence": answers.fence(fence)})

    @app.delete(f"{base}/geofences/{{fenceId}}", tags=["geofences"], responses=ok(shapes.Nothing))
    def delete_fence(who: Admin, timeClockId: Int64Path, fenceId: IdPath) -> Response:
        geofences.delete_geofence(
            deps.uows, who.account_id, timeClockId, fenceId, deps.fences, deps.commit
        )
        return answer({})

    # -- the spec: scheduled shifts -----------------------------------------------------

    shifts_base = "/scheduler/v1/schedulers/{schedulerId}/shifts"

    @app.post(shifts_base, tags=["scheduler"], responses=ok(shapes.ScheduledShiftsOut))
    def create_shifts(
        who: Admin,
        schedulerId: Int64Path,
        body: Annotated[
            list[ShiftIn],
            *at_most(MAX_SHIFTS_PER_REQUEST, refuse=check_shift_count),
            Body(openapi_examples=EXAMPLES["shifts"]),
        ],
        notifyUsers: Annotated[bool, Query(), BOOLEAN] = True,
    ) -> Response:
        """Create 1 to 500 shifts, all or none; published ones notify their users."""
        made = scheduler.create_shifts(
            deps.uows,
            deps.clock,
            who.account_id,
            schedulerId,
            [s.to_domain() for s in body],
            notify_users=notifyUsers,
        )
        return answer({"shifts": [answers.scheduled_shift(s) for s in made]})

    @app.get(shifts_base, tags=["scheduler"], responses=ok(shapes.ScheduledShiftsOut))
    def list_shifts(
        who: Reader,
        schedulerId: Int64Path,
        startTime: Annotated[int, Query(ge=0, le=2**62), DECIMAL],
        endTime: Annotated[int, Query(ge=0, le=2**62), DECIMAL],
    ) -> Response:
        """Shifts overlapping [startTime, endTime) (Unix seconds)."""
        found = scheduler.list_shifts(deps.uows, who.account_id, schedulerId, startTime, endTime)
        return answer({"shifts": [answers.scheduled_shift(s) for s in found]})

    # -- time activities and who is on the clock ----------------------------------------

    activities_path = f"{base}/time-activities"
    ActivityId = Annotated[Text, Path(max_length=128)]
    UserIds = Annotated[
        list[QueryId],
        Query(
            max_length=10_000,
            description=(
                "Repeat for several. A URL holds at most 65,535 bytes (414 past it): "
                "about 2,600 ids of 16 digits; gRPC takes all 10,000."
            ),
        ),
    ]

    @app.post(activities_path, tags=["time activities"], responses=ok(shapes.TimeActivitiesOut))
    def create_time_activities(
        who: Puncher,
        timeClockId: Int64Path,
        body: Annotated[
            CreateTimeActivitiesBody, Body(openapi_examples=EXAMPLES["time-activities"])
        ],
        key: IdemKey = "",
    ) -> Response:
        """Record 1 to 1000 completed shifts and breaks, all or none (punches
        older than 12 hours, imports)."""
        made = timesheets.create_time_activities(
            deps.uows,
            deps.fences,
            deps.clock,
            who.account_id,
            timeClockId,
            [g.to_domain() for g in body.timeActivities],
            key,
        )
        return answer({"timeActivities": [answers.time_activity(a) for a in made]})

    @app.get(activities_path, tags=["time activities"], responses=ok(shapes.TimeActivityPageOut))
    def list_time_activities(
        who: Reader,
        timeClockId: Int64Path,
        startTime: Annotated[int, Query(ge=0, le=2**62), DECIMAL],
        endTime: Annotated[int, Query(ge=0, le=2**62), DECIMAL],
        userIds: UserIds = [],  # noqa: B006 (FastAPI copies defaults)
        jobIds: Annotated[list[Text], Query(max_length=1000)] = [],  # noqa: B006
        pageSize: Annotated[int, Query(ge=0, le=10_000), DECIMAL] = 0,
        pageToken: Annotated[Text, Query(max_length=512)] = "",
        includeTotals: bool = False,
    ) -> Response:
        """Shifts and breaks overlapping [startTime, endTime) (at most 92 days),
        open ones included, in start order; totals per user and day on the first page."""
        query = ListQuery(
            timeClockId,
            startTime,
            endTime,
            tuple(userIds),
            tuple(jobIds),
            pageSize,
            pageToken,
            includeTotals,
        )
        page = timesheets.list_time_activities(
            deps.uows, deps.fences, deps.clock, who.account_id, query
        )
        return answer(
            {
                "timeActivities": answers.time_activity_rows(page.activities),
                "nextPageToken": page.next_page_token or None,
                "totals": None if page.totals is None else answers.window_totals(page.totals),
            }
        )

    @app.put(
        f"{activities_path}/{{activityId}}",
        tags=["time activities"],
        responses=ok(shapes.OneTimeActivityOut),
    )
    def update_time_activity(
        who: Admin, timeClockId: Int64Path, activityId: ActivityId, body: UpdateTimeActivityBody
    ) -> Response:
        """Correct a completed shift or break, as read at `modifiedAt`."""
        done = timesheets.update_time_activity(
            deps.uows,
            deps.fences,
            deps.clock,
            who.account_id,
            timeClockId,
            body.to_domain(activityId),
        )
        return answer({"timeActivity": answers.time_activity(done)})

    @app.delete(
        f"{activities_path}/{{activityId}}",
        tags=["time activities"],
        responses=ok(shapes.OneTimeActivityOut),
    )
    def delete_time_activity(
        who: Admin,
        timeClockId: Int64Path,
        activityId: ActivityId,
        modifiedAt: Annotated[int, Query(ge=-(2**63), le=2**63 - 1), DECIMAL],
    ) -> Response:
        """Delete a completed shift or break, as read at `modifiedAt`."""
        gone = timesheets.delete_time_activity(
            deps.uows, deps.fences, deps.clock, who.account_id, timeClockId, activityId, modifiedAt
        )
        return answer({"timeActivity": answers.time_activity(gone)})

    @app.get(
        f"{base}/user-statuses",
        tags=["time activities"],
        responses=ok(shapes.UserStatusesOut),
    )
    def user_statuses(who: Reader, timeClockId: Int64Path, userIds: UserIds = []) -> Response:  # noqa: B006
        """Who is idle, on a shift or on a break now (all users, or those named)."""
        found = timesheets.get_user_statuses(
            deps.uows, deps.fences, who.account_id, timeClockId, userIds
        )
        # Joined from lines kept encoded, as over gRPC.
        return answer({"statuses": answers.user_statuses(found)})

    # -- geopunch's own: set-up ----------------------------------------------------------

    own = "/geopunch/v1"

    @app.post(f"{own}/time-clocks", tags=["set-up"], responses=ok(shapes.TimeClockOut))
    def create_time_clock(who: Admin, body: TimeClockIn) -> Response:
        """A new time clock; the server picks its id when `id` is left out."""
        tc, paths = body.to_domain()
        made = admin.create_time_clock(
            deps.uows,
            who.account_id,
            tc,
            paths,
            assign_id=body.id is None,
            listener=deps.fences,
            commit=deps.commit,
        )
        return answer(answers.time_clock(made))

    @app.get(
        f"{own}/time-clocks/{{timeClockId}}",
        tags=["set-up"],
        responses=ok(shapes.TimeClockOut),
    )
    def get_time_clock(who: Reader, timeClockId: Int64Path) -> Response:
        return answer(
            answers.time_clock(admin.read_time_clock(deps.uows, who.account_id, timeClockId))
        )

    @app.put(
        f"{own}/time-clocks/{{timeClockId}}",
        tags=["set-up"],
        responses=ok(shapes.TimeClockOut),
    )
    def replace_time_clock(who: Admin, timeClockId: Int64Path, body: TimeClockIn) -> Response:
        """Replace every setting of the time clock."""
        tc, paths = body.to_domain(timeClockId)
        made = admin.update_time_clock(
            deps.uows, who.account_id, tc, paths, deps.fences, deps.commit
        )
        return answer(answers.time_clock(made))

    days_path = f"{own}/time-clocks/{{timeClockId}}/users/{{userId}}/days"

    @app.get(days_path, tags=["set-up"], responses=ok(shapes.DaysOut))
    def list_days(who: Reader, timeClockId: Int64Path, userId: Int64Path) -> Response:
        """The user's locked and approved days on this time clock."""
        found = admin.list_day_statuses(deps.uows, who.account_id, timeClockId, userId)
        return answer(answers.days(found))

    @app.post(days_path, tags=["set-up"], responses=ok(shapes.DaysOut))
    def set_days(
        who: Admin, timeClockId: Int64Path, userId: Int64Path, body: DayStatusBody
    ) -> Response:
        """Lock, approve or reopen days (`YYYY-MM-DD`) of the user."""
        found = admin.set_day_status(
            deps.uows, who.account_id, timeClockId, userId, body.dates, DayStatus(body.status)
        )
        return answer(answers.days(found))

    @app.post(f"{own}/schedulers", tags=["set-up"], responses=ok(shapes.SchedulerOut))
    def create_scheduler(who: Admin, body: SchedulerIn) -> Response:
        s, paths = body.to_domain()
        made = scheduler.create_scheduler(
            deps.uows, who.account_id, s, paths, assign_id=body.id is None
        )
        return answer(answers.scheduler(made))

    @app.get(
        f"{own}/schedulers/{{schedulerId}}",
        tags=["set-up"],
        responses=ok(shapes.SchedulerOut),
    )
    def get_scheduler(who: Reader, schedulerId: Int64Path) -> Response:
        return answer(
            answers.scheduler(scheduler.read_scheduler(deps.uows, who.account_id, schedulerId))
        )

    @app.put(
        f"{own}/schedulers/{{schedulerId}}",
        tags=["set-up"],
        responses=ok(shapes.SchedulerOut),
    )
    def replace_scheduler(who: Admin, schedulerId: Int64Path, body: SchedulerIn) -> Response:
        s, paths = body.to_domain(schedulerId)
        return answer(
            answers.scheduler(scheduler.update_scheduler(deps.uows, who.account_id, s, paths))
        )

    @app.get(f"{own}/api-keys", tags=["api keys"], responses=ok(shapes.ApiKeysOut))
    def list_keys(who: Admin) -> Response:
        return answer(
            {"keys": [answers.api_key(k) for k in accounts.list_keys(deps.uows, who.account_id)]}
        )

    @app.post(f"{own}/api-keys", tags=["api keys"], responses=ok(shapes.ApiKeyOut))
    def create_key(
        who: Admin,
        scopes: Annotated[list[ScopeName], Body(max_length=3, json_schema_extra={"minItems": 1})],
        label: Annotated[Text, Body(max_length=200)] = "",
    ) -> Response:
        """A new key of the caller's account; its secret is in this answer only."""
        issued = accounts.create_key(
            deps.uows, deps.clock, who.account_id, scopes_of(scopes), label
        )
        return answer(answers.api_key(issued.key, issued.secret))

    @app.post(
        f"{own}/api-keys/{{keyId}}/rotate",
        tags=["api keys"],
        responses=ok(shapes.ApiKeyOut),
    )
    def rotate_key(who: Admin, keyId: IdPath) -> Response:
        """A new key in place of this one, which is revoked."""
        issued = accounts.rotate_key(deps.uows, deps.clock, keyId, who.account_id)
        return answer(answers.api_key(issued.key, issued.secret))

    @app.delete(f"{own}/api-keys/{{keyId}}", tags=["api keys"], responses=ok(shapes.ApiKeyOut))
    def revoke_key(who: Admin, keyId: IdPath) -> Response:
        return answer(answers.api_key(accounts.revoke_key(deps.uows, keyId, who.account_id)))

    # -- webhook subscriptions ------------------------------------------------------------

    hooks = "/webhooks/v1/subscriptions"
    HookId = Annotated[Text, Path(max_length=64)]

    @app.post(hooks, tags=["webhooks"], responses=ok(shapes.WebhookOut))
    def create_webhook(who: Admin, body: NewWebhookIn) -> Response:
        """A subscription to this account's events from now on; the answer
        holds its signing secret (generated unless given), once."""
        sub = webhooks.create_subscription(
            deps.uows, who.account_id, body.to_domain(), deps.webhook_guard
        )
        return answer(answers.webhook_subscription(sub, with_secret=True))

    @app.get(hooks, tags=["webhooks"], responses=ok(shapes.WebhooksOut))
    def list_webhooks(who: Admin) -> Response:
        found = webhooks.list_subscriptions(deps.uows, who.account_id)
        return answer({"subscriptions": [answers.webhook_subscription(s) for s in found]})

    @app.get(f"{hooks}/{{subscriptionId}}", tags=["webhooks"], responses=ok(shapes.WebhookOut))
    def get_webhook(who: Admin, subscriptionId: HookId) -> Response:
        sub = webhooks.get_subscription(deps.uows, who.account_id, subscriptionId)
        return answer(answers.webhook_subscription(sub))

    @app.patch(f"{hooks}/{{subscriptionId}}", tags=["webhooks"], responses=ok(shapes.WebhookOut))
    def update_webhook(who: Admin, subscriptionId: HookId, body: WebhookSubscriptionIn) -> Response:
        """Change the fields sent; `status` "active" resumes a failing subscription."""
        sub = webhooks.update_subscription(
            deps.uows, who.account_id, subscriptionId, body.to_domain(), deps.webhook_guard
        )
        return answer(answers.webhook_subscription(sub, with_secret=body.secret is not None))

    @app.delete(
        f"{hooks}/{{subscriptionId}}",
        tags=["webhooks"],
        status_code=204,
        responses={204: {"description": "deleted; no body"}},
    )
    def delete_webhook(who: Admin, subscriptionId: HookId) -> Response:
        webhooks.delete_subscription(deps.uows, who.account_id, subscriptionId)
        return Response(status_code=204, headers={"X-Request-ID": request_id_var.get()})

    @app.get(
        f"{hooks}/{{subscriptionId}}/deliveries",
        tags=["webhooks"],
        responses=ok(shapes.DeliveriesOut),
    )
    def list_webhook_deliveries(
        who: Admin,
        subscriptionId: HookId,
        pageSize: Annotated[int, Query(ge=0, le=500), DECIMAL] = 0,
        pageToken: Annotated[Text, Query(max_length=32)] = "",
    ) -> Response:
        """Delivery attempts, newest first."""
        page, token = webhooks.list_deliveries(
            deps.uows, who.account_id, subscriptionId, pageSize, pageToken
        )
        return answer(
            {
                "deliveries": [answers.webhook_delivery(a) for a in page],
                "nextPageToken": token or None,
            }
        )

    @app.post(
        f"{hooks}/{{subscriptionId}}/replay",
        tags=["webhooks"],
        responses=ok(shapes.WebhookOut),
    )
    def replay_webhook(who: Admin, subscriptionId: HookId, body: ReplayBody) -> Response:
        """Deliver again from `fromSeq` on, and resume a failing subscription."""
        sub = webhooks.replay_subscription(deps.uows, who.account_id, subscriptionId, body.fromSeq)
        return answer(answers.webhook_subscription(sub))

    # -- geopunch's own: checks and events -----------------------------------------------

    @app.post(
        f"{own}/time-clocks/{{timeClockId}}/validate-punch",
        tags=["checks"],
        responses=ok(shapes.VerdictOut),
    )
    def validate_punch(who: Reader, timeClockId: Int64Path, body: ValidatePunchBody) -> Response:
        """What the punch would answer now, storing nothing."""
        cmd = _punch_command(
            _PUNCH_KINDS[body.kind], timeClockId, body, "", body.manualBreakId or ""
        )
        try:
            punches.validate_punch(deps.uows, deps.fences, deps.clock, who.account_id, cmd)
        except DomainError as err:
            return answer(answers.verdict(err))
        return answer(answers.verdict(None))

    @app.post(
        f"{own}/time-clocks/{{timeClockId}}/check-locations",
        tags=["checks"],
        responses=ok(shapes.PointResultsOut),
    )
    def check_points(
        who: Reader,
        timeClockId: Int64Path,
        body: CheckLocationsBody,
        jobId: Annotated[Text, Query(max_length=1000)] = "",
        withDistance: Annotated[bool, Query(), BOOLEAN] = False,
    ) -> Response:
        """Which fences of the time clock each point is inside (up to 10,000
        points; larger batches belong on gRPC's CheckLocations)."""
        pts = body.points
        batch = LocationBatch(
            time_clock_id=timeClockId,
            lats=np.array([float(p.latitude) for p in pts], np.float64),
            lons=np.array([float(p.longitude) for p in pts], np.float64),
            time_clock_ids=None,
            accuracies_m=np.array(
                [np.nan if p.accuracy is None else float(p.accuracy) for p in pts], np.float64
            ),
            job_ids=(),
            job_indexes=None,
            job_id=jobId,
            with_distance=withDistance,
        )
        v = check_locations(deps.fences, who.account_id, batch, prefix="points")
        return answer({"results": answers.check_results(v)})

    @app.get(
        f"{own}/events",
        tags=["checks"],
        response_class=HeldStream,
        status_code=200,
        responses={
            200: {
                "description": "Server-Sent Events: `id` the event's seq, `event` its "
                "type, `data` its JSON",
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            }
        },
    )
    async def event_stream(
        who: Reader,
        request: Request,
        after: Annotated[int, Query(ge=0, le=2**63 - 1), DECIMAL] = 0,
        types: Annotated[list[Text], Query(max_length=64)] = [],  # noqa: B006
        timeClockIds: Annotated[list[QueryId], Query(max_length=1000)] = [],  # noqa: B006
        last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    ) -> Response:
        """The account's events as Server-Sent Events, from `after` (or the
        `Last-Event-ID` a reconnecting client sends), without end."""
        check_watch_filter(types, timeClockIds)
        if last_event_id is not None:
            seq = int64_text(last_event_id)
            if seq is None:
                raise DomainError(ErrorCode.INVALID_ARGUMENT, "Last-Event-ID must be a seq")
            after = seq
        await asyncio.to_thread(check_resumable, deps.uows, who.account_id, after)
        headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        if request.scope.get(HEAD):  # the stream's headers, not a stream without end
            return Response(media_type="text/event-stream", headers=headers)
        return HeldStream(
            _events(who.account_id, after, types, timeClockIds, request),
            deps.streams.take(who.key_id),
            media_type="text/event-stream",
            headers=headers,
        )

    async def _events(
        acct: int, cursor: int, types: list[str], clocks: list[int], request: Request
    ) -> AsyncIterator[bytes]:
        wakeup, stopping = deps.wakeup or Wakeup(), deps.stopping or threading.Event()
        yield b": geopunch events\n\n"
        last_read = last_sent = time.monotonic()
        seen = -1
        while not stopping.is_set() and not await request.is_disconnected():
            now = time.monotonic()
            if seen != wakeup.version or now - last_read >= IDLE_RECHECK_S:
                seen = wakeup.version
                last_read = now
                try:
                    page = await asyncio.to_thread(
                        events_after, deps.uows, acct, cursor, types, clocks
                    )
                except StoreUnavailable:
                    # The stream stays, keep-alives included, and reads again
                    # in a second: a browser's EventSource does not reconnect
                    # after a 503, so ending the stream would end its events.
                    seen, page = -1, []
                    await asyncio.sleep(1.0)
                for e in page:
                    data = json_bytes(event_json(e)).decode()
                    yield f"id: {e.seq}\nevent: {e.type}\ndata: {data}\n\n".encode()
                    cursor = e.seq
                    last_sent = now
                if len(page) == EVENT_PAGE:
                    continue
            if now - last_sent >= SSE_KEEPALIVE_S:
                yield b": keep-alive\n\n"
                last_sent = now
            # Short waits: a client gone is noticed within a second.
            await wakeup.wait(seen, 1.0)

    # -- health ---------------------------------------------------------------------------

    @app.get("/metrics", include_in_schema=False)
    def prometheus_metrics() -> Response:
        """Prometheus text format, without a key (like /healthz): counts and
        timings only, never a secret or a resource's data."""
        clocks, fences = deps.fences.totals()
        metrics.TIME_CLOCKS.set(clocks)
        metrics.FENCES.set(fences)
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    @app.get("/healthz", tags=["health"], response_model=shapes.HealthOut)
    async def healthz() -> dict[str, str]:
        """Live: the process answers."""
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["health"],
        responses={
            200: {"model": shapes.HealthOut, "description": "ready"},
            503: {"model": shapes.HealthOut, "description": "starting"},
        },
    )
    async def readyz() -> JSONResponse:
        """Ready: the store is open and the fence index loaded."""
        if deps.ready.is_set():
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "starting"}, status_code=503)

    # Answers of more than a packet are gzipped for a client that accepts it
    # (a 10,000-activity page, 6.8 MB of JSON, is 250 KB): Starlette's
    # middleware, which compresses an answer of 128 KiB or more on a worker
    # thread and leaves the event stream alone. Level 1, as nginx's default:
    # 16 ms for that page against 53 at Starlette's default of 9, for a
    # fifth less. A punch's answer (under a packet) is not touched.
    gzipped = GZipMiddleware(app, minimum_size=1400, compresslevel=1)
    # The lane before Starlette's own middleware (error pages, FastAPI's
    # telemetry and body limit) and the gzip above, which a well-formed
    # punch does not need; the request context outermost, so every answer
    # carries its request id.
    served = RequestContext(
        PunchLane(gzipped, punch_lane, deps.max_body_bytes),
        deps.max_body_bytes,
        deps.keys,
        deps.ready,
    )
    if not deps.allow_origins:
        return served
    # Outermost: a preflight is answered before the key is asked for (a
    # browser sends none with it), and every answer, a refusal too, carries
    # the headers a page needs to read it. Starlette's middleware: the
    # preflight's rules are subtle, and it follows the Fetch standard.
    return CORSMiddleware(
        served,
        allow_origins=list(deps.allow_origins),
        allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
        allow_headers=CORS_REQUEST_HEADERS,
        expose_headers=CORS_ANSWER_HEADERS,
        max_age=600,
    )


#: Headers a page may send: the key, a body's type, a punch's idempotency
#: key, an event stream's resume point, and a trace's context.
CORS_REQUEST_HEADERS = [
    "X-API-KEY",
    "Content-Type",
    "Idempotency-Key",
    "Last-Event-ID",
    "traceparent",
]
#: Headers of an answer a page may read beside the safelisted ones.
CORS_ANSWER_HEADERS = ["X-Request-ID", "Retry-After", "Warning"]
