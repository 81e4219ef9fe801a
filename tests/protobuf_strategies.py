"""Hypothesis strategies for protobuf messages, built from their descriptors,
and the RPCs of every geopunch service: the RPC fuzz test, the request
guard's property test and the scope test share them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import strategies as st

from geopunch.v1 import (
    admin_pb2,
    geofences_pb2,
    location_pb2,
    scheduler_pb2,
    timeclock_pb2,
    webhooks_pb2,
)

_SERVICE_MODULES = (
    admin_pb2,
    geofences_pb2,
    location_pb2,
    scheduler_pb2,
    timeclock_pb2,
    webhooks_pb2,
)


def rpc_methods() -> list[Any]:
    """The method descriptor of every RPC of every geopunch service."""
    return [
        m
        for mod in _SERVICE_MODULES
        for service in mod.DESCRIPTOR.services_by_name.values()
        for m in service.methods
    ]


F = FieldDescriptor
#: Integers worth trying in every integer field, besides the ids a caller adds.
INT_EDGES = (0, 1, -1, 2**31 - 1, -(2**31), 2**53 - 1, 2**53, 2**63 - 1, -(2**63))
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


def _scalar(fd: FieldDescriptor, int_edges: Sequence[int]) -> st.SearchStrategy[Any]:
    if fd.type in _RANGES:
        lo, hi = _RANGES[fd.type]
        return st.sampled_from([v for v in int_edges if lo <= v <= hi]) | st.integers(lo, hi)
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


def messages(
    desc: Descriptor, int_edges: Sequence[int] = INT_EDGES, depth: int = 0
) -> st.SearchStrategy[Message]:
    """Messages of type ``desc``: any field set or not, edge values and NUL
    text among the values, JSON values (finite) where the type has them."""
    cls = GetMessageClass(desc)
    if desc.full_name in ("google.protobuf.Value", "google.protobuf.Struct"):
        wrap = (lambda v: {"v": v}) if desc.full_name.endswith("Struct") else (lambda v: v)
        return _JSON.map(lambda v: json_format.ParseDict(wrap(v), cls()) if _finite(v) else cls())
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for fd in desc.fields:
        if fd.type == F.TYPE_MESSAGE:
            inner = fd.message_type
            assert inner is not None  # a message field always has its type
            if depth >= 3 or inner.GetOptions().map_entry:
                continue
            one = messages(inner, int_edges, depth + 1)
        else:
            one = _scalar(fd, int_edges)
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
