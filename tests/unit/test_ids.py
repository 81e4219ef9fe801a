"""Server-made ids: UUIDv7, ordered by time, random within a millisecond."""

from __future__ import annotations

import time
import uuid

from geopunch.domain.ids import ordered_hex


def test_ids_are_version_7_uuids_that_sort_by_creation_time() -> None:
    ids = []
    for _ in range(3):
        ids += [ordered_hex() for _ in range(1000)]
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
