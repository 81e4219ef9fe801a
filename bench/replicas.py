"""Two replicas on one PostgreSQL: throughput, visibility, deadlock retries.

    python3 dev.py run bench/replicas.py [--seconds 10] [--concurrency 64]
        [--database-url postgresql+psycopg://postgres@127.0.0.1:5432/test]

Starts two ``geopunch serve`` processes on a schema of their own in the given
database (dropped at the end). Each of ``--concurrency`` workers is a user
cycling clock-in, break start, break end, clock-out with timestamps one second
apart (as bench/loadgen.py). Windows alternate between all workers on
replica A alone and half of them on each replica, so both see the same
machine. Then 50 visibility trials: a fence made on A, and how long until
B's CheckLocations finds a point inside it. Prints JSON: punches/s of one
replica and of both, their ratio, visibility p50/p99/max, and the
deadlocks and serialization failures retried per 10,000 punches (from the
replicas' logs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import grpc
from serverproc import OWN_CONNECTION, launch_logged
from sqlalchemy import create_engine, text

from geopunch.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    geofences_pb2,
    geofences_pb2_grpc,
    location_pb2,
    location_pb2_grpc,
    timeclock_pb2,
    timeclock_pb2_grpc,
)

API_KEY = "bench-replicas-key"
AUTH = (("x-api-key", API_KEY),)
SITE = (48.8566, 2.3522)


@contextmanager
def schema(url: str) -> Iterator[str]:
    name = f"bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(url)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{name}"'))
    try:
        sep = "&" if "?" in url else "?"
        yield f"{url}{sep}options=-csearch_path%3D{name}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{name}" CASCADE'))
        admin.dispose()


@contextmanager
def replica(url: str, log: Path) -> Iterator[str]:
    proc = launch_logged(url, API_KEY, log)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"a replica exited with {proc.wait(30)}: {log.read_text()[-2000:]}")
        yield line.split()[-1]
    finally:
        proc.terminate()
        proc.wait(60)


async def punches(
    stubs: list[timeclock_pb2_grpc.TimeClockServiceStub],
    tc: int,
    users: list[int],
    counters: list[int],
    seconds: float,
) -> int:
    """Every worker punches through ``stubs[w % len(stubs)]`` for ``seconds``."""
    base = int(time.time()) - 11 * 3600
    done = [0]
    stop = time.perf_counter() + seconds

    async def worker(w: int) -> None:
        stub = stubs[w % len(stubs)]
        while time.perf_counter() < stop:
            n = counters[w]
            counters[w] += 1
            ts, user, step = base + n, users[w], n % 4
            if step == 0:
                await stub.ClockIn(
                    timeclock_pb2.ClockInRequest(
                        time_clock_id=tc, user_id=user, job_id="job", timestamp=ts
                    ),
                    metadata=AUTH,
                )
            elif step == 1:
                await stub.StartManualBreak(
                    timeclock_pb2.StartManualBreakRequest(
                        time_clock_id=tc, user_id=user, manual_break_id="rest", timestamp=ts
                    ),
                    metadata=AUTH,
                )
            elif step == 2:
                await stub.EndManualBreak(
                    timeclock_pb2.EndManualBreakRequest(
                        time_clock_id=tc, user_id=user, timestamp=ts
                    ),
                    metadata=AUTH,
                )
            else:
                await stub.ClockOut(
                    timeclock_pb2.ClockOutRequest(time_clock_id=tc, user_id=user, timestamp=ts),
                    metadata=AUTH,
                )
            done[0] += 1

    await asyncio.gather(*(worker(w) for w in range(len(users))))
    return done[0]


async def visibility(a: grpc.aio.Channel, b: grpc.aio.Channel, tc: int, trials: int) -> list[float]:
    fences = geofences_pb2_grpc.GeofenceServiceStub(a)
    check = location_pb2_grpc.LocationServiceStub(b)
    req = location_pb2.CheckLocationsRequest(time_clock_id=tc)
    req.packed.latitudes.append(SITE[0])
    req.packed.longitudes.append(SITE[1])

    async def inside() -> bool:
        data = (await check.CheckLocations(req, metadata=AUTH)).data
        return bool(data.inside_u8 == b"\x01")

    waits = []
    for i in range(trials):
        made = geofences_pb2.CreateGeofencesRequest(time_clock_id=tc)
        g = made.geofences.add(name=f"t{i}", fence_size=200)
        g.location.address, g.location.latitude, g.location.longitude = "site", *SITE
        fid = (await fences.CreateGeofences(made, metadata=AUTH)).data.geofences[0].fence_id
        t0 = time.perf_counter()
        while not await inside():
            await asyncio.sleep(0.0005)
        waits.append(time.perf_counter() - t0)
        await fences.DeleteGeofence(
            geofences_pb2.DeleteGeofenceRequest(time_clock_id=tc, fence_id=fid), metadata=AUTH
        )
        while await inside():
            await asyncio.sleep(0.0005)
    return sorted(waits)


async def run(addresses: list[str], args: argparse.Namespace) -> dict[str, object]:
    chans = [
        [grpc.aio.insecure_channel(addr, options=[OWN_CONNECTION]) for _ in range(4)]
        for addr in addresses
    ]
    try:
        for group in chans:
            for ch in group:
                await asyncio.wait_for(ch.channel_ready(), 20)
        tc = int(time.time() * 1000) % 10**12
        users = list(range(1, args.concurrency + 1))
        await admin_pb2_grpc.AdminServiceStub(chans[0][0]).CreateTimeClock(
            admin_pb2.CreateTimeClockRequest(
                time_clock=admin_pb2.TimeClock(
                    id=tc,
                    name="replicas",
                    timezone="UTC",
                    user_ids=users,
                    jobs=[admin_pb2.Job(id="job", name="Job")],
                    manual_breaks_enabled=True,
                    manual_break_types=[admin_pb2.ManualBreakType(id="rest", name="Rest")],
                )
            ),
            metadata=AUTH,
        )
        only_a = [timeclock_pb2_grpc.TimeClockServiceStub(ch) for ch in chans[0]]
        stubs_b = [timeclock_pb2_grpc.TimeClockServiceStub(ch) for ch in chans[1]]
        both = [s for pair in zip(only_a, stubs_b, strict=True) for s in pair]
        counters = [0] * args.concurrency
        await punches(only_a, tc, users, counters, 1.0)  # warm-up
        totals = {"one": [0, 0.0], "both": [0, 0.0]}
        for _ in range(args.rounds):
            for name, stubs in (("one", only_a), ("both", both)):
                t0 = time.perf_counter()
                totals[name][0] += await punches(
                    stubs, tc, users, counters, args.seconds / args.rounds
                )
                totals[name][1] += time.perf_counter() - t0
        waits = await visibility(chans[0][0], chans[1][0], tc, 50)
        one = totals["one"][0] / totals["one"][1]
        two = totals["both"][0] / totals["both"][1]
        return {
            "punches_per_s_one_replica": round(one),
            "punches_per_s_two_replicas": round(two),
            "two_vs_one": round(two / one, 3),
            "punches": int(totals["one"][0] + totals["both"][0]),
            "visibility_ms": {
                "p50": round(waits[len(waits) // 2] * 1000, 2),
                "p99": round(waits[int(len(waits) * 0.99) - 1] * 1000, 2),
                "max": round(waits[-1] * 1000, 2),
            },
        }
    finally:
        for group in chans:
            for ch in group:
                await ch.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=10.0, help="per setting, all rounds")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--database-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        url = stack.enter_context(schema(args.database_url))
        logs = [Path(tmp) / "a.log", Path(tmp) / "b.log"]
        addresses = [stack.enter_context(replica(url, logs[0]))]
        addresses.append(stack.enter_context(replica(url, logs[1])))
        out = asyncio.run(run(addresses, args))
        retried = sum(p.read_text().count("store conflict, retried") for p in logs)
        punched = out["punches"]
        assert isinstance(punched, int)
        out["conflicts_retried_per_10k_punches"] = round(retried * 10_000 / max(punched, 1), 2)
        print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
