"""The positional constructors of the frozen domain dataclasses read in bulk."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest

from geopunch.domain.builders import positional_builder
from geopunch.domain.punches import Activity, ActivityKind, PunchLocation, PunchPoint


def test_built_objects_equal_hash_and_stay_frozen_as_init_made_ones() -> None:
    loc = positional_builder(PunchLocation)("1 Road", 48.1, 11.5, None)
    point = positional_builder(PunchPoint)(100, "UTC", loc, "api", "gate")
    made = positional_builder(Activity)(
        "a1", 7, 3, ActivityKind.SHIFT, point, None, "job", None, None, None, 5, 6, "note"
    )
    expected = Activity(
        "a1",
        7,
        3,
        ActivityKind.SHIFT,
        PunchPoint(100, "UTC", PunchLocation("1 Road", 48.1, 11.5), "api", "gate"),
        None,
        "job",
        created_at=5,
        modified_at=6,
        notes="note",
    )
    assert made == expected and hash(made) == hash(expected) and repr(made) == repr(expected)
    assert type(made) is Activity
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.user_id = 4  # type: ignore[misc]
    with pytest.raises(TypeError):  # every field, in order: none may be left out
        positional_builder(PunchPoint)(100, "UTC")


def test_only_frozen_slotted_dataclasses_without_post_init_are_taken() -> None:
    @dataclass(slots=True)
    class Mutable:
        x: int

    @dataclass(frozen=True)
    class NoSlots:
        x: int

    @dataclass(frozen=True, slots=True)
    class Checked:
        x: int

        def __post_init__(self) -> None:
            if self.x < 0:
                raise ValueError("negative")

    for cls in (Mutable, NoSlots, Checked):
        with pytest.raises(TypeError):
            positional_builder(cls)


def test_an_activity_row_and_its_activity_convert_both_ways_unchanged() -> None:
    import itertools

    from geopunch.domain.punches import ActivityRow

    places = [None, PunchLocation("", None, None), PunchLocation("x", 1.5, None, 3.0)]
    for where, fence, closed, job, kind in itertools.product(
        places, [None, "g"], [False, True], [None, "j"], list(ActivityKind)
    ):
        point = PunchPoint(5, "Europe/Paris", where, "kiosk", fence)
        end = PunchPoint(9, "UTC", None, "api", None) if closed else None
        breaks = kind is ActivityKind.BREAK
        a = Activity(
            "i", 1, 2, kind, point, end, job, "lunch" if breaks else None, "s", None, 3, 4, "n"
        )
        row = ActivityRow.of(a)
        assert row.activity() == a and ActivityRow(*row) == row
        assert (row.start_ts, row.end_ts, row.kind) == (5, 9 if closed else None, kind.value)
