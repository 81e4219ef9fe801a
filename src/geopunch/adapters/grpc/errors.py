"""DomainError -> grpc status with google.rpc ErrorInfo and BadRequest details."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from geopunch.domain.errors import STATUS, DomainError, ErrorCode

DOMAIN = "geopunch.v1"


def grpc_code(code: ErrorCode) -> grpc.StatusCode:
    return grpc.StatusCode[STATUS[code].grpc_code]


def to_status(err: DomainError) -> grpc.Status:
    """The rich status for ``err``: ErrorInfo always, BadRequest when fields are named."""
    status_code = grpc_code(err.code)
    info = error_details_pb2.ErrorInfo(reason=err.code.value, domain=DOMAIN, metadata=err.metadata)
    details = [info]
    if err.violations:
        details.append(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=v.field, description=v.description, reason=v.reason.value
                    )
                    for v in err.violations
                ]
            )
        )
    packed = []
    for detail in details:
        any_msg = any_pb2.Any()
        any_msg.Pack(detail)
        packed.append(any_msg)
    status = status_pb2.Status(
        code=getattr(code_pb2, status_code.name),
        message=err.message,
        details=packed,
    )
    return rpc_status.to_status(status)
