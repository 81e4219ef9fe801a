"""One interceptor for every call: API key, request id, access log, error mapping."""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import grpc

from geopunch.adapters.grpc.errors import to_status
from geopunch.domain.errors import DomainError, ErrorCode
from geopunch.logs import request_id_var

log = logging.getLogger("geopunch.rpc")

#: Services callable without an API key.
OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
API_KEY_HEADER = "x-api-key"


if TYPE_CHECKING:  # the stubs make it generic; the runtime class is not
    _Interceptor = grpc.ServerInterceptor[Any, Any]
else:
    _Interceptor = grpc.ServerInterceptor


class ServiceInterceptor(_Interceptor):
    """Authenticates, tags each call with a request id, logs it, and maps errors.

    A DomainError becomes its status with ErrorInfo/BadRequest details; any other
    exception is logged with its stack and answered INTERNAL without details.
    """

    def __init__(
        self,
        key_hashes: tuple[bytes, ...],
        ready: threading.Event,
        *,
        before_call: Callable[[], None] | None = None,
        worker: int | None = None,
    ) -> None:
        """``before_call`` runs before each authorized call's handler (a worker
        of ``serve --processes`` catches up with its siblings' fence changes
        there); ``worker`` is answered as ``x-geopunch-worker`` metadata."""
        self._key_hashes = key_hashes
        self._ready = ready
        self._before_call = before_call
        self._extra_metadata: tuple[tuple[str, str], ...] = (
            () if worker is None else (("x-geopunch-worker", str(worker)),)
        )

    def _authorized(self, metadata: tuple[tuple[str, str | bytes], ...] | None) -> bool:
        presented = [v for k, v in metadata or () if k == API_KEY_HEADER]
        if len(presented) != 1:
            return False
        value = presented[0]
        digest = hashlib.sha256(value if isinstance(value, bytes) else value.encode()).digest()
        ok = False
        for stored in self._key_hashes:  # no early exit: time does not tell which key matched
            ok |= hmac.compare_digest(digest, stored)
        return ok

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(details)
        if handler is None:
            return None
        method: str = details.method
        if method.startswith(OPEN_PREFIXES):
            return handler
        authorized = self._authorized(details.invocation_metadata)
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(handler.unary_unary, method, authorized),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(handler.unary_stream, method, authorized),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        raise NotImplementedError(f"{method}: client-streaming handlers are not wrapped")

    def _begin(self, context: grpc.ServicerContext, authorized: bool) -> str:
        rid = str(uuid.uuid4())
        context.send_initial_metadata((("x-request-id", rid), *self._extra_metadata))
        if not self._ready.is_set():
            context.abort_with_status(
                to_status(
                    DomainError(ErrorCode.UNAVAILABLE, "the server is starting; retry shortly")
                )
            )
        if not authorized:
            context.abort_with_status(
                to_status(
                    DomainError(
                        ErrorCode.API_KEY_INVALID,
                        f"missing or unknown API key: send it as '{API_KEY_HEADER}' metadata",
                    )
                )
            )
        return rid

    def _fail(self, context: grpc.ServicerContext, exc: BaseException, method: str) -> None:
        if isinstance(exc, DomainError):
            context.abort_with_status(to_status(exc))
        log.exception("unexpected error in %s", method)
        context.abort(grpc.StatusCode.INTERNAL, "internal error; see the server log")

    def _log(self, method: str, start: float, context: grpc.ServicerContext) -> None:
        code = context.code() or grpc.StatusCode.OK  # type: ignore[attr-defined]
        log.info(
            "rpc",
            extra={
                "fields": {
                    "method": method,
                    "code": code.name if isinstance(code, grpc.StatusCode) else str(code),
                    "ms": round((time.perf_counter() - start) * 1000, 3),
                }
            },
        )

    def _wrap_unary(self, behavior: Any, method: str, authorized: bool) -> Any:
        def wrapped(request: Any, context: grpc.ServicerContext) -> Any:
            start = time.perf_counter()
            token = request_id_var.set("")
            try:
                request_id_var.set(self._begin(context, authorized))
                try:
                    if self._before_call is not None:
                        self._before_call()
                    return behavior(request, context)
                except Exception as exc:
                    if _aborted(context):
                        raise
                    self._fail(context, exc, method)
            finally:
                self._log(method, start, context)
                request_id_var.reset(token)

        return wrapped

    def _wrap_stream(self, behavior: Any, method: str, authorized: bool) -> Any:
        def wrapped(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            start = time.perf_counter()
            token = request_id_var.set("")
            try:
                request_id_var.set(self._begin(context, authorized))
                try:
                    if self._before_call is not None:
                        self._before_call()
                    yield from behavior(request, context)
                except Exception as exc:
                    if _aborted(context):
                        raise
                    self._fail(context, exc, method)
            finally:
                self._log(method, start, context)
                request_id_var.reset(token)

        return wrapped


def _aborted(context: grpc.ServicerContext) -> bool:
    """True once abort() ran: its exception must reach grpc untouched."""
    code = context.code()  # type: ignore[attr-defined]
    return code is not None and code != grpc.StatusCode.OK
