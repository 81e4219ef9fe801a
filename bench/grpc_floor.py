"""geopunch's per-call cost: Ping against a bare grpc.aio server, same run.

    python3 dev.py run bench/grpc_floor.py [--seconds 6] [--rounds 3] [--concurrency 64]
                                           [--bare-loop asyncio|uvloop]

Starts ``geopunch serve`` (one process, fresh SQLite store) and, in a
process of its own, a bare ``grpc.aio`` server that answers the same method
path (``/geopunch.v1.AdminService/Ping``) with an empty message: no
interceptor, no key check, no metrics, no log line. A second bare server
("obliged") does only what geopunch's API obliges every call to do and
nothing else: it passes each call through a ``grpc.aio`` interceptor (the
hook any authentication needs), sends the call's ``x-request-id`` as initial
metadata before the answer, and answers a ``PingResponse`` carrying that id.
It measures how much of the gap to the bare server those obligations
alone cost on this machine. A third ("guarded") adds geopunch's guarded
read: the method registered as client-streaming, its one message read under
a timeout, so that a message that never comes is answered rather than
waited for. The same asyncio client
(one connection, ``--concurrency`` calls in flight, then one) alternates
windows between the two. Prints calls/s and p50 of each and the ratios:
what geopunch keeps of the floor that gRPC in Python sets on this machine.
geopunch runs on its default loop (uvloop; ``GEOPUNCH_EVENT_LOOP`` picks
another); ``--bare-loop`` picks the bare server's, the stock asyncio loop
unless told, so that a floor on uvloop can be measured as well.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import API_KEY, AUTH, Window, closed_loop
from serverproc import OWN_CONNECTION, serve

from geopunch.v1 import admin_pb2, admin_pb2_grpc

BARE = """
import asyncio, grpc, sys, uuid

MODE = sys.argv[1]
OBLIGED = MODE != "bare"


class PassThrough(grpc.aio.ServerInterceptor):
    async def intercept_service(self, continuation, details):
        return await continuation(details)


async def ping(request, context):
    if not OBLIGED:
        return b""
    rid = str(uuid.uuid4())
    await context.send_initial_metadata((("x-request-id", rid),))
    return b"\\x0a\\x24" + rid.encode()  # PingResponse(request_id=rid)


async def read_then_ping(requests, context):
    async with asyncio.timeout(10):
        request = await anext(aiter(requests))
    return await ping(request, context)


async def main():
    server = grpc.aio.server(interceptors=[PassThrough()] if OBLIGED else None)
    if MODE == "guarded":
        method = grpc.stream_unary_rpc_method_handler(read_then_ping)
    else:
        method = grpc.unary_unary_rpc_method_handler(ping)
    handler = grpc.method_handlers_generic_handler("geopunch.v1.AdminService", {"Ping": method})
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"127.0.0.1:{port}", flush=True)
    await server.wait_for_termination()

{run}
"""
RUNNERS = {"asyncio": "asyncio.run(main())", "uvloop": "import uvloop; uvloop.run(main())"}


async def measure(addresses: dict[str, str], args: argparse.Namespace) -> dict[str, object]:
    channels = {
        name: grpc.aio.insecure_channel(address, options=[OWN_CONNECTION])
        for name, address in addresses.items()
    }
    try:
        for ch in channels.values():
            await asyncio.wait_for(ch.channel_ready(), 20)
        stubs = {name: admin_pb2_grpc.AdminServiceStub(ch) for name, ch in channels.items()}
        windows = {(name, c): Window() for name in stubs for c in (args.concurrency, 1)}
        counters = [0] * args.concurrency
        share = args.seconds / args.rounds / 2
        for _ in range(args.rounds):
            for concurrency in (args.concurrency, 1):
                for name, stub in stubs.items():

                    async def call(w: int, n: int, stub: object = stub) -> None:
                        await stub.Ping(admin_pb2.PingRequest(), metadata=AUTH)  # type: ignore[attr-defined]

                    await closed_loop(
                        concurrency, share, call, counters, windows[(name, concurrency)]
                    )
    finally:
        for ch in channels.values():
            await ch.close()
    out: dict[str, object] = {f"{name}_at_{c}": w.summary() for (name, c), w in windows.items()}
    many, one = args.concurrency, 1
    g, b = windows[("geopunch", many)].summary(), windows[("bare", many)].summary()
    g1, b1 = windows[("geopunch", one)].summary(), windows[("bare", one)].summary()
    out["ping_throughput_vs_bare"] = round(g["calls_per_s"] / b["calls_per_s"], 3)
    out["ping_p50_at_1_vs_bare"] = round(g1["p50_ms"] / b1["p50_ms"], 3)
    o, o1 = windows[("obliged", many)].summary(), windows[("obliged", one)].summary()
    out["obliged_throughput_vs_bare"] = round(o["calls_per_s"] / b["calls_per_s"], 3)
    out["obliged_p50_at_1_vs_bare"] = round(o1["p50_ms"] / b1["p50_ms"], 3)
    out["ping_throughput_vs_obliged"] = round(g["calls_per_s"] / o["calls_per_s"], 3)
    r, r1 = windows[("guarded", many)].summary(), windows[("guarded", one)].summary()
    out["guarded_throughput_vs_bare"] = round(r["calls_per_s"] / b["calls_per_s"], 3)
    out["guarded_p50_at_1_vs_bare"] = round(r1["p50_ms"] / b1["p50_ms"], 3)
    out["ping_throughput_vs_guarded"] = round(g["calls_per_s"] / r["calls_per_s"], 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=6.0, help="per server, all rounds")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--bare-loop", choices=sorted(RUNNERS), default="asyncio")
    args = ap.parse_args()
    script = BARE.replace("{run}", RUNNERS[args.bare_loop])
    bares = {
        name: subprocess.Popen(
            [sys.executable, "-c", script, name], stdout=subprocess.PIPE, text=True
        )
        for name in ("bare", "obliged", "guarded")
    }
    try:
        addresses = {}
        for name, proc in bares.items():
            assert proc.stdout is not None
            addresses[name] = proc.stdout.readline().strip()
        with (
            tempfile.TemporaryDirectory() as tmp,
            serve(Path(tmp) / "floor.db", API_KEY) as address,
        ):
            result = asyncio.run(measure({"geopunch": address, **addresses}, args))
    finally:
        for proc in bares.values():
            proc.terminate()
            proc.wait(30)
    result["bare_loop"] = args.bare_loop
    result["geopunch_loop"] = os.environ.get("GEOPUNCH_EVENT_LOOP", "auto")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
