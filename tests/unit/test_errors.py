from __future__ import annotations

import base64
import re
import urllib.parse
from pathlib import Path

import grpc

from geopunch.adapters.grpc.errors import to_status
from geopunch.domain.errors import STATUS, DomainError, ErrorCode, FieldViolation

CONTRACT = Path(__file__).resolve().parents[3] / "shared" / "CONTRACT.md"


def test_every_reason_maps_to_a_grpc_code_and_http_status() -> None:
    assert set(STATUS) == set(ErrorCode)
    for code, mapping in STATUS.items():
        assert isinstance(grpc.StatusCode[mapping.grpc_code], grpc.StatusCode), code
        assert 400 <= mapping.http_status <= 599


def test_the_contract_reasons_are_all_defined() -> None:
    if not CONTRACT.exists():  # the contract lives beside the checkout
        import pytest

        pytest.skip("shared/CONTRACT.md is not beside this checkout")
    table = CONTRACT.read_text().split("Reasons (the spec's codes", 1)[1].split("\n## ", 1)[0]
    names = set(re.findall(r"\b[A-Z][A-Z_]{3,}\b", table))
    assert names <= {c.value for c in ErrorCode}, names - {c.value for c in ErrorCode}


def test_aip_193_classes() -> None:
    assert STATUS[ErrorCode.GEOFENCE_NOT_FOUND].grpc_code == "NOT_FOUND"
    assert STATUS[ErrorCode.ALREADY_CLOCKED_IN].grpc_code == "FAILED_PRECONDITION"
    assert STATUS[ErrorCode.INVALID_FENCE_SIZE].grpc_code == "INVALID_ARGUMENT"
    assert STATUS[ErrorCode.API_KEY_INVALID].grpc_code == "UNAUTHENTICATED"
    # the spec answers a locked or approved day with 409
    assert STATUS[ErrorCode.HAS_LOCKED_DAYS] == ("FAILED_PRECONDITION", 409)


def test_status_carries_error_info_and_bad_request() -> None:
    err = DomainError.from_violations(
        [
            FieldViolation("geofences[7].fence_size", "too big", ErrorCode.INVALID_FENCE_SIZE),
            FieldViolation("geofences[8].name", "empty", ErrorCode.INVALID_NAME),
        ],
        "the geofences",
    )
    assert err.code is ErrorCode.INVALID_FENCE_SIZE
    status = to_status(err)
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "2 problems" in status.details
    assert status.trailing_metadata[0][0] == "grpc-status-details-bin"


def test_a_status_stays_under_the_metadata_limit_whatever_it_echoes() -> None:
    """Long values, many metadata keys and many violations: the encoded status
    (details base64 in trailing metadata, message percent-encoded) fits well
    under grpc's default 8 KiB, and says how long each cut value was."""
    long = "é" * 50_000
    err = DomainError(
        ErrorCode.INVALID_ARGUMENT,
        "bad " + long,
        {f"key{i}-{long}": long for i in range(50)},
        tuple(
            FieldViolation(f"items[{i}].{long}", long, ErrorCode.INVALID_ARGUMENT)
            for i in range(100)
        ),
    )
    status = to_status(err)
    values = [v if isinstance(v, bytes) else v.encode() for _, v in status.trailing_metadata]
    encoded = sum(len(base64.b64encode(v)) for v in values)
    message = len(urllib.parse.quote(status.details))
    assert encoded + message < 7_000, (encoded, message)
    assert status.details.endswith("(50004 characters)")


def test_only_an_unavailable_answer_says_when_to_retry() -> None:
    from google.rpc import error_details_pb2, status_pb2

    def details(code: ErrorCode) -> list[str]:
        status = to_status(DomainError(code, "x"))
        packed = status_pb2.Status.FromString(
            dict(status.trailing_metadata)["grpc-status-details-bin"]
        )
        return [d.type_url.rpartition("/")[2] for d in packed.details]

    assert details(ErrorCode.UNAVAILABLE) == ["google.rpc.ErrorInfo", "google.rpc.RetryInfo"]
    assert details(ErrorCode.NO_OPEN_SHIFT) == ["google.rpc.ErrorInfo"]
    status = to_status(DomainError(ErrorCode.UNAVAILABLE, "x"))
    packed = status_pb2.Status.FromString(dict(status.trailing_metadata)["grpc-status-details-bin"])
    info = error_details_pb2.RetryInfo()
    assert packed.details[1].Unpack(info) and info.retry_delay.seconds == 1
    assert dict(status.trailing_metadata)["grpc-retry-pushback-ms"] == "1000"
    refused = to_status(DomainError(ErrorCode.NO_OPEN_SHIFT, "x"))
    assert "grpc-retry-pushback-ms" not in dict(refused.trailing_metadata)
