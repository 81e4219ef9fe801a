"""Closed-loop asyncio gRPC load generator for punches, with an empty-RPC baseline.

    python3 dev.py run bench/loadgen.py [--concurrency 64] [--seconds 10] [--geofence]
        [--database-url postgresql+psycopg://postgres@127.0.0.1:5432/test]

Starts ``geopunch serve`` on a fresh SQLite store (synchronous=FULL), or with
``--database-url`` on a PostgreSQL schema of its own (dropped at the end),
unless ``--address`` names a running server, then for each workload keeps
``--concurrency`` calls in flight (and then one) for ``--seconds`` in total,
split into ``--rounds`` windows that alternate between the workloads:

- ``ping``: ``AdminService.Ping``, the empty unary RPC (same interceptor path);
- ``punch``: each worker is its own user cycling clock-in, break start, break
  end (resuming the shift), clock-out, with offline timestamps one second
  apart so that no two punches of a user share a second;
- with ``--geofence`` the time clock requires punches inside a fence, and every
  punch carries a location;
- with ``--http``: ``http_punch``, the same punch cycle through the HTTP API
  (JSON over keep-alive connections, one per call in flight, with aiohttp's
  client: the fastest well-kept asyncio HTTP client, so the client's own cost
  on this shared machine flatters neither side), on a time clock of its own.

Prints JSON: calls/s and p50/p90/p99 in ms per workload (and, when it
started a one-process server, the server's CPU milliseconds per call), the punch/ping
ratios and, with ``--http``, HTTP punches against gRPC punches.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import grpc
import numpy as np
from replicas import schema
from serverproc import OWN_CONNECTION, child_pid, cpu_s, serve, serve_url, serve_with_http
from sqlalchemy import create_engine, text

from geopunch.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    common_pb2,
    geofences_pb2,
    geofences_pb2_grpc,
    timeclock_pb2,
    timeclock_pb2_grpc,
)

API_KEY = "loadgen-key-0123456789"
AUTH = (("x-api-key", API_KEY),)
SITE = (40.7128, -74.0060)


class HttpRefused(Exception):
    """An HTTP punch answered other than 200."""


@dataclass
class Window:
    """Latencies (ms), wall time and errors of one or more measuring windows."""

    latencies: list[np.ndarray] = field(default_factory=list)
    elapsed: float = 0.0
    errors: int = 0
    #: CPU seconds the server spent in the windows (when it is measured).
    server_cpu_s: float = 0.0

    def summary(self) -> dict[str, float]:
        lat = np.concatenate(self.latencies)
        cpu = {"server_cpu_ms_per_call": round(self.server_cpu_s * 1000 / lat.size, 4)}
        return {
            **(cpu if self.server_cpu_s else {}),
            "calls_per_s": round(lat.size / self.elapsed, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 3),
            "p90_ms": round(float(np.percentile(lat, 90)), 3),
            "p99_ms": round(float(np.percentile(lat, 99)), 3),
            "calls": int(lat.size),
            "errors": self.errors,
        }


async def closed_loop(
    concurrency: int,
    seconds: float,
    call: Callable[[int, int], Awaitable[None]],
    counters: list[int],
    into: Window,
    server_cpu: Callable[[], float] | None = None,
) -> None:
    """Keep ``concurrency`` calls in flight for ``seconds``; add what was seen to ``into``.

    ``counters[w]`` numbers worker ``w``'s calls across runs (punch timestamps use it).
    """
    latencies: list[list[int]] = [[] for _ in range(concurrency)]
    errors = [0]
    stop = time.perf_counter() + seconds

    async def worker(w: int) -> None:
        while time.perf_counter() < stop:
            n = counters[w]
            counters[w] += 1
            t = time.perf_counter_ns()
            try:
                await call(w, n)
            except (grpc.aio.AioRpcError, HttpRefused) as exc:
                errors[0] += 1
                if errors[0] <= 3:
                    print(f"error: {exc}", file=sys.stderr)
            latencies[w].append(time.perf_counter_ns() - t)

    t0 = time.perf_counter()
    cpu0 = server_cpu() if server_cpu else 0.0
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    into.elapsed += time.perf_counter() - t0
    if server_cpu:
        into.server_cpu_s += server_cpu() - cpu0
    seen = np.concatenate([np.asarray(x, dtype=np.float64) for x in latencies])
    into.latencies.append(seen / 1e6)
    into.errors += errors[0]


async def run(address: str, args: argparse.Namespace, http: str = "") -> dict[str, object]:
    # Worker w calls on connection w % --channels (each its own TCP connection).
    channels = [
        grpc.aio.insecure_channel(address, options=[OWN_CONNECTION]) for _ in range(args.channels)
    ]
    session = None
    if http:
        session = aiohttp.ClientSession(
            base_url=f"http://{http}",
            headers={"X-API-KEY": API_KEY},
            connector=aiohttp.TCPConnector(limit=args.concurrency),
        )
    try:
        return await _run(channels, args, session)
    finally:
        for ch in channels:
            await ch.close()
        if session is not None:
            await session.close()


async def _make_clock(
    admin: admin_pb2_grpc.AdminServiceStub, tc_id: int, users: list[int], geofence: bool
) -> None:
    await admin.CreateTimeClock(
        admin_pb2.CreateTimeClockRequest(
            time_clock=admin_pb2.TimeClock(
                id=tc_id,
                name="load",
                timezone="UTC",
                user_ids=users,
                jobs=[admin_pb2.Job(id="job", name="Job")],
                manual_breaks_enabled=True,
                manual_break_types=[admin_pb2.ManualBreakType(id="rest", name="Rest")],
                geofence_policy=admin_pb2.REQUIRE_INSIDE if geofence else admin_pb2.OFF,
            )
        ),
        metadata=AUTH,
    )


async def _run(
    channels: list[grpc.aio.Channel],
    args: argparse.Namespace,
    session: aiohttp.ClientSession | None,
) -> dict[str, object]:
    for ch in channels:
        await asyncio.wait_for(ch.channel_ready(), 20)
    channel = channels[0]
    admins = [admin_pb2_grpc.AdminServiceStub(ch) for ch in channels]
    admin = admins[0]
    all_punches = [timeclock_pb2_grpc.TimeClockServiceStub(ch) for ch in channels]
    tc_id = int(time.time() * 1000) % 10**12
    users = list(range(1, args.concurrency + 1))
    # HTTP punches go to a time clock of their own: its users' states are theirs.
    http_tc = tc_id + 1
    clocks = (tc_id, http_tc) if session is not None else (tc_id,)
    for clock in clocks:
        await _make_clock(admin, clock, users, args.geofence)
    location = None
    if args.geofence:
        for clock in clocks:
            req = geofences_pb2.CreateGeofencesRequest(time_clock_id=clock)
            g = req.geofences.add(name="site", fence_size=300)
            g.location.address, g.location.latitude, g.location.longitude = "site", *SITE
            await geofences_pb2_grpc.GeofenceServiceStub(channel).CreateGeofences(
                req, metadata=AUTH
            )
        location = common_pb2.Location(address="site", latitude=SITE[0] + 0.001, longitude=SITE[1])
    json_location = (
        None
        if location is None
        else {"address": "site", "latitude": SITE[0] + 0.001, "longitude": SITE[1]}
    )
    paths = [
        f"/time-clock/v1/time-clocks/{http_tc}/clock-in",
        f"/time-clock/v1/time-clocks/{http_tc}/manual-breaks/rest/clock-in",
        f"/time-clock/v1/time-clocks/{http_tc}/manual-breaks/clock-out",
        f"/time-clock/v1/time-clocks/{http_tc}/clock-out",
    ]
    base = int(time.time()) - 11 * 3600

    async def ping(w: int, n: int) -> None:
        await admins[w % len(admins)].Ping(admin_pb2.PingRequest(), metadata=AUTH)

    async def punch(w: int, n: int) -> None:
        punches = all_punches[w % len(all_punches)]
        ts, user, step = base + n, users[w], n % 4
        if step == 0:
            await punches.ClockIn(
                timeclock_pb2.ClockInRequest(
                    time_clock_id=tc_id,
                    user_id=user,
                    job_id="job",
                    timestamp=ts,
                    location_data=location,
                ),
                metadata=AUTH,
            )
        elif step == 1:
            await punches.StartManualBreak(
                timeclock_pb2.StartManualBreakRequest(
                    time_clock_id=tc_id,
                    user_id=user,
                    manual_break_id="rest",
                    timestamp=ts,
                    location_data=location,
                ),
                metadata=AUTH,
            )
        elif step == 2:
            await punches.EndManualBreak(
                timeclock_pb2.EndManualBreakRequest(
                    time_clock_id=tc_id, user_id=user, timestamp=ts, location_data=location
                ),
                metadata=AUTH,
            )
        else:
            await punches.ClockOut(
                timeclock_pb2.ClockOutRequest(
                    time_clock_id=tc_id, user_id=user, timestamp=ts, location_data=location
                ),
                metadata=AUTH,
            )

    async def http_punch(w: int, n: int) -> None:
        assert session is not None
        step = n % 4
        body: dict[str, object] = {"userId": users[w], "timestamp": base + n}
        if step == 0:
            body["jobId"] = "job"
        if json_location is not None:
            body["locationData"] = json_location
        async with session.post(paths[step], json=body) as r:
            answer = await r.read()
            if r.status != 200:
                raise HttpRefused(f"HTTP {r.status} {answer[:200]!r}")

    pid = getattr(args, "server_pid", 0)
    server_cpu = functools.partial(cpu_s, pid) if pid else None
    calls = {"ping": ping, "punch": punch}
    if session is not None:
        calls["http_punch"] = http_punch
    out: dict[str, object] = {}
    # Per workload: a punch worker's count gives its step in the cycle and
    # its timestamp (one second apart, never reused), so pings must not move it.
    counters = {name: [0] * args.concurrency for name in calls}
    # Baseline and punches alternate in short windows, so that both see
    # the same machine: a neighbour's burst hits both, not one of them.
    for concurrency, suffix in ((args.concurrency, ""), (1, "_1")):
        names = [n for n in calls if not args.only or n == args.only]
        windows = {n: Window() for n in names}
        for n in names:
            await closed_loop(concurrency, 1.0, calls[n], counters[n], Window())  # warm-up
        for _ in range(args.rounds):
            for n in names:
                await closed_loop(
                    concurrency,
                    args.seconds / args.rounds,
                    calls[n],
                    counters[n],
                    windows[n],
                    server_cpu,
                )
        for n in names:
            out[n + suffix] = windows[n].summary()
    if args.only:
        return out
    ping_c, punch_c = out["ping"], out["punch"]
    assert isinstance(ping_c, dict) and isinstance(punch_c, dict)
    out["punch_vs_ping_throughput"] = round(punch_c["calls_per_s"] / ping_c["calls_per_s"], 3)
    out["punch_vs_ping_p99"] = round(punch_c["p99_ms"] / ping_c["p99_ms"], 3)
    if "server_cpu_ms_per_call" in ping_c:
        out["punch_vs_ping_server_cpu"] = round(
            punch_c["server_cpu_ms_per_call"] / ping_c["server_cpu_ms_per_call"], 3
        )
    if session is not None:
        h, h1, g1 = out["http_punch"], out["http_punch_1"], out["punch_1"]
        assert isinstance(h, dict) and isinstance(h1, dict) and isinstance(g1, dict)
        out["http_vs_grpc_punch_throughput"] = round(h["calls_per_s"] / punch_c["calls_per_s"], 3)
        out["http_vs_grpc_punch_p99"] = round(h["p99_ms"] / punch_c["p99_ms"], 3)
        out["http_vs_grpc_punch_p50_at_1"] = round(h1["p50_ms"] / g1["p50_ms"], 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=10.0, help="per workload, all rounds")
    ap.add_argument("--rounds", type=int, default=5, help="alternating windows per workload")
    ap.add_argument("--geofence", action="store_true")
    ap.add_argument("--processes", type=int, default=1, help="server processes (serve --processes)")
    ap.add_argument("--channels", type=int, default=1, help="client connections the calls share")
    ap.add_argument("--address", help="use a running server (its key must be the loadgen key)")
    ap.add_argument("--http", action="store_true", help="also punch over the HTTP API")
    ap.add_argument(
        "--only",
        choices=("ping", "punch", "http_punch"),
        help="run one workload only (for profiling)",
    )
    ap.add_argument(
        "--database-url",
        help="PostgreSQL: punch there, after 2 s of warm-up punches and an ANALYZE",
    )
    args = ap.parse_args()
    if args.address:
        result = asyncio.run(run(args.address, args))
    elif args.database_url:
        with schema(args.database_url) as url, serve_url(url, API_KEY) as address:
            args.server_pid = child_pid(b"geopunch")
            # A fresh schema has no planner statistics: until autovacuum's
            # first ANALYZE (a minute or so into a real deployment) PostgreSQL
            # reads a user's state through the overlap constraint's GiST index,
            # every row of the user's history (bench/README.md). Measure the
            # store as it runs once that has happened.
            asyncio.run(run(address, argparse.Namespace(**{**vars(args), "seconds": 2.0})))
            analyzer = create_engine(url)
            with analyzer.begin() as conn:
                conn.execute(text("ANALYZE"))
            analyzer.dispose()
            result = asyncio.run(run(address, args))
        result["workload"] = {"store": "postgresql", "concurrency": args.concurrency}
    elif args.http:
        with (
            tempfile.TemporaryDirectory() as tmp,
            serve_with_http(Path(tmp) / "load.db", API_KEY, args.processes) as (address, http),
        ):
            args.server_pid = child_pid(b"geopunch") if args.processes == 1 else 0
            result = asyncio.run(run(address, args, http))
    else:
        with (
            tempfile.TemporaryDirectory() as tmp,
            serve(Path(tmp) / "load.db", API_KEY, args.processes) as address,
        ):
            args.server_pid = child_pid(b"geopunch") if args.processes == 1 else 0
            result = asyncio.run(run(address, args))
        result["workload"] = {
            "concurrency": args.concurrency,
            "seconds": args.seconds,
            "rounds": args.rounds,
            "geofence": args.geofence,
            "processes": args.processes,
            "channels": args.channels,
            "store": "sqlite synchronous=FULL",
        }
    print(json.dumps(result, indent=2))
    failed = {k: v["errors"] for k, v in result.items() if isinstance(v, dict) and v.get("errors")}
    if failed:  # a refused punch is cheaper than a real one: the figures would flatter us
        sys.exit(f"calls failed ({failed}): these figures are not valid")


if __name__ == "__main__":
    main()
