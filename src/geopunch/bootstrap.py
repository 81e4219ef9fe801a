"""The composition root: wires a Config into the store, the fence engine, the
use cases' dependencies and the servers' services. Entry points call it;
nothing below imports it."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from sqlalchemy import Engine

from geopunch.adapters.db.notify import PROBE_S, notifications_arrive
from geopunch.adapters.db.store import (
    SqlUnitOfWorkFactory,
    StoreUnusable,
    fence_snapshot_reader,
    make_engine,
    migrate,
    sqlite_file,
    statistics_off,
)
from geopunch.adapters.grpc.locations import LocationServicer
from geopunch.adapters.grpc.scheduling import SchedulerServicer
from geopunch.adapters.grpc.servicers import AdminServicer, GeofenceServicer
from geopunch.adapters.grpc.timeclock import TimeClockServicer
from geopunch.adapters.grpc.webhooks import WebhookServicer
from geopunch.adapters.wakeup import Wakeup
from geopunch.config import Config
from geopunch.domain.locations import DEFAULT_MAX_SKEW_S
from geopunch.domain.ports import (
    AsyncTransactionRunner,
    Clock,
    TransactionRunner,
    UnitOfWorkFactory,
)
from geopunch.domain.rules import known_timezones
from geopunch.geo.engine import AccountFences, warm_up
from geopunch.service.index_checkpoint import load_index
from geopunch.service.webhooks import UrlGuard
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
    webhooks_pb2,
    webhooks_pb2_grpc,
)

SERVICE_NAMES = (
    admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
    geofences_pb2.DESCRIPTOR.services_by_name["GeofenceService"].full_name,
    location_pb2.DESCRIPTOR.services_by_name["LocationService"].full_name,
    scheduler_pb2.DESCRIPTOR.services_by_name["SchedulerService"].full_name,
    timeclock_pb2.DESCRIPTOR.services_by_name["TimeClockService"].full_name,
    webhooks_pb2.DESCRIPTOR.services_by_name["WebhookService"].full_name,
)

log = logging.getLogger("geopunch")

#: glibc's mallopt parameters: the size from which blocks are mapped alone,
#: and how much free memory at the top of a heap stays with it.
_M_MMAP_THRESHOLD = -3
_M_TRIM_THRESHOLD = -1

#: Blocks from this size up get a mapping of their own. Above what one call
#: allocates and frees several times over: a listed page of 10,000 lines is
#: 1.5 MiB (the database's joined value, the driver's copy, the answer,
#: grpc's copy). Mapped alone, each copy is a fresh mapping whose pages
#: fault in one at a time: at 1 MiB, 1,400 faults and a quarter of the
#: server's CPU a first page (bench/README.md). Below the columns of an index
#: build of a large store: a million fences' float64 column is 8 MB, an
#: int32 one 4 MB.
MAP_ALONE_FROM = 3 << 20

#: Free memory a heap keeps at its top rather than hands back: room for the
#: copies of a page to come back to the heap they were freed to.
#: glibc gives threads a few heaps (its arenas); this bounds what each keeps.
KEEP_FREE = 8 << 20


def _warm_up() -> None:
    """What the first calls would otherwise pay for: the kernels' compilation
    and the list of known time zones."""
    warm_up()
    known_timezones()


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:  # pragma: no cover - not glibc
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def map_large_blocks_alone() -> None:
    """Give every block of ``MAP_ALONE_FROM`` or more a mapping of its own,
    freed to the system when freed. glibc raises that threshold as large
    blocks come and go, so after the first index build the next builds'
    temporary arrays land in the heap, where their memory stays with the
    process: measured on a million fences, 433 instead of 113 MiB more than
    the index itself. Fixing the threshold also fixes the trim threshold,
    which is set to ``KEEP_FREE``."""
    libc = _libc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, MAP_ALONE_FROM)
        libc.mallopt(_M_TRIM_THRESHOLD, KEEP_FREE)


def release_free_memory() -> None:
    """Hand the heap's free pages back to the system. After a full index
    build the row objects of the store read leave about 60 MiB a million
    fences behind otherwise."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


@dataclass(frozen=True, slots=True)
class App:
    """Everything the servicers need, built once at start-up."""

    engine: Engine
    uows: SqlUnitOfWorkFactory
    index: AccountFences
    #: The index holds every time clock change up to this one (see follow_index_changes).
    index_cursor: int = 0
    #: The newest event when the store opened.
    event_cursor: int = 0
    #: Where the fence index is saved for the next start (None: nowhere).
    checkpoint: Path | None = None
    #: Whether the index is exactly what the checkpoint holds (read from
    #: it at start-up, nothing replayed).
    index_as_saved: bool = False


