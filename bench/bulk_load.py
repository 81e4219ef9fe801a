"""Storing a fleet through the API, against inserting the same rows straight into a store.

    python3 dev.py run bench/bulk_load.py [--clocks 10000] [--per-clock 100] [--concurrency 4]

In one run:

- the baseline: the same time clocks and fences added through the
  repositories into a fresh SQLite file (``synchronous=FULL``, as the server
  runs), one transaction per time clock, in the load's order, with fence ids
  made as the server makes them (random: the id index is written where the
  key falls, not at its end);
- the load: ``geopunch serve`` (one process) on another fresh file, and
  ``--concurrency`` client threads (each with its own connection) taking the
  next time clock in turn: ``CreateTimeClock``, then ``CreateGeofences`` with
  its fences (at most 1,000 a call).

Prints JSON: fences/s of both, the load's rate in each tenth of it (by fences
stored), and the ratios the issue asks for: the last tenth over the first,
and the whole load over the baseline; and the CPU a fence cost the
baseline's process, and the server and the clients in the load (from
``/proc``), with how busy the two kept the machine's cores; and the server's
CPU a fence in each tenth, which tells a cost that grows with what is held
from a shared machine that got busier.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fleet import make_fleet
from serverproc import OWN_CONNECTION, CpuMeter, child_pid, cpu_s, serve

from geopunch.adapters.db.store import SqlUnitOfWorkFactory, make_engine, migrate
from geopunch.domain.accounts import DEFAULT_ACCOUNT
from geopunch.domain.models import Geofence, TimeClock
from geopunch.service.geofences import new_fence_ids
from geopunch.v1 import admin_pb2, admin_pb2_grpc, common_pb2, geofences_pb2, geofences_pb2_grpc

API_KEY = "bench-key-0123456789"
PER_CALL = 1000


def clock_request(tc: TimeClock) -> admin_pb2.CreateTimeClockRequest:
    return admin_pb2.CreateTimeClockRequest(
        time_clock=admin_pb2.TimeClock(
            id=tc.id,
            name=tc.name,
            timezone=tc.timezone,
            jobs=[admin_pb2.Job(id=j.id, name=j.id) for j in tc.jobs if j.parent_id is None],
        )
    )


def fence_requests(tc: TimeClock, fences: list[Geofence]) -> list[Any]:
    out = []
    for start in range(0, len(fences), PER_CALL):
        out.append(
            geofences_pb2.CreateGeofencesRequest(
                time_clock_id=tc.id,
                geofences=[
                    geofences_pb2.Geofence(
                        name=f.name,
                        fence_size=f.fence_size_m,
                        job_ids=list(f.job_ids),
                        on_geofence_exit_action=f.exit_action.value,
                        location=common_pb2.Location(
                            address=f.address, latitude=f.latitude, longitude=f.longitude
                        ),
                    )
                    for f in fences[start : start + PER_CALL]
                ],
            )
        )
    return out


def baseline(
    db: Path, clocks: list[TimeClock], by_clock: dict[int, list[Geofence]]
) -> tuple[float, list[tuple[float, int]]]:
    engine = make_engine(f"sqlite:///{db}")
    migrate(engine)
    uows = SqlUnitOfWorkFactory(engine)
    marks: list[tuple[float, int]] = []
    stored = 0
    t = time.perf_counter()
    for tc in clocks:
        mine = by_clock.get(tc.id, [])
        fences = [replace(f, id=i) for f, i in zip(mine, new_fence_ids(len(mine)), strict=True)]
        with uows(account=DEFAULT_ACCOUNT) as uow:
            uow.time_clocks.add(tc)
            uow.geofences.add_many(fences)
            uow.commit()
        stored += len(fences)
        marks.append((time.perf_counter() - t, stored))
    took = time.perf_counter() - t
    engine.dispose()
    return took, marks


def load(
    address: str,
    clocks: list[TimeClock],
    by_clock: dict[int, list[Geofence]],
    concurrency: int,
    server_cpu: Callable[[], float] | None = None,
) -> tuple[float, list[tuple[float, int]], list[tuple[int, float]]]:
    """Seconds for the whole load, (time, fences stored so far) after each
    clock, and (fences stored, the server's CPU seconds) at each tenth of the
    load, when ``server_cpu`` reads the latter."""
    meta = (("x-api-key", API_KEY),)
    lock = threading.Lock()
    next_clock = [0]
    stored = [0]
    marks: list[tuple[float, int]] = []
    total = sum(len(by_clock.get(tc.id, [])) for tc in clocks)
    cpu_marks = [(0, server_cpu())] if server_cpu is not None else []
    errors: list[BaseException] = []
    t0 = time.perf_counter()

    def worker() -> None:
        channel = grpc.insecure_channel(address, options=[OWN_CONNECTION])
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        geo = geofences_pb2_grpc.GeofenceServiceStub(channel)
        try:
            while True:
                with lock:
                    i = next_clock[0]
                    next_clock[0] += 1
                if i >= len(clocks):
                    return
                tc = clocks[i]
                fences = by_clock.get(tc.id, [])
                admin.CreateTimeClock(clock_request(tc), metadata=meta, timeout=60)
                for req in fence_requests(tc, fences):
                    geo.CreateGeofences(req, metadata=meta, timeout=60)
                with lock:
                    stored[0] += len(fences)
                    marks.append((time.perf_counter() - t0, stored[0]))
                    if server_cpu is not None and stored[0] >= len(cpu_marks) * total / 10:
                        cpu_marks.append((stored[0], server_cpu()))
        except BaseException as exc:
            errors.append(exc)
        finally:
            channel.close()

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - t0, marks, cpu_marks


def tenths(marks: list[tuple[float, int]], total: int) -> list[float]:
    """Fences/s within each tenth of the load (by fences stored)."""
    rates = []
    prev_t, prev_n = 0.0, 0
    k = 1
    for t, n in marks:
        if n >= k * total / 10:
            rates.append((n - prev_n) / max(t - prev_t, 1e-9))
            prev_t, prev_n = t, n
            k += 1
    return rates


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clocks", type=int, default=10_000)
    parser.add_argument("--per-clock", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument(
        "--processes", type=int, default=1, help="server processes (serve --processes)"
    )
    args = parser.parse_args()
    fleet = make_fleet(args.clocks, args.per_clock, points=0)
    by_clock: dict[int, list[Geofence]] = {}
    for f in fleet.fences:
        by_clock.setdefault(f.time_clock_id, []).append(f)
    total = len(fleet.fences)
    with tempfile.TemporaryDirectory() as tmp:
        cpu = time.process_time()
        direct_s, direct_marks = baseline(Path(tmp) / "direct.db", fleet.time_clocks, by_clock)
        direct_cpu = {
            "direct_cpu_us_per_fence": round((time.process_time() - cpu) * 1e6 / total, 2)
        }
        with serve(Path(tmp) / "api.db", API_KEY, args.processes) as address:
            # With several processes the supervisor's own CPU does not count its
            # workers': only the clients' is measured then.
            server = {"server": child_pid(b"geopunch")} if args.processes == 1 else {}
            meter = CpuMeter({**server, "client": os.getpid()})
            server_cpu = (lambda: cpu_s(server["server"])) if server else None
            api_s, marks, cpu_marks = load(
                address, fleet.time_clocks, by_clock, args.concurrency, server_cpu
            )
            api_cpu = meter.per(total)
    # The server's CPU a fence by tenth: whether the cost grows with what is
    # held, apart from how busy the shared machine was (the rates move with both).
    cpu_tenths = [
        round((c1 - c0) * 1e6 / max(n1 - n0, 1), 1)
        for (n0, c0), (n1, c1) in itertools.pairwise(cpu_marks)
    ]
    rates = tenths(marks, total)
    direct_rates = tenths(direct_marks, total)
    print(
        json.dumps(
            {
                "fences": total,
                "clocks": args.clocks,
                "concurrency": args.concurrency,
                "processes": args.processes,
                "direct_fences_per_s": round(total / direct_s),
                "api_fences_per_s": round(total / api_s),
                "api_s": round(api_s, 2),
                "direct_s": round(direct_s, 2),
                "tenths_fences_per_s": [round(r) for r in rates],
                "last_over_first_tenth": round(rates[-1] / rates[0], 3),
                "server_cpu_us_per_fence_by_tenth": cpu_tenths,
                "direct_tenths_fences_per_s": [round(r) for r in direct_rates],
                "direct_last_over_first_tenth": round(direct_rates[-1] / direct_rates[0], 3),
                "api_over_direct": round(direct_s / api_s, 3),
                **direct_cpu,
                # CPU per fence, in microseconds (CpuMeter counts milliseconds per unit).
                **{
                    k.replace("_ms", "_us_per_fence"): round(v * 1000, 2)
                    if k.endswith("_ms")
                    else v
                    for k, v in api_cpu.items()
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
