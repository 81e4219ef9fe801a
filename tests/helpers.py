"""Assertion helpers for rich gRPC errors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


def rpc_error(fn: Callable[[], Any]) -> grpc.RpcError:
    """Run ``fn``, which must fail with a grpc error, and return that error."""
    try:
        fn()
    except grpc.RpcError as exc:
        return exc
    raise AssertionError("the call succeeded but was expected to fail")


def details(err: grpc.RpcError) -> tuple[error_details_pb2.ErrorInfo, list[tuple[str, str]]]:
    """ErrorInfo and the (field, reason) pairs of BadRequest from a failed call."""
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None, f"no rich status on {err}"
    info = error_details_pb2.ErrorInfo()
    violations: list[tuple[str, str]] = []
    found_info = False
    for any_msg in status.details:
        if any_msg.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            any_msg.Unpack(info)
            found_info = True
        elif any_msg.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            br = error_details_pb2.BadRequest()
            any_msg.Unpack(br)
            violations = [(v.field, v.reason) for v in br.field_violations]
    assert found_info, "ErrorInfo missing"
    assert info.domain == "geopunch.v1"
    return info, violations


def expect_error(
    fn: Callable[[], Any], code: grpc.StatusCode, reason: str
) -> tuple[grpc.RpcError, list[tuple[str, str]]]:
    err = rpc_error(fn)
    assert err.code() == code, (err.code(), err.details())
    info, violations = details(err)
    assert info.reason == reason, (info.reason, err.details())
    return err, violations
