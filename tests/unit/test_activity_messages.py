"""The store keeps each activity's gRPC line encoded (activities.encoded).

A line stored under one shape of the ``TimeActivity`` message would be
answered unchanged after that message changed. This test holds the shape
fixed: whoever changes it must add a migration that sets the column to NULL
(the store then encodes those rows from their columns when it lists them)
and then update the fingerprint here.
"""

from __future__ import annotations

import hashlib

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import Descriptor

from geopunch.v1 import timeclock_pb2


def _shape(d: Descriptor, seen: set[str]) -> list[bytes]:
    if d.full_name in seen:
        return []
    seen.add(d.full_name)
    proto = descriptor_pb2.DescriptorProto()
    d.CopyToProto(proto)
    out = [proto.SerializeToString(deterministic=True)]
    for field in d.fields:
        if field.message_type is not None:
            out += _shape(field.message_type, seen)
    return out


def test_the_shape_of_a_stored_line_is_the_one_its_rows_were_encoded_with() -> None:
    line = timeclock_pb2.ListTimeActivitiesResponse.Data.DESCRIPTOR
    data_field = line.fields_by_name["time_activities"]
    assert (data_field.number, data_field.message_type) == (
        1,
        timeclock_pb2.TimeActivity.DESCRIPTOR,
    )
    shape = b"".join(_shape(timeclock_pb2.TimeActivity.DESCRIPTOR, set()))
    assert hashlib.sha256(shape).hexdigest()[:16] == "3d7038ef34b43790", (
        "TimeActivity changed: add a migration clearing activities.encoded, "
        "then set the new fingerprint here"
    )
