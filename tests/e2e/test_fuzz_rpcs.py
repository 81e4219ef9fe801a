"""Arbitrary request messages for every RPC, built from the messages'
descriptors by hypothesis, against a real server on SQLite and PostgreSQL.
Only this is asserted: the answer is OK or a status with an ErrorInfo
reason, never UNKNOWN or INTERNAL, and the server stays healthy with no
unexpected error in its log."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geopunch.v1 import (
    admin_pb2,
    geofences_pb2,
    location_pb2,
    scheduler_pb2,
    timeclock_pb2,
)
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

F = FieldDescriptor
_INT_EDGES = [0, 1, -1, TC, SCHED, USER, 2**31 - 1, -(2**31), 2**53 - 1, 2**53, 2**63 - 1, -(2**63)]
_TEXT_EDGES = [
    "",
    "\x00",
    "America/New_York",
    "job-a",
    "lunch",
    "autoClockOut",
    "2026-01-05",
    "read",
    "#E91E63",
    "é" * 300,
    " x ",
]
_RANGES = {
    F.TYPE_INT32: (-(2**31), 2**31 - 1),
    F.TYPE_SINT32: (-(2**31), 2**31 - 1),
    F.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    F.TYPE_INT64: (-(2**63), 2**63 - 1),
    F.TYPE_SINT64: (-(2**63), 2**63 - 1),
    F.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    F.TYPE_UINT32: (0, 2**32 - 1),
    F.TYPE_FIXED32: (0, 2**32 - 1),
    F.TYPE_UINT64: (0, 2**64 - 1),
    F.TYPE_FIXED64: (0, 2**64 - 1),
}
_JSON = st.recursive(
    st.none() | st.booleans() | st.floats() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


def _scalar(fd: FieldDescriptor) -> st.SearchStrategy[Any]:
    if fd.type in _RANGES:
        lo, hi = _RANGES[fd.type]
        return st.sampled_from([v for v in _INT_EDGES if lo <= v <= hi]) | st.integers(lo, hi)
    if fd.type in (F.TYPE_DOUBLE, F.TYPE_FLOAT):
        return st.floats(width=64 if fd.type == F.TYPE_DOUBLE else 32) | st.sampled_from(
            [40.7128, -74.006, 0.0, 90.0, 180.0, 1e300]
        )
    if fd.type == F.TYPE_BOOL:
        return st.booleans()
    if fd.type == F.TYPE_STRING:
        return st.sampled_from(_TEXT_EDGES) | st.text(max_size=20)
    if fd.type == F.TYPE_BYTES:
        return st.binary(max_size=40)
    if fd.type == F.TYPE_ENUM:
        return st.integers(-3, 8)
    raise AssertionError(fd.type)


def messages(desc: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    cls = GetMessageClass(desc)
    if desc.full_name in ("google.protobuf.Value", "google.protobuf.Struct"):
        wrap = (lambda v: {"v": v}) if desc.full_name.endswith("Struct") else (lambda v: v)
        return _JSON.map(lambda v: json_format.ParseDict(wrap(v), cls()) if _finite(v) else cls())
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for fd in desc.fields:
        if fd.type == F.TYPE_MESSAGE:
            if depth >= 3 or fd.message_type.GetOptions().map_entry:
                continue
            one = messages(fd.message_type, depth + 1)
        else:
            one = _scalar(fd)
        if fd.is_repeated:
            fields[fd.name] = st.lists(one, max_size=3)
        else:
            fields[fd.name] = one
    names = sorted(fields)

    def build(chosen: dict[str, Any]) -> Message:
        msg = cls()
        for name, value in chosen.items():
            fd = desc.fields_by_name[name]
            if fd.is_repeated:
                getattr(msg, name).extend(value)
            elif fd.type == F.TYPE_MESSAGE:
                getattr(msg, name).CopyFrom(value)
            else:
                setattr(msg, name, value)
        return msg

    return st.fixed_dictionaries({}, optional={n: fields[n] for n in names}).map(build)


def _finite(value: Any) -> bool:
    """ParseDict refuses NaN; the guard's own tests send it as bytes instead."""
    if isinstance(value, float):
        return value == value and abs(value) != float("inf")
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    return True


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
    @given(messages(method_desc.input_type))
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
