"""CheckLocations over gRPC on loopback, against in-process checks of the same batches.

    python3 dev.py run bench/grpc_check.py [--clocks 1000] [--fences 100] [--seconds 10]
        [--processes 2]

Seeds a SQLite store with a fleet, starts ``geopunch serve`` on a free port,
then keeps ``--concurrency`` calls in flight (closed loop) for ``--seconds``
with batches of ``--batch`` points: raw little-endian columns, the same with
fence ids answered as one fixed-width bytes field, and packed repeated
fields. Each client thread has its own connection; with ``--processes`` the
answer says how many connections and calls each server worker took.

The floor, in the same run: a bare ``grpc.aio`` server in a process of its
own answers the same method path with the bytes of a real answer (one
geopunch gave for the first batch), taking the request as bytes: no
decoding, no check, no encoding. The same client drives it with the same
raw, fixed-width-id requests, in windows that alternate with geopunch's.
In those windows the CPU milliseconds per call of the server and of this
client are taken from ``/proc``, and of the in-process checks per batch:
what each side costs, and whether the two cores had room for more.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fleet import make_fleet
from serverproc import (
    OWN_CONNECTION,
    CpuMeter,
    calls_per_worker,
    child_pid,
    connections_per_worker,
    serve,
    worker_of,
)

from geopunch.adapters.db.store import SqlUnitOfWorkFactory, make_engine, migrate
from geopunch.domain.accounts import DEFAULT_ACCOUNT
from geopunch.geo.engine import FenceIndex, check_points, warm_up
from geopunch.v1 import location_pb2, location_pb2_grpc

API_KEY = "bench-key-0123456789"


def seed(db: Path, clocks: int, fences: int, points: int, users: int = 0) -> tuple[object, float]:
    """Store a fleet; with ``users``, user u is assigned to time clock u % clocks + 1."""
    f = make_fleet(clocks, fences, points)
    if users:
        members: dict[int, set[int]] = {}
        for u in range(users):
            members.setdefault(u % clocks + 1, set()).add(u)
        f.time_clocks[:] = [
            replace(tc, user_ids=frozenset(members.get(tc.id, ()))) for tc in f.time_clocks
        ]
    engine = make_engine(f"sqlite:///{db}")
    migrate(engine)
    uows = SqlUnitOfWorkFactory(engine)
    t = time.perf_counter()
    with uows(account=DEFAULT_ACCOUNT) as uow:
        for tc in f.time_clocks:
            uow.time_clocks.add(tc)
        for start in range(0, len(f.fences), 50_000):
            uow.geofences.add_many(f.fences[start : start + 50_000])
        uow.commit()
    engine.dispose()
    return f, time.perf_counter() - t


def requests(  # type: ignore[no-untyped-def]
    f, batch: int, raw: bool, fixed_ids: bool = False
) -> list[location_pb2.CheckLocationsRequest]:
    out = []
    for start in range(0, f.point_lat.size - batch + 1, batch):
        sl = slice(start, start + batch)
        req = location_pb2.CheckLocationsRequest(fixed_width_fence_ids=fixed_ids)
        if raw:
            req.raw.latitudes_f64 = f.point_lat[sl].astype("<f8").tobytes()
            req.raw.longitudes_f64 = f.point_lon[sl].astype("<f8").tobytes()
            req.raw.time_clock_ids_i64 = f.point_clock[sl].astype("<i8").tobytes()
        else:
            req.packed.latitudes.extend(f.point_lat[sl].tolist())
            req.packed.longitudes.extend(f.point_lon[sl].tolist())
            req.packed.time_clock_ids.extend(f.point_clock[sl].tolist())
        out.append(req)
    return out


def closed_loop(
    address: str,
    reqs: list,  # type: ignore[type-arg]
    concurrency: int,
    seconds: float,
    batch: int,
    server_pid: int = 0,
) -> dict[str, Any]:
    """``concurrency`` threads, each with its own channel, each one call in
    flight; with ``server_pid``, the CPU the server and this client spent."""
    done = [0] * concurrency
    workers = [0] * concurrency
    lat_ms: list[list[float]] = [[] for _ in range(concurrency)]
    stop = time.perf_counter() + seconds
    opts = [
        ("grpc.max_send_message_length", 64 << 20),
        ("grpc.max_receive_message_length", 64 << 20),
        OWN_CONNECTION,
    ]

    def worker(w: int) -> None:
        with grpc.insecure_channel(address, options=opts) as ch:
            grpc.channel_ready_future(ch).result(timeout=10)
            workers[w] = worker_of(ch, API_KEY)
            stub = location_pb2_grpc.LocationServiceStub(ch)
            i = w
            while time.perf_counter() < stop:
                t = time.perf_counter_ns()
                resp = stub.CheckLocations(
                    reqs[i % len(reqs)], metadata=(("x-api-key", API_KEY),), timeout=60
                )
                lat_ms[w].append((time.perf_counter_ns() - t) / 1e6)
                assert resp.data.count == batch
                done[w] += 1
                i += concurrency

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(concurrency)]
    meter = CpuMeter({"server": server_pid, "client": os.getpid()}) if server_pid else None
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    lats = np.concatenate([np.asarray(x) for x in lat_ms])
    cpu = meter.per(sum(done)) if meter else {}
    return {
        **cpu,
        "points_per_s": round(sum(done) * batch / elapsed),
        "calls": sum(done),
        "p50_ms": round(float(np.percentile(lats, 50)), 2),
        "p99_ms": round(float(np.percentile(lats, 99)), 2),
        "connections_per_worker": connections_per_worker(workers),
        "calls_per_worker": calls_per_worker(done, workers),
    }


BARE = """
import asyncio, sys, grpc

