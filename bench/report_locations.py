"""ReportLocations over gRPC in batches of 1,000 samples, against Ping in the same run.

    python3 dev.py run bench/report_locations.py [--clocks 1000] [--users 10000] [--seconds 10]
        [--encoding raw|packed] [--processes 2]

Seeds a SQLite store (synchronous=FULL) with the fence-engine fleet, starts
``geopunch serve``, and keeps ``--concurrency`` calls in flight (closed loop,
one thread and channel each). Every batch holds ``--batch`` samples: 10
consecutive positions, a second apart, of each of ``--batch / 10`` users
walking from a start point of the fence-engine workload (half of those are
near a fence boundary), so stays, exits and events happen along the way.
Every user reports to one time clock; each worker owns its users, so no two
calls race on one trail. Samples travel as raw little-endian columns
(``TrailSamples.raw``) unless ``--encoding packed``. Prints JSON: samples/s and latency of
ReportLocations, calls/s of Ping, and their ratio; each client thread has its
own connection, and the answer says how many connections and calls each
server worker took (``--processes``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from grpc_check import seed
from pyproj import Geod
from serverproc import (
    OWN_CONNECTION,
    calls_per_worker,
    connections_per_worker,
    serve,
    worker_of,
)

from geopunch.v1 import admin_pb2, admin_pb2_grpc, location_pb2, location_pb2_grpc

API_KEY = "bench-key-0123456789"
GEOD = Geod(ellps="WGS84")
AUTH = (("x-api-key", API_KEY),)


RAW_FIELDS = (
    "user_ids_i64",
    "time_clock_ids_i64",
    "timestamps_i64",
    "latitudes_f64",
    "longitudes_f64",
)
PACKED_FIELDS = ("user_ids", "time_clock_ids", "timestamps", "latitudes", "longitudes")


def batches(  # type: ignore[no-untyped-def]
    f,
    users: int,
    batch: int,
    per_user: int,
    rounds: int,
    worker: int,
    workers: int,
    encoding: str = "raw",
):
    """Requests of one worker: its users walking, ``per_user`` samples each per request.

    Each user starts at a point of its clock's workload (half of them near a
    fence boundary) and moves a few metres a second in a wandering direction,
    so stays and exits happen as they would for people on foot or vehicles
    in a yard.
    """
    rng = np.random.default_rng(worker)
    mine = np.arange(worker, users, workers)
    clock_of = (mine % len(f.time_clocks)) + 1  # as seed() assigns them
    start = np.array([rng.choice(np.flatnonzero(f.point_clock == c)) for c in clock_of])
    lat, lon = f.point_lat[start].copy(), f.point_lon[start].copy()
    heading = rng.uniform(0, 360, mine.size)
    per_batch = batch // per_user
    out = []
    t = 1_800_000_000
    for r in range(rounds):
        who = (np.arange(per_batch) + r * per_batch) % mine.size
        rows_lat, rows_lon = [], []
        for _ in range(per_user):
            heading[who] += rng.normal(0, 20, who.size)
            step = rng.uniform(0, 8, who.size)
            lon[who], lat[who], _ = GEOD.fwd(lon[who], lat[who], heading[who], step)
            rows_lat.append(lat[who].copy())
            rows_lon.append(lon[who].copy())
        columns = (
            np.repeat(mine[who], per_user).astype("<i8"),
            np.repeat(clock_of[who], per_user).astype("<i8"),
            (t + np.tile(np.arange(per_user), per_batch)).astype("<i8"),
            np.stack(rows_lat, axis=1).ravel().astype("<f8"),
            np.stack(rows_lon, axis=1).ravel().astype("<f8"),
        )
        if encoding == "raw":
            samples = location_pb2.TrailSamples(
                raw=location_pb2.RawTrailColumns(
                    **{f: c.tobytes() for f, c in zip(RAW_FIELDS, columns, strict=True)}
                )
            )
        else:
            samples = location_pb2.TrailSamples(
                **{f: c.tolist() for f, c in zip(PACKED_FIELDS, columns, strict=True)}
            )
        t += per_user
        out.append(location_pb2.ReportLocationsRequest(samples=samples))
    return out


def closed_loop(address: str, work: list[list], seconds: float, call: str) -> dict[str, Any]:  # type: ignore[type-arg]
    done = [0] * len(work)
    lat: list[list[float]] = [[] for _ in work]
    workers = [0] * len(work)
    stop = time.perf_counter() + seconds

    def run(w: int) -> None:
        with grpc.insecure_channel(address, options=[OWN_CONNECTION]) as ch:
            workers[w] = worker_of(ch, API_KEY)
            if call == "ping":
                stub = admin_pb2_grpc.AdminServiceStub(ch)
                fn, reqs = stub.Ping, [admin_pb2.PingRequest()]
            else:
                fn, reqs = location_pb2_grpc.LocationServiceStub(ch).ReportLocations, work[w]
            i = 0
            while time.perf_counter() < stop and i < len(reqs) * 1000:
                t = time.perf_counter()
                fn(reqs[i % len(reqs)] if call == "ping" else reqs[i], metadata=AUTH)
                lat[w].append((time.perf_counter() - t) * 1000)
                done[w] += 1
                i += 1
                if call != "ping" and i == len(reqs):
                    break

    t0 = time.perf_counter()
    threads = [threading.Thread(target=run, args=(w,)) for w in range(len(work))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    elapsed = time.perf_counter() - t0
    all_lat = np.concatenate([np.asarray(x) for x in lat if x])
    return {
        "calls_per_s": round(sum(done) / elapsed, 1),
        "p50_ms": round(float(np.percentile(all_lat, 50)), 2),
        "p99_ms": round(float(np.percentile(all_lat, 99)), 2),
        "connections_per_worker": connections_per_worker(workers),
        "calls_per_worker": calls_per_worker(done, workers),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clocks", type=int, default=1000)
    ap.add_argument("--fences", type=int, default=100)
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--per-user", type=int, default=10, help="samples of each user per batch")
    ap.add_argument(
        "--encoding",
        choices=("raw", "packed"),
        default="raw",
        help="samples as raw little-endian columns or as repeated fields",
    )
    ap.add_argument("--processes", type=int, default=1, help="server processes (serve --processes)")
    args = ap.parse_args()
    per_user = args.per_user
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.db"
        f, _ = seed(db, args.clocks, args.fences, 200_000, users=args.users)
        rounds = 400
        work = [
            batches(f, args.users, args.batch, per_user, rounds, w, args.concurrency, args.encoding)
            for w in range(args.concurrency)
        ]
        with serve(db, API_KEY, args.processes) as address:
            ping = closed_loop(address, [[None]] * args.concurrency, min(args.seconds, 5), "ping")
            report = closed_loop(address, work, args.seconds, "report")
        report["samples_per_s"] = round(report["calls_per_s"] * args.batch)
        print(
            json.dumps(
                {
                    "workload": {
                        "fences": args.clocks * args.fences,
                        "users": args.users,
                        "batch": args.batch,
                        "users_per_batch": args.batch // per_user,
                        "concurrency": args.concurrency,
                        "processes": args.processes,
                        "encoding": args.encoding,
                        "store": "sqlite synchronous=FULL",
                    },
                    "report_locations": report,
                    "ping": ping,
                    "report_calls_over_ping_calls": round(
                        report["calls_per_s"] / ping["calls_per_s"], 3
                    ),
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
