"""gRPC server: health, reflection, our services, graceful shutdown.

The server is grpc's asyncio server on an event loop of its own thread.
Ping, the four punches, ReportLocations and the event streams are
coroutines on that loop; every other handler is a plain function that the
interceptor runs on a thread pool. Punches are written by the group
committer's writer thread in batches, each batch waking the loop once, so
that a punch costs about the context switches of an empty call rather than
one thread wake-up per call.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import faulthandler
import gc
import logging
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import grpc
from google.protobuf import descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from geopunch import __version__, tracing
from geopunch.adapters.db import notify
from geopunch.adapters.db.store import GroupCommitter, StoppedWaiting
from geopunch.adapters.grpc.interceptors import CatchUp, Limits, ServiceInterceptor
from geopunch.adapters.http.app import HttpDeps, create_app
from geopunch.adapters.wakeup import Stop, Wakeup
from geopunch.adapters.webhook_http import HttpPoster
from geopunch.bootstrap import SERVICE_NAMES, App, Services, SystemClock, add_services, build_app
from geopunch.config import Config
from geopunch.domain.ports import Transaction, UnitOfWorkFactory
from geopunch.entrypoints import background, loops
from geopunch.entrypoints.http_server import CannotListen, HttpServer, bind, metrics_listener
from geopunch.entrypoints.process import (
    HEARTBEAT_S,
    WorkerSlot,
    raise_open_files_limit,
    stop_on_signals,
)
from geopunch.entrypoints.systemd import Notifier
from geopunch.geo.engine import AccountFences, set_kernel_threads
from geopunch.service.accounts import KeyRing
from geopunch.service.delivery import Deliverer, DeliverySettings, SinkPublisher, keep_running
from geopunch.service.events import StreamSlots, purge_events
from geopunch.service.index_checkpoint import save_checkpoint
from geopunch.service.punches import purge_idempotency_keys
from geopunch.service.webhooks import purge_attempts, resolving_guard

log = logging.getLogger("geopunch")

T = TypeVar("T")

#: Seconds past the grace period after which a stuck shutdown is cut short.
STOP_MARGIN_S = 10.0


class DeferredUnitOfWorkFactory:
    """Stands in for the store until start-up has opened and migrated it.

    Servicers must be registered before the server starts, but the store opens
    after the port is bound (so health can answer NOT_SERVING meanwhile). The
    interceptor answers UNAVAILABLE until then, so no call reaches this early.
    """

    def __init__(self) -> None:
        self.target: UnitOfWorkFactory | None = None

    def __call__(self, *, account: int | None = None, readonly: bool = False) -> Transaction:
        if self.target is None:
            raise RuntimeError("the store is not open yet")
        return self.target(account=account, readonly=readonly)


class EventLoopThread:
    """An asyncio event loop running on a daemon thread of its own; ``run``
    submits a coroutine to it from any other thread and waits for its result."""

    def __init__(self, name: str, kind: str = "asyncio") -> None:
        """``kind``: "uvloop" or "asyncio" (see loops.py)."""
        self.loop = loops.new_event_loop(kind)
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def spawn(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Run ``coro`` on the loop without waiting for it."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


class Server:
    """The process's gRPC server. ``start()`` binds and opens the store; ``stop()`` drains.

    Its methods are called from ordinary threads; grpc's server lives on the
    event loop of ``self.loop`` and is reached through it."""

    def __init__(self, config: Config, worker: WorkerSlot | None = None) -> None:
        """``worker``: this process is one of ``serve --processes`` (see supervisor.py)."""
        self.config = config
        self.worker = worker
        # health.aio is the module's public asyncio servicer; the stubs omit it.
        self.health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self.app: App | None = None
        self._stopped = Stop()
        self._ready = threading.Event()
        # Set once the store is open: it follows the store's change feed.
        self._follower: background.IndexFollower | None = None
        self._index_seen = 0
        self._sibling_lock = threading.Lock()
        self._uows = DeferredUnitOfWorkFactory()
        self._threads: list[threading.Thread] = []
        self._delivery: concurrent.futures.Future[None] | None = None
        #: The index's versions when its checkpoint was last written (or read as it is).
        self._checkpoint_versions: dict[int, int] | None = None
        self._checkpoint_thread: threading.Thread | None = None
        self._sink: concurrent.futures.Future[None] | None = None
        self.index = AccountFences()
        set_kernel_threads(config.fence_kernel_threads())
        self.keys = KeyRing(config.api_key_hashes)
        # Punches and live positions share commits under load; the committer
        # reaches the store only once it is open. The index publishes the
        # changes of a batch's admin writes together (AccountFences.batched).
        self._committer = GroupCommitter(self._uows, commit_lock=self.index.batched)
        self.wakeup = Wakeup()
        # Event streams per key, over both APIs.
        self._streams = StreamSlots(config.max_streams_per_key)
        # Moves when a webhook subscription is created, changed, replayed or
        # deleted here: the deliverer takes it up at once, not at its next poll.
        self._subscriptions = Wakeup()
        # Plain (blocking) handlers run here; see ServiceInterceptor.
        self._executor = ThreadPoolExecutor(
            max_workers=config.max_workers, thread_name_prefix="rpc"
        )
        tracing.start()  # this process's exporter, when an OTLP endpoint is configured
        self._loop_kind = loops.resolve(config.event_loop)
        self.loop = EventLoopThread("grpc-loop", self._loop_kind)
        # grpc's asyncio objects belong to the loop they are made on.
        self._grpc, self.port = self.loop.run(self._make_server())
        # A lone server serves its own metrics listener; with several
        # processes the supervisor serves it for all of them.
        self._stop_metrics = None
        self.http: HttpServer | None = None
        try:
            if self.port == 0:
                raise CannotListen(f"cannot listen for gRPC on {config.listen}")
            if config.metrics_listen and worker is None:
                self._stop_metrics = metrics_listener(config.metrics_listen)
            http_sock = bind(config.http_listen, worker is not None) if config.http_listen else None
        except CannotListen:
            if self._stop_metrics is not None:
                self._stop_metrics()
            self.loop.close()
            self._committer.close()
            raise
        if http_sock is not None:
            self.http = HttpServer(
                self._http_app(),
                http_sock,
                config.tls_cert,
                config.tls_key,
                config.tls_client_ca,
                config.receive_timeout_seconds,
            )

    def _http_app(self) -> Any:
        due = None
        if self.worker is not None:
            siblings, catch_up = self._siblings_changed, self._catch_up_with_siblings
            due = lambda: catch_up if siblings() else None  # noqa: E731
        return tracing.asgi(
            create_app(
                HttpDeps(
                    uows=self._uows,
                    fences=self.index,
                    clock=SystemClock(),
                    submit=self._committer.submit,
                    commit=self._committer.run,
                    keys=self.keys,
                    ready=self._ready,
                    catch_up=due or (lambda: None),
                    wakeup=self.wakeup,
                    stopping=self._stopped,
                    max_body_bytes=self.config.max_message_bytes,
                    webhook_guard=resolving_guard(self.config.webhook_allow_private),
                    allow_origins=self.config.http_allow_origins,
                    streams=self._streams,
                )
            )
        )

    async def _make_server(self) -> tuple[grpc.aio.Server, int]:
        config = self.config
        interceptor = ServiceInterceptor(
            self.keys,
            self._ready,
            self._executor,
            limits=Limits(
                unary=config.max_workers * 8,
                receive_s=config.receive_timeout_seconds,
            ),
            catch_up=(
                None
                if self.worker is None
                else CatchUp(self._siblings_changed, self._catch_up_with_siblings)
            ),
            worker=None if self.worker is None else self.worker.number,
            streams=self._streams,
            methods=_served_methods(),
        )
        server = grpc.aio.server(
            # The tracing interceptor outermost: its span covers the whole call.
            interceptors=[*tracing.grpc_interceptors(), interceptor],
            # No maximum_concurrent_rpcs: grpc counts a call from its headers
            # on, so callers without a key could hold every slot by never
            # sending a message. The interceptor's Limits count only calls
            # that are authenticated and have their message.
            options=[
                ("grpc.max_receive_message_length", config.max_message_bytes),
                ("grpc.max_send_message_length", config.max_message_bytes),
                # Workers share the port; a lone server must not share it by accident.
                ("grpc.so_reuseport", 0 if self.worker is None else 1),
                # Streams one connection may open at once, and what becomes of
                # connections that idle or whose peer vanished.
                ("grpc.max_concurrent_streams", 256),
                ("grpc.max_connection_idle_ms", 15 * 60_000),
                ("grpc.keepalive_time_ms", 60_000),
                ("grpc.keepalive_timeout_ms", 20_000),
                ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
                ("grpc.keepalive_permit_without_calls", 1),
                # A connection that has not sent HTTP/2's settings (or
                # finished TLS) by the receive limit is closed, as HTTP's
                # are: grpc's default held such a connection for 60 s.
                ("grpc.server_handshake_timeout_ms", int(config.receive_timeout_seconds * 1000)),
            ],
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        add_services(
            server,
            Services(
                self._uows,
                self.index,
                SystemClock(),
                self._committer.submit,
                self.wakeup,
                self._stopped,
                config.max_clock_skew_seconds,
                resolving_guard(config.webhook_allow_private),
                self._committer.run,
            ),
        )
        return server, _bind(server, config)

    async def _set_health(self, status: int) -> None:
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, status)

    def start(self, stop: threading.Event | None = None) -> None:
        """Listen at once (health says NOT_SERVING), then open and migrate the
        store; ``stop`` set while another process migrates it ends the wait
        with :class:`StoppedWaiting`."""
        self.loop.run(self._grpc.start())
        if self.http is not None:
            self.http.start(self.loop.loop)  # answers 503 until ready
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
            self.config,
            self.index,
            on_events=on_events,
            on_index_changes=on_index_changes,
            on_subscriptions=self._subscriptions.notify,
            stop=stop,
        )
        self._uows.target = self.app.uows
        self.keys.refresh(self.app.uows)
        if not self.keys.count():
            log.warning(
                "no API key: create one with 'geopunch keys create', or give bootstrap keys "
                "in GEOPUNCH_API_KEYS_FILE or GEOPUNCH_API_KEYS"
            )
        self._follower = background.IndexFollower(
            self._uows,
            self.index,
            self.app.index_cursor,
            self.config.index_poll_seconds,
            self._stopped,
            prune=self._housekeeping,
        )
        self._ready.set()
        self.loop.run(self._set_health(health_pb2.HealthCheckResponse.SERVING))
        log.info("serving")
        if self._writes_checkpoint:
            if self.app.index_as_saved:
                self._checkpoint_versions = self.index.versions()
            cursor = self.app.index_cursor
            self._checkpoint_thread = background.start(
                "index-checkpoint", lambda: self._checkpoints(cursor)
            )
        self._threads.append(background.start("index-follow", self._follower.run))
        watcher = background.StoreWatcher(
            self._uows,
            self.keys,
            self.wakeup,
            self.app.event_cursor,
            self.config.index_poll_seconds,
            self._stopped,
        )
        self._threads.append(background.start("store-watch", watcher.run))
        self.index.on_miss = self._follower.catch_up
        if self.app.engine.dialect.name == "postgresql":
            follower = self._follower

            def poke(kinds: str) -> None:
                if notify.INDEX in kinds:
                    follower.poke()
                if notify.KEYS in kinds:
                    watcher.poke_keys()
                elif notify.EVENTS in kinds:
                    watcher.poke()

            listener = lambda: notify.listen(self.app.engine, poke, self._stopped)  # noqa: E731
            self._threads.append(background.start("store-listen", listener))
        if self.worker is not None:
            relay = background.EventRelay(self.worker.generations, self.wakeup, self._stopped)
            self._threads.append(background.start("event-relay", relay.run))
        gauges = background.IndexGauges(self.index, self._stopped)
        self._threads.append(background.start("index-gauges", gauges.run))
        purges = (
            ("idempotency keys", purge_idempotency_keys, self.config.idempotency_days),
            ("events", purge_events, self.config.event_retention_days),
            ("webhook attempts", purge_attempts, self.config.webhook_attempts_days),
        )
        self._start_delivery()
        for what, purge, days in purges:
            if days > 0 and self._housekeeping:
                purger = background.Purger(what, purge, self._uows, days * 86400, self._stopped)
                self._threads.append(background.start(f"{what} purge", purger.run))

    def start_heartbeat(self, systemd: Notifier | None = None) -> None:
        """Once serving, tell whoever watches this process that its event
        loop runs: a worker its supervisor (every second), a service its
        systemd watchdog (twice per watchdog period). Each stops at the
        drain, which has a deadline of its own."""
        if self.worker is not None:
            self.loop.spawn(self._every(HEARTBEAT_S, self.worker.beat))
        if systemd is not None and systemd.watchdog_s:
            self.loop.spawn(self._every(systemd.watchdog_s / 2, systemd.alive))

    async def _every(self, seconds: float, beat: Callable[[], None]) -> None:
        while True:
            beat()
            if await self._stopped.sleep(seconds):
                return

    def _start_delivery(self) -> None:
        """Webhook deliveries (and the JetStream sink), on an event loop of
        their own: a slow receiver or broker never delays a call."""
        config = self.config
        self._delivery_loop = EventLoopThread("deliveries", self._loop_kind)

        def deliverer() -> Deliverer:  # a fresh one (and HTTP client) on each restart
            return Deliverer(
                self._uows,
                HttpPoster(
                    config.webhook_timeout_seconds,
                    config.webhook_allow_private,
                    f"geopunch/{__version__}",
                ),
                self.wakeup,
                self._stopped,
                DeliverySettings(
                    retry_window_s=config.webhook_retry_hours * 3600,
                    lease_s=config.webhook_lease_seconds,
                ),
                changes=self._subscriptions,
            )

        self._delivery = self._delivery_loop.spawn(
            keep_running(lambda: deliverer().run(), self._stopped, "webhooks")
        )
        nats_url = config.nats_url
        if nats_url:
            # Imported only when configured: the NATS client (and aiohttp,
            # which it imports when installed) were 0.16 s of every server's start.
            from geopunch.adapters.nats_sink import JetStreamPublisher

            def sink() -> SinkPublisher:
                return SinkPublisher(
                    "nats",
                    self._uows,
                    JetStreamPublisher(nats_url, config.nats_stream, config.nats_subject_prefix),
                    self.wakeup,
                    self._stopped,
                    config.nats_subject_prefix,
                    config.webhook_lease_seconds,
                )

            self._sink = self._delivery_loop.spawn(
                keep_running(lambda: sink().run(), self._stopped, "sink")
            )

    @property
    def _writes_checkpoint(self) -> bool:
        """One process of several writes the fence index's checkpoint."""
        return self.app is not None and self.app.checkpoint is not None and self._housekeeping

    def _checkpoints(self, cursor: int) -> None:
        """Save the fence index now unless it is what the checkpoint holds,
        then hourly when it changed: the feed keeps a day of changes, so a
        killed process's last checkpoint can still be brought up to date."""
        if self.index.versions() != self._checkpoint_versions:
            self._save_checkpoint(cursor)
        while not self._stopped.wait(background.HOUSEKEEPING_EVERY_S):
            follower = self._follower
            if follower is not None and self.index.versions() != self._checkpoint_versions:
                self._save_checkpoint(follower.cursor)

    def _save_checkpoint(self, cursor: int) -> None:
        assert self.app is not None and self.app.checkpoint is not None
        if not self.index.totals()[1]:  # no fences: reading the rows is as quick
            return
        try:
            # The versions of what was written: saving compacts, which makes a new one.
            saved = save_checkpoint(self._uows, self.index, self.app.checkpoint, cursor)
            if saved is not None:
                self._checkpoint_versions = saved
        except Exception:  # the next start reads the rows instead
            log.exception("writing the fence index checkpoint failed")

    @property
    def _housekeeping(self) -> bool:
        """Purging and pruning: a lone server does them, and one worker of several."""
        return self.worker is None or self.worker.runs_housekeeping

    def _siblings_changed(self) -> bool:
        """Whether a sibling worker changed a time clock or its fences since we
        last looked: one read of shared memory."""
        assert self.worker is not None
        return self.worker.generations.index != self._index_seen

    def _catch_up_with_siblings(self) -> None:
        """Before a worker's call: if a sibling worker changed a time clock or
        its fences since we last looked (one read of shared memory), apply it
        first, so that every call sees every change acknowledged before it."""
        assert self.worker is not None and self._follower is not None
        seen = self.worker.generations.index
        if seen == self._index_seen:
            return
        with self._sibling_lock:  # one caller reads the feed; the others then find it read
            if seen == self._index_seen:
                return
            self._follower.catch_up()
            self._index_seen = seen  # a bump while reading: the next call looks again

    def stop(self, grace: float | None = None) -> None:
        """Refuse new calls, let in-flight ones finish within ``grace`` seconds, close the store."""
        if self._stopped.is_set():
            return
        self._stopped.set()  # event streams end at their next wake-up
        self.wakeup.notify()
        self.loop.run(self.health.enter_graceful_shutdown())
        if self.http is not None:
            self.http.stop(self.config.grace_seconds if grace is None else grace)
        self.loop.run(self._grpc.stop(self.config.grace_seconds if grace is None else grace))
        self._committer.close()  # every call has answered: nothing is left to queue
        if self._delivery is not None:
            # Progress stored and leases given back, for the next process;
            # one grace period for both.
            running = [f for f in (self._delivery, self._sink) if f is not None]
            _, late = concurrent.futures.wait(running, self.config.grace_seconds)
            for f in running:
                if f in late or f.exception() is not None:
                    log.error(
                        "event delivery did not stop cleanly",
                        exc_info=None if f in late else f.exception(),
                    )
            self._delivery_loop.close()
        self._executor.shutdown()
        for thread in self._threads:
            thread.join(self.config.grace_seconds)
        if self._checkpoint_thread is not None:
            self._checkpoint_thread.join()
        if self._writes_checkpoint and self._follower is not None:
            # What other processes committed since the follower last looked
            # (a sibling worker's calls, say) goes into the file too.
            try:
                self._follower.catch_up()
            except Exception:  # the feed's replay at the next start covers it
                log.exception("reading the index changes before the last checkpoint failed")
            if self.index.versions() != self._checkpoint_versions:
                # The follower has stopped: the index holds every change up to its cursor.
                self._save_checkpoint(self._follower.cursor)
        if self.app is not None:
            self.app.engine.dispose()
        self.loop.close()
        if self._stop_metrics is not None:
            self._stop_metrics()
        tracing.stop()
        log.info("stopped")


