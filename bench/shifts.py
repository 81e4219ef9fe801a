"""CreateShifts with 500 shifts over gRPC, against an empty RPC in the same run.

    python3 dev.py run bench/shifts.py [--requests 40] [--shifts 500]

Starts ``geopunch serve`` on a fresh SQLite store (synchronous=FULL), creates a
scheduler with 50 users and 5 jobs, then sends ``--requests`` CreateShifts
calls one after the other, each with ``--shifts`` published shifts (one user,
two breaks, a note and a custom field each, so every one also writes a
``shiftPublished`` event). The baseline is ``AdminService.Ping`` on the same
channel. Prints JSON: latency percentiles in ms of both, and their ratio.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from serverproc import serve

from geopunch.v1 import admin_pb2, admin_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc

API_KEY = "bench-key-0123456789"
AUTH = (("x-api-key", API_KEY),)
USERS = list(range(1001, 1051))
JOBS = [f"job-{i}" for i in range(5)]
T0 = 1_900_000_000


def scheduler(scheduler_id: int = 1) -> admin_pb2.Scheduler:
    return admin_pb2.Scheduler(
        id=scheduler_id,
        name="bench",
        timezone="America/New_York",
        user_ids=USERS,
        jobs=[admin_pb2.Job(id=j, name=j, color="#336699") for j in JOBS],
    )


def shift_batch(n: int, offset: int) -> list[scheduler_pb2.ScheduledShift]:
    """``n`` published 8-hour shifts, a realistic mix of the optional fields."""
    out = []
    for i in range(n):
        start = T0 + (offset + i) * 3600
        s = scheduler_pb2.ScheduledShift(
            start_time=start,
            end_time=start + 8 * 3600,
            job_id=JOBS[i % len(JOBS)],
            is_published=True,
            assigned_user_ids=[USERS[i % len(USERS)]],
            notes=[scheduler_pb2.ShiftNote(html="<p>Bring the keys</p>")],
            breaks=[
                scheduler_pb2.ShiftBreak(name="Lunch", type="unpaid", start_time=720, duration=30),
                scheduler_pb2.ShiftBreak(name="Rest", type="paid", start_time=900, duration=15),
            ],
        )
        s.custom_fields.add(id="cost-center").value.string_value = "CC-7"
        out.append(s)
    return out


def percentiles(ms: list[float]) -> dict[str, float]:
    arr = np.asarray(ms)
    return {
        "n": len(ms),
        "p50_ms": round(float(np.percentile(arr, 50)), 2),
        "p90_ms": round(float(np.percentile(arr, 90)), 2),
        "max_ms": round(float(arr.max()), 2),
    }


def run(address: str, requests: int, shifts: int) -> dict[str, Any]:
    opts = [
        ("grpc.max_send_message_length", 64 << 20),
        ("grpc.max_receive_message_length", 64 << 20),
    ]
    with grpc.insecure_channel(address, options=opts) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        sched = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        admin.CreateScheduler(
            admin_pb2.CreateSchedulerRequest(scheduler=scheduler()), metadata=AUTH
        )
        bodies = [
            scheduler_pb2.CreateShiftsRequest(
                scheduler_id=1, shifts=shift_batch(shifts, r * shifts)
            )
            for r in range(requests + 3)
        ]
        for body in bodies[:3]:  # warm-up: connections, caches, first-call paths
            sched.CreateShifts(body, metadata=AUTH)
        create_ms = []
        for body in bodies[3:]:
            t = time.perf_counter()
            reply = sched.CreateShifts(body, metadata=AUTH)
            create_ms.append((time.perf_counter() - t) * 1000)
            assert len(reply.data.shifts) == shifts
        ping_ms = []
        for _ in range(requests * 5):
            t = time.perf_counter()
            admin.Ping(admin_pb2.PingRequest(), metadata=AUTH)
            ping_ms.append((time.perf_counter() - t) * 1000)
    create, ping = percentiles(create_ms), percentiles(ping_ms)
    return {
        "workload": {
            "shifts_per_request": shifts,
            "requests": requests,
            "store": "sqlite synchronous=FULL",
        },
        "create_shifts": create,
        "ping": ping,
        "create_p50_over_ping_p50": round(create["p50_ms"] / ping["p50_ms"], 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=40)
    ap.add_argument("--shifts", type=int, default=500)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, serve(Path(tmp) / "shifts.db", API_KEY) as address:
        print(json.dumps(run(address, args.requests, args.shifts), indent=2))


if __name__ == "__main__":
    main()
