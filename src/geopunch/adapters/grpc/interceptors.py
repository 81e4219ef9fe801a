"""One interceptor for every call: API key, request id, access log, error mapping."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import grpc

from geopunch import metrics
from geopunch.adapters.grpc.auth import principal_var, scope_of
from geopunch.adapters.grpc.counts import check_counts
from geopunch.adapters.grpc.errors import to_status
from geopunch.adapters.grpc.guard import check_request
from geopunch.adapters.spelling import meant
from geopunch.domain.accounts import Principal, Scope
from geopunch.domain.errors import ConcurrentChange, DomainError, ErrorCode, StoreUnavailable
from geopunch.logs import RateLimitedLog, new_request_id, request_id_var
from geopunch.service.accounts import KeyRing
from geopunch.service.events import StreamSlots

log = logging.getLogger("geopunch.rpc")

#: Request messages at least this large are checked by the guard on a handler
#: thread rather than on the event loop.
CHECK_APART_BYTES = 256 * 1024
#: Runs of a blocking use case that lost a race or a deadlock.
PLAIN_ATTEMPTS = 4

#: Services callable without an API key.
OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
API_KEY_HEADER = "x-api-key"


@dataclass(frozen=True, slots=True)
class CatchUp:
    """Work to do before a call's handler (a worker of ``serve --processes``
    applying its siblings' fence changes): ``pending`` is a cheap look whether
    there is any, ``run`` does it if so, blocking (on a thread, never the loop)."""

    pending: Callable[[], bool]
    run: Callable[[], None]


if TYPE_CHECKING:  # the stubs make it generic; the runtime class is not
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _Interceptor = grpc.aio.ServerInterceptor


@dataclass(frozen=True, slots=True)
class Limits:
    """What one caller can hold. ``unary`` calls run at once (more are
    answered UNAVAILABLE); event streams do not count against it (see
    ``StreamSlots``); a call must send its message within ``receive_s``
    seconds."""

    unary: int = 256
    receive_s: float = 10.0


class ServiceInterceptor(_Interceptor):
    """Authenticates, tags each call with a request id, logs it, and maps errors.

    A DomainError becomes its status with ErrorInfo/BadRequest details; any other
    exception is logged with its stack and answered INTERNAL without details.

    No call holds anything shared before it is known whose it is and what it
    asks: the key and its scope are checked from the metadata first, then the
    message is read (within ``Limits.receive_s``) and decoded here rather than
    by grpc, so that a message that never comes or does not decode is answered
    (INVALID_ARGUMENT, DEADLINE_EXCEEDED) instead of holding a slot; only then
    does a unary call take one of ``Limits.unary`` slots. That is why every
    handler is registered with grpc as a client-streaming one: its request
    stream gives the raw bytes of the one message a unary client sends.

    Every wrapper is a coroutine on the event loop. A unary handler may be a
    coroutine, or a plain function that the wrapper runs on ``executor``
    (stores and fence kernels block): grpc's own ``migration_thread_pool``
    would run it, but its context makes the thread wait for the loop at each
    ``send_initial_metadata``, a second hop per call. The wrapper remembers
    the code it answered itself, for the access log line.
    """

    def __init__(
        self,
        keys: KeyRing,
        ready: threading.Event,
        executor: Executor,
        *,
        limits: Limits = Limits(),
        catch_up: CatchUp | None = None,
        worker: int | None = None,
        streams: StreamSlots | None = None,
        methods: Collection[str] = (),
    ) -> None:
        """``worker`` is answered as ``x-geopunch-worker`` metadata; ``streams``
        counts event streams with the HTTP API's (its own when None);
        ``methods``, the full names of the methods served, are what a call of
        one that is not is told it likely meant."""
        self._keys = keys
        self._methods = tuple(methods)
        self._ready = ready
        self._executor = executor
        self._limits = limits
        self._unary_in_flight = 0
        self._streams = streams or StreamSlots()
        self._catch_up = catch_up
        # Calls without a valid key or message cost nothing to send: their
        # lines are rate-limited per peer so that the log cannot be flooded.
        self._unwelcome = RateLimitedLog(log)
        self._extra_metadata: tuple[tuple[str, str], ...] = (
            () if worker is None else (("x-geopunch-worker", str(worker)),)
        )

    def _principal(self, metadata: Any) -> Principal | None:
        presented = [v for k, v in metadata or () if k == API_KEY_HEADER]
        if len(presented) != 1:
            return None
        value = presented[0]
        if isinstance(value, bytes):
            try:
                value = value.decode()
            except UnicodeDecodeError:
                return None
        return self._keys.authenticate(value)

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(details)
        method: str = details.method
        if handler is None:
            return self._unknown(method)
        if method.startswith(OPEN_PREFIXES):
            return handler
        metadata = details.invocation_metadata
        offered = next((v for k, v in metadata or () if k == "x-request-id"), None)
        twice = _sent_twice(metadata)
        principal = None if twice else self._principal(metadata)
        call = _Call(method, principal, scope_of(method), offered, twice=twice)
        if handler.unary_unary:
            return grpc.stream_unary_rpc_method_handler(
                self._wrap_unary(handler.unary_unary, handler.request_deserializer, call),
                response_serializer=_or_encoded(handler.response_serializer),
            )
        if handler.unary_stream and inspect.isasyncgenfunction(handler.unary_stream):
            return grpc.stream_stream_rpc_method_handler(
                self._wrap_async_stream(handler.unary_stream, handler.request_deserializer, call),
                response_serializer=handler.response_serializer,
            )
        # A plain generator on grpc's thread pool keeps its thread blocked for
        # good once its client cancels (grpcio 1.85): streams must be async.
        raise NotImplementedError(f"{method}: only unary and async server-streaming handlers")

    def _unknown(self, method: str) -> grpc.RpcMethodHandler[Any, Any]:
        """The answer to a method no service has: grpc's own is a bare
        UNIMPLEMENTED ("Method not found!"). This one names the method the
        call likely meant, as an HTTP path that matches no route is told its
        route, with the same reason. Not counted by method in the metrics:
        the names are the caller's."""
        hint = method_meant(method, self._methods)
        shown = method if len(method) <= _METHOD_SHOWN else f"{method[:_METHOD_SHOWN]}..."
        listed = f"did you mean {hint}?" if hint else "server reflection lists them"
        failure = _status(DomainError(ErrorCode.ROUTE_NOT_FOUND, f"no method {shown}; {listed}"))

        async def refuse(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
            await context.abort(failure.code, failure.details, failure.trailing_metadata)

        return grpc.stream_stream_rpc_method_handler(refuse)

    def _refusal(self, call: _Call) -> DomainError | None:
        """Why a call may not run at all, if it may not."""
        if not self._ready.is_set():
            return DomainError(ErrorCode.UNAVAILABLE, "the server is starting; retry shortly")
        if call.twice:
            said = f"'{call.twice}' metadata is sent more than once; send it once"
            return DomainError(ErrorCode.INVALID_ARGUMENT, said)
        if call.principal is None:
            return DomainError(
                ErrorCode.API_KEY_INVALID,
                f"missing or unknown API key: send it as '{API_KEY_HEADER}' metadata",
            )
        if call.scope is not None:
            call.principal.require(call.scope, call.method.rpartition("/")[2])
        return None

    async def _request(self, requests: Any, context: Any, decode: Any, method: str) -> Any:
        """The call's one message, read within the receive limit and decoded."""
        try:
            # asyncio.timeout, not wait_for: wait_for (3.11) wraps the read in
            # a task of its own, a tenth of an empty call's time.
            async with asyncio.timeout(self._limits.receive_s):
                raw = await anext(aiter(requests))
        except TimeoutError:
            raise DomainError(
                ErrorCode.INVALID_ARGUMENT,
                f"no request message within {self._limits.receive_s:g} s",
            ) from None
        except StopAsyncIteration:
            raise DomainError(ErrorCode.INVALID_ARGUMENT, "the request has no message") from None
        if decode is None:
            return raw
        try:
            message = decode(raw)
        except Exception as exc:  # DecodeError, invalid UTF-8, nesting too deep, ...
            self._unwelcome.note(
                context.peer(),
                logging.WARNING,
                "undecodable request",
                {"method": method, "error": type(exc).__name__},
            )
            raise DomainError(
                ErrorCode.INVALID_ARGUMENT,
                f"the request message cannot be decoded as {method.rpartition('/')[2]}'s "
                "request (truncated, not protobuf, messages nested 100 deep, or invalid UTF-8 "
                "in a string)",
            ) from None
        check_counts(message)  # before anything reads the lists' items
        if len(raw) < CHECK_APART_BYTES:
            check_request(message)
        else:
            # The guard's walk is Python over every field of every item (2.1 s
            # for 900,000 jobs, now refused by their count first); for a large
            # message it runs on a handler thread, which the loop can
            # interleave with, instead of on the loop.
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._executor, check_request, message)
        return message

    async def _begin(self, context: Any, call: _Call) -> None:
        """Sends the call's initial metadata (its request id) once. It goes
        after the request message is read, so that a client holding the
        metadata knows its call is running (and a cancelled call ends as
        CANCELLED, not as a call without a message)."""
        if not call.began:
            call.began = True
            rid = request_id_var.get()
            await context.send_initial_metadata((("x-request-id", rid), *self._extra_metadata))

    def _failure(self, exc: Exception, method: str) -> _Status:
        """The status a handler's exception is answered with."""
        if isinstance(exc, DomainError):
            return _status(exc)
        if isinstance(exc, ConcurrentChange):  # still losing after its retries
            return _status(
                DomainError(
                    ErrorCode.CONCURRENT_MODIFICATION,
                    "the change met concurrent changes of the same data; retry",
                )
            )
        if isinstance(exc, StoreUnavailable):  # logged where it was met, without a stack
            return _status(exc.refusal())
        # Logged once here, with the stack; the caller gets the request id to
        # quote, never the exception's text.
        log.exception("unexpected error in %s", method)
        return _status(DomainError.unexpected(request_id_var.get()))

    @contextlib.asynccontextmanager
    async def _call(self, context: Any, call: _Call) -> AsyncIterator[None]:
        """Around one call's handler: request id and metadata, refusal, error
        mapping and the access log line with the code that was answered."""
        start, code = time.perf_counter(), grpc.StatusCode.OK
        token = request_id_var.set(new_request_id(call.offered_id))
        who = None
        try:
            try:
                refusal = self._refusal(call)
                if refusal is None:
                    assert call.principal is not None
                    who = principal_var.set(call.principal)
                    yield
                    return
                failure = _status(refusal)
            except Exception as exc:
                failure = self._failure(exc, call.method)
            code = failure.code
            await self._begin(context, call)
            await context.abort(failure.code, failure.details, failure.trailing_metadata)
        except (asyncio.CancelledError, GeneratorExit):  # the client went away
            code = grpc.StatusCode.CANCELLED
            raise
        finally:
            name = call.method.rpartition("/")[2]
            metrics.CALLS.labels("grpc", name, code.name).inc()
            metrics.CALL_SECONDS.labels("grpc", name).observe(time.perf_counter() - start)
            fields = _access_fields(call, start, code)
            if call.principal is None:
                self._unwelcome.note(context.peer(), logging.INFO, "rpc", fields)
            else:
                log.info("rpc", extra={"fields": fields})
            if who is not None:
                _reset(principal_var, who)
            _reset(request_id_var, token)

    @contextlib.contextmanager
    def _unary_slot(self) -> Iterator[None]:
        if self._unary_in_flight >= self._limits.unary:
            raise DomainError(
                ErrorCode.UNAVAILABLE,
                f"the server is at its limit of {self._limits.unary} calls in flight; "
                "retry shortly",
            )
        self._unary_in_flight += 1  # only the event loop's thread counts
        try:
            yield
        finally:
            self._unary_in_flight -= 1

    @contextlib.contextmanager
    def _stream_slot(self, principal: Principal) -> Iterator[None]:
        give_back = self._streams.take(principal.key_id)
        try:
            yield
        finally:
            give_back()

    def _wrap_unary(self, behavior: Any, decode: Any, call: _Call) -> Any:
        """Runs on the event loop; a plain ``behavior`` runs on ``executor``."""
        plain = not inspect.iscoroutinefunction(behavior)

        async def wrapped(requests: Any, context: Any) -> Any:
            async with self._call(context, call):
                request = await self._request(requests, context, decode, call.method)
                await self._begin(context, call)
                with self._unary_slot():
                    if plain:
                        # One hop to a thread and back, the request id and
                        # caller going along; the catch-up, if any, on the same hop.
                        return await asyncio.get_running_loop().run_in_executor(
                            self._executor,
                            contextvars.copy_context().run,
                            self._call_plain,
                            behavior,
                            request,
                            context,
                        )
                    await self._catch_up_async()
                    return await behavior(request, context)

        return wrapped

    def _call_plain(self, behavior: Any, request: Any, context: Any) -> Any:
        catch_up = self._due_catch_up()
        if catch_up is not None:
            catch_up()
        # A use case that lost a race or a deadlock rolled everything back:
        # it runs again while the call's deadline leaves time for it.
        for attempt in range(PLAIN_ATTEMPTS):
            try:
                return behavior(request, context)
            except ConcurrentChange:
                left = context.time_remaining()
                if attempt == PLAIN_ATTEMPTS - 1 or (left is not None and left < 0.05):
                    raise
                time.sleep(0.005 * 2**attempt)
        raise AssertionError("unreachable")

    def _wrap_async_stream(self, behavior: Any, decode: Any, call: _Call) -> Any:
        """An async generator handler, on the event loop."""

        async def wrapped(requests: Any, context: Any) -> AsyncIterator[Any]:
            async with self._call(context, call):
                request = await self._request(requests, context, decode, call.method)
                await self._begin(context, call)
                assert call.principal is not None
                with self._stream_slot(call.principal):
                    await self._catch_up_async()
                    async for item in behavior(request, context):
                        yield item

        return wrapped

    def _due_catch_up(self) -> Callable[[], None] | None:
        """The catch-up to run before this call's handler, if one is pending."""
        if self._catch_up is not None and self._catch_up.pending():
            return self._catch_up.run
        return None

    async def _catch_up_async(self) -> None:
        """The catch-up for a coroutine handler, on ``executor`` (it reads the store)."""
        catch_up = self._due_catch_up()
        if catch_up is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, catch_up)


