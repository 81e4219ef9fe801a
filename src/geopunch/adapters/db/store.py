"""Engine set-up, schema migration and the SQL unit of work."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import AbstractContextManager
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url

from geopunch.adapters.db.prepared import driver, savepoint
from geopunch.adapters.db.repositories import (
    SqlActivityRepository,
    SqlGeofenceRepository,
    SqlIdempotencyRepository,
    SqlTimeClockRepository,
)
from geopunch.adapters.db.scheduling import (
    SqlEventRepository,
    SqlLocationRepository,
    SqlSchedulerRepository,
    SqlShiftRepository,
)
from geopunch.domain.ports import UnitOfWork, UnitOfWorkFactory

T = TypeVar("T")

MIGRATIONS = Path(__file__).with_name("migrations")


def make_engine(url: str, *, pool_size: int = 8) -> Engine:
    """An Engine for ``url``; SQLite files get WAL, synchronous=FULL and foreign keys.

    SQLite's own transaction handling in the pysqlite driver is switched off so
    that each unit of work opens with an explicit ``BEGIN``: ``IMMEDIATE`` for
    writers (they queue on the write lock up front instead of failing to upgrade
    a read lock later) and ``DEFERRED`` for readers, who run beside a writer in
    WAL mode.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)
    if parsed.database in (None, "", ":memory:"):
        raise ValueError("use a SQLite file: an in-memory database cannot be shared or survive")
    Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        connect_args={"timeout": 30, "check_same_thread": False},
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "IMMEDIATE")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


def _alembic_config(conn: Connection) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = conn
    return cfg


def migrate(engine: Engine) -> str:
    """Bring the schema forward to the newest revision; return that revision."""
    with engine.connect() as conn:
        command.upgrade(_alembic_config(conn), "head")
        conn.commit()
    return current_revision(engine)


def current_revision(engine: Engine) -> str:
    with engine.connect() as conn:
        rev = MigrationContext.configure(conn).get_current_revision()
        conn.rollback()
    return rev or ""


def head_revision() -> str:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    head = ScriptDirectory.from_config(cfg).get_current_head()
    return head or ""


class SqlUnitOfWork:
    """One database transaction holding the repositories that share it."""

    time_clocks: SqlTimeClockRepository
    geofences: SqlGeofenceRepository
    activities: SqlActivityRepository
    idempotency: SqlIdempotencyRepository
    schedulers: SqlSchedulerRepository
    shifts: SqlShiftRepository
    events: SqlEventRepository
    locations: SqlLocationRepository

    def __init__(
        self,
        engine: Engine,
        *,
        readonly: bool = False,
        write_lock: threading.Lock | None = None,
        on_events: Callable[[], None] | None = None,
    ) -> None:
        self._engine = engine
        self._on_events = on_events
        self._readonly = readonly
        self._write_lock = None if readonly else write_lock
        self._conn: Connection | None = None

    def __enter__(self) -> Self:
        if self._write_lock is not None:
            self._write_lock.acquire()
        try:
            return self._open()
        except BaseException:
            if self._write_lock is not None:
                self._write_lock.release()
            raise

    def _open(self) -> Self:
        conn = self._engine.connect()
        if self._readonly:
            conn = conn.execution_options(sqlite_begin="DEFERRED")
        conn.begin()
        self._conn = conn
        now = int(time.time())
        self.time_clocks = SqlTimeClockRepository(conn, now)
        self.geofences = SqlGeofenceRepository(conn, now)
        self.activities = SqlActivityRepository(conn)
        self.idempotency = SqlIdempotencyRepository(conn, now)
        self.schedulers = SqlSchedulerRepository(conn, now)
        self.shifts = SqlShiftRepository(conn)
        self.events = SqlEventRepository(conn)
        self.locations = SqlLocationRepository(conn)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._conn is not None
        try:
            if self._conn.in_transaction():
                self._conn.rollback()
        finally:
            self._conn.close()
            self._conn = None
            if self._write_lock is not None:
                self._write_lock.release()

    def commit(self) -> None:
        assert self._conn is not None
        self._conn.commit()
        if self.events.appended and self._on_events is not None:
            self.events.appended = False
            self._on_events()

    def savepoint(self) -> AbstractContextManager[object]:
        assert self._conn is not None
        return savepoint(self._conn)

    def changes(self) -> int | None:
        assert self._conn is not None
        if self._conn.dialect.name != "sqlite":
            return None
        total: int = driver(self._conn).total_changes  # sqlite3_total_changes()
        return total