def build_app(
    config: Config,
    index: AccountFences | None = None,
    on_events: Callable[[], None] | None = None,
    on_index_changes: Callable[[], None] | None = None,
    on_subscriptions: Callable[[], None] | None = None,
    stop: threading.Event | None = None,
) -> App:
    """Open and migrate the store, load the fence index; return the wired application.

    ``on_events`` is called after every commit that appended to the event log,
    ``on_index_changes`` after every commit that changed a time clock or its
    fences, ``on_subscriptions`` after every commit that changed a webhook
    subscription. ``stop`` set while another process migrates the store
    ends the wait with :class:`StoppedWaiting`.
    """
    map_large_blocks_alone()
    engine = make_engine(
        config.database_url,
        pool_size=min(config.max_workers, 32),
        timeout_s=config.store_timeout_seconds,
    )
    try:
        revision = migrate(engine, stop=stop)
        if engine.dialect.name == "postgresql" and not notifications_arrive(engine):
            raise StoreUnusable(
                "a notification sent on one connection to the store did not reach another "
                f"within {PROBE_S:g} s: is a pooler in transaction or statement mode "
                "(PgBouncer's pool_mode) between geopunch and PostgreSQL? geopunch needs a "
                "session a connection: use pool_mode = session, or connect to PostgreSQL directly"
            )
    except BaseException:
        engine.dispose()
        raise
    log.info(
        "store ready",
        extra={"fields": {"dialect": engine.dialect.name, "revision": revision}},
    )
    if off := statistics_off(engine):
        log.warning(
            "PostgreSQL gathers no planner statistics by itself: run ANALYZE after "
            "imports and regularly, or reads slow down as the history grows",
            extra={"fields": {"off": off}},
        )
    uows = SqlUnitOfWorkFactory(
        engine,
        on_events,
        on_index_changes,
        on_subscriptions,
        timeout_s=config.store_timeout_seconds,
    )
    index = index if index is not None else AccountFences()
    started = time.perf_counter()
    checkpoint = checkpoint_path(config)
    loaded = load_index(uows, index, checkpoint, fence_snapshot_reader(engine), meanwhile=_warm_up)
    release_free_memory()
    clocks, fences = index.totals()
    log.info(
        "fence index ready",
        extra={
            "fields": {
                "accounts": loaded.accounts,
                "clocks": clocks,
                "fences": fences,
                "from": loaded.source,
                "ms": round((time.perf_counter() - started) * 1000, 1),
            }
        },
    )
    return App(
        engine=engine,
        uows=uows,
        index=index,
        index_cursor=loaded.cursor,
        event_cursor=loaded.newest_event,
        checkpoint=checkpoint,
        index_as_saved=loaded.as_saved,
    )


def checkpoint_path(config: Config) -> Path | None:
    """Where the fence index is saved: the setting, or with "auto" beside a
    SQLite database file (``<file>.fence-index``). A PostgreSQL store is
    shared by replicas on other machines: each names its own file, or none."""
    setting = config.index_checkpoint
    if setting == "off":
        return None
    if setting != "auto":
        return Path(setting)
    database = sqlite_file(config.database_url)
    return Path(f"{database}.fence-index") if database is not None else None


class SystemClock:
    def now(self) -> float:
        return time.time()


@dataclass(frozen=True, slots=True)
class Services:
    """What the protocol adapters are built from."""

    uows: UnitOfWorkFactory
    index: AccountFences
    clock: Clock
    #: Commits punches and live positions, batched (the group committer's ``submit``).
    submit: AsyncTransactionRunner
    wakeup: Wakeup
    stopping: threading.Event
    #: How far ahead of this server's clock a location sample may be.
    max_skew_s: float = DEFAULT_MAX_SKEW_S
    #: Checks webhook URLs' hosts (None: private addresses are allowed).
    webhook_guard: UrlGuard = None
    #: Commits admin writes, batched (the group committer's ``run``); None: one
    #: transaction a call.
    commit: TransactionRunner | None = None


def add_services(server: grpc.aio.Server, s: Services) -> None:
    """Register geopunch's gRPC services on ``server``."""
    admin_pb2_grpc.add_AdminServiceServicer_to_server(
        AdminServicer(s.uows, s.clock, s.index, s.commit), server
    )
    geofences_pb2_grpc.add_GeofenceServiceServicer_to_server(
        GeofenceServicer(s.uows, s.index, s.commit), server
    )
    location_pb2_grpc.add_LocationServiceServicer_to_server(
        LocationServicer(s.index, s.uows, s.clock, s.submit, s.wakeup, s.stopping, s.max_skew_s),
        server,
    )
    scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server(
        SchedulerServicer(s.uows, s.clock), server
    )
    timeclock_pb2_grpc.add_TimeClockServiceServicer_to_server(
        TimeClockServicer(s.uows, s.index, s.clock, s.submit), server
    )
    webhooks_pb2_grpc.add_WebhookServiceServicer_to_server(
        WebhookServicer(s.uows, s.webhook_guard), server
    )
