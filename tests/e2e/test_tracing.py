"""Traces: a server with an OTLP endpoint exports a span per call, joined to
the caller's traceparent, with the punch and its transaction inside, to an
OTLP collector run by this test; log lines carry the trace id and the
caller's own request id."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from geopunch.v1 import timeclock_pb2
from tests.conftest import API_KEY, Client, ServerProcess, make_time_clock

USER = 9170357


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """Keeps every span exported to it."""

    def __init__(self) -> None:
        self.spans: list[Any] = []
        self.lock = threading.Lock()

    def Export(self, request: Any, context: Any) -> Any:
        with self.lock:
            for resource in request.resource_spans:
                for scope in resource.scope_spans:
                    self.spans.extend(scope.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    def of_trace(self, trace_hex: str, names: set[str], timeout: float = 15) -> dict[str, Any]:
        """The spans of one trace by name, once all of ``names`` arrived."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                found = {s.name: s for s in self.spans if s.trace_id.hex() == trace_hex}
            if names <= set(found) or time.monotonic() > deadline:
                return found
            time.sleep(0.05)


@pytest.fixture
def traced(tmp_path: Path) -> Iterator[tuple[ServerProcess, Collector]]:
    collector = Collector()
    grpc_server = grpc.server(ThreadPoolExecutor(2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, grpc_server)  # type: ignore[no-untyped-call]
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    grpc_server.start()
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_BSP_SCHEDULE_DELAY": "50",
    }
    srv = ServerProcess(db_url=f"sqlite:///{tmp_path / 'traced.db'}", env_extra=env)
    srv.start(tmp_path)
    try:
        yield srv, collector
    finally:
        srv.terminate()
        grpc_server.stop(None)


def test_a_punch_is_traced_from_the_callers_traceparent(
    traced: tuple[ServerProcess, Collector],
) -> None:
    srv, collector = traced
    c = Client(srv.address)
    try:
        tc = int(make_time_clock(c).id)
        trace_hex, parent_hex = os.urandom(16).hex(), os.urandom(8).hex()
        metadata = (
            *c.metadata,
            ("traceparent", f"00-{trace_hex}-{parent_hex}-01"),
            ("x-request-id", "kiosk-7-req-42"),
        )
        _, call = c.timeclock.ClockIn.with_call(
            timeclock_pb2.ClockInRequest(time_clock_id=tc, user_id=USER), metadata=metadata
        )
    finally:
        c.close()
    assert dict(call.initial_metadata())["x-request-id"] == "kiosk-7-req-42"
    method = "/geopunch.v1.TimeClockService/ClockIn"
    spans = collector.of_trace(trace_hex, {method, "punch clock_in", "punch transaction"})
    server, punch, transaction = spans[method], spans["punch clock_in"], spans["punch transaction"]
    assert server.parent_span_id.hex() == parent_hex
    assert punch.parent_span_id == server.span_id
    assert transaction.parent_span_id == punch.span_id
    # The commit serves many calls: a trace of its own, linked to each punch.
    commits = [s for s in collector.spans if s.name == "group commit"]
    assert any(link.span_id == punch.span_id for s in commits for link in s.links)

    # Over HTTP too, the same spans inside the instrumentation's server span.
    trace_hex = os.urandom(16).hex()
    r = httpx.post(
        f"http://{srv.http_address}/time-clock/v1/time-clocks/{tc}/clock-out",
        json={"userId": USER},
        headers={
            "X-API-KEY": API_KEY,
            "traceparent": f"00-{trace_hex}-{os.urandom(8).hex()}-01",
            "X-Request-ID": "kiosk-7-req-43",
        },
    )
    assert r.status_code == 200 and r.headers["X-Request-ID"] == "kiosk-7-req-43"
    assert r.json()["requestId"] == "kiosk-7-req-43"
    spans = collector.of_trace(trace_hex, {"punch clock_out", "punch transaction"})
    assert {"punch clock_out", "punch transaction"} <= set(spans)
    assert any(name.startswith("POST") for name in spans), sorted(spans)

    lines = [json.loads(x) for x in srv.logs().splitlines() if x.startswith("{")]
    rpc = next(e for e in lines if e.get("request_id") == "kiosk-7-req-42" and e["msg"] == "rpc")
    assert rpc["trace_id"] == server.trace_id.hex()
    http_line = next(e for e in lines if e.get("request_id") == "kiosk-7-req-43")
    assert http_line["trace_id"] == trace_hex