ANSWER = open(sys.argv[1], "rb").read()

async def check(request, context):
    return ANSWER

async def ping(request, context):  # the client asks each connection's worker first
    return b""

async def main():
    server = grpc.aio.server(options=[
        ("grpc.max_send_message_length", 64 << 20),
        ("grpc.max_receive_message_length", 64 << 20),
    ])
    handler = grpc.method_handlers_generic_handler(
        "geopunch.v1.LocationService",
        {"CheckLocations": grpc.unary_unary_rpc_method_handler(check)},
    )
    admin = grpc.method_handlers_generic_handler(
        "geopunch.v1.AdminService", {"Ping": grpc.unary_unary_rpc_method_handler(ping)}
    )
    server.add_generic_rpc_handlers((handler, admin))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"127.0.0.1:{port}", flush=True)
    await server.wait_for_termination()

asyncio.run(main())
"""


@contextmanager
def bare_server(answer: bytes, tmp: Path) -> Iterator[tuple[str, int]]:
    path = tmp / "answer.bin"
    path.write_bytes(answer)
    proc = subprocess.Popen(
        [sys.executable, "-c", BARE, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        yield proc.stdout.readline().strip(), proc.pid
    finally:
        proc.terminate()
        proc.wait(30)


def _cpu_means(windows: list[dict[str, Any]]) -> dict[str, float]:
    keys = [k for k in windows[0] if k.endswith("_cpu_ms") or k == "cores_busy"]
    return {k: round(float(np.mean([w[k] for w in windows])), 3) for k in keys}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clocks", type=int, default=1000)
    ap.add_argument("--fences", type=int, default=100)
    ap.add_argument("--points", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=10_000)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument(
        "--rounds", type=int, default=3, help="alternating windows of geopunch and the floor"
    )
    ap.add_argument("--processes", type=int, default=1, help="server processes (serve --processes)")
    ap.add_argument(
        "--modes",
        default="raw,raw_fixed_ids,packed",
        help="request forms measured alone before the alternating windows (none: '')",
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.db"
        f, seed_s = seed(db, args.clocks, args.fences, args.points)
        # in-process baseline on the same batches
        snap = FenceIndex().load(f.time_clocks, f.fences)
        warm_up()
        t, cpu = time.perf_counter(), time.process_time()
        for start in range(0, f.point_lat.size - args.batch + 1, args.batch):
            sl = slice(start, start + args.batch)
            check_points(snap, f.point_lat[sl], f.point_lon[sl], f.point_clock[sl])
        batches = f.point_lat.size // args.batch
        inproc = batches * args.batch / (time.perf_counter() - t)
        inproc_cpu_ms = (time.process_time() - cpu) * 1000 / batches
        t = time.perf_counter()
        with serve(db, API_KEY, args.processes) as address:
            start_s = time.perf_counter() - t
            pid = child_pid(b"geopunch") if args.processes == 1 else 0
            out = {
                "workload": {
                    "clocks": args.clocks,
                    "fences": args.clocks * args.fences,
                    "batch": args.batch,
                    "concurrency": args.concurrency,
                    "processes": args.processes,
                    "seconds": args.seconds,
                },
                "seed_s": round(seed_s, 2),
                "server_start_s": round(start_s, 2),
                "in_process_points_per_s": round(inproc),
                "in_process_cpu_ms_per_batch": round(inproc_cpu_ms, 3),
            }
            forms = {
                "raw": (True, False),
                "raw_fixed_ids": (True, True),
                "packed": (False, False),
            }
            for name in filter(None, args.modes.split(",")):
                raw, fixed = forms[name]
                reqs = requests(f, args.batch, raw, fixed)
                out[f"grpc_{name}"] = closed_loop(
                    address, reqs, args.concurrency, args.seconds, args.batch
                )
                out[f"grpc_{name}"]["ratio_to_in_process"] = round(
                    out[f"grpc_{name}"]["points_per_s"] / inproc, 3
                )
            reqs = requests(f, args.batch, True, True)
            with grpc.insecure_channel(address) as ch:
                answer = location_pb2_grpc.LocationServiceStub(ch).CheckLocations(
                    reqs[0], metadata=(("x-api-key", API_KEY),), timeout=60
                )
            with bare_server(answer.SerializeToString(), Path(tmp)) as (bare, bare_pid):
                mine, floor = [], []
                for _ in range(args.rounds):
                    share = args.seconds / args.rounds
                    mine.append(
                        closed_loop(address, reqs, args.concurrency, share, args.batch, pid)
                    )
                    floor.append(
                        closed_loop(bare, reqs, args.concurrency, share, args.batch, bare_pid)
                    )
            rate = sum(r["points_per_s"] for r in mine) / len(mine)
            bare_rate = sum(r["points_per_s"] for r in floor) / len(floor)
            out["bare_raw_bytes"] = {
                "points_per_s": round(bare_rate),
                "answer_bytes": answer.ByteSize(),
                "request_bytes": reqs[0].ByteSize(),
                "p50_ms": [r["p50_ms"] for r in floor],
                **_cpu_means(floor),
            }
            out["raw_fixed_ids_alternating"] = {
                "points_per_s": round(rate),
                "p50_ms": [r["p50_ms"] for r in mine],
                "ratio_to_bare": round(rate / bare_rate, 3),
                "ratio_to_in_process": round(rate / inproc, 3),
                **_cpu_means(mine),
            }
            print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
