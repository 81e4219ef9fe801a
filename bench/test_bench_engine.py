"""pytest-benchmark suite of the fence engine (python3 dev.py bench).

Every group carries its baseline, measured in the same run, so results are
read as ratios: ``check`` against ``check-baseline-haversine`` on the same
points, ``check_one`` against one vectorized ``check_points`` call.
"""

from __future__ import annotations

import numpy as np
import pytest
from engine import haversine_baseline
from fleet import Fleet, make_fleet

from geopunch.domain.locations import FenceRows
from geopunch.geo._index import FenceColumns, Snapshot, _clock_arrays, build_table
from geopunch.geo.engine import FenceIndex, check_one, check_points, warm_up


@pytest.fixture(scope="module")
def fleet() -> Fleet:
    return make_fleet(clocks=1000, fences_per_clock=100, points=100_000, seed=0)


@pytest.fixture(scope="module")
def snap(fleet: Fleet) -> Snapshot:
    s = FenceIndex().load(fleet.time_clocks, fleet.fences)
    warm_up()
    return s


@pytest.mark.parametrize("n", [1_000, 10_000, 100_000])
def test_check_points(benchmark, fleet: Fleet, snap: Snapshot, n: int) -> None:  # type: ignore[no-untyped-def]
    benchmark.group = f"check-{n}"
    lat, lon, clk = fleet.point_lat[:n], fleet.point_lon[:n], fleet.point_clock[:n]
    result = benchmark(check_points, snap, lat, lon, clk)
    assert result.inside.size == n


@pytest.mark.parametrize("n", [1_000, 10_000, 100_000])
def test_check_points_baseline_haversine(benchmark, fleet: Fleet, n: int) -> None:  # type: ignore[no-untyped-def]
    benchmark.group = f"check-{n}"
    sub = Fleet(
        fleet.time_clocks,
        fleet.fences,
        fleet.fence_clock,
        fleet.fence_lat,
        fleet.fence_lon,
        fleet.fence_radius,
        fleet.point_clock[:n],
        fleet.point_lat[:n],
        fleet.point_lon[:n],
    )
    inside = benchmark(haversine_baseline, sub)
    assert inside.size == n


def test_check_one(benchmark, fleet: Fleet, snap: Snapshot) -> None:  # type: ignore[no-untyped-def]
    benchmark.group = "single-point"
    lat, lon, clk = float(fleet.point_lat[0]), float(fleet.point_lon[0]), int(fleet.point_clock[0])
    verdict = benchmark(check_one, snap, lat, lon, clk)
    assert verdict.status == 0


def test_check_points_of_one_baseline(benchmark, fleet: Fleet, snap: Snapshot) -> None:  # type: ignore[no-untyped-def]
    benchmark.group = "single-point"
    lat, lon, clk = fleet.point_lat[:1], fleet.point_lon[:1], fleet.point_clock[:1]
    result = benchmark(check_points, snap, lat, lon, clk)
    assert result.status[0] == 0


def test_build_table(benchmark, fleet: Fleet, snap: Snapshot) -> None:  # type: ignore[no-untyped-def]
    benchmark.group = "build-100k-fences"
    rows = FenceRows.of(fleet.fences)
    cols = FenceColumns.from_rows(rows, {c.time_clock.id: c for c in snap.clocks})
    extra = _clock_arrays(snap.clocks)[3]
    table = benchmark(build_table, cols, extra, 0)
    assert table.size == len(fleet.fences)
    assert np.all(np.diff(table.clocks) >= 0)