class SqlUnitOfWorkFactory:
    """Units of work on one engine.

    SQLite has one writer at a time; writers of this process queue on a Python
    lock before ``BEGIN IMMEDIATE`` instead of on SQLite's busy handler, which
    sleeps in growing steps (up to 100 ms) and wrecks tail latency under load.
    """

    def __init__(self, engine: Engine, on_events: Callable[[], None] | None = None) -> None:
        self.engine = engine
        self._write_lock = threading.Lock() if engine.dialect.name == "sqlite" else None
        self._on_events = on_events

    def __call__(self, *, readonly: bool = False) -> SqlUnitOfWork:
        return SqlUnitOfWork(
            self.engine, readonly=readonly, write_lock=self._write_lock, on_events=self._on_events
        )


class GroupCommitter:
    """Commits the work of many concurrent callers with one transaction and one fsync.

    Callers hand their work to a single writer thread, which takes whatever
    has queued up (at most ``max_batch``), runs each piece so that a failing
    one leaves no writes (see ``_apply``), commits once, and only then answers
    every caller. Under load
    the cost of a durable commit is shared; alone, a call pays what it would
    have paid anyway. Implements :class:`geopunch.domain.ports.TransactionRunner`.
    """

    def __init__(self, uows: UnitOfWorkFactory, max_batch: int = 128) -> None:
        self._uows = uows
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[tuple[Callable[[Any], Any], Future[Any]] | None] = (
            queue.SimpleQueue()
        )
        self._thread = threading.Thread(target=self._loop, name="group-commit", daemon=True)
        self._thread.start()

    def __call__(self, work: Callable[[UnitOfWork], T]) -> T:
        future: Future[T] = Future()
        self._queue.put((work, future))
        return future.result()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(30)

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            stop = False
            while len(batch) < self._max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            self._run(batch)
            if stop:
                return

    def _run(self, batch: list[tuple[Callable[[Any], Any], Future[Any]]]) -> None:
        done: list[tuple[Future[Any], Any, BaseException | None]] | None = None
        try:
            for guarded in (False, True):
                with self._uows() as uow:
                    done = self._apply(uow, batch, guarded)
                    if done is not None:
                        uow.commit()
                        break
        except Exception as exc:  # nothing of this batch is durable
            failed = {id(f) for f, _, e in done or () if e is not None}
            for _, future in batch:
                if id(future) not in failed:
                    future.set_exception(exc)
            for future, _, err in done or ():
                if err is not None:
                    future.set_exception(err)
            return
        assert done is not None
        for future, result, err in done:
            if err is None:
                future.set_result(result)
            else:
                future.set_exception(err)

    @staticmethod
    def _apply(
        uow: UnitOfWork, batch: list[tuple[Callable[[Any], Any], Future[Any]]], guarded: bool
    ) -> list[tuple[Future[Any], Any, BaseException | None]] | None:
        """Run every piece of ``batch`` in ``uow``; None means "start over guarded".

        A savepoint per piece costs two statements, and on SQLite every
        statement hands the GIL to the RPC threads and waits to get it back.
        Where the store counts changed rows, pieces run bare: one that fails
        having changed nothing leaves nothing to undo (most refusals happen
        before any write); one that fails after writing sends the whole batch
        round again with a savepoint per piece.
        """
        done: list[tuple[Future[Any], Any, BaseException | None]] = []
        for work, future in batch:
            before = None if guarded else uow.changes()
            try:
                if before is None:
                    with uow.savepoint():
                        result = work(uow)
                else:
                    result = work(uow)
                done.append((future, result, None))
            except Exception as exc:  # this caller's failure only
                if before is not None and uow.changes() != before:
                    return None
                done.append((future, None, exc))
        return done
