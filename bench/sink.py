"""The JetStream sink's rate, against a plain JetStream publish loop of the same messages.

    python3 dev.py run bench/sink.py [--events 20000] [--nats-url nats://127.0.0.1:4222]

Starts ``geopunch serve`` (one process, SQLite) with the sink on a stream of
its own, creates a time clock, and records ``--events`` events
(``CreateTimeActivities``, 1,000 a call) as fast as the server takes them;
the sink publishes them as they are committed. Timed from the first call to
the moment the stream holds every event.

The baseline, in the same run: this process publishing the same bodies to
another fresh stream with nats-py, one awaited publish at a time, each with
its ``Nats-Msg-Id``, as the sink does. The sink cannot be faster than the
events are recorded, so the recording alone (its calls' time) is reported
too.

Prints JSON: events/s of the sink, of the plain loop and of the recording,
the sink over the loop, and the CPU the server and this process spent an event.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import grpc
import nats
from nats.js.api import AckPolicy, ConsumerConfig
from serverproc import cpu_s

from geopunch.v1 import admin_pb2, admin_pb2_grpc, timeclock_pb2, timeclock_pb2_grpc

API_KEY = "bench-key-0123456789"
AUTH = (("x-api-key", API_KEY),)
TC = 1
PER_CALL = 1000


def requests(events: int) -> list[timeclock_pb2.CreateTimeActivitiesRequest]:
    """Calls of 1,000 one-hour shifts, one a user (each a timeActivityCreated event)."""
    start = int(time.time()) - 5 * 86_400
    out = []
    for first in range(0, events, PER_CALL):
        n = min(PER_CALL, events - first)
        groups = [
            timeclock_pb2.UserTimeActivities(
                user_id=first + i + 1,
                shifts=[
                    timeclock_pb2.TimeActivityShift(
                        start=timeclock_pb2.TimeActivityPoint(timestamp=start),
                        end=timeclock_pb2.TimeActivityPoint(timestamp=start + 3600),
                    )
                ],
            )
            for i in range(n)
        ]
        out.append(
            timeclock_pb2.CreateTimeActivitiesRequest(time_clock_id=TC, time_activities=groups)
        )
    return out


async def stream_count(js: Any, stream: str) -> int:
    return int((await js.stream_info(stream)).state.messages)


async def until_held(js: Any, stream: str, n: int, timeout: float = 300) -> float:
    deadline = time.monotonic() + timeout
    while (got := await stream_count(js, stream)) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the stream holds {got} of {n}")
        await asyncio.sleep(0.005)
    return time.perf_counter()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8].upper()
    stream, prefix = f"BENCH_SINK_{tag}", f"bench{tag.lower()}.events"
    nc = await nats.connect(args.nats_url)
    js = nc.jetstream()
    # Made here rather than by the sink's first publish, so it can be watched from the start.
    await js.add_stream(name=stream, subjects=[f"{prefix}.>"])
    out: dict[str, Any] = {"events": args.events}
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            **os.environ,
            "GEOPUNCH_API_KEYS": API_KEY,
            "GEOPUNCH_LOG_LEVEL": "WARNING",
            "GEOPUNCH_DATABASE_URL": f"sqlite:///{Path(tmp) / 'sink.db'}",
            "GEOPUNCH_LISTEN": "127.0.0.1:0",
            "GEOPUNCH_HTTP_LISTEN": "off",
            "GEOPUNCH_NATS_URL": args.nats_url,
            "GEOPUNCH_NATS_STREAM": stream,
            "GEOPUNCH_NATS_SUBJECT_PREFIX": prefix,
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "geopunch", "serve"], env=env, stdout=subprocess.PIPE, text=True
        )
        try:
            assert proc.stdout is not None
            address = proc.stdout.readline().split()[-1]
            channel = grpc.insecure_channel(address)
            grpc.channel_ready_future(channel).result(timeout=60)
            admin = admin_pb2_grpc.AdminServiceStub(channel)
            tk = timeclock_pb2_grpc.TimeClockServiceStub(channel)
            clock = admin_pb2.TimeClock(
                id=TC, name="bench", timezone="UTC", user_ids=range(1, args.events + 2)
            )
            admin.CreateTimeClock(admin_pb2.CreateTimeClockRequest(time_clock=clock), metadata=AUTH)
            # A new sink starts after the newest event when it claims its
            # lease: one event, recorded again until it arrives, shows the
            # sink holds it before the timed ones are recorded.
            warm = requests(1)[0]
            warm.time_activities[0].user_id = args.events + 1
            deadline = time.monotonic() + 60
            while await stream_count(js, stream) == 0:
                if time.monotonic() > deadline:
                    raise RuntimeError("the sink published nothing")
                warm.time_activities[0].shifts[0].start.timestamp -= 7200
                warm.time_activities[0].shifts[0].end.timestamp -= 7200
                tk.CreateTimeActivities(warm, metadata=AUTH, timeout=60)
                await asyncio.sleep(0.2)
            # A warm-up recorded just before the first arrived may still be on
            # its way: the count settles before the timed events start.
            await asyncio.sleep(0.5)
            warmed = await stream_count(js, stream)
            todo = requests(args.events)
            server_cpu, started = cpu_s(proc.pid), time.perf_counter()
            for r in todo:
                tk.CreateTimeActivities(r, metadata=AUTH, timeout=120)
            recorded = time.perf_counter()
            held = await until_held(js, stream, warmed + args.events)
            server_cpu = cpu_s(proc.pid) - server_cpu
            out["sink_events_per_s"] = round(args.events / (held - started), 1)
            out["recording_events_per_s"] = round(args.events / (recorded - started), 1)
            out["server_cpu_ms_per_event"] = round(server_cpu * 1000 / args.events, 4)
            # The bodies the sink sent, for the baseline.
            sub = await js.pull_subscribe(
                f"{prefix}.>", stream=stream, config=ConsumerConfig(ack_policy=AckPolicy.NONE)
            )
            bodies: list[tuple[str, bytes, str]] = []
            while len(bodies) < warmed + args.events:
                for m in await sub.fetch(min(1000, warmed + args.events - len(bodies)), timeout=10):
                    bodies.append((m.subject, m.data, (m.headers or {})["Nats-Msg-Id"]))
            bodies = bodies[warmed:]
            channel.close()
        finally:
            proc.terminate()
            proc.wait(60)
    base = f"BENCH_LOOP_{tag}"
    await js.add_stream(name=base, subjects=[f"loop{tag.lower()}.>"])
    own = time.process_time()
    started = time.perf_counter()
    for subject, body, msg_id in bodies:
        loop_subject = f"loop{tag.lower()}." + subject.split(".", 1)[1]
        await js.publish(loop_subject, body, stream=base, headers={"Nats-Msg-Id": msg_id})
    took = time.perf_counter() - started
    out["loop_events_per_s"] = round(args.events / took, 1)
    out["loop_cpu_ms_per_event"] = round((time.process_time() - own) * 1000 / args.events, 4)
    out["sink_vs_loop"] = round(out["sink_events_per_s"] / out["loop_events_per_s"], 3)
    for name in (stream, base):
        await js.delete_stream(name)
    await nc.close()
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--events", type=int, default=20_000)
    p.add_argument("--nats-url", default="nats://127.0.0.1:4222")
    print(json.dumps(asyncio.run(run(p.parse_args())), indent=2))


if __name__ == "__main__":
    main()
