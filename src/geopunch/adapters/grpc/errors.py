"""DomainError -> grpc status with google.rpc ErrorInfo, BadRequest and RetryInfo details."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from geopunch.domain.errors import RETRY_AFTER_S, STATUS, DomainError, ErrorCode

DOMAIN = "geopunch.v1"

# An error answer echoes what the caller sent (a name, an id, a timezone). It
# travels in trailing metadata, which clients refuse above 8 KiB by default
# (grpc-status-details-bin is base64, the message percent-encoded), so every
# echoed part is cut to a budget: worst case about 3.5 KB of details and a
# message of at most 1.2 KB once encoded, whatever the input.
_MESSAGE_BYTES = 400
_METADATA_KEYS = 8
_KEY_BYTES = 48
_VALUE_BYTES = 96
_VIOLATIONS = 8
_FIELD_BYTES = 100
_DESCRIPTION_BYTES = 140


RETRY_DELAY = duration_pb2.Duration(seconds=RETRY_AFTER_S)


def grpc_code(code: ErrorCode) -> grpc.StatusCode:
    return grpc.StatusCode[STATUS[code].grpc_code]


def shorten(text: str, limit: int) -> str:
    """``text`` if its UTF-8 form fits in ``limit`` bytes, else a prefix and the length."""
    raw = text.encode()
    if len(raw) <= limit:
        return text
    head = raw[: max(limit - 24, 8)].decode(errors="ignore")
    return f"{head}... ({len(text)} characters)"


def to_status(err: DomainError) -> grpc.Status:
    """The rich status for ``err``: ErrorInfo always, BadRequest when fields are
    named; every part cut to its budget (see above)."""
    status_code = grpc_code(err.code)
    metadata = {
        shorten(k, _KEY_BYTES): shorten(v, _VALUE_BYTES)
        for k, v in list(err.metadata.items())[:_METADATA_KEYS]
    }
    info = error_details_pb2.ErrorInfo(reason=err.code.value, domain=DOMAIN, metadata=metadata)
    details: list[Any] = [info]
    if status_code is grpc.StatusCode.UNAVAILABLE:
        # When to try again, as HTTP's Retry-After says it (google.rpc's
        # own detail for it, which Google's client libraries read).
        details.append(error_details_pb2.RetryInfo(retry_delay=RETRY_DELAY))
    if err.violations:
        shown = [
            error_details_pb2.BadRequest.FieldViolation(
                field=shorten(v.field, _FIELD_BYTES),
                description=shorten(v.description, _DESCRIPTION_BYTES),
                reason=v.reason.value,
            )
            for v in err.violations[:_VIOLATIONS]
        ]
        if len(err.violations) > _VIOLATIONS:
            shown[-1].description = f"and {len(err.violations) - _VIOLATIONS + 1} more problems"
            shown[-1].field = ""
        details.append(error_details_pb2.BadRequest(field_violations=shown))
    packed = []
    for detail in details:
        any_msg = any_pb2.Any()
        any_msg.Pack(detail)
        packed.append(any_msg)
    status = status_pb2.Status(
        code=getattr(code_pb2, status_code.name),
        message=shorten(err.message, _MESSAGE_BYTES),
        details=packed,
    )
    answer = rpc_status.to_status(status)
    if status_code is grpc.StatusCode.UNAVAILABLE:
        # The same for a channel with a retry policy: grpc's own retries wait this long.
        pushback = (("grpc-retry-pushback-ms", str(RETRY_AFTER_S * 1000)),)
        answer = answer._replace(trailing_metadata=(*answer.trailing_metadata, *pushback))  # type: ignore[attr-defined]
    return answer
