"""Arrow columns into the fence index's columns, as the start-up reader's
child process takes them from its batches' buffers."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from geopunch.adapters.db.fence_columns import _fixed_width, _nonempty, _values

IDS = ["fence-1", "fence-22", "f-\u00e9t\u00e9", "", "fence-4444"]


@pytest.mark.parametrize(
    "ids",
    [IDS, ["same-1", "same-2", "same-3"], [], ["\u00e9\u00e9", "ee"]],
    ids=["several lengths", "one length", "none", "same characters, other bytes"],
)
def test_ids_become_the_bytes_the_index_keeps(ids: list[str]) -> None:
    want = np.array([i.encode() for i in ids], dtype=np.bytes_) if ids else np.zeros(0, "S1")
    got = _fixed_width(pa.array(ids, pa.string()))
    assert got.dtype == want.dtype and got.tolist() == want.tolist()


def test_a_slice_of_a_batch_reads_its_own_rows() -> None:
    whole = pa.array([*IDS, "tail"], pa.string())
    part = whole.slice(1, 3)
    assert _fixed_width(part).tolist() == [i.encode() for i in IDS[1:4]]
    at, names = _nonempty(part)
    assert at.tolist() == [0, 1] and names == IDS[1:3]
    same = pa.array(["aa", "bb", "cc", "dd"], pa.string()).slice(1, 2)
    assert _fixed_width(same).tolist() == [b"bb", b"cc"]
    numbers = pa.array([1.5, 2.5, 3.5, 4.5]).slice(1, 2)
    assert _values(numbers).tolist() == [2.5, 3.5]


def test_job_names_are_the_non_empty_strings() -> None:
    at, names = _nonempty(pa.array(["", "a", "", "b\u00e9", "c"], pa.string()))
    assert at.tolist() == [1, 3, 4] and names == ["a", "b\u00e9", "c"]


def test_numbers_keep_their_type_and_nulls_or_other_types_are_refused() -> None:
    assert _values(pa.array([1, 2], pa.int32())).dtype == np.int32
    assert _values(pa.array([1.0, 2.0], pa.float64())).tolist() == [1.0, 2.0]
    with pytest.raises(ValueError, match="NULL"):
        _values(pa.array([1, None], pa.int64()))
    with pytest.raises(ValueError, match="large_string"):
        _fixed_width(pa.array(["a"], pa.large_string()))
    with pytest.raises(ValueError, match="1 NULLs"):
        _nonempty(pa.array(["a", None], pa.string()))
