"""How the fence engine's costs grow: 10k, 100k and 1M fences by 10k, 100k and 1M points.

    python3 dev.py run bench/growth.py [--fences-per-clock 100] [--repeat 3]

For each fleet size (clocks x 100 fences, the seeded fleet of ``fleet.py``)
and in the same run: the index build from row columns and its memory
(index arrays and RSS growth per fence), then for each point count the
time of one exact check (best of ``--repeat``), shapely's STRtree on degree
boxes with the same exact re-check (its build timed apart), and the numpy
haversine prefilter per clock. Prints a Markdown table (and the JSON rows
after it) with query times and speed-ups against both baselines.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine import best_of, haversine_baseline, measured_load, strtree_baseline, strtree_build
from fleet import make_fleet

from geopunch.geo.engine import check_points, warm_up

CLOCKS = (100, 1_000, 10_000)
POINTS = (10_000, 100_000, 1_000_000)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fences-per-clock", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    proc = psutil.Process(os.getpid())
    warm_up()
    rows_out = []
    for clocks in CLOCKS:
        fleet = make_fleet(clocks, args.fences_per_clock, max(POINTS))
        n_fences = len(fleet.fences)
        rows, index, build_s, rss_per_fence = measured_load(fleet, proc)
        snap = index.snapshot
        t = time.perf_counter()
        tree, box_fence = strtree_build(fleet)
        tree_build_s = time.perf_counter() - t
        for n in POINTS:
            part = replace(
                fleet,
                point_lat=fleet.point_lat[:n],
                point_lon=fleet.point_lon[:n],
                point_clock=fleet.point_clock[:n],
            )
            ours_s, ours = best_of(
                args.repeat, check_points, snap, part.point_lat, part.point_lon, part.point_clock
            )
            tree_s, tree_inside = best_of(args.repeat, strtree_baseline, part, tree, box_fence)
            hav_s, _ = best_of(1, haversine_baseline, part)
            rows_out.append(
                {
                    "fences": n_fences,
                    "points": n,
                    "build_s": round(build_s, 3),
                    "index_bytes_per_fence": round(snap.base.nbytes / n_fences, 1),
                    "rss_bytes_per_fence": round(rss_per_fence, 1),
                    "query_ms": round(ours_s * 1e3, 2),
                    "shapely_build_s": round(tree_build_s, 3),
                    "shapely_query_ms": round(tree_s * 1e3, 2),
                    "numpy_query_ms": round(hav_s * 1e3, 2),
                    "vs_shapely": round(tree_s / ours_s, 1),
                    "vs_numpy": round(hav_s / ours_s, 1),
                    "mismatches_vs_shapely": int((tree_inside != ours.inside).sum()),
                }
            )
        del index, snap, tree, fleet, rows
        gc.collect()
    print(
        "| fences | points | build s (shapely) | index B/fence, RSS B/fence "
        "| query ms | shapely ms | numpy ms | vs shapely | vs numpy |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows_out:
        print(
            f"| {r['fences']:,} | {r['points']:,} | {r['build_s']} ({r['shapely_build_s']}) "
            f"| {r['index_bytes_per_fence']}, {r['rss_bytes_per_fence']} | {r['query_ms']} "
            f"| {r['shapely_query_ms']} | {r['numpy_query_ms']} | {r['vs_shapely']}x "
            f"| {r['vs_numpy']}x |"
        )
    print(json.dumps(rows_out))


if __name__ == "__main__":
    main()
