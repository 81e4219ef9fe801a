"""An activity as the gRPC API writes it, shared by the gRPC adapter and the store.

A listed page answers up to 10,000 activities, and setting each message's
fields cost about as much as reading the rows (bench/README.md,
ListTimeActivities). So the store keeps each activity's line encoded beside
its columns, written with them (``activities.encoded``), and a gRPC page is
the concatenation of its lines (:func:`encode_page`): reading one bytes
column and joining is a copy.

A line is the encoding of a ``ListTimeActivitiesResponse.Data`` holding only
the activity. Protobuf concatenates repeated fields, so lines joined are the
``data`` of a page; with the length prefix of ``data`` and the page's other
fields added, the answer is byte for byte what serializing the message
would give (tests/property/test_activity_rows.py).

A stored line holds the ``TimeActivity`` message as it was when the row was
written: a change to that message needs a migration that sets the column to
NULL, and the store encodes such rows from their columns when it lists them
(tests/unit/test_activity_messages.py holds the message's shape fixed).
"""

from __future__ import annotations

from geopunch.domain.punches import ActivityRow
from geopunch.v1 import timeclock_pb2


def fill_point_fields(
    out: timeclock_pb2.PunchPoint,
    ts: int | None,
    tz: str | None,
    address: str | None,
    lat: float | None,
    lon: float | None,
    accuracy: float | None,
    source: str | None,
    geofence_id: str | None,
) -> None:
    """One end of an activity, from the flat fields of an ``ActivityRow``
    (``point_fields``); only a present end is filled, so its timestamp, zone
    and source are set."""
    out.timestamp = ts or 0
    out.timezone = tz or ""
    out.source.type = source or ""
    if geofence_id:
        out.geofence_id = geofence_id
    if address is not None or lat is not None or lon is not None:
        loc = out.location_data
        loc.address = address or ""
        if lat is not None:
            loc.latitude = lat
        if lon is not None:
            loc.longitude = lon
        if accuracy is not None:
            loc.accuracy = accuracy


def fill_activity_row(out: timeclock_pb2.TimeActivity, r: ActivityRow) -> None:
    # Fields left at their default are not set (the bytes are the same: no
    # field here tracks presence).
    out.id = r.id
    out.kind = "shift" if r.kind == "shift" else "manualBreak"
    out.user_id = r.user_id
    fill_point_fields(
        out.start,
        r.start_ts,
        r.start_tz,
        r.start_address,
        r.start_lat,
        r.start_lon,
        r.start_accuracy,
        r.start_source,
        r.start_geofence_id,
    )
    if r.end_ts is not None:
        fill_point_fields(
            out.end,
            r.end_ts,
            r.end_tz,
            r.end_address,
            r.end_lat,
            r.end_lon,
            r.end_accuracy,
            r.end_source,
            r.end_geofence_id,
        )
    else:
        out.is_open = True
    if r.job_id:
        out.job_id = r.job_id
    if r.break_type_id:
        out.manual_break_id = r.break_type_id
    if r.scheduler_shift_id:
        out.scheduler_shift_id = r.scheduler_shift_id
    if r.from_shift_id is not None:
        out.is_switch_from_shift = True
    if r.notes:
        out.notes = r.notes
    out.created_at = r.created_at
    out.modified_at = r.modified_at


_Data = timeclock_pb2.ListTimeActivitiesResponse.Data


def encode_line(r: ActivityRow) -> bytes:
    """The activity's line: a page's ``data`` holding only it."""
    one = _Data()
    fill_activity_row(one.time_activities.add(), r)
    return one.SerializeToString()


def line_key(line: bytes) -> tuple[int, str]:
    """The (start, id) of the activity a line holds: the position a page
    that ends with it hands to the next."""
    activity = _Data.FromString(line).time_activities[0]
    return activity.start.timestamp, activity.id


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


#: ``ListTimeActivitiesResponse.data``: field 2, length-delimited.
_DATA_TAG = b"\x12"


def encode_page(request_id: str, lines: bytes, rest: _Data, totals: bytes = b"") -> bytes:
    """The encoded ``ListTimeActivitiesResponse`` of a page, from its lines
    joined, the rest of its ``data`` (the token) and its totals encoded
    (the last field of ``data``, so they follow the rest)."""
    tail = rest.SerializeToString()
    head = timeclock_pb2.ListTimeActivitiesResponse(request_id=request_id).SerializeToString()
    size = len(lines) + len(tail) + len(totals)
    # One join: the lines are a page's megabytes, copied once.
    return b"".join((head, _DATA_TAG, _varint(size), lines, tail, totals))
