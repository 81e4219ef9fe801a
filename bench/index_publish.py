"""The fence index's cost of taking in a bulk load, by how many changes a
group commit publishes together.

    python3 dev.py run bench/index_publish.py [--clocks 3000] [--batches 1,2,4,8]

In process, as ``CreateTimeClock`` then ``CreateGeofences`` (100 fences) per
clock reach the index from the group committer: for each batch size, the
clocks' creations and then their fences are reported inside
``AccountFences.batched`` blocks of that many changes. The baseline is the
same load one change a block (batch size 1), in the same run; each size runs
twice, alternating, on a fresh index.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from geopunch.domain.models import ExitAction, Geofence, Job, TimeClock
from geopunch.geo.engine import AccountFences

ACCOUNT = 1


def _load(data: list[tuple[TimeClock, list[Geofence]]], batch: int) -> float:
    index = AccountFences()
    started = time.perf_counter()
    for s in range(0, len(data), batch):
        part = data[s : s + batch]
        with index.batched():
            for tc, _ in part:
                index.time_clock_changed(ACCOUNT, tc, [])
        with index.batched():
            for tc, fences in part:
                index.fences_changed(ACCOUNT, tc, fences, [])
    return time.perf_counter() - started


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
    for _ in range(2):
        for b in sizes:
            seconds[b].append(_load(data, b))
    fences = args.clocks * args.per_clock
    base = min(seconds[1]) if 1 in seconds else None
    out = {
        str(b): {
            "fences_per_s": [round(fences / s) for s in runs],
            "ms_per_clock": [round(s / args.clocks * 1e3, 3) for s in runs],
            "speed_up_over_1": round(base / min(runs), 2) if base else None,
        }
        for b, runs in seconds.items()
    }
    print(
        json.dumps({"clocks": args.clocks, "per_clock": args.per_clock, "batches": out}, indent=2)
    )


if __name__ == "__main__":
    main()
