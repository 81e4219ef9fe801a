"""CheckLocations latency on a busy machine, against the same on an idle one.

    python3 dev.py run bench/contention.py [--seconds 6] [--busy 2] [--kernel-threads N]

Seeds the default fleet (1,000 clocks x 100 fences), starts ``geopunch serve``
(one process), then measures one call in flight of a 10,000-point and of a
one-point ``CheckLocations`` (raw columns): first on the idle machine, then
while ``--busy`` processes of another program spin on the cores, then idle
again. Prints JSON with the p50/p99 of each and the busy/idle p99 ratios
(the idle figure is the worse of the two idle windows).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from grpc_check import API_KEY, closed_loop, requests, seed
from serverproc import serve

SPIN = "import time\nend = time.monotonic() + {s}\nwhile time.monotonic() < end: pass\n"


def window(address: str, reqs: dict[int, list[Any]], seconds: float) -> dict[str, Any]:
    out = {}
    for batch, batch_reqs in reqs.items():
        r = closed_loop(address, batch_reqs, 1, seconds, batch)
        out[f"{batch}_points"] = {k: r[k] for k in ("calls", "p50_ms", "p99_ms")}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--busy", type=int, default=2)
    parser.add_argument("--kernel-threads", type=int)
    args = parser.parse_args()
    if args.kernel_threads is not None:
        os.environ["GEOPUNCH_KERNEL_THREADS"] = str(args.kernel_threads)
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.db"
        fleet, _ = seed(db, 1000, 100, 200_000)
        reqs = {10_000: requests(fleet, 10_000, raw=True), 1: requests(fleet, 1, raw=True)[:5000]}
        with serve(db, API_KEY) as address:
            window(address, reqs, 1.0)  # warm connections and caches
            idle = window(address, reqs, args.seconds)
            spin = SPIN.format(s=args.seconds * 3)
            hogs = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(args.busy)]
            try:
                busy = window(address, reqs, args.seconds)
            finally:
                for h in hogs:
                    h.kill()
                    h.wait()
            again = window(address, reqs, args.seconds)
    ratios = {
        key: round(busy[key]["p99_ms"] / max(idle[key]["p99_ms"], again[key]["p99_ms"]), 2)
        for key in idle
    }
    print(
        json.dumps(
            {
                "cores": len(os.sched_getaffinity(0)),
                "busy_processes": args.busy,
                "idle": idle,
                "busy": busy,
                "idle_again": again,
                "busy_over_idle_p99": ratios,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
