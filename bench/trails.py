"""Exit detection on trails at fleet scale, against plain membership checks.

    python3 dev.py run bench/trails.py [--clocks 10000] [--fences 100] [--samples 1000000]

The fence-engine fleet (cities at every latitude, half the points near a fence
boundary) becomes trails: one user per time clock (10,000 users by default),
the clock's points with timestamps a second apart (in input order, as a
fleet's log sorted by time; ``--shuffled`` scrambles them) and a mix
of accuracies (unknown, 5 m, 50 m, 150 m, 400 m: the last one is ignored).
Random points make a jumpy trail, so exits are frequent: a hard case.

The baseline in the same run is ``check_points`` on the same samples (which
fences contain each point), the least any trail evaluation must do.
Prints JSON with samples/s of both, their ratio, and the exit count.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine import best_of
from fleet import make_fleet

from geopunch.geo._trails import detect_exits
from geopunch.geo.engine import FenceIndex, check_points, warm_up


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clocks", type=int, default=10_000)
    ap.add_argument("--fences", type=int, default=100)
    ap.add_argument("--samples", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--shuffled", action="store_true", help="samples out of time order")
    args = ap.parse_args()
    f = make_fleet(args.clocks, args.fences, args.samples, seed=1)
    snap = FenceIndex().load(f.time_clocks, f.fences)
    warm_up()
    rng = np.random.default_rng(2)
    n = f.point_lat.size
    users = f.point_clock.copy()  # one user per clock
    # A fleet's log in time order; --shuffled scrambles it (the slower path).
    ts = 1_800_000_000 + (rng.permutation(n) if args.shuffled else np.arange(n)).astype(np.int64)
    acc = rng.choice(np.array([np.nan, 5.0, 50.0, 150.0, 400.0]), n)
    detect_exits(snap, users[:1000], f.point_clock[:1000], ts[:1000], f.point_lat[:1000],
                 f.point_lon[:1000], acc[:1000])  # fmt: skip
    t_trail, r = best_of(
        args.repeat, detect_exits, snap, users, f.point_clock, ts, f.point_lat, f.point_lon, acc
    )
    t_check, _ = best_of(args.repeat, check_points, snap, f.point_lat, f.point_lon, f.point_clock)
    print(
        json.dumps(
            {
                "workload": {
                    "clocks": args.clocks,
                    "fences": args.clocks * args.fences,
                    "users": int(np.unique(users).size),
                    "samples": n,
                    "time_ordered": not args.shuffled,
                },
                "trail_samples_per_s": round(n / t_trail),
                "check_points_per_s": round(n / t_check),
                "trail_over_check": round(t_trail / t_check, 2),
                "exits": int(r.exit_samples.size),
                "ignored": int((r.status == 5).sum()),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
