"""``bodies.unknown_fields``: where a decoded body has keys its type does not
take, found without recursion and within what a body may hold."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from geopunch.adapters.http.bodies import (
    CheckLocationsBody,
    ClockInBody,
    ShiftIn,
    TimeClockIn,
    unknown_fields,
)


def test_keys_are_found_where_they_are_in_the_bodys_order() -> None:
    body = {"userId": 1, "userID": 2, "locationData": {"latitude": 1, "lat": 2}, "z": 0}
    assert unknown_fields(body, ClockInBody) == [("userID",), ("locationData", "lat"), ("z",)]
    points = {"points": [{"latitude": 1, "longitude": 2, "alt": 3}, {"alt": 4}]}
    assert unknown_fields(points, CheckLocationsBody) == [
        ("points", 0, "alt"),
        ("points", 1, "alt"),
    ]
    shifts = [{"title": "a", "isPublish": True, "breaks": [{"foo": 1}]}]
    kind = Annotated[list[ShiftIn], Field(max_length=500)]
    assert unknown_fields(shifts, kind) == [(0, "isPublish"), (0, "breaks", 0, "foo")]
    # Free JSON (a shift's statuses) and values of the wrong type are not walked.
    assert unknown_fields([{"statuses": [{"any": 1}], "breaks": "x"}], kind) == []
    assert unknown_fields({"a": 1, "b": 2, "c": 3}, ClockInBody, limit=2) == [("a",), ("b",)]


def test_a_hostile_body_is_walked_within_what_a_body_may_hold() -> None:
    deep: dict[str, Any] = {"id": "leaf", "x": 1}
    for _ in range(100_000):  # far past the 32 levels a job tree may have
        deep = {"id": "j", "subJobs": [deep]}
    wide = {"jobs": [{"id": "j", "x": 1} for _ in range(200_000)]}  # past any list's bound
    # The leaf's key lies deeper than the walk goes (it would have built
    # paths 100,000 long, one per level), and the list is longer than it
    # reads: such bodies are refused as they are validated.
    assert unknown_fields({"name": "a", "jobs": [deep]}, TimeClockIn) == []
    assert unknown_fields(wide, TimeClockIn) == []
    shallow = {"id": "j", "subJobs": [{"id": "leaf", "x": 1}]}
    assert unknown_fields({"jobs": [shallow]}, TimeClockIn) == [("jobs", 0, "subJobs", 0, "x")]
