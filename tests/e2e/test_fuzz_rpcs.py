"""Arbitrary request messages for every RPC, built from the messages'
descriptors by hypothesis, against a real server on SQLite and PostgreSQL.
Only this is asserted: the answer is OK or a status with an ErrorInfo
reason, never UNKNOWN or INTERNAL, and the server stays healthy with no
unexpected error in its log."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from hypothesis import HealthCheck, given, settings

from geopunch.v1 import (
    admin_pb2,
    geofences_pb2,
    location_pb2,
    scheduler_pb2,
    timeclock_pb2,
)
from tests import protobuf_strategies
from tests.conftest import Client, ServerProcess
from tests.e2e.test_bad_input import SCHED, TC, USER, _setup
from tests.helpers import pg_schema

SERVICES = {
    "admin": admin_pb2.DESCRIPTOR.services_by_name["AdminService"],
    "geofences": geofences_pb2.DESCRIPTOR.services_by_name["GeofenceService"],
    "locations": location_pb2.DESCRIPTOR.services_by_name["LocationService"],
    "timeclock": timeclock_pb2.DESCRIPTOR.services_by_name["TimeClockService"],
    "scheduler": scheduler_pb2.DESCRIPTOR.services_by_name["SchedulerService"],
}
RPCS = sorted((stub, m.name) for stub, s in SERVICES.items() for m in s.methods)

INT_EDGES = (*protobuf_strategies.INT_EDGES, TC, SCHED, USER)


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def fuzz_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, Client]]:
    tmp = tmp_path_factory.mktemp("fuzz")

    def run(url: str) -> Iterator[tuple[ServerProcess, Client]]:
        srv = ServerProcess(db_url=url)
        srv.start(tmp)
        c = Client(srv.address)
        _setup(c)
        try:
            yield srv, c
        finally:
            c.close()
            srv.terminate()
        logs = srv.logs()
        assert "unexpected error" not in logs and "Traceback" not in logs

    if request.param == "sqlite":
        yield from run(f"sqlite:///{tmp / 'fuzz.db'}")
    else:
        with pg_schema() as url:
            yield from run(url)


def _check_answer(err: grpc.RpcError | None, rpc: str) -> None:
    if err is None:
        return
    code = err.code()
    assert code not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL), (rpc, err)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:  # a stream that stayed open
        return
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None and status.details, (rpc, err)


@pytest.mark.parametrize("rpc", RPCS, ids=[f"{s}.{m}" for s, m in RPCS])
def test_arbitrary_requests_get_ok_or_a_reason(
    fuzz_server: tuple[ServerProcess, Client], rpc: tuple[str, str]
) -> None:
    srv, c = fuzz_server
    stub, name = rpc
    method_desc = SERVICES[stub].methods_by_name[name]

    @settings(
        max_examples=25,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(protobuf_strategies.messages(method_desc.input_type, INT_EDGES))
    def call(request: Message) -> None:
        method = getattr(getattr(c, stub), name)
        err: grpc.RpcError | None = None
        if method_desc.server_streaming:
            stream = method(request, metadata=c.metadata, timeout=0.15)
            try:
                for _ in stream:
                    break
            except grpc.RpcError as e:
                err = e
            stream.cancel()
        else:
            try:
                method(request, metadata=c.metadata, timeout=30)
            except grpc.RpcError as e:
                err = e
        _check_answer(err, f"{stub}.{name}")

    call()
    with grpc.insecure_channel(srv.address) as ch:
        health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
