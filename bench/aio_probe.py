"""Design probe, not the product: punches behind a ``grpc.aio`` server.

    python3 dev.py run bench/aio_probe.py /tmp/probe.db [--pool]
    python3 dev.py run bench/loadgen.py --address 127.0.0.1:PORT   # the port it prints

Serves AdminService.Ping/CreateTimeClock and the four punches of
TimeClockService with the real servicers, on one asyncio event loop, to
measure whether a server that is not thread-per-call changes the punch/Ping
ratio (bench/README, "Punches under load"). Two ways of running punches:

- default: one writer thread takes every punch queued since its last batch,
  runs them in one transaction, commits once and wakes the event loop once
  for the whole batch;
- ``--pool``: each punch goes to a 32-thread pool (``run_in_executor``)
  and through the real ``GroupCommitter``.

What it leaves out, so its figures are an upper bound for the design: no
API-key check, no logging per call, no shutdown drain. A batch commits
through ``GroupCommitter.run_batch``, as in the real server, so a punch that
fails after writing leaves nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextvars
import gc
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc

from geopunch.adapters.db.store import GroupCommitter
from geopunch.adapters.grpc.servicers import AdminServicer
from geopunch.adapters.grpc.timeclock import TimeClockServicer
from geopunch.bootstrap import App, build_app
from geopunch.config import Config
from geopunch.domain.ports import UnitOfWork
from geopunch.logs import request_id_var
from geopunch.v1 import admin_pb2_grpc, timeclock_pb2_grpc

PUNCHES = ("ClockIn", "ClockOut", "StartManualBreak", "EndManualBreak")


class _Clock:
    def now(self) -> float:
        return time.time()


class _BatchRunner:
    """The servicer's transaction runner: every punch of a batch shares ``uow``."""

    uow: UnitOfWork | None = None

    def __call__(self, work: Callable[[UnitOfWork], Any]) -> Any:
        assert self.uow is not None
        return work(self.uow)


class _Writer:
    """One thread: takes all queued punches, one transaction, one commit, one loop wake-up.

    The batch runs through ``GroupCommitter.run_batch``, so a punch that fails
    after writing is undone as in the real server."""

    def __init__(self, app: App, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.runner = _BatchRunner()
        # Only its batch step: queueing and waking happen here, not in callers' threads.
        self._committer = GroupCommitter(app.uows)
        self._queue: collections.deque[tuple[Callable[[], Any], asyncio.Future[Any]]] = (
            collections.deque()
        )
        self._cv = threading.Condition()
        threading.Thread(target=self._run, daemon=True, name="probe-writer").start()

    def submit(self, call: Callable[[], Any]) -> asyncio.Future[Any]:
        fut = self.loop.create_future()
        with self._cv:
            self._queue.append((call, fut))
            self._cv.notify()
        return fut

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._queue:
                    self._cv.wait()
                batch = list(self._queue)
                self._queue.clear()
            outcomes = self._committer.run_batch([self._piece(call) for call, _ in batch])
            self.loop.call_soon_threadsafe(_resolve, batch, outcomes)

    def _piece(self, call: Callable[[], Any]) -> Callable[[UnitOfWork], Any]:
        """The servicer call as a piece of the batch: its punch runs in ``uow``."""

        def work(uow: UnitOfWork) -> Any:
            self.runner.uow = uow
            return call()

        return work


def _resolve(
    batch: list[tuple[Any, asyncio.Future[Any]]], outcomes: list[tuple[bool, Any]]
) -> None:
    for (_, fut), (ok, value) in zip(batch, outcomes, strict=True):
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)


async def main(db: Path, pool_mode: bool) -> None:
    app = build_app(Config(database_url=f"sqlite:///{db}"))
    loop = asyncio.get_running_loop()
    pool = ThreadPoolExecutor(32)
    writer = None if pool_mode else _Writer(app, loop)
    runner = GroupCommitter(app.uows) if writer is None else writer.runner
    admin = AdminServicer(app.uows, app.index)
    clocks = TimeClockServicer(app.uows, app.index, _Clock(), runner)

    async def begin(context: Any) -> str:
        rid = str(uuid.uuid4())
        request_id_var.set(rid)
        await context.send_initial_metadata((("x-request-id", rid),))
        return rid

    def in_context(fn: Callable[[Any, Any], Any], request: Any) -> Callable[[], Any]:
        ctx = contextvars.copy_context()  # carries the request id to the writer thread
        return lambda: ctx.run(fn, request, None)

    class Admin(admin_pb2_grpc.AdminServiceServicer):
        async def Ping(self, request: Any, context: Any) -> Any:
            await begin(context)
            return admin.Ping(request, None)

        async def CreateTimeClock(self, request: Any, context: Any) -> Any:
            await begin(context)
            return await loop.run_in_executor(pool, in_context(admin.CreateTimeClock, request))

    def punch(name: str) -> Callable[..., Any]:
        fn = getattr(clocks, name)

        async def handler(self: Any, request: Any, context: Any) -> Any:
            await begin(context)
            if writer is not None:
                return await writer.submit(in_context(fn, request))
            return await loop.run_in_executor(pool, in_context(fn, request))

        return handler

    Clocks = type(
        "Clocks", (timeclock_pb2_grpc.TimeClockServiceServicer,), {n: punch(n) for n in PUNCHES}
    )
    server = grpc.aio.server()
    admin_pb2_grpc.add_AdminServiceServicer_to_server(Admin(), server)  # type: ignore[no-untyped-call]
    timeclock_pb2_grpc.add_TimeClockServiceServicer_to_server(Clocks(), server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    gc.collect()
    gc.freeze()  # as the real server does after start-up
    print(f"probe serving on 127.0.0.1:{port}", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("db", type=Path, help="SQLite file (created)")
    ap.add_argument("--pool", action="store_true", help="punches on a thread pool instead")
    args = ap.parse_args()
    asyncio.run(main(args.db, args.pool))