def _or_encoded(serialize: Callable[[Any], bytes] | None) -> Callable[[Any], bytes] | None:
    """The handler's serializer, letting through an answer a handler already
    encoded (one too large to build as a message at each call: a board of
    thousands of users, see ``encode_statuses``)."""
    if serialize is None:
        return None

    def serialize_or_pass(message: Any) -> bytes:
        return message if type(message) is bytes else serialize(message)

    return serialize_or_pass


@dataclass(slots=True)
class _Call:
    """What is known of a call before its message: method, caller, scope needed."""

    method: str
    principal: Principal | None
    scope: Scope | None
    #: The caller's own x-request-id, if it sent one.
    offered_id: str | bytes | None = None
    began: bool = False
    #: Metadata that takes one value and was sent with several, if any.
    twice: str = ""


#: Metadata read as one value. Sent twice, which copy counts would be up to
#: each reader (the key check refused both as no key; the request id took
#: the first), and a proxy adding its own beside the client's would have
#: one silently ignored: such a call is refused, as the HTTP API refuses
#: such headers.
_ONE_VALUE = (API_KEY_HEADER, "x-request-id")


def _sent_twice(metadata: Any) -> str:
    seen: set[str] = set()
    for key, _ in metadata or ():
        if key in _ONE_VALUE:
            if key in seen:
                return str(key)
            seen.add(key)
    return ""