def _bind(server: grpc.aio.Server, config: Config) -> int:
    """Listen on ``config.listen``, with TLS when a certificate is configured;
    0 when the address cannot be bound (grpc raises RuntimeError for it)."""
    try:
        return _add_port(server, config)
    except RuntimeError:
        return 0


def _add_port(server: grpc.aio.Server, config: Config) -> int:
    if not config.tls_cert:
        return server.add_insecure_port(config.listen)
    with open(config.tls_cert, "rb") as f:
        chain = f.read()
    with open(config.tls_key, "rb") as f:
        key = f.read()
    client_ca = None
    if config.tls_client_ca:
        with open(config.tls_client_ca, "rb") as f:
            client_ca = f.read()
    credentials = grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )
    return server.add_secure_port(config.listen, credentials)


def _served_methods() -> tuple[str, ...]:
    """The full name of every method the server answers."""
    pool = descriptor_pool.Default()
    services = (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME)
    return tuple(
        f"/{service.full_name}/{method.name}"
        for service in map(pool.FindServiceByName, services)
        for method in service.methods
    )


def serve(
    config: Config,
    ready: Callable[[int, str], None] | None = None,
    worker: WorkerSlot | None = None,
) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully."""
    # The modules imported by now (numpy, numba, SQLAlchemy, FastAPI, grpc)
    # live as long as the process: out of the collector's generations before
    # the start, its collections walk only what the start makes rather than
    # those hundreds of thousands of objects again (bench/README.md). A
    # worker's were frozen in its fork server: geopunch.entrypoints.preload.
    gc.freeze()
    log.info("open files limit", extra={"fields": {"limit": raise_open_files_limit()}})
    # A worker is not the service: its supervisor speaks to systemd.
    systemd = Notifier.from_env() if worker is None else None
    server = Server(config, worker)
    stop_requested = stop_on_signals()
    try:
        server.start(stop_requested)
    except StoppedWaiting:
        log.info("stopped before the store was ready")
        server.stop()
        return
    except BaseException:
        # The listeners and their threads were up before the store failed
        # (a newer release's schema, a store that cannot be reached): left
        # running into the interpreter's exit, grpc's threads crashed it
        # there now and then (SIGSEGV) instead of the exit status the
        # command line gives.
        server.stop(grace=0)
        raise
    # What start-up built (modules, the fence index, compiled kernels, the
    # engine) lives as long as the process: moved out of the collector's
    # generations, a full collection under load no longer walks it. Under 64
    # punches in flight this took punch p99 from 120-170 ms to ~100 ms.
    gc.collect()
    gc.freeze()
    if ready is not None:
        ready(server.port, server.http.address if server.http is not None else "")
    if systemd is not None:
        systemd.ready()
    # Only now: the collection above holds the interpreter for as long as a
    # large index takes to walk, which a short timeout would take for a hang.
    server.start_heartbeat(systemd)
    # Wait in slices: a signal taken by another thread only sets a flag, and
    # the main thread must wake up to run the handler.
    while not stop_requested.wait(0.25):
        pass
    # A drain (or interpreter exit) that hangs must not keep the process
    # alive: past the grace period plus a margin, every thread's stack goes to
    # the log and the process exits with status 1. Left armed on purpose: it
    # also covers joining threads at exit, and is disarmed at finalization.
    faulthandler.dump_traceback_later(config.grace_seconds + STOP_MARGIN_S, exit=True)
    if systemd is not None:
        systemd.stopping()
    server.stop()
