"""A fence table build alone, and beside a thread busy in Python.

    python3 dev.py run bench/build_contention.py [--clocks 3000] [--per-clock 100] [--builds 5]

A server compacts its fence index in a background thread while its calls
keep the interpreter busy. A build that gives the GIL back between many
short steps waits for the busy thread's switch interval at every one of
them; one that runs compiled without the GIL does not. For each build this
times ``build_table`` over the fleet's fences alone, then again while a
second thread counts in a Python loop. Prints JSON: seconds of each, and
their ratio (busy over alone).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fleet import make_fleet

from geopunch.domain.locations import FenceRows
from geopunch.geo import _index as index


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clocks", type=int, default=3000)
    ap.add_argument("--per-clock", type=int, default=100)
    ap.add_argument("--builds", type=int, default=5)
    args = ap.parse_args()
    fleet = make_fleet(args.clocks, args.per_clock, points=0)
    clocks = tuple(index.ClockInfo.of(i, tc) for i, tc in enumerate(fleet.time_clocks))
    cols = index.FenceColumns.from_rows(
        FenceRows.of(fleet.fences), {c.time_clock.id: c for c in clocks}
    )
    extra = index._clock_arrays(clocks)[3]
    index.build_table(cols, extra, 0)  # compile or load the kernels

    def busy(stop: threading.Event) -> None:
        n = 0
        while not stop.is_set():
            for _ in range(1000):
                n += 1

    alone, beside = [], []
    for _ in range(args.builds):
        t = time.perf_counter()
        index.build_table(cols, extra, 0)
        alone.append(time.perf_counter() - t)
        stop = threading.Event()
        other = threading.Thread(target=busy, args=(stop,))
        other.start()
        t = time.perf_counter()
        index.build_table(cols, extra, 0)
        beside.append(time.perf_counter() - t)
        stop.set()
        other.join()
    print(
        json.dumps(
            {
                "fences": int(cols.clocks.size),
                "alone_s": [round(x, 3) for x in alone],
                "beside_busy_thread_s": [round(x, 3) for x in beside],
                "busy_over_alone": round(
                    sorted(beside)[len(beside) // 2] / sorted(alone)[len(alone) // 2], 2
                ),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
