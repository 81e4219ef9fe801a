"""ReportLocations in process: the servicer and the shared commit, with 1..N callers.

    python3 dev.py run bench/report_locations_inproc.py [--callers 1,2,4,8] [--rounds 60]

The workload of ``report_locations.py`` (1,000 clocks x 100 fences, 10,000
users, batches of 100 users x 10 samples, raw columns) without gRPC: the same
``LocationServicer`` and ``GroupCommitter`` as the server, over a SQLite file
with ``synchronous=FULL``. As in the server, the handler is a coroutine on
one event loop and the committer's writer thread runs the transactions; each
caller is a coroutine that owns the batches of its users. For each number of
callers it prints calls/s, the process's CPU per call, how busy the writer
was, and its mean batch, so that a change can be judged apart from the
transport. Every caller count runs on a fresh store, so each starts from the
same trails.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from grpc_check import seed
from report_locations import batches

from geopunch.adapters.db.store import GroupCommitter
from geopunch.adapters.grpc.auth import principal_var
from geopunch.adapters.grpc.locations import LocationServicer
from geopunch.bootstrap import build_app
from geopunch.config import Config
from geopunch.domain.accounts import ALL_SCOPES, DEFAULT_ACCOUNT, Principal

WORKERS = 8  # batch streams, shared out among the callers
WARM = 5  # first batches of each stream, run before timing


class _Clock:
    def now(self) -> float:
        return time.time()


class _BatchTimer:
    """Told each of the committer's batches: seconds on the writer, pieces."""

    def __init__(self) -> None:
        self.busy_s = 0.0
        self.batches = 0
        self.pieces = 0

    def __call__(self, seconds: float, pieces: int) -> None:
        self.busy_s += seconds
        self.batches += 1
        self.pieces += pieces


def measure(fleet: Any, template: Path, callers: int, rounds: int, users: int) -> dict[str, float]:
    work = [batches(fleet, users, 1000, 10, rounds, w, WORKERS) for w in range(WORKERS)]
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.db"
        db.write_bytes(template.read_bytes())  # seeding takes longer than a measurement
        app = build_app(Config(database_url=f"sqlite:///{db}"))
        timer = _BatchTimer()
        committer = GroupCommitter(app.uows, observe=timer)
        svc = LocationServicer(app.index, app.uows, _Clock(), committer.submit)
        # What the interceptor sets for a call: the caller's account (the
        # callers' tasks copy this context).
        principal_var.set(Principal(DEFAULT_ACCOUNT, ALL_SCOPES, "bench"))
        done = [0] * callers

        async def run(c: int, streams: range) -> None:
            for w in streams:
                for request in work[w][WARM:]:
                    await svc.ReportLocations(request, None)
                    done[c] += 1

        async def measured() -> tuple[float, float]:
            for stream in work:
                for request in stream[:WARM]:
                    await svc.ReportLocations(request, None)
            gc.collect()
            timer.busy_s, timer.batches, timer.pieces = 0.0, 0, 0
            cpu, t0 = time.process_time(), time.perf_counter()
            await asyncio.gather(*(run(c, range(c, WORKERS, callers)) for c in range(callers)))
            return time.perf_counter() - t0, time.process_time() - cpu

        elapsed, cpu = asyncio.run(measured())
        committer.close()
        app.engine.dispose()
    calls = sum(done)
    return {
        "callers": callers,
        "calls_per_s": round(calls / elapsed, 1),
        "samples_per_s": round(calls * 1000 / elapsed),
        "cpu_ms_per_call": round(cpu / calls * 1000, 2),
        "writer_busy": round(timer.busy_s / elapsed, 2),
        "mean_batch": round(timer.pieces / max(timer.batches, 1), 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--callers", default="1,2,4,8", help="comma-separated caller counts")
    ap.add_argument("--rounds", type=int, default=60, help="batches per stream (8 streams)")
    ap.add_argument("--users", type=int, default=10_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        template = Path(tmp) / "template.db"
        fleet, _ = seed(template, 1000, 100, 200_000, users=args.users)
        results = [
            measure(fleet, template, int(c), args.rounds, args.users)
            for c in args.callers.split(",")
        ]
    print(json.dumps({"workload": "1,000 samples per call, 100 users", "runs": results}, indent=2))


if __name__ == "__main__":
    main()
