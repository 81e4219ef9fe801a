"""Fence engine benchmark: build, memory, throughput, and two baselines in the same run.

    python3 dev.py run bench/engine.py [--clocks 10000] [--fences 100] [--points 1000000]

Prints one JSON object. Throughputs are points per second, best of ``--repeat``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import shapely
from pyproj import Geod

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fleet import Fleet, make_fleet

from geopunch.domain.locations import FenceRows
from geopunch.domain.models import Geofence
from geopunch.geo._frames import geodesic_distance
from geopunch.geo._index import FenceColumns, _clock_arrays, build_table
from geopunch.geo.engine import FenceIndex, check_points, warm_up

GEOD = Geod(ellps="WGS84")
EARTH_R = 6_371_008.8


def best_of(repeat: int, fn, *args):  # type: ignore[no-untyped-def]
    times = []
    out = None
    for _ in range(repeat):
        gc.collect()
        t = time.perf_counter()
        out = fn(*args)
        times.append(time.perf_counter() - t)
    return min(times), out


def measured_load(f: Fleet, proc: psutil.Process) -> tuple[FenceRows, FenceIndex, float, float]:
    """The fleet's fences as row columns (the store's hand-over, not timed),
    then a fresh index loaded from them: (rows, the index, seconds, RSS
    growth per fence)."""
    rows = FenceRows.of(f.fences)
    gc.collect()
    rss0 = proc.memory_info().rss
    index = FenceIndex(compact_after_clocks=10**9, compact_after_fences=10**12)
    t = time.perf_counter()
    index.load(f.time_clocks, rows)
    load_s = time.perf_counter() - t
    gc.collect()
    return rows, index, load_s, (proc.memory_info().rss - rss0) / len(f.fences)


def haversine_baseline(f: Fleet) -> np.ndarray:
    """Brute force per clock: every point against every fence of its clock (spherical)."""
    inside = np.zeros(f.point_lat.size, dtype=bool)
    p_order = np.argsort(f.point_clock, kind="stable")
    p_clock = f.point_clock[p_order]
    p_bounds = np.searchsorted(p_clock, np.arange(1, len(f.time_clocks) + 2))
    f_bounds = np.searchsorted(f.fence_clock, np.arange(1, len(f.time_clocks) + 2))
    plat, plon = np.radians(f.point_lat), np.radians(f.point_lon)
    flat, flon = np.radians(f.fence_lat), np.radians(f.fence_lon)
    for c in range(len(f.time_clocks)):
        pts = p_order[p_bounds[c] : p_bounds[c + 1]]
        if pts.size == 0:
            continue
        fs = slice(f_bounds[c], f_bounds[c + 1])
        dlat = plat[pts, None] - flat[None, fs]
        dlon = plon[pts, None] - flon[None, fs]
        a = (
            np.sin(dlat / 2) ** 2
            + np.cos(plat[pts, None]) * np.cos(flat[None, fs]) * np.sin(dlon / 2) ** 2
        )
        d = 2 * EARTH_R * np.arcsin(np.sqrt(a))
        inside[pts] = (d <= f.fence_radius[None, fs]).any(axis=1)
    return inside


#: Each clock's boxes live in their own band of x so one tree keeps clocks apart.
CLOCK_STRIDE_DEG = 1000.0


def strtree_baseline(f: Fleet, tree: shapely.STRtree, box_fence: np.ndarray) -> np.ndarray:
    """shapely 2 STRtree bulk query on degree boxes, then an exact Geod re-check."""
    pts = shapely.points(f.point_lon + CLOCK_STRIDE_DEG * f.point_clock, f.point_lat)
    p_idx, b_idx = tree.query(pts, predicate="intersects")
    fence = box_fence[b_idx]
    d = geodesic_distance(
        f.point_lat[p_idx], f.point_lon[p_idx], f.fence_lat[fence], f.fence_lon[fence]
    )
    inside = np.zeros(f.point_lat.size, dtype=bool)
    inside[p_idx[d <= f.fence_radius[fence]]] = True
    return inside


def strtree_build(f: Fleet) -> tuple[shapely.STRtree, np.ndarray]:
    dlat = np.degrees(f.fence_radius / EARTH_R) * 1.01
    coslat = np.cos(np.radians(np.minimum(np.abs(f.fence_lat) + dlat, 90)))
    dlon = np.where(coslat > 1e-3, dlat / np.maximum(coslat, 1e-12), 360.0)
    polar = (np.abs(f.fence_lat) + dlat >= 89.999) | (dlon >= 180)
    x0 = np.where(polar, -180, f.fence_lon - dlon)
    x1 = np.where(polar, 180, f.fence_lon + dlon)
    band = CLOCK_STRIDE_DEG * f.fence_clock
    y0 = np.clip(f.fence_lat - dlat, -90, 90)
    y1 = np.clip(f.fence_lat + dlat, -90, 90)
    idx = np.arange(f.fence_lat.size)
    boxes = [shapely.box(x0 + band, y0, x1 + band, y1)]
    owners = [idx]
    for shift, mask in ((360, x0 < -180), (-360, x1 > 180)):  # wrap across the antimeridian
        b = band[mask] + shift
        boxes.append(shapely.box(x0[mask] + b, y0[mask], x1[mask] + b, y1[mask]))
        owners.append(idx[mask])
    return shapely.STRtree(np.concatenate(boxes)), np.concatenate(owners)


def change_latency(index: FenceIndex, f: Fleet, fences_per_clock: int) -> dict[str, float]:
    """Milliseconds until one new fence of a 1,000-fence clock is visible to checks."""
    tc = f.time_clocks[0]
    big = [
        Geofence(
            f"fence-big-{i}",
            tc.id,
            "n",
            True,
            100,
            (),
            f.fences[0].exit_action,
            "x",
            f.fences[0].latitude + i * 1e-4,
            f.fences[0].longitude,
        )
        for i in range(1000 - fences_per_clock)
    ]
    index.fences_changed(tc, big, [])
    samples = []
    for i in range(30):
        new = Geofence(
            f"fence-new-{i}",
            tc.id,
            "n",
            True,
            100,
            (),
            f.fences[0].exit_action,
            "x",
            f.fences[0].latitude,
            f.fences[0].longitude,
        )
        t = time.perf_counter()
        index.fences_changed(tc, [new], [])
        ok = check_points(index.snapshot, [new.latitude], [new.longitude], tc.id)
        samples.append((time.perf_counter() - t) * 1000)
        assert ok.inside[0]
    return {"median_ms": statistics.median(samples), "max_ms": max(samples)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clocks", type=int, default=10_000)
    ap.add_argument("--fences", type=int, default=100)
    ap.add_argument("--points", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    proc = psutil.Process(os.getpid())
    t = time.perf_counter()
    f = make_fleet(args.clocks, args.fences, args.points, seed=args.seed)
    gen_s = time.perf_counter() - t
    n_fences = len(f.fences)

    rows, index, load_s, rss_per_fence = measured_load(f, proc)
    snap = index.snapshot
    # the engine's own part: columns to table
    clocks_by_id = {c.time_clock.id: c for c in snap.clocks}
    t = time.perf_counter()
    cols = FenceColumns.from_rows(rows, clocks_by_id)
    columns_s = time.perf_counter() - t
    build_s, _ = best_of(1, build_table, cols, _clock_arrays(snap.clocks)[3], 0)
    del cols
    warm_up()

    lat, lon, clk = f.point_lat, f.point_lon, f.point_clock
    ours_s, result = best_of(args.repeat, check_points, snap, lat, lon, clk)
    # One batch on a fresh index, build included, against the same for shapely.
    t = time.perf_counter()
    fresh = FenceIndex(compact_after_clocks=10**9, compact_after_fences=10**12)
    check_points(fresh.load(f.time_clocks, rows), lat, lon, clk)
    fresh_s = time.perf_counter() - t
    del fresh
    dist_s, _ = best_of(1, lambda: check_points(snap, lat, lon, clk, with_distance=True))
    hav_s, hav_inside = best_of(1, haversine_baseline, f)
    t = time.perf_counter()
    tree, box_fence = strtree_build(f)
    tree_build_s = time.perf_counter() - t
    tree_s, tree_inside = best_of(1, strtree_baseline, f, tree, box_fence)
    latency = change_latency(index, f, args.fences)

    n = lat.size
    report = {
        "machine": (
            f"{platform.machine()} {psutil.cpu_count()} cpu "
            f"{round(psutil.virtual_memory().total / 2**30)} GiB, "
            f"{platform.python_implementation()} {platform.python_version()}"
        ),
        "workload": {"clocks": args.clocks, "fences": n_fences, "points": n, "seed": args.seed},
        "fleet_generation_s": round(gen_s, 2),
        "index_load_s": round(load_s, 3),
        "index_load_parts_s": {
            "rows_to_columns": round(columns_s, 3),
            "table_build": round(build_s, 3),
        },
        "index_bytes_per_fence": round(snap.base.nbytes / n_fences, 1),
        "rss_bytes_per_fence": round(rss_per_fence, 1),
        "points_per_s": {
            "geopunch": round(n / ours_s),
            "geopunch_with_distance": round(n / dist_s),
            "baseline_haversine_per_clock": round(n / hav_s),
            "baseline_shapely_strtree_exact": round(n / tree_s),
        },
        "speedup": {
            "vs_haversine": round(hav_s / ours_s, 1),
            "vs_shapely_strtree": round(tree_s / ours_s, 1),
        },
        "strtree_build_s": round(tree_build_s, 2),
        "build_plus_one_query_s": {
            "geopunch": round(fresh_s, 3),
            "shapely_strtree": round(tree_build_s + tree_s, 3),
            "speedup": round((tree_build_s + tree_s) / fresh_s, 2),
        },
        "agreement": {
            "strtree_exact_vs_geopunch_mismatches": int((tree_inside != result.inside).sum()),
            "haversine_vs_geopunch_mismatches": int((hav_inside != result.inside).sum()),
            "inside_fraction": round(float(result.inside.mean()), 3),
        },
        "one_change_visible_1000_fence_clock": {k: round(v, 3) for k, v in latency.items()},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
