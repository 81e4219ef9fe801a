"""One interceptor for every call: API key, request id, access log, error mapping."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import hmac
import inspect
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import grpc

from geopunch.adapters.grpc.errors import to_status
from geopunch.domain.errors import DomainError, ErrorCode
from geopunch.logs import request_id_var

log = logging.getLogger("geopunch.rpc")

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


class ServiceInterceptor(_Interceptor):
    """Authenticates, tags each call with a request id, logs it, and maps errors.

    A DomainError becomes its status with ErrorInfo/BadRequest details; any other
    exception is logged with its stack and answered INTERNAL without details.

    Every wrapper is a coroutine on the event loop. A unary handler may be a
    coroutine, or a plain function that the wrapper runs on ``executor``
    (stores and fence kernels block): grpc's own ``migration_thread_pool``
    would run it, but its context makes the thread wait for the loop at each
    ``send_initial_metadata``, a second hop per call. The wrapper remembers
    the code it answered itself, for the access log line.
    """

    def __init__(
        self,
        key_hashes: tuple[bytes, ...],
        ready: threading.Event,
        executor: Executor,
        *,
        catch_up: CatchUp | None = None,
        worker: int | None = None,
    ) -> None:
        """``worker`` is answered as ``x-geopunch-worker`` metadata."""
        self._key_hashes = key_hashes
        self._ready = ready
        self._executor = executor
        self._catch_up = catch_up
        self._extra_metadata: tuple[tuple[str, str], ...] = (
            () if worker is None else (("x-geopunch-worker", str(worker)),)
        )

    def _authorized(self, metadata: Any) -> bool:
        presented = [v for k, v in metadata or () if k == API_KEY_HEADER]
        if len(presented) != 1:
            return False
        value = presented[0]
        digest = hashlib.sha256(value if isinstance(value, bytes) else value.encode()).digest()
        ok = False
        for stored in self._key_hashes:  # no early exit: time does not tell which key matched
            ok |= hmac.compare_digest(digest, stored)
        return ok

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(details)
        method: str = details.method
        if handler is None or method.startswith(OPEN_PREFIXES):
            return handler
        authorized = self._authorized(details.invocation_metadata)
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(handler.unary_unary, method, authorized),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream and inspect.isasyncgenfunction(handler.unary_stream):
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_async_stream(handler.unary_stream, method, authorized),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        # A plain generator on grpc's thread pool keeps its thread blocked for
        # good once its client cancels (grpcio 1.85): streams must be async.
        raise NotImplementedError(f"{method}: only unary and async server-streaming handlers")

    def _refusal(self, authorized: bool) -> DomainError | None:
        """Why a call may not run at all, if it may not."""
        if not self._ready.is_set():
            return DomainError(ErrorCode.UNAVAILABLE, "the server is starting; retry shortly")
        if not authorized:
            return DomainError(
                ErrorCode.API_KEY_INVALID,
                f"missing or unknown API key: send it as '{API_KEY_HEADER}' metadata",
            )
        return None

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        """A new request id, set for this call's logs and answers, as initial metadata."""
        rid = str(uuid.uuid4())
        request_id_var.set(rid)
        return (("x-request-id", rid), *self._extra_metadata)

    def _failure(self, exc: Exception, method: str) -> _Status:
        """The status a handler's exception is answered with."""
        if isinstance(exc, DomainError):
            return _status(exc)
        # Logged once here, with the stack; the caller gets the request id to
        # quote, never the exception's text.
        log.exception("unexpected error in %s", method)
        return _status(
            DomainError(
                ErrorCode.INTERNAL,
                f"internal error; the server log has it under request id {request_id_var.get()}",
                {"requestId": request_id_var.get()},
            )
        )

    @contextlib.asynccontextmanager
    async def _call(self, context: Any, method: str, authorized: bool) -> AsyncIterator[None]:
        """Around one call's handler: request id and metadata, refusal, error
        mapping and the access log line with the code that was answered."""
        start, code = time.perf_counter(), grpc.StatusCode.OK
        token = request_id_var.set("")
        try:
            await context.send_initial_metadata(self._metadata())
            refusal = self._refusal(authorized)
            if refusal is None:
                try:
                    yield
                    return
                except Exception as exc:
                    failure = self._failure(exc, method)
            else:
                failure = _status(refusal)
            code = failure.code
            await context.abort(failure.code, failure.details, failure.trailing_metadata)
        except (asyncio.CancelledError, GeneratorExit):  # the client went away
            code = grpc.StatusCode.CANCELLED
            raise
        finally:
            _log(method, start, code)
            request_id_var.reset(token)

    def _wrap_unary(self, behavior: Any, method: str, authorized: bool) -> Any:
        """Runs on the event loop; a plain ``behavior`` runs on ``executor``."""
        plain = not inspect.iscoroutinefunction(behavior)

        async def wrapped(request: Any, context: Any) -> Any:
            async with self._call(context, method, authorized):
                if plain:
                    # One hop to a thread and back, the request id going
                    # along; the catch-up, if any, on the same hop.
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
        return behavior(request, context)

    def _wrap_async_stream(self, behavior: Any, method: str, authorized: bool) -> Any:
        """An async generator handler, on the event loop."""

        async def wrapped(request: Any, context: Any) -> AsyncIterator[Any]:
            async with self._call(context, method, authorized):
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


class _Status(NamedTuple):
    code: grpc.StatusCode
    details: str
    trailing_metadata: Any


def _status(err: DomainError) -> _Status:
    st = to_status(err)
    return _Status(st.code, st.details, st.trailing_metadata)


def _log(method: str, start: float, code: grpc.StatusCode) -> None:
    log.info(
        "rpc",
        extra={
            "fields": {
                "method": method,
                "code": code.name,
                "ms": round((time.perf_counter() - start) * 1000, 3),
            }
        },
    )