#: How much of an unknown method's name an answer repeats.
_METHOD_SHOWN = 200


def method_meant(method: str, methods: Iterable[str]) -> str | None:
    """The one method of ``methods`` (full names, ``/package.Service/Method``)
    that ``method`` likely stands for: the same method of another package
    or service (``/timeclock.TimeClockService/ClockIn``), else the whole
    name spelled closely or the method's own (``spelling.meant``)."""
    by_name: dict[str, list[str]] = {}
    for full in methods:
        by_name.setdefault(full.rpartition("/")[2], []).append(full)
    name = method.rpartition("/")[2]
    if len(by_name.get(name, ())) == 1:
        return by_name[name][0]
    if found := meant(method, [m for group in by_name.values() for m in group], longest=128):
        return found
    guess = meant(name, by_name)
    return by_name[guess][0] if guess is not None and len(by_name[guess]) == 1 else None


class _Status(NamedTuple):
    code: grpc.StatusCode
    details: str
    trailing_metadata: Any


def _status(err: DomainError) -> _Status:
    st = to_status(err)
    return _Status(st.code, st.details, st.trailing_metadata)


def _reset(var: contextvars.ContextVar[Any], token: contextvars.Token[Any]) -> None:
    """Undo ``var.set``. A stream the client left is closed by the event
    loop's finaliser in a task of its own, whose context is not the one the
    token came from: there is nothing to undo there, and raising would lose
    the call's end."""
    with contextlib.suppress(ValueError):
        var.reset(token)


def _access_fields(call: _Call, start: float, code: grpc.StatusCode) -> dict[str, object]:
    fields: dict[str, object] = {
        "method": call.method,
        "code": code.name,
        "ms": round((time.perf_counter() - start) * 1000, 3),
    }
    if call.principal is not None:
        fields["account"] = call.principal.account_id
        fields["key"] = call.principal.key_id
    return fields
