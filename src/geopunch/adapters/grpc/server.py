"""gRPC server: health, reflection, our services, graceful shutdown.

The server is grpc's asyncio server on an event loop of its own thread.
Ping, the four punches, ReportLocations and the event streams are
coroutines on that loop; every other handler is a plain function that the
interceptor runs on a thread pool. Punches are written by the group
committer's writer thread in batches, each batch waking the loop once:
thread-per-call, each call waking its own thread, had made punches cost
twice as many context switches as an empty call (bench/README).
"""

from __future__ import annotations

import asyncio
import faulthandler
import gc
import logging
import signal
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from geopunch.adapters.db.store import GroupCommitter
from geopunch.adapters.grpc.interceptors import CatchUp, ServiceInterceptor
from geopunch.adapters.grpc.locations import LocationServicer, Wakeup
from geopunch.adapters.grpc.scheduling import SchedulerServicer
from geopunch.adapters.grpc.servicers import AdminServicer, GeofenceServicer
from geopunch.adapters.grpc.timeclock import TimeClockServicer
from geopunch.adapters.grpc.workers import WorkerSlot, stop_on_signals
from geopunch.bootstrap import App, build_app
from geopunch.config import Config
from geopunch.domain.ports import UnitOfWork, UnitOfWorkFactory
from geopunch.geo.index import FenceIndex
from geopunch.service.admin import follow_index_changes, prune_index_changes
from geopunch.service.punches import purge_idempotency_keys
from geopunch.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    geofences_pb2,
    geofences_pb2_grpc,
    location_pb2,
    location_pb2_grpc,
    scheduler_pb2,
    scheduler_pb2_grpc,
    timeclock_pb2,
    timeclock_pb2_grpc,
)

log = logging.getLogger("geopunch")

T = TypeVar("T")

SERVICE_NAMES = (
    admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
    geofences_pb2.DESCRIPTOR.services_by_name["GeofenceService"].full_name,
    location_pb2.DESCRIPTOR.services_by_name["LocationService"].full_name,
    scheduler_pb2.DESCRIPTOR.services_by_name["SchedulerService"].full_name,
    timeclock_pb2.DESCRIPTOR.services_by_name["TimeClockService"].full_name,
)


#: Seconds past the grace period after which a stuck shutdown is cut short.
STOP_MARGIN_S = 10.0
#: How often expired idempotency keys are purged (also once at start-up).
PURGE_EVERY_S = 3600.0
#: Index changes older than this are pruned: every running process has long applied them.
INDEX_CHANGES_KEPT_S = 86400.0
#: How often a worker of ``serve --processes`` looks whether a sibling committed events.
EVENT_RELAY_S = 0.02


class SystemClock:
    def now(self) -> float:
        return time.time()


class DeferredUnitOfWorkFactory:
    """Stands in for the store until start-up has opened and migrated it.

    Servicers must be registered before the server starts, but the store opens
    after the port is bound (so health can answer NOT_SERVING meanwhile). The
    interceptor answers UNAVAILABLE until then, so no call reaches this early.
    """

    def __init__(self) -> None:
        self.target: UnitOfWorkFactory | None = None

    def __call__(self, *, readonly: bool = False) -> UnitOfWork:
        if self.target is None:
            raise RuntimeError("the store is not open yet")
        return self.target(readonly=readonly)


