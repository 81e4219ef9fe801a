"""Fence index updates: incremental, atomic, compactable."""

from __future__ import annotations

import math
import threading
import time
from dataclasses import replace
from pathlib import Path

import numba
import numpy as np
import pytest

from geopunch.domain.models import ExitAction, ExitDetectionSettings, Geofence, Job, TimeClock
from geopunch.geo import _checkpoint as checkpoint
from geopunch.geo import _index as index_module
from geopunch.geo import _kernels as kernels
from geopunch.geo._frames import ecef
from geopunch.geo._index import Snapshot
from geopunch.geo._membership import (
    INVALID_ACCURACY,
    INVALID_COORDINATES,
    OK,
    UNKNOWN_JOB,
    UNKNOWN_TIME_CLOCK,
    check_one,
    check_points,
)
from geopunch.geo.engine import FenceIndex


def tc(i: int, **kw: object) -> TimeClock:
    base = TimeClock(
        id=i, name="c", timezone="UTC", jobs=(Job("a"), Job("a1", parent_id="a"), Job("b"))
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def fence(
    fid: str,
    clock: int,
    lat: float,
    lon: float,
    r: int = 100,
    jobs: tuple[str, ...] = (),
    enabled: bool = True,
) -> Geofence:
    return Geofence(fid, clock, "n", enabled, r, jobs, ExitAction.SEND_NOTIFICATION, "x", lat, lon)


def ids_at(index: FenceIndex, clock: int, lat: float, lon: float) -> set[str]:
    snap = index.snapshot
    result = check_points(snap, [lat], [lon], clock)
    batch = set(snap.fence_ids(result.fence_handles))
    assert set(check_one(snap, lat, lon, clock).matched_fence_ids) == batch
    return batch


def test_cell_table_matches_a_dict() -> None:
    """Built by the compiled build, probed by the compiled kernel that the
    checks use: every key finds its span, no absent key finds one."""
    rng = np.random.default_rng(3)
    keys = np.unique(rng.integers(0, 2**62, 5000))  # one entry a key
    rows = np.arange(keys.size, dtype=np.int32)
    order = rng.permutation(keys.size)
    shuffled = keys[order]
    coords = np.zeros(keys.size)
    slots, _entries, entry_rows = kernels.cell_table(
        shuffled, rows, np.argsort(shuffled, kind="stable"), coords, coords, coords, coords
    )
    assert entry_rows.tolist() == np.argsort(shuffled, kind="stable").tolist()
    assert (slots[:, 0] >= 0).sum() == keys.size <= kernels.MAX_LOAD * slots.shape[0]
    queries = np.concatenate([keys, rng.integers(0, 2**62, 5000)])
    size = slots.shape[0]
    home = np.array([kernels.home_slot(int(q), size) for q in queries], dtype=np.int64)
    spans = np.empty(queries.size, np.int64)
    kernels._probe_all(slots, queries, home, spans)  # type: ignore[no-untyped-call]
    ref = {int(k): (i << 32) | (i + 1) for i, k in enumerate(keys)}
    assert spans.tolist() == [ref.get(int(q), 0) for q in queries]


def every_fence(snap: Snapshot) -> set[tuple[int, str]]:
    """(time clock id, fence id) of every fence the snapshot answers for."""
    out = set()
    for t_no, table in enumerate(snap.tables):
        for row in range(table.size):
            c = int(table.clocks[row])
            if snap.owner[c] != t_no:
                continue
            out.add((snap.clocks[c].time_clock.id, bytes(table.ids[row]).decode()))
    return out


def test_changes_are_visible_at_once_and_old_snapshots_stay_valid() -> None:
    index = FenceIndex()
    index.load([tc(1), tc(2)], [fence("a", 1, 10, 10), fence("b", 2, 10, 10)])
    before = index.snapshot
    index.fences_changed(tc(1), [fence("c", 1, 10, 10.0005)], ["a"])
    assert ids_at(index, 1, 10, 10) == {"c"}
    assert ids_at(index, 2, 10, 10) == {"b"}
    # A reader holding the old snapshot still sees the old world.
    old = check_points(before, [10], [10], 1)
    assert before.fence_ids(old.fence_handles) == ["a"]
    index.fences_changed(tc(1), [], ["c"])
    assert ids_at(index, 1, 10, 10) == set()


def test_new_clock_disabled_fences_and_compaction() -> None:
    index = FenceIndex(compact_after_clocks=1000)
    index.load([tc(1)], [fence("a", 1, -89.9995, 0), fence("off", 1, -89.9995, 0, enabled=False)])
    assert ids_at(index, 1, -90, 0) == {"a"}  # at the South Pole, 55 m from the centre
    index.time_clock_changed(tc(7), [])
    # Known and empty, without a table of its own; the next new clock lands
    # after a table exists that was built with the first one.
    assert len(index.snapshot.tables) == 1
    assert ids_at(index, 7, 0, 180) == set() and ids_at(index, 1, -90, 0) == {"a"}
    assert check_points(index.snapshot, [0], [180], 7).status.tolist() == [OK]
    index.fences_changed(tc(7), [fence("x", 7, 0, 179.9995), fence("y", 7, 0, -179.9995)], [])
    assert ids_at(index, 7, 0, 180) == {"x", "y"}
    index.time_clock_changed(tc(8), [])
    assert len(index.snapshot.tables) == 2
    assert ids_at(index, 8, 0, 180) == set() and ids_at(index, 7, 0, 180) == {"x", "y"}
    index.fences_changed(tc(8), [fence("z", 8, 0, 180)], [])
    assert ids_at(index, 8, 0, 180) == {"z"}
    before = every_fence(index.snapshot)
    assert ("7", "x") not in before and (7, "x") in before
    snap = index.compact()
    assert len(snap.tables) == 1 and not snap.dead
    assert every_fence(snap) == before
    assert ids_at(index, 7, 0, -180) == {"x", "y"}
    assert ids_at(index, 8, 0, 180) == {"z"}
    assert ids_at(index, 1, -90, 0) == {"a"}


def test_a_table_spans_only_the_clocks_it_holds() -> None:
    """A table's clock row starts cover its first to its last clock only:
    clocks before, between and after answer as having no fences there, by
    the batch, single-point and nearest-boundary paths alike."""
    clocks = [tc(i) for i in range(1, 31)]
    site = {10: (5.0, 5.0), 12: (5.0, 5.01), 31: (6.0, 6.0)}
    index = FenceIndex(compact_after_clocks=1000)
    index.load(clocks, [fence(f"f{c}", c, *site[c]) for c in (10, 12)])
    index.time_clock_changed(tc(31), [fence("f31", 31, *site[31])])
    snap = index.snapshot
    base, tail = snap.tables
    assert (base.clock_base, base.clock_row_start.size) == (9, 4)  # dense clocks 9 to 11
    assert (tail.clock_base, tail.clock_row_start.size) == (30, 2)
    for c in range(1, 32):
        for lat, lon in site.values():
            expect = {f"f{c}"} if site.get(c) == (lat, lon) else set()
            assert ids_at(index, c, lat, lon) == expect, (c, lat, lon)
        far = check_points(snap, [0.0], [0.0], [c], with_distance=True)
        assert far.nearest_handles is not None
        near = snap.fence_ids(far.nearest_handles[far.nearest_handles >= 0])
        assert near == ([f"f{c}"] if c in site else []), c
    compacted = index.compact()
    assert compacted.base.clock_base == 9 and compacted.base.clock_row_start.size == 23
    assert every_fence(compacted) == {(10, "f10"), (12, "f12"), (31, "f31")}


def test_a_checkpoint_keeps_where_its_table_s_clocks_start(tmp_path: Path) -> None:
    """Saved and read back, a table whose first clock is not clock 0 answers
    as before; the checkpoint's checks accept it and still refuse a table
    whose rows name a clock before its first."""
    clocks = [tc(i) for i in range(1, 9)]
    index = FenceIndex()
    index.load(clocks, [fence("f5", 5, 1.0, 1.0), fence("f7", 7, 1.0, 1.01)])
    saved = index.saved()
    assert saved is not None and saved.table.clock_base == 4
    path = tmp_path / "index.ckpt"
    checkpoint.write(path, {}, {1: saved})
    header = checkpoint.read_header(path)
    assert header is not None
    back = checkpoint.read(path, header)[1]
    assert back.table.clock_base == 4
    fresh = FenceIndex()
    assert fresh.restore(clocks, back) == []
    for c in range(1, 9):
        expect = {f"f{c}"} if c in (5, 7) else set()
        assert ids_at(fresh, c, 1.0, 1.0) | ids_at(fresh, c, 1.0, 1.01) == expect, c
    with pytest.raises(ValueError, match="a fence of a clock"):
        checkpoint._check(replace(back.table, clock_base=5), len(clocks))


def test_job_tree_change_rewidens_fences() -> None:
    index = FenceIndex()
    f = fence("a", 1, 5, 5, jobs=("a",))
    index.load([tc(1)], [f])

    def allowed(job: str) -> bool:
        return check_one(index.snapshot, 5, 5, 1, job).allowed

    assert allowed("a1") and not allowed("b")
    moved = tc(1, jobs=(Job("a"), Job("b"), Job("a1", parent_id="b")))
    index.time_clock_changed(moved, [f])
    assert not allowed("a1") and not allowed("b") and allowed("a")


def test_statuses() -> None:
    index = FenceIndex()
    index.load([tc(1, accuracy_tolerance_m=10.0)], [fence("a", 1, 1, 1)])
    result = check_points(
        index.snapshot,
        [1, np.nan, 1, 1, 1],
        [1, 1, 1, 1, 1],
        [1, 1, 2, 1, 1],
        [-1, -1, -1, 0, -1],
        ["zzz"],
        [np.nan, 1, 1, 1, -5],
    )
    assert result.status.tolist() == [
        OK,
        INVALID_COORDINATES,
        UNKNOWN_TIME_CLOCK,
        UNKNOWN_JOB,
        INVALID_ACCURACY,
    ]
    assert result.inside.tolist() == [True, False, False, False, False]
    assert check_one(index.snapshot, 1, 1, 1, "zzz").status == UNKNOWN_JOB
    assert check_one(index.snapshot, 1, 200, 1).status == INVALID_COORDINATES
    with pytest.raises(ValueError, match="shape"):
        check_points(index.snapshot, [[1.0]], [1.0], 1)


def test_readers_never_see_half_a_change() -> None:
    """Each change swaps two fences; every snapshot a reader sees has exactly one of them."""
    index = FenceIndex(compact_after_clocks=4)
    index.load([tc(1)], [fence("p0", 1, 0, 0)])
    stop = threading.Event()
    seen: list[set[str]] = []

    def read() -> None:
        while not stop.is_set():
            seen.append(ids_at(index, 1, 0, 0))

    readers = [threading.Thread(target=read) for _ in range(2)]
    for t in readers:
        t.start()
    for i in range(200):
        index.fences_changed(tc(1), [fence(f"p{i + 1}", 1, 0, 0)], [f"p{i}"])
        if i % 50 == 0:
            index.compact()
    stop.set()
    for t in readers:
        t.join()
    assert seen and all(len(s) == 1 for s in seen)
    assert ids_at(index, 1, 0, 0) == {"p200"}


def test_warm_up_compiles_what_checks_of_any_size_and_raw_columns_need() -> None:
    """After warm_up, no check compiles a kernel: not a small one (serial
    kernels), a large one (parallel twins), nor one on read-only columns,
    which is how raw request bytes arrive (numba types those apart)."""
    from geopunch.geo import _kernels as kernels
    from geopunch.geo.engine import warm_up

    warm_up()
    dispatchers = {name: obj for name, obj in vars(kernels).items() if hasattr(obj, "signatures")}
    before = {name: len(d.signatures) for name, d in dispatchers.items()}
    index = FenceIndex()
    index.load([tc(1)], [fence("f", 1, 0.0, 0.0, jobs=("a",))])

    def frozen(values: np.ndarray) -> np.ndarray:
        return np.frombuffer(values.tobytes(), values.dtype)

    for n in (3, kernels.SERIAL_BELOW + 1):
        lat = np.linspace(-0.001, 0.001, n)
        for column in (lambda a: a, frozen):
            check_points(
                index.snapshot,
                column(lat),
                column(lat.copy()),
                column(np.ones(n, np.int64)),
                column(np.zeros(n, np.int32)),
                ["a"],
                column(np.full(n, 3.0)),
                with_distance=True,
            )
    assert {name: len(d.signatures) for name, d in dispatchers.items()} == before


def test_small_batches_run_serially_and_large_ones_on_the_set_threads() -> None:
    """Both compilations of a kernel give the same answer; a large batch
    runs on at most the threads set for the process, whichever thread calls."""
    index = FenceIndex()
    index.load([tc(1)], [fence(f"f{i}", 1, i * 0.001, 0.0, r=150) for i in range(50)])
    rng = np.random.default_rng(3)
    n = kernels.SERIAL_BELOW + 10
    lat, lon = rng.uniform(-0.01, 0.06, n), rng.uniform(-0.002, 0.002, n)
    clocks = np.ones(n, np.int64)
    small = check_points(index.snapshot, lat[:100], lon[:100], clocks[:100])
    large = check_points(index.snapshot, lat, lon, clocks)
    assert (large.inside[:100] == small.inside).all() and large.inside.any()
    assert (np.diff(large.offsets)[:100] == np.diff(small.offsets)).all()
    seen: list[int] = []
    before = kernels.kernel_threads()
    try:
        assert kernels.set_kernel_threads(1) == 1
        assert kernels.set_kernel_threads(0) == 1  # at least one
        pool = numba.config.NUMBA_NUM_THREADS  # type: ignore[attr-defined]  # set at import
        assert kernels.set_kernel_threads(10_000) == pool
        kernels.set_kernel_threads(1)

        def call() -> None:
            check_points(index.snapshot, lat, lon, clocks)
            seen.append(numba.get_num_threads())

        t = threading.Thread(target=call)
        t.start()
        t.join()
    finally:
        kernels.set_kernel_threads(before)
    assert seen == [1]


def test_every_fence_lands_in_each_grid_cell_its_widened_circle_may_touch() -> None:
    """The compiled grid expansion against a plain restatement of the grid:
    on each ECEF axis the cells from the one holding ``centre - reach`` to the
    one holding ``centre + reach``, every combination of the three, keyed as
    ``clock << 36 | ix << 24 | iy << 12 | iz``; a fence's cells in key order,
    fences in row order. Radii up to 9 km span several cells per axis."""
    rng = np.random.default_rng(5)
    n = 300
    clocks = rng.integers(0, 6, n).astype(np.int32)
    fx, fy, fz = ecef(rng.uniform(-89, 89, n), rng.uniform(-180, 180, n))
    reach = rng.uniform(10, 9000, n)
    keys, rows = kernels.cell_entries(clocks, fx, fy, fz, reach)

    def cells(c: float, r: float) -> range:
        inv = 1.0 / kernels.CELL_M
        lo = math.floor((c - r + kernels.CELL_OFFSET_M) * inv)
        hi = math.floor((c + r + kernels.CELL_OFFSET_M) * inv)
        return range(lo, hi + 1)

    want_keys, want_rows = [], []
    for i in range(n):
        for ix in cells(fx[i], reach[i]):
            for iy in cells(fy[i], reach[i]):
                for iz in cells(fz[i], reach[i]):
                    want_keys.append(int(clocks[i]) << 36 | ix << 24 | iy << 12 | iz)
                    want_rows.append(i)
    assert keys.tolist() == want_keys
    assert rows.tolist() == want_rows
    assert len(set(want_rows)) == n and len(want_keys) > 2 * n  # many fences span cells
    by_key = np.argsort(keys, kind="stable")
    _, entries, entry_rows = kernels.cell_table(keys, rows, by_key, fx, fy, fz, reach)
    assert np.array_equal(entry_rows, rows[by_key])
    assert np.array_equal(entries, np.stack([fx, fy, fz, reach], axis=1)[rows[by_key]])


def _assert_arrays_equal_a_full_rebuild(snap: Snapshot, label: object) -> Snapshot:
    """The snapshot's per-clock arrays equal those of a build from all its
    clocks; returns that build."""
    full = index_module._make_snapshot(0, snap.clocks, snap.tables, snap.owner, snap.dead)
    for name in (
        "sorted_clock_ids",
        "sorted_clock_idx",
        "direct_clock_idx",
        "tolerance_m",
        "extra_m",
        "exit_m",
        "user_keys",
    ):
        assert np.array_equal(getattr(snap, name), getattr(full, name)), (label, name)
    for c in snap.clocks:
        assert snap.clock_index(c.time_clock.id) == c.idx, (label, c.time_clock.id)
    held = {c.time_clock.id for c in snap.clocks}
    for unknown in (0, -3, 5_001, (1 << 22) - 1, (1 << 22) + 8, (1 << 40) + 1, 1 << 70):
        if unknown not in held:
            assert snap.clock_index(unknown) is None, (label, unknown)
    return full


def test_per_clock_arrays_updated_one_clock_at_a_time_equal_a_full_rebuild() -> None:
    """Adding or changing one time clock updates the snapshot's per-clock
    arrays from the previous ones; they must equal arrays built from all
    clocks, for ids in and beyond the flat lookup table, in any order."""
    rng = np.random.default_rng(11)
    index = FenceIndex()
    ids = [int(i) for i in rng.choice(5_000, 40, replace=False) + 1] + [(1 << 22) + 7, 1 << 40]
    for step in range(150):
        i = ids[int(rng.integers(len(ids)))]
        users = frozenset(int(u) for u in rng.integers(0, 50, int(rng.integers(0, 6))))
        exits = ExitDetectionSettings(buffer_low_accuracy_m=float(rng.integers(10, 200)))
        clock = tc(i, user_ids=users, accuracy_tolerance_m=float(step % 7), exit_detection=exits)
        index.time_clock_changed(clock, [fence(f"f{step}", i, 0.0, 0.0)])
        snap = index.snapshot
        full = _assert_arrays_equal_a_full_rebuild(snap, step)
        points = np.asarray([*ids, 0, 5_001], np.int64)
        assert np.array_equal(snap.dense_clocks(points), full.dense_clocks(points))


def test_clocks_added_in_place_leave_every_earlier_snapshot_as_it_was() -> None:
    """Added clocks go into spare room past the end of the per-clock arrays
    that earlier snapshots share: a reader holding any earlier snapshot must
    still see exactly its own clocks, whether ids grow (appended), fall
    inside the range held (copied), lie past the flat lookup table, or come
    several to a block, and whether a held clock changed meanwhile."""
    rng = np.random.default_rng(5)
    index = FenceIndex()
    kept: list[Snapshot] = []
    next_id = 10
    for step in range(120):
        kind = step % 6
        if kind == 3 and step > 10:  # a held clock's settings change
            held = [c.time_clock.id for c in index.snapshot.clocks]
            i = held[int(rng.integers(len(held)))]
            index.time_clock_changed(
                tc(i, user_ids=frozenset({step}), accuracy_tolerance_m=float(step)), []
            )
        elif kind == 4:  # below ids already held, or past the flat table
            i = int(rng.integers(1, 10)) * 1_000_003 % (1 << 23) + 1
            if index.snapshot.clock_index(i) is None:
                index.time_clock_changed(tc(i, user_ids=frozenset({1, i % 97})), [])
        elif kind == 5:  # several new clocks published together
            with index.deferred():
                for _ in range(3):
                    next_id += int(rng.integers(1, 50))
                    index.time_clock_changed(tc(next_id, user_ids=frozenset({2, 3})), [])
        else:  # the next id up, as a bulk load makes them
            next_id += int(rng.integers(1, 50))
            users = frozenset(int(u) for u in rng.integers(0, 40, int(rng.integers(0, 4))))
            mine = [fence(f"f{step}", next_id, 0, 0)]
            index.time_clock_changed(tc(next_id, user_ids=users), mine)
        kept.append(index.snapshot)
    every_id = np.asarray([c.time_clock.id for c in index.snapshot.clocks], np.int64)
    for step, snap in enumerate(kept):
        full = _assert_arrays_equal_a_full_rebuild(snap, step)
        assert np.array_equal(snap.dense_clocks(every_id), full.dense_clocks(every_id)), step
        in_snap = {c.time_clock.id for c in snap.clocks}
        assert all(snap.clock_index(int(i)) is None for i in every_id if int(i) not in in_snap)


def test_a_load_clock_by_clock_rebuilds_each_fence_a_logarithmic_number_of_times(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Merging the tail of small tables with every table not much larger
    keeps the list short and the rebuilt rows O(n log n), where folding into
    one base at every compaction rebuilt O(n^2 / period) rows; what the index
    answers is what a full build answers, stale rows included nowhere."""
    built: list[int] = []
    real_build = index_module.build_table

    def counting(cols: index_module.FenceColumns, *args: object) -> index_module.FenceTable:
        built.append(int(cols.clocks.size))
        return real_build(cols, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(index_module, "build_table", counting)
    monkeypatch.setattr(index_module, "_SMALL_TABLE", 8)
    rng = np.random.default_rng(2)
    index = FenceIndex(compact_after_clocks=10**9)  # compactions run here, in the test
    clocks, fences = [], []
    for i in range(1, 401):
        clocks.append(tc(i))
        mine = [fence(f"c{i}-{k}", i, rng.uniform(-1, 1), rng.uniform(-1, 1)) for k in range(5)]
        fences += mine
        index.time_clock_changed(clocks[-1], [])
        index.fences_changed(clocks[-1], mine, [])
        if i % 3 == 0:  # a clock's settings change: its old rows go stale
            j = int(rng.integers(1, i + 1))
            index.time_clock_changed(
                tc(j, accuracy_tolerance_m=float(i % 20)),
                [f for f in fences if f.time_clock_id == j],
            )
            clocks[j - 1] = tc(j, accuracy_tolerance_m=float(i % 20))
        if len(index.snapshot.tables) > 9:
            index.compact(everything=False)
            assert len(index.snapshot.tables) <= 9
    n = len(fences)
    merged_rows = sum(built) - n - 5 * 133  # less each clock's own tables
    assert merged_rows < 3 * n * np.log2(n), (merged_rows, n)
    snap = index.snapshot
    assert every_fence(snap) == {(f.time_clock_id, f.id) for f in fences}
    assert snap.fence_count == n and snap.rows - snap.dead == n
    fresh = FenceIndex()
    fresh.load(clocks, fences)
    near = rng.integers(0, n, 20_000)  # near a fence, asked of its clock or another
    lat = np.array([fences[k].latitude for k in near]) + rng.normal(0, 0.0015, near.size)
    lon = np.array([fences[k].longitude for k in near]) + rng.normal(0, 0.0015, near.size)
    ids = np.where(
        rng.random(near.size) < 0.9,
        [fences[k].time_clock_id for k in near],
        rng.integers(1, 402, near.size),
    )
    got, want = check_points(snap, lat, lon, ids), check_points(fresh.snapshot, lat, lon, ids)
    assert got.inside.any() and (got.inside == want.inside).all()
    assert (got.status == want.status).all()
    assert sorted(snap.fence_ids(got.fence_handles)) == sorted(
        fresh.snapshot.fence_ids(want.fence_handles)
    )
    everything = index.compact()
    assert len(everything.tables) == 1 and everything.dead == 0
    assert every_fence(everything) == every_fence(snap)


def test_background_merges_racing_many_writers_lose_nothing() -> None:
    """Writers add clocks and change fences while merges run on their own
    thread (every 4 tables): readers always see each clock's current fences,
    and at the end the index answers what a full build of the same state
    answers, with no stale row counted live."""
    index = FenceIndex(compact_after_clocks=4, compact_after_fences=50)
    index.load([tc(1)], [fence("c1-0", 1, 0.0, 0.0)])
    state: dict[int, list[Geofence]] = {1: [fence("c1-0", 1, 0.0, 0.0)]}
    lock = threading.Lock()
    errors: list[BaseException] = []
    stop = threading.Event()

    def writer(w: int) -> None:
        try:
            for step in range(60):
                clock = 2 + (w * 60 + step) % 37
                lat = clock * 0.01
                with lock:  # the store's order: one change of a clock at a time
                    mine = [*state.get(clock, [])]
                    new = fence(f"c{clock}-{w}-{step}", clock, lat, 0.0)
                    if len(mine) > 3:
                        gone = mine.pop(0)
                        index.fences_changed(tc(clock), [new], [gone.id])
                    elif clock in state:
                        index.fences_changed(tc(clock), [new], [])
                    else:
                        index.time_clock_changed(tc(clock), [new])
                    state[clock] = [*mine, new]
        except BaseException as exc:  # reported below
            errors.append(exc)

    def reader() -> None:
        try:
            while not stop.is_set():
                snap = index.snapshot
                assert 0 <= snap.dead <= snap.rows
                assert check_points(snap, [0.0], [0.0], 1).inside.all()  # clock 1's fence
        except BaseException as exc:  # reported below
            errors.append(exc)

    readers = [threading.Thread(target=reader) for _ in range(2)]
    writers = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in readers + writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    for t in readers:
        t.join()
    assert not errors, errors
    deadline = time.monotonic() + 10
    while index._compacting and time.monotonic() < deadline:
        time.sleep(0.01)
    snap = index.snapshot
    expected = {(f.time_clock_id, f.id) for fences in state.values() for f in fences}
    assert every_fence(snap) == expected
    assert snap.fence_count == len(expected)
    merged = index.compact()
    assert len(merged.tables) == 1 and merged.dead == 0 and every_fence(merged) == expected


def test_a_change_is_published_while_a_merge_copies_its_rows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A merge copies the rows it merges without the write lock, which every
    commit's publish waits for: a change goes through while the copy is held
    up, and the merge then keeps it (its clock's new table stays after the
    merged one)."""
    index = FenceIndex(compact_after_clocks=10**9)  # merges run here, in the test
    index.load([tc(1)], [fence("c1", 1, 0.0, 0.0)])
    for clock in range(2, 6):
        index.time_clock_changed(tc(clock), [fence(f"c{clock}", clock, 0.0, 0.0)])
    copying, release = threading.Event(), threading.Event()
    concat = index_module.FenceColumns.concat

    def held_up(parts: object) -> object:
        if threading.current_thread() is merge:  # a publish concatenates too
            copying.set()
            assert release.wait(10)
        return concat(parts)  # type: ignore[arg-type]

    monkeypatch.setattr(index_module.FenceColumns, "concat", staticmethod(held_up))
    merge = threading.Thread(target=index.compact)
    merge.start()
    try:
        assert copying.wait(10)
        published = threading.Thread(
            target=index.fences_changed, args=(tc(3), [fence("c3-new", 3, 0.0, 0.0)], ["c3"])
        )
        published.start()
        published.join(5)
        assert not published.is_alive(), "the publish waited for the merge's copy"
        assert ids_at(index, 3, 0.0, 0.0) == {"c3-new"}
    finally:
        release.set()
        merge.join(10)
    monkeypatch.undo()
    snap = index.snapshot
    expected = {(1, "c1"), (2, "c2"), (3, "c3-new"), (4, "c4"), (5, "c5")}
    assert every_fence(snap) == expected and snap.fence_count == 5
    assert ids_at(index, 3, 0.0, 0.0) == {"c3-new"}
    assert every_fence(index.compact()) == expected


def test_a_deferred_block_publishes_its_changes_at_once_as_one_table() -> None:
    """Inside ``deferred`` readers keep the snapshot from before; at its end
    one snapshot and one table hold every change, including a clock created
    and then given fences, a clock changed twice, a deletion, a settings
    change and a new clock left without fences."""
    index = FenceIndex(compact_after_clocks=1000)
    index.load([tc(1), tc(2)], [fence("a", 1, 10, 10), fence("b", 2, 10, 10)])
    before = index.snapshot
    with index.deferred():
        index.time_clock_changed(tc(5), [])
        index.fences_changed(tc(5), [fence("e", 5, 10, 10)], [])
        index.fences_changed(tc(1), [fence("c", 1, 10, 10.0005)], ["a"])
        index.fences_changed(tc(1), [fence("d", 1, 10, 10.0004)], [])
        index.time_clock_changed(tc(2, accuracy_tolerance_m=3.0), [])
        index.time_clock_changed(tc(6), [])
        assert index.snapshot is before  # nothing visible yet
        with index.deferred():  # nested: the outer block publishes
            index.fences_changed(tc(6), [fence("f", 6, 10, 10)], [])
        assert index.snapshot is before
    snap = index.snapshot
    assert snap.version == before.version + 1
    assert len(snap.tables) == 2  # one table for all of the block
    assert every_fence(snap) == {(1, "c"), (1, "d"), (5, "e"), (6, "f")}
    assert ids_at(index, 1, 10, 10) == {"c", "d"} and ids_at(index, 2, 10, 10) == set()
    assert ids_at(index, 5, 10, 10) == {"e"} and ids_at(index, 6, 10, 10) == {"f"}
    second = snap.clock_index(2)
    assert second is not None and snap.clocks[second].time_clock.accuracy_tolerance_m == 3.0
    assert snap.dead == 2  # clock 1's "a" and clock 2's "b" in the first table
    _assert_arrays_equal_a_full_rebuild(snap, "block")
    with index.deferred():  # a block with nothing in it publishes nothing
        pass
    assert index.snapshot is snap


def test_deferred_blocks_of_random_changes_equal_the_same_changes_one_at_a_time() -> None:
    """Blocks of one to nine changes (new clocks, settings, fences added and
    removed, the same clock several times) give the index that the changes
    applied one at a time give: the same fences answer for every clock, and
    the per-clock arrays equal a full rebuild."""
    rng = np.random.default_rng(5)
    batched, single = FenceIndex(compact_after_clocks=8), FenceIndex(compact_after_clocks=8)
    ids = [int(i) for i in rng.choice(3_000, 25, replace=False) + 1] + [(1 << 22) + 3]
    fences: dict[int, list[Geofence]] = {}
    serial = 0
    for block in range(60):
        changes: list[tuple[str, TimeClock, list[Geofence], list[str]]] = []
        for _ in range(int(rng.integers(1, 10))):
            i = ids[int(rng.integers(len(ids)))]
            serial += 1
            new = fence(f"f{serial}", i, float(i % 80), 0.0)
            mine = fences.setdefault(i, [])
            users = frozenset(int(u) for u in rng.integers(0, 40, int(rng.integers(0, 5))))
            clock = tc(i, user_ids=users, accuracy_tolerance_m=float(serial % 5))
            if not mine or rng.random() < 0.2:
                fences[i] = [new] if rng.random() < 0.7 else []
                changes.append(("clock", clock, list(fences[i]), []))
            else:
                gone = [mine.pop(0).id] if rng.random() < 0.4 else []
                mine.append(new)
                changes.append(("fences", tc(i), [new], gone))
        with batched.deferred():
            for kind, clock, added, gone in changes:
                if kind == "clock":
                    batched.time_clock_changed(clock, added)
                else:
                    batched.fences_changed(clock, added, gone)
        for kind, clock, added, gone in changes:
            if kind == "clock":
                single.time_clock_changed(clock, added)
            else:
                single.fences_changed(clock, added, gone)
        expected = {(f.time_clock_id, f.id) for fs in fences.values() for f in fs}
        assert every_fence(batched.snapshot) == expected == every_fence(single.snapshot), block
        _assert_arrays_equal_a_full_rebuild(batched.snapshot, block)
        for i in fences:
            lat = float(i % 80)
            assert ids_at(batched, i, lat, 0.0) == ids_at(single, i, lat, 0.0), (block, i)
    deadline = time.monotonic() + 10
    while batched._compacting and time.monotonic() < deadline:
        time.sleep(0.01)
    assert every_fence(batched.compact()) == expected


def test_a_saved_index_restores_and_names_the_clocks_it_does_not_hold_as_they_are() -> None:
    """``saved`` compacts into one table; ``restore`` takes it back with the
    clocks as they are now, returning the new and changed ones (to be read
    again), or None when a saved clock is gone."""
    index = FenceIndex()
    clocks = [tc(1), tc(2), tc(3)]
    index.load(clocks, [fence("f1", 1, 0.0, 0.0), fence("f2", 2, 1.0, 1.0, jobs=("a",))])
    index.fences_changed(clocks[2], [fence("f3", 3, 2.0, 2.0)], [])  # a second table
    saved = index.saved()
    assert saved is not None and saved.clock_ids.tolist() == [1, 2, 3]
    assert len(index.snapshot.tables) == 1  # compacted to be saved

    again = FenceIndex()
    assert again.restore(clocks, saved) == []
    for clock, lat in ((1, 0.0), (2, 1.0), (3, 2.0)):
        assert ids_at(again, clock, lat, lat) == ids_at(index, clock, lat, lat)

    wider = tc(1, accuracy_tolerance_m=500.0)
    rejobbed = tc(2, jobs=(Job("b"), Job("a"), Job("a1", parent_id="a")))
    now = [wider, rejobbed, clocks[2], tc(4)]
    stale = FenceIndex().restore(now, saved)
    assert stale is not None and sorted(t.id for t in stale) == [1, 2, 4]
    assert FenceIndex().restore([clocks[0], clocks[2]], saved) is None


def test_clocks_read_again_together_equal_clocks_changed_one_at_a_time() -> None:
    from geopunch.domain.locations import FenceRows

    base = [tc(1), tc(2), tc(3)]
    start = [fence("a1", 1, 0.0, 0.0), fence("b1", 2, 1.0, 1.0), fence("c1", 3, 2.0, 2.0)]
    now = {
        1: [fence("a2", 1, 0.0, 0.001, jobs=("a",)), fence("a3", 1, 0.0, 0.002)],
        2: [],  # every fence gone
        4: [fence("d1", 4, 3.0, 3.0, r=300)],  # a new clock
    }
    clocks = [tc(1, accuracy_tolerance_m=50.0), tc(2), tc(4)]
    one, together = FenceIndex(), FenceIndex()
    for index in (one, together):
        index.load(base, start)
    for clock in clocks:
        one.time_clock_changed(clock, now[clock.id])
    rows = FenceRows.of([f for c in sorted(now) for f in now[c]])
    together.time_clocks_read_again(clocks, rows)
    assert len(together.snapshot.tables) == 2  # one table for all of them
    for clock_id, lat, lon in ((1, 0.0, 0.0015), (2, 1.0, 1.0), (3, 2.0, 2.0), (4, 3.0, 3.0)):
        assert ids_at(together, clock_id, lat, lon) == ids_at(one, clock_id, lat, lon)
    assert ids_at(together, 1, 0.0, 0.0015) == {"a2", "a3"}
    with pytest.raises(ValueError, match="not together"):
        scattered = FenceRows.of([now[1][0], now[4][0], now[1][1]])
        FenceIndex().time_clocks_read_again([tc(1), tc(4)], scattered)
