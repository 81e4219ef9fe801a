"""Server-made ids: UUIDv7, ordered by time, random within a millisecond."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import pytest

from geopunch.domain.ids import ordered_hex, ordered_hexes


@pytest.mark.parametrize(
    "make",
    [
        lambda n: [ordered_hex() for _ in range(n)],
        # A few at a time (one by one inside) and many at once (laid out by numpy).
        lambda n: [h for _ in range(n // 10) for h in ordered_hexes(10)],
        ordered_hexes,
    ],
    ids=["one", "ten-at-a-time", "all-at-once"],
)
def test_ids_are_version_7_uuids_that_sort_by_creation_time(
    make: Callable[[int], list[str]],
) -> None:
    ids: list[str] = []
    for _ in range(3):
        ids += make(1000)
        time.sleep(0.002)
    parsed = [uuid.UUID(hex=i) for i in ids]
    assert all(
        len(i) == 32 and u.version == 7 and u.variant == uuid.RFC_4122
        for i, u in zip(ids, parsed, strict=True)
    )
    assert len(set(ids)) == len(ids)
    ms = [u.int >> 80 for u in parsed]
    assert ms == sorted(ms)  # the clock part never goes back within a process
    assert abs(ms[-1] - time.time_ns() // 1_000_000) < 5_000
    # Ids of different milliseconds sort by time as strings too (what the index sees).
    firsts = [ids[0], ids[1000], ids[2000]]
    assert firsts == sorted(firsts)


@pytest.mark.parametrize("n", [5000, 15])
def test_ids_drawn_together_share_the_millisecond_and_nothing_random(n: int) -> None:
    ids = ordered_hexes(n)
    assert len(set(ids)) == len(ids) == n
    assert len({i[:12] for i in ids}) == 1  # one clock reading for all
    # The random bits differ in every id: no byte of the random source reused.
    assert len({i[13:16] + i[17:] for i in ids}) == n
    assert ordered_hexes(0) == []


def test_activity_and_event_ids_drawn_together_are_prefixed_version_7_uuids() -> None:
    from geopunch.domain.events import new_event_ids
    from geopunch.domain.punches import ActivityKind, activity_ids

    new_id = activity_ids(2)
    # The third is past what was drawn: made on its own, still an id.
    made = [new_id(ActivityKind.SHIFT), new_id(ActivityKind.BREAK), new_id(ActivityKind.SHIFT)]
    events = new_event_ids(20)
    assert [m.rpartition("-")[0] for m in made] == [
        ActivityKind.SHIFT.value,
        ActivityKind.BREAK.value,
        ActivityKind.SHIFT.value,
    ]
    assert all(e.startswith("evt_") for e in events)
    hexes = [m.rpartition("-")[2] for m in made] + [e.removeprefix("evt_") for e in events]
    assert len(set(hexes)) == len(hexes)
    assert all(uuid.UUID(hex=h).version == 7 for h in hexes)
