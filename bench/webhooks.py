"""Webhook delivery against a plain keep-alive POST loop of the same bodies.

    python3 dev.py run bench/webhooks.py [--events 3000] [--rate 500] [--seconds 10]
        [--processes 1]

Starts ``geopunch serve`` (one process, SQLite; ``--processes N`` for
``serve --processes``) and a receiver in a process
of its own (aiohttp, answering 204 to every POST). Then:

- one subscription: ``--events`` events (time activities created 1,000 a
  call) wait in the log while the subscription is paused; it is replayed
  and timed until the receiver holds them all. Against a loop of aiohttp
  POSTs on one keep-alive connection of the same bodies and headers to the
  same receiver, alternating, three rounds;
- ten subscriptions replayed at once, against one (bar: at least 3x);
- latency: ``--rate`` events a second for ``--seconds`` (time activities
  created 25 a call), each timed from its call's acknowledgement to its
  arrival at the receiver (p50, p99; bar: p99 within 1 s).

Each rate comes with the CPU time the server, the receiver and this process
spent on it (from ``/proc``), per event, and how busy that kept the
machine's cores: what a rate costs, and whether the cores had room for more.

Prints JSON with the figures and the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import numpy as np
from aiohttp import web
from google.protobuf import field_mask_pb2
from serverproc import CpuMeter, child_pid, child_pids, serve

from geopunch.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    timeclock_pb2,
    timeclock_pb2_grpc,
    webhooks_pb2,
    webhooks_pb2_grpc,
)

API_KEY = "bench-key-0123456789"
AUTH = (("x-api-key", API_KEY),)
TC = 1
USERS = 20_000


def receiver_main(port_out: Any) -> None:
    """The receiver process: counts POSTs, keeps bodies and arrival times."""
    got: list[tuple[float, bytes, dict[str, str]]] = []

    async def hook(request: web.Request) -> web.Response:
        got.append((time.time(), await request.read(), dict(request.headers)))
        return web.Response(status=204)

    async def count(request: web.Request) -> web.Response:
        return web.json_response({"count": len(got)})

    async def dump(request: web.Request) -> web.Response:
        keep = ("webhook-id", "webhook-timestamp", "webhook-signature", "Content-Type")
        return web.json_response(
            [
                {"at": at, "body": body.decode(), "headers": {k: h[k] for k in keep if k in h}}
                for at, body, h in got
            ]
        )

    async def reset(request: web.Request) -> web.Response:
        got.clear()
        return web.Response(status=204)

    async def main() -> None:
        app = web.Application()
        app.add_routes(
            [
                web.post("/hooks", hook),
                web.get("/count", count),
                web.get("/dump", dump),
                web.post("/reset", reset),
            ]
        )
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port_out.send(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        await asyncio.Event().wait()

    asyncio.run(main())


class Bench:
    cpu: CpuMeter

    def __init__(self, address: str, receiver: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self.admin = admin_pb2_grpc.AdminServiceStub(self.channel)
        self.tk = timeclock_pb2_grpc.TimeClockServiceStub(self.channel)
        self.hooks = webhooks_pb2_grpc.WebhookServiceStub(self.channel)
        self.receiver = receiver
        self.http = aiohttp.ClientSession()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        while True:
            try:
                self.admin.Ping(admin_pb2.PingRequest(), metadata=AUTH, timeout=2)
                return
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def subscribe(self, paused: bool = True, **fields: Any) -> str:
        sub = webhooks_pb2.WebhookSubscription(url=f"{self.receiver}/hooks", **fields)
        made = self.hooks.CreateWebhookSubscription(
            webhooks_pb2.CreateWebhookSubscriptionRequest(subscription=sub), metadata=AUTH
        ).data
        if paused:
            self.hooks.UpdateWebhookSubscription(
                webhooks_pb2.UpdateWebhookSubscriptionRequest(
                    id=made.id,
                    subscription=webhooks_pb2.WebhookSubscription(status="failing"),
                    update_mask=field_mask_pb2.FieldMask(paths=["status"]),
                ),
                metadata=AUTH,
            )
        return str(made.id)

    def replay(self, sub_id: str, from_seq: int) -> None:
        self.hooks.ReplayWebhookSubscription(
            webhooks_pb2.ReplayWebhookSubscriptionRequest(id=sub_id, from_seq=from_seq),
            metadata=AUTH,
        )

    def pause(self, sub_id: str) -> None:
        self.hooks.UpdateWebhookSubscription(
            webhooks_pb2.UpdateWebhookSubscriptionRequest(
                id=sub_id,
                subscription=webhooks_pb2.WebhookSubscription(status="failing"),
                update_mask=field_mask_pb2.FieldMask(paths=["status"]),
            ),
            metadata=AUTH,
        )

    def seed(self, events: int, first_user: int) -> None:
        """``events`` timeActivityCreated events (one shift each)."""
        start = int(time.time()) - 5 * 86_400
        made = 0
        while made < events:
            n = min(1000, events - made)
            groups = [
                timeclock_pb2.UserTimeActivities(
                    user_id=first_user + made + i,
                    shifts=[
                        timeclock_pb2.TimeActivityShift(
                            start=timeclock_pb2.TimeActivityPoint(timestamp=start),
                            end=timeclock_pb2.TimeActivityPoint(timestamp=start + 3600),
                        )
                    ],
                )
                for i in range(n)
            ]
            self.tk.CreateTimeActivities(
                timeclock_pb2.CreateTimeActivitiesRequest(time_clock_id=TC, time_activities=groups),
                metadata=AUTH,
                timeout=120,
            )
            made += n

    async def count(self) -> int:
        async with self.http.get(f"{self.receiver}/count") as r:
            return int((await r.json())["count"])

    async def reset(self) -> None:
        async with self.http.post(f"{self.receiver}/reset") as r:
            await r.read()

    async def dump(self) -> list[dict[str, Any]]:
        async with self.http.get(f"{self.receiver}/dump") as r:
            got: list[dict[str, Any]] = await r.json()
            return got

    async def until(self, n: int, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while await self.count() < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {await self.count()} of {n} arrived")
            await asyncio.sleep(0.005)

    async def delivered_rate(self, subs: list[str], from_seq: int, events: int) -> float:
        await self.reset()
        self.cpu.start()
        started = time.perf_counter()
        for s in subs:
            self.replay(s, from_seq)
        await self.until(events * len(subs))
        rate = events * len(subs) / (time.perf_counter() - started)
        self.costs.append(self.cpu.per(events * len(subs)))
        for s in subs:
            self.pause(s)
        await asyncio.sleep(1.2)  # the deliverer notices the pause
        return rate

    async def loop_rate(self, requests: list[dict[str, Any]]) -> float:
        """The baseline: the same POSTs from one keep-alive connection."""
        await self.reset()
        conn = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession(connector=conn) as s:
            self.cpu.start()
            started = time.perf_counter()
            for r in requests:
                async with s.post(
                    f"{self.receiver}/hooks", data=r["body"].encode(), headers=r["headers"]
                ) as resp:
                    await resp.read()
            rate = len(requests) / (time.perf_counter() - started)
            self.costs.append(self.cpu.per(len(requests)))
            return rate

    async def latency(self, rate: float, seconds: float, first_user: int) -> dict[str, Any]:
        """Events at ``rate`` a second (time activities created 25 a call, a
        call every 25/rate s), each timed from its call's acknowledgement
        (its commit) to its arrival at the receiver."""
        self.subscribe(paused=False, event_types=["timeActivityCreated"])
        await asyncio.sleep(1.5)  # claimed
        await self.reset()
        acked: dict[str, float] = {}
        per_call = 25
        start = int(time.time()) - 3 * 86_400
        async with grpc.aio.insecure_channel(self.channel_target) as ch:
            tk = timeclock_pb2_grpc.TimeClockServiceStub(ch)

            async def create(users: range) -> None:
                groups = [
                    timeclock_pb2.UserTimeActivities(
                        user_id=u,
                        shifts=[
                            timeclock_pb2.TimeActivityShift(
                                start=timeclock_pb2.TimeActivityPoint(timestamp=start),
                                end=timeclock_pb2.TimeActivityPoint(timestamp=start + 3600),
                            )
                        ],
                    )
                    for u in users
                ]
                reply = await tk.CreateTimeActivities(
                    timeclock_pb2.CreateTimeActivitiesRequest(
                        time_clock_id=TC, time_activities=groups
                    ),
                    metadata=AUTH,
                )
                now = time.time()
                for a in reply.data.time_activities:
                    acked[a.id] = now

            calls = int(rate * seconds / per_call)
            tasks = []
            started = time.perf_counter()
            for k in range(calls):
                due = started + k * per_call / rate
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                first = first_user + k * per_call
                tasks.append(asyncio.create_task(create(range(first, first + per_call))))
            await asyncio.gather(*tasks)
            offered = calls * per_call / (time.perf_counter() - started)
        await self.until(len(acked), 60)
        lat = []
        for r in await self.dump():
            t0 = acked.get(json.loads(r["body"])["payload"]["activityId"])
            if t0 is not None:
                lat.append(max(r["at"] - t0, 0.0) * 1000)
        a = np.asarray(lat)
        return {
            "events": len(lat),
            "offered_per_s": round(offered, 1),
            "p50_ms": round(float(np.percentile(a, 50)), 1),
            "p99_ms": round(float(np.percentile(a, 99)), 1),
            "max_ms": round(float(a.max()), 1),
        }

    channel_target = ""
    costs: list[dict[str, float]]


async def run(
    args: argparse.Namespace, address: str, receiver: str, pids: dict[str, int]
) -> dict[str, Any]:
    b = Bench(address, receiver)
    b.channel_target = address
    b.cpu = CpuMeter(pids)
    b.wait_ready()
    clock = admin_pb2.TimeClock(
        id=TC, name="bench", timezone="UTC", user_ids=range(1, USERS + args.events + 1)
    )
    b.admin.CreateTimeClock(admin_pb2.CreateTimeClockRequest(time_clock=clock), metadata=AUTH)
    one = b.subscribe()
    ten = [b.subscribe() for _ in range(10)]
    b.seed(args.events, 1)
    first = 1  # every seq of this fresh store
    # The bodies and headers the deliverer sends, for the baseline loop.
    await b.reset()
    b.replay(one, first)
    await b.until(args.events)
    requests = await b.dump()
    b.pause(one)
    await asyncio.sleep(1.2)
    out: dict[str, Any] = {"events": args.events, "one": [], "loop": []}
    cost: dict[str, list[dict[str, float]]] = {"one": [], "loop": []}
    for _ in range(3):
        b.costs = cost["loop"]
        out["loop"].append(round(await b.loop_rate(requests), 1))
        b.costs = cost["one"]
        out["one"].append(round(await b.delivered_rate([one], first, args.events), 1))
    b.costs = cost["ten"] = []
    out["ten"] = round(await b.delivered_rate(ten, first, args.events), 1)
    out["cpu_per_event"] = {
        phase: {k: round(float(np.mean([r[k] for r in rows])), 3) for k in rows[0]}
        for phase, rows in cost.items()
    }
    one_rate = float(np.mean(out["one"]))
    out["one_vs_loop"] = round(one_rate / float(np.mean(out["loop"])), 3)
    out["ten_vs_one"] = round(out["ten"] / one_rate, 2)
    out["latency"] = await b.latency(args.rate, args.seconds, args.events + 1)
    await b.http.close()
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--events", type=int, default=3000)
    p.add_argument("--rate", type=float, default=500.0)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--processes", type=int, default=1, help="server processes (serve --processes)")
    args = p.parse_args()
    os.environ["GEOPUNCH_WEBHOOK_ALLOW_PRIVATE"] = "1"
    ctx = multiprocessing.get_context("spawn")
    here, there = ctx.Pipe()
    rx = ctx.Process(target=receiver_main, args=(there,), daemon=True)
    rx.start()
    receiver = f"http://127.0.0.1:{here.recv()}"
    try:
        with (
            tempfile.TemporaryDirectory() as tmp,
            serve(Path(tmp) / "hooks.db", API_KEY, args.processes) as addr,
        ):
            server = child_pid(b"geopunch")
            pids = {"server": server, "receiver": rx.pid or 0, "bench": os.getpid()}
            # With several processes the supervisor's children (its workers,
            # and any helper it runs) deliver; each is metered on its own.
            for n, pid in enumerate(child_pids(server)):
                pids[f"child{n}"] = pid
            print(json.dumps(asyncio.run(run(args, addr, receiver, pids)), indent=2))
    finally:
        rx.terminate()


if __name__ == "__main__":
    main()