class EventLoopThread:
    """An asyncio event loop running on a daemon thread of its own; ``run``
    submits a coroutine to it from any other thread and waits for its result."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


class Server:
    """The process's gRPC server. ``start()`` binds and opens the store; ``stop()`` drains.

    Its methods are called from ordinary threads; grpc's server lives on the
    event loop of ``self.loop`` and is reached through it."""

    def __init__(self, config: Config, worker: WorkerSlot | None = None) -> None:
        """``worker``: this process is one of ``serve --processes`` (see workers.py)."""
        self.config = config
        self.worker = worker
        # health.aio is the module's public asyncio servicer; the stubs omit it.
        self.health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self.app: App | None = None
        self._stopped = threading.Event()
        self._ready = threading.Event()
        # The fence index follows the store's change feed from this cursor;
        # the lock keeps the follower thread and callers catching up in turn.
        self._cursor = 0
        self._follow_lock = threading.Lock()
        self._index_seen = 0
        self._uows = DeferredUnitOfWorkFactory()
        self._purger: threading.Thread | None = None
        self._follower: threading.Thread | None = None
        self.index = FenceIndex()
        # Punches and live positions share commits under load; the committer
        # reaches the store only once it is open.
        self._committer = GroupCommitter(self._uows)
        self.wakeup = Wakeup()
        # Plain (blocking) handlers run here; see ServiceInterceptor.
        self._executor = ThreadPoolExecutor(
            max_workers=config.max_workers, thread_name_prefix="rpc"
        )
        self.loop = EventLoopThread("grpc-loop")
        # grpc's asyncio objects belong to the loop they are made on.
        self._grpc, self.port = self.loop.run(self._make_server())
        if self.port == 0:
            self.loop.close()
            self._committer.close()
            raise RuntimeError(f"cannot listen on {config.listen}")

    async def _make_server(self) -> tuple[grpc.aio.Server, int]:
        config = self.config
        interceptor = ServiceInterceptor(
            config.api_key_hashes,
            self._ready,
            self._executor,
            catch_up=(
                None
                if self.worker is None
                else CatchUp(self._siblings_changed, self._catch_up_with_siblings)
            ),
            worker=None if self.worker is None else self.worker.number,
        )
        server = grpc.aio.server(
            interceptors=[interceptor],
            options=[
                ("grpc.max_receive_message_length", config.max_message_bytes),
                ("grpc.max_send_message_length", config.max_message_bytes),
                # Workers share the port; a lone server must not share it by accident.
                ("grpc.so_reuseport", 0 if self.worker is None else 1),
            ],
            maximum_concurrent_rpcs=config.max_workers * 8,
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        admin_pb2_grpc.add_AdminServiceServicer_to_server(
            AdminServicer(self._uows, self.index), server
        )
        geofences_pb2_grpc.add_GeofenceServiceServicer_to_server(
            GeofenceServicer(self._uows, self.index), server
        )
        location_pb2_grpc.add_LocationServiceServicer_to_server(
            LocationServicer(
                self.index,
                self._uows,
                SystemClock(),
                self._committer.submit,
                self.wakeup,
                self._stopped,
            ),
            server,
        )
        scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server(
            SchedulerServicer(self._uows, SystemClock()), server
        )
        timeclock_pb2_grpc.add_TimeClockServiceServicer_to_server(
            TimeClockServicer(self._uows, self.index, SystemClock(), self._committer.submit),
            server,
        )
        return server, server.add_insecure_port(config.listen)

    async def _set_health(self, status: int) -> None:
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, status)

    def start(self) -> None:
        """Listen at once (health says NOT_SERVING), then open and migrate the store."""
        self.loop.run(self._grpc.start())
        host = self.config.listen.rpartition(":")[0]
        log.info("listening", extra={"fields": {"address": f"{host}:{self.port}"}})
        on_events, on_index_changes = self.wakeup.notify, None
        if self.worker is not None:
            generations = self.worker.generations
            on_index_changes = generations.bump_index

            def on_events() -> None:
                self.wakeup.notify()
                generations.bump_events()

            # Read before the index loads: a sibling's change from here on is
            # applied again, which is harmless.
            self._index_seen = generations.index
        self.app = build_app(
            self.config, self.index, on_events=on_events, on_index_changes=on_index_changes
        )
        self._cursor = self.app.index_cursor
        self._uows.target = self.app.uows
        self._ready.set()
        self.loop.run(self._set_health(health_pb2.HealthCheckResponse.SERVING))
        log.info("serving")
        self._follower = threading.Thread(
            target=self._follow_index, name="index-follow", daemon=True
        )
        self._follower.start()
        if self.worker is not None:
            threading.Thread(target=self._relay_events, name="event-relay", daemon=True).start()
        if self.config.idempotency_days > 0 and self._housekeeping:
            self._purger = threading.Thread(
                target=self._purge_keys, name="idempotency-purge", daemon=True
            )
            self._purger.start()

    @property
    def _housekeeping(self) -> bool:
        """Purging and pruning: a lone server does them, and one worker of several."""
        return self.worker is None or self.worker.runs_housekeeping

    def _purge_keys(self) -> None:
        """Forget old idempotency keys now and then every PURGE_EVERY_S, until stopped."""
        retention_s = self.config.idempotency_days * 86400
        while True:
            try:
                removed = purge_idempotency_keys(self._uows, time.time(), retention_s)
                if removed:
                    log.info("idempotency keys purged", extra={"fields": {"removed": removed}})
            except Exception:  # the store may be briefly unavailable; try again later
                log.exception("idempotency key purge failed")
            if self._stopped.wait(PURGE_EVERY_S):
                return

    def _catch_up(self) -> None:
        """Apply every time clock change in the store's feed past our cursor.
        The caller holds ``_follow_lock``."""
        before = self._cursor
        self._cursor = follow_index_changes(self._uows, self.index, before)
        if self._cursor != before:
            log.debug("fence index followed", extra={"fields": {"cursor": self._cursor}})

    def _siblings_changed(self) -> bool:
        """Whether a sibling worker changed a time clock or its fences since we
        last looked: one read of shared memory."""
        assert self.worker is not None
        return self.worker.generations.index != self._index_seen

    def _catch_up_with_siblings(self) -> None:
        """Before a worker's call: if a sibling worker changed a time clock or
        its fences since we last looked (one read of shared memory), apply it
        first, so that every call sees every change acknowledged before it."""
        assert self.worker is not None
        seen = self.worker.generations.index
        if seen == self._index_seen:
            return
        with self._follow_lock:
            if seen == self._index_seen:
                return
            self._catch_up()
            self._index_seen = seen  # a bump while reading: the next call looks again

    def _relay_events(self) -> None:
        """Wake this worker's event streams when a sibling committed events."""
        assert self.worker is not None
        generations = self.worker.generations
        seen = generations.events
        while not self._stopped.wait(EVENT_RELAY_S):
            now = generations.events
            if now != seen:
                seen = now
                self.wakeup.notify()

    def _follow_index(self) -> None:
        """Apply other processes' time clock and geofence changes to the index
        every ``index_poll_seconds``; prune the feed hourly. Until stopped.

        While the store fails, the first failure is logged with its stack and
        the following ones once a minute, with how many there were.
        """
        pruned_at = time.monotonic() - PURGE_EVERY_S
        failures, logged_at = 0, 0.0
        while not self._stopped.wait(self.config.index_poll_seconds):
            try:
                with self._follow_lock:
                    self._catch_up()
                if self._housekeeping and time.monotonic() - pruned_at >= PURGE_EVERY_S:
                    pruned_at = time.monotonic()
                    prune_index_changes(self._uows, int(time.time() - INDEX_CHANGES_KEPT_S))
            except Exception:  # the store may be briefly unavailable; try again later
                failures += 1
                if failures == 1 or time.monotonic() - logged_at >= 60:
                    logged_at = time.monotonic()
                    log.exception(
                        "fence index refresh failed", extra={"fields": {"failures": failures}}
                    )
                continue
            if failures:
                log.info("fence index refresh recovered", extra={"fields": {"failures": failures}})
                failures = 0

    def stop(self, grace: float | None = None) -> None:
        """Refuse new calls, let in-flight ones finish within ``grace`` seconds, close the store."""
        if self._stopped.is_set():
            return
        self._stopped.set()  # event streams end at their next wake-up
        self.wakeup.notify()
        self.loop.run(self.health.enter_graceful_shutdown())
        self.loop.run(self._grpc.stop(self.config.grace_seconds if grace is None else grace))
        self._committer.close()  # every call has answered: nothing is left to queue
        self._executor.shutdown()
        if self._purger is not None:
            self._purger.join(self.config.grace_seconds)
        if self._follower is not None:
            self._follower.join(self.config.grace_seconds)
        if self.app is not None:
            self.app.engine.dispose()
        self.loop.close()
        log.info("stopped")


def serve(
    config: Config, ready: Callable[[int], None] | None = None, worker: WorkerSlot | None = None
) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully."""
    server = Server(config, worker)
    stop_requested = stop_on_signals()
    # An operator (or a test) can see where every thread is: kill -USR1 PID
    # writes all stacks to stderr without disturbing the server.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    server.start()
    # What start-up built (modules, the fence index, compiled kernels, the
    # engine) lives as long as the process: moved out of the collector's
    # generations, a full collection under load no longer walks it. Under 64
    # punches in flight this took punch p99 from 120-170 ms to ~100 ms.
    gc.collect()
    gc.freeze()
    if ready is not None:
        ready(server.port)
    # Wait in slices: a signal taken by another thread only sets a flag, and
    # the main thread must wake up to run the handler.
    while not stop_requested.wait(0.25):
        pass
    # A drain (or interpreter exit) that hangs must not keep the process
    # alive: past the grace period plus a margin, every thread's stack goes to
    # the log and the process exits with status 1. Left armed on purpose: it
    # also covers joining threads at exit, and is disarmed at finalization.
    faulthandler.dump_traceback_later(config.grace_seconds + STOP_MARGIN_S, exit=True)
    server.stop()
