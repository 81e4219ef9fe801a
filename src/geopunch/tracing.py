"""OpenTelemetry traces: off unless an OTLP endpoint is configured.

With ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``)
set, the standard OpenTelemetry variables configure an OTLP/gRPC exporter and
every call gets a server span (through the maintained gRPC and ASGI
instrumentations), with the punch and its transaction inside, joined to the
caller's ``traceparent``. Without it the OpenTelemetry API stays a no-op and
costs next to nothing.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context

#: The tracer of geopunch's own spans (use cases, the store's commits).
tracer = trace.get_tracer("geopunch")

_ENDPOINTS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
_provider: Any = None


def configured() -> bool:
    return any(os.environ.get(name) for name in _ENDPOINTS)


def start() -> bool:
    """Install the exporting tracer provider of this process, if configured."""
    global _provider
    if not configured() or _provider is not None:
        return _provider is not None
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    name = os.environ.get("OTEL_SERVICE_NAME", "geopunch")
    _provider = TracerProvider(resource=Resource.create({"service.name": name}))
    _provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(_provider)
    return True


def stop() -> None:
    """Send what is queued and stop exporting (at shutdown)."""
    if _provider is not None:
        _provider.shutdown()


def grpc_interceptors() -> list[Any]:
    """The gRPC instrumentation's server interceptor, when tracing is on."""
    if _provider is None:
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    return [aio_server_interceptor()]  # type: ignore[no-untyped-call]


def asgi(app: Any) -> Any:
    """``app`` inside the ASGI instrumentation's middleware, when tracing is on."""
    if _provider is None:
        return app
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    return OpenTelemetryMiddleware(app)


def enabled() -> bool:
    return _provider is not None


_OFF: AbstractContextManager[None] = contextlib.nullcontext()


def span(name: str) -> AbstractContextManager[Any]:
    """A span of geopunch's own, current within the block; nothing at all when
    tracing is off. The API's no-op tracer still makes a span object and
    attaches a context per call, about 3 % of a punch's server time under
    load (py-spy), so the off path does not go through it."""
    if _provider is None:
        return _OFF
    return tracer.start_as_current_span(name)


def batch_span(name: str, contexts: Sequence[contextvars.Context]) -> AbstractContextManager[Any]:
    """A span of work done for many calls at once (one commit of several
    punches), linked to the span of each call's context."""
    if _provider is None:
        return _OFF
    links = []
    for ctx in contexts:
        span_context = ctx.run(trace.get_current_span).get_span_context()
        if span_context.is_valid:
            links.append(trace.Link(span_context))
    return tracer.start_as_current_span(
        name, context=Context(), links=links, attributes={"geopunch.batch_size": len(contexts)}
    )


def trace_id() -> str | None:
    """The current span's trace id in hex (for log lines), or None."""
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None
