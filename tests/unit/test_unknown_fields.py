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


def _where(data: Any, kind: Any, limit: int = 100) -> list[tuple[str | int, ...]]:
    return [u.at for u in unknown_fields(data, kind, limit)]


def test_keys_are_found_where_they_are_in_the_bodys_order() -> None:
    body = {"userId": 1, "userID": 2, "locationData": {"latitude": 1, "lat": 2}, "z": 0}
    assert _where(body, ClockInBody) == [("userID",), ("locationData", "lat"), ("z",)]
    points = {"points": [{"latitude": 1, "longitude": 2, "alt": 3}, {"alt": 4}]}
    assert _where(points, CheckLocationsBody) == [
        ("points", 0, "alt"),
        ("points", 1, "alt"),
    ]
    shifts = [{"title": "a", "isPublish": True, "breaks": [{"foo": 1}]}]
    kind = Annotated[list[ShiftIn], Field(max_length=500)]
    assert _where(shifts, kind) == [(0, "isPublish"), (0, "breaks", 0, "foo")]
    # Free JSON (a shift's statuses) and values of the wrong type are not walked.
    assert _where([{"statuses": [{"any": 1}], "breaks": "x"}], kind) == []
    assert _where({"a": 1, "b": 2, "c": 3}, ClockInBody, limit=2) == [("a",), ("b",)]


def test_a_hostile_body_is_walked_within_what_a_body_may_hold() -> None:
    deep: dict[str, Any] = {"id": "leaf", "x": 1}
    for _ in range(100_000):  # far past the 32 levels a job tree may have
        deep = {"id": "j", "subJobs": [deep]}
    wide = {"jobs": [{"id": "j", "x": 1} for _ in range(200_000)]}  # past any list's bound
    # The leaf's key lies deeper than the walk goes (it would have built
    # paths 100,000 long, one per level), and the list is longer than it
    # reads: such bodies are refused as they are validated.
    assert _where({"name": "a", "jobs": [deep]}, TimeClockIn) == []
    assert _where(wide, TimeClockIn) == []
    shallow = {"id": "j", "subJobs": [{"id": "leaf", "x": 1}]}
    assert _where({"jobs": [shallow]}, TimeClockIn) == [("jobs", 0, "subJobs", 0, "x")]


def test_each_key_names_the_one_it_likely_stands_for() -> None:
    """Case, underscores and hyphens aside, or a close spelling; a key like
    none of the body's names none."""
    body = {"user_id": 1, "USERID": 2, "job-id": 3, "timestmp": 4, "lat": 5, "x" * 100: 6}
    found = {u.at[-1]: u.meant for u in unknown_fields(body, ClockInBody)}
    assert found == {
        "user_id": "userId",
        "USERID": "userId",
        "job-id": "jobId",
        "timestmp": "timestamp",
        "lat": None,
        "x" * 100: None,
    }
    shifts = [{"title": "a", "isPublish": True}]
    kind = Annotated[list[ShiftIn], Field(max_length=500)]
    assert [u.meant for u in unknown_fields(shifts, kind)] == ["isPublished"]
