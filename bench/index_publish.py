"""The fence index's cost of taking in a bulk load, by how many changes a
group commit publishes together.

    python3 dev.py run bench/index_publish.py [--clocks 3000] [--batches 1,2,4,8]

Each run also reports its cost a clock by tenth of the load, whose growth
is what slows a long bulk load through the API.

In process, as ``CreateTimeClock`` then ``CreateGeofences`` (100 fences) per
clock reach the index from the group committer: for each batch size, the
clocks' creations and then their fences are reported inside
``AccountFences.batched`` blocks of that many changes. The baseline is the
same load one change a block (batch size 1), in the same run; each size runs
twice, alternating, on a fresh index.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time

import numpy as np

from geopunch.domain.models import ExitAction, Geofence, Job, TimeClock
from geopunch.geo.engine import AccountFences

ACCOUNT = 1


def _load(data: list[tuple[TimeClock, list[Geofence]]], batch: int) -> list[float]:
    """Seconds for each tenth of the load (a publish per ``batch`` changes)."""
    index = AccountFences()
    tenth = max(len(data) // 10, 1)
    marks = [time.perf_counter()]
    for s in range(0, len(data), batch):
        if s and s // tenth != (s - batch) // tenth:
            marks.append(time.perf_counter())
        part = data[s : s + batch]
        with index.batched():
            for tc, _ in part:
                index.time_clock_changed(ACCOUNT, tc, [])
        with index.batched():
            for tc, fences in part:
                index.fences_changed(ACCOUNT, tc, fences, [])
    marks.append(time.perf_counter())
    return [b - a for a, b in itertools.pairwise(marks)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clocks", type=int, default=3000)
    ap.add_argument("--per-clock", type=int, default=100)
    ap.add_argument("--batches", default="1,2,4,8")
    args = ap.parse_args()
    rng = np.random.default_rng(7)
    data = []
    for i in range(args.clocks):
        tc = TimeClock(
            id=1000 + i, name="c", timezone="UTC", jobs=(Job("a"),), user_ids=frozenset(range(20))
        )
        lat, lon = rng.uniform(-60, 60), rng.uniform(-170, 170)
        fences = [
            Geofence(
                f"f{i}-{k}",
                tc.id,
                "n",
                True,
                100,
                (),
                ExitAction.SEND_NOTIFICATION,
                "x",
                lat + k * 1e-3,
                lon,
            )
            for k in range(args.per_clock)
        ]
        data.append((tc, fences))
    sizes = [int(b) for b in args.batches.split(",")]
    seconds: dict[int, list[float]] = {b: [] for b in sizes}
    tenths: dict[int, list[list[float]]] = {b: [] for b in sizes}
    for _ in range(2):
        for b in sizes:
            parts = _load(data, b)
            seconds[b].append(sum(parts))
            tenths[b].append(parts)
    fences = args.clocks * args.per_clock
    base = min(seconds[1]) if 1 in seconds else None
    out = {
        str(b): {
            "fences_per_s": [round(fences / s) for s in runs],
            "ms_per_clock": [round(s / args.clocks * 1e3, 3) for s in runs],
            "speed_up_over_1": round(base / min(runs), 2) if base else None,
            # The steady-rate check: a tenth's cost a clock, and the last
            # tenth's over the first's (1.0 is a load that does not slow).
            "tenths_ms_per_clock": [
                [round(t / max(args.clocks // 10, 1) * 1e3, 3) for t in run] for run in tenths[b]
            ],
            "last_over_first": [round(run[-1] / run[0], 2) for run in tenths[b]],
        }
        for b, runs in seconds.items()
    }
    print(
        json.dumps({"clocks": args.clocks, "per_clock": args.per_clock, "batches": out}, indent=2)
    )


if __name__ == "__main__":
    main()
