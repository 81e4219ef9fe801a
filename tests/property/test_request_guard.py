"""The request guard's quick check over whole columns of a request agrees
with its field-by-field walk, for the request of every RPC: a request passes
the quick check exactly when the walk finds nothing to refuse."""

from __future__ import annotations

import math
from typing import Literal

import pytest
from google.protobuf import struct_pb2
from google.protobuf.message import Message
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from geopunch.adapters.grpc import guard
from geopunch.domain import bounds
from geopunch.domain.errors import DomainError
from geopunch.v1 import common_pb2, geofences_pb2, scheduler_pb2
from tests import protobuf_strategies

#: Surrogates cannot be encoded as UTF-8, so no request can hold them.
_SURROGATES: tuple[Literal["Cs"], ...] = ("Cs",)

INPUTS = sorted(
    {m.input_type.full_name: m.input_type for m in protobuf_strategies.rpc_methods()}.items()
)


def _walk_finds(message: Message) -> bool:
    found: list[object] = []
    guard._walk(message, "", found)  # type: ignore[arg-type]
    return bool(found)


@pytest.mark.parametrize("desc", [d for _, d in INPUTS], ids=[n for n, _ in INPUTS])
def test_the_quick_check_passes_exactly_what_the_walk_passes(desc: object) -> None:
    @settings(
        max_examples=60,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(protobuf_strategies.messages(desc))  # type: ignore[arg-type]
    def agree(message: Message) -> None:
        clean = guard._clean([message], message.DESCRIPTOR)
        assert clean is not _walk_finds(message), message
        if clean:
            guard.check_request(message)
        else:
            with pytest.raises(DomainError):
                guard.check_request(message)

    agree()


@given(
    names=st.lists(
        st.text(
            st.characters(exclude_categories=_SURROGATES, exclude_characters="\x00"), max_size=6
        ),
        min_size=1,
        max_size=30,
    ),
    spoil=st.integers(0, 29),
)
def test_one_nul_anywhere_among_many_fences_is_named_by_its_path(
    names: list[str], spoil: int
) -> None:
    request = geofences_pb2.CreateGeofencesRequest(
        geofences=[
            geofences_pb2.Geofence(name=n, location=common_pb2.Location(address="a"), job_ids=["j"])
            for n in names
        ]
    )
    i = spoil % len(names)
    request.geofences[i].location.address = "a\x00b"
    with pytest.raises(DomainError) as caught:
        guard.check_request(request)
    paths = [v.field for v in caught.value.violations]
    assert paths == [f"geofences[{i}].location.address"]


def test_json_values_are_checked_in_repeated_and_nested_messages() -> None:
    fine = scheduler_pb2.ScheduledShift(title="ok")
    fine.custom_fields.add(id="n").value.number_value = 1.5
    shift = scheduler_pb2.ScheduledShift(title="t")
    shift.custom_fields.add(id="x").value.number_value = math.inf
    request = scheduler_pb2.CreateShiftsRequest(shifts=[fine, shift])
    assert not guard._clean([request], request.DESCRIPTOR)
    with pytest.raises(DomainError) as caught:
        guard.check_request(request)
    assert [v.field for v in caught.value.violations] == ["shifts[1].custom_fields[0].value"]
    statuses = scheduler_pb2.CreateShiftsRequest(shifts=[fine, fine])
    statuses.shifts[1].statuses.add()["k\x00"] = 1
    with pytest.raises(DomainError) as caught:
        guard.check_request(statuses)
    assert [v.field for v in caught.value.violations] == ["shifts[1].statuses[0]"]
    assert guard._clean([fine], fine.DESCRIPTOR)


def _as_value(v: object) -> struct_pb2.Value:
    """``v`` as gRPC carries a JSON value (NaN included, which json_format refuses)."""
    out = struct_pb2.Value()
    if v is None:
        out.null_value = struct_pb2.NULL_VALUE
    elif isinstance(v, bool):
        out.bool_value = v
    elif isinstance(v, int | float):
        out.number_value = v
    elif isinstance(v, str):
        out.string_value = v
    elif isinstance(v, list):
        out.list_value.values.extend(_as_value(x) for x in v)
    else:
        assert isinstance(v, dict)
        for k, x in v.items():
            out.struct_value.fields[k].CopyFrom(_as_value(x))
    return out


_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.integers(-(2**40), 2**40)
    | st.text(st.characters(exclude_categories=_SURROGATES), max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.text(st.characters(exclude_categories=_SURROGATES), max_size=4), inner, max_size=3
        )
    ),
    max_leaves=40,
)


def _nested(depth: int) -> object:
    value: object = 1
    for _ in range(depth - 1):
        value = [value] if depth % 2 else {"k": value}
    return value


@settings(max_examples=300, deadline=None, derandomize=True)
@given(_json_values.map(lambda v: [[[v]]]) | _json_values)
@example(_nested(bounds.MAX_JSON_DEPTH))
@example(_nested(bounds.MAX_JSON_DEPTH + 1))
@example(_nested(bounds.MAX_JSON_DEPTH + 2))
@example({"a\x00": [1]})
def test_both_apis_bound_json_values_alike(value: object) -> None:
    """What the HTTP API finds wrong in a JSON value (held as Python) is what
    the gRPC API finds wrong in it as a google.protobuf.Value: depth, NaN,
    NUL. (Sizes are measured in each API's own encoding, so stay small here.)"""
    http = bounds.json_value_problem(value)
    grpc = guard._json_problem(_as_value(value))
    assert http == grpc
