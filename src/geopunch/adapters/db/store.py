"""Engine set-up, schema migration and the SQL unit of work."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import fcntl
import logging
import math
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar

import orjson
from sqlalchemy import Connection, Engine, create_engine, event, inspect
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, make_url

from geopunch import metrics, tracing
from geopunch.adapters.db.accounts import SqlAccountRepository, SqlApiKeyRepository
from geopunch.adapters.db.faults import (
    WriterLockTimeout,
    as_conflict,
    as_unavailable,
    transient,
    unavailable_reason,
)
from geopunch.adapters.db.fence_rows import ArrowFenceReader
from geopunch.adapters.db.notify import EVENTS, INDEX, KEYS, notify
from geopunch.adapters.db.prepared import driver, integrity_error, savepoint, together
from geopunch.adapters.db.repositories import (
    SqlActivityRepository,
    SqlGeofenceRepository,
    SqlIdempotencyRepository,
    SqlIndexChangeRepository,
    SqlTimeClockRepository,
    noted_unwritten,
    write_noted,
)
from geopunch.adapters.db.scheduling import SqlSchedulerRepository, SqlShiftRepository
from geopunch.adapters.db.tracking import (
    SqlEventRepository,
    SqlLocationRepository,
    appended_unwritten,
    write_appended,
)
from geopunch.adapters.db.webhooks import SqlWebhookRepository
from geopunch.domain.errors import ConcurrentChange
from geopunch.domain.events import json_bytes
from geopunch.domain.ports import FenceSnapshotReader, UnitOfWork, UnitOfWorkFactory

log = logging.getLogger("geopunch.store")

T = TypeVar("T")

MIGRATIONS = Path(__file__).with_name("migrations")


def _json_text(value: Any) -> str:
    """JSON columns (event payloads above all) through orjson rather than the
    standard library's encoder: the payloads of 1,000 created time activities
    were a tenth of CreateTimeActivities' time (bench/README.md)."""
    return json_bytes(value).decode()


def sqlite_file(url: str | URL) -> str | None:
    """The file a SQLite URL names plainly; None for other stores, a
    database in memory or a ``file:`` URI."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    if parsed.database.startswith("file:") or parsed.query.get("mode") == "memory":
        return None
    return parsed.database


def fence_snapshot_reader(engine: Engine) -> FenceSnapshotReader | None:
    """The reader of whole accounts' fences beside the unit of work (ADBC in
    a child process) for a SQLite file or PostgreSQL; None for other stores:
    read them in the unit of work (``enabled_rows``)."""
    if engine.dialect.name == "postgresql" or sqlite_file(engine.url) is not None:
        return ArrowFenceReader(engine)
    return None


#: Each SQLite connection's page cache, in KiB (SQLite's default is 2 MiB).
#: A listed page of 10,000 activities walks about 2.5 MiB of the index that
#: holds their lines, and a walk longer than the cache evicts every page it
#: reads before it is read again: 18 % of the server's CPU a first page went
#: to reading the same pages back from the file (bench/README.md). The cache
#: grows only as pages are read.
SQLITE_CACHE_KIB = 16 << 10

#: What SQLite may hold in the whole process before its caches give pages
#: back (a soft limit, process-wide): a pool of 64 connections could
#: otherwise keep 16 MiB each.
SQLITE_SOFT_HEAP_LIMIT = 128 << 20


#: How long the store may keep a call waiting, by default: see make_engine.
STORE_TIMEOUT_S = 30.0

#: TCP keepalive on PostgreSQL connections: probes after this many idle
#: seconds, this many seconds apart, this many unanswered before the
#: connection is dropped. A connection held idle (the pool's, the change
#: listener's) then finds out about a vanished server or a cut network
#: within about 25 s, instead of the kernel's two hours.
_KEEPALIVE = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5}
_KEEPALIVE_COUNT = 3

#: A pooled server connection given back less than this long ago is handed
#: out again without a ping: a ping is a round trip, an eighth of a one-read
#: unit of work on PostgreSQL. A server that dropped the connection within
#: the window fails that one unit of work as unreachable, as one that drops
#: it mid-work does. HikariCP's alive-bypass window has the same default.
PING_AFTER_IDLE_S = 0.5

#: In a pool entry's ``info``: when its connection was last given back.
_RETURNED = "geopunch_returned"


def _libpq_limits(parsed: URL, timeout_s: float) -> dict[str, Any]:
    """libpq's parameters that bound a call's wait on the network to about
    ``timeout_s``: the connection attempt, and data left unacknowledged on a
    cut network. Any of them set in the URL's query wins."""
    limits: dict[str, Any] = {
        # libpq takes whole seconds, and treats 1 as 2.
        "connect_timeout": max(2, math.ceil(timeout_s)),
        **_KEEPALIVE,
        "keepalives_count": _KEEPALIVE_COUNT,
        "tcp_user_timeout": int(timeout_s * 1000),
    }
    return {k: v for k, v in limits.items() if k not in parsed.query}


def _session_limits(parsed: URL, timeout_s: float) -> str:
    """The server's side of each session, as one ``SET`` statement a name:
    a statement's limit; a transaction left idle (its client frozen, or cut
    off with the server not told) ended, with its row locks, instead of
    holding up every replica that needs the same rows; and the server's own
    keepalives, which notice a vanished client in about 25 s rather than its
    default two hours. Settings the URL's ``options`` name are left to them.

    Set after connecting, not sent as ``options`` at the start: PgBouncer
    refuses a connection whose start-up ``options`` it does not know."""
    ms = int(timeout_s * 1000)
    options = " ".join(_as_list(parsed.query.get("options", "")))
    server = {
        "statement_timeout": ms,
        "idle_in_transaction_session_timeout": ms,
        "tcp_keepalives_idle": _KEEPALIVE["keepalives_idle"],
        "tcp_keepalives_interval": _KEEPALIVE["keepalives_interval"],
        "tcp_keepalives_count": _KEEPALIVE_COUNT,
    }
    return "; ".join(
        f"SET {name} = {value}" for name, value in server.items() if name not in options
    )


def _as_list(value: str | tuple[str, ...]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else value


def _ping_when_idle(engine: Engine) -> None:
    """Ping a pooled connection on checkout only when it has been idle for
    ``PING_AFTER_IDLE_S`` or more (SQLAlchemy's ``pool_pre_ping`` pings every
    time). A dead one is replaced, and the pool's older connections with it,
    as the pre-ping does: the pool's own disconnect hook."""
    dialect = engine.dialect

    @event.listens_for(engine, "checkin")
    def _returned(_dbapi_conn: Any, record: Any) -> None:
        record.info[_RETURNED] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        returned = record.info.get(_RETURNED)  # none: a connection made just now
        if returned is None or time.monotonic() - returned < PING_AFTER_IDLE_S:
            return
        try:
            dialect.do_ping(dbapi_conn)
        except dialect.loaded_dbapi.Error as exc:
            if not dialect.is_disconnect(exc, dbapi_conn, None):
                raise
            raise sa_exc.InvalidatePoolError(str(exc)) from exc


def make_engine(url: str, *, pool_size: int = 8, timeout_s: float = STORE_TIMEOUT_S) -> Engine:
    """An Engine for ``url``; SQLite files get WAL, synchronous=FULL and foreign keys.

    SQLite's own transaction handling in the pysqlite driver is switched off so
    that each unit of work opens with an explicit ``BEGIN``: ``IMMEDIATE`` for
    writers (they queue on the write lock up front instead of failing to upgrade
    a read lock later) and ``DEFERRED`` for readers, who run beside a writer in
    WAL mode.

    ``timeout_s`` bounds how long the store may keep a call waiting: for a
    connection from the pool, for SQLite's write lock, and on PostgreSQL for
    a connection attempt, a statement (a lock it waits for included) and an
    unanswered network. Past it the work fails as the store being
    unavailable (:mod:`geopunch.adapters.db.faults`), and the caller is told
    to retry, where it would otherwise wait as long as the store does.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        connect_args: dict[str, Any] = {}
        if parsed.get_backend_name() == "postgresql":
            from geopunch.adapters.db.pg_writes import WriteCountingCursor

            connect_args["cursor_factory"] = WriteCountingCursor  # see changes()
            connect_args.update(_libpq_limits(parsed, timeout_s))
        engine = create_engine(
            url,
            connect_args=connect_args,
            pool_size=pool_size,
            max_overflow=pool_size,
            pool_timeout=timeout_s,
            # The connection given back last goes out first: under any load
            # it is within PING_AFTER_IDLE_S; the rest wait at the back, and
            # are pinged when they next go out.
            pool_use_lifo=True,
            json_serializer=_json_text,
            json_deserializer=orjson.loads,
        )
        _ping_when_idle(engine)
        if parsed.get_backend_name() == "postgresql" and (
            limits := _session_limits(parsed, timeout_s)
        ):

            @event.listens_for(engine, "connect")
            def _limit_session(dbapi_conn: Any, _record: Any) -> None:
                dbapi_conn.execute(limits)
                dbapi_conn.commit()  # a SET outside a committed transaction would not last

        return engine
    if parsed.database in (None, "", ":memory:"):
        raise ValueError("use a SQLite file: an in-memory database cannot be shared or survive")
    try:
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreUnusable(
            f"cannot make the folder of the SQLite file {parsed.database}: "
            f"{exc.strerror or exc} ({exc.filename})"
        ) from None
    engine = create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        # The connection used last comes back first, its page cache warm:
        # calls one after another keep reading through one cache.
        pool_use_lifo=True,
        pool_timeout=timeout_s,
        connect_args={"timeout": timeout_s, "check_same_thread": False},
        json_serializer=_json_text,
        json_deserializer=orjson.loads,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={int(timeout_s * 1000)}")
        cur.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
        cur.execute(f"PRAGMA soft_heap_limit={SQLITE_SOFT_HEAP_LIMIT}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "IMMEDIATE")
        driver(conn).execute(f"BEGIN {mode}")  # the driver call: ~25 us less than exec_driver_sql

    return engine


if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig
    from alembic.script import Script

#: The newest revision in migrations/versions (a test holds it to alembic's
#: head). A store already there opens without alembic: loading it and its
#: scripts to find nothing to do was an eighth of an empty server's start-up,
#: and the test suite starts servers by the hundred.
HEAD_REVISION = "0016"


#: Session-scoped advisory lock that gives the processes migrating one
#: PostgreSQL schema turns (keyed by the schema: stores in other schemas of
#: the database migrate at the same time). Session-scoped, since some
#: revisions commit part way: an index built CONCURRENTLY cannot run in a
#: transaction.
_MIGRATION_TURN = (
    "SELECT pg_try_advisory_lock(hashtextextended('geopunch migrate ' || current_schema(), 0))"
)


def _wait_for_migration_turn(conn: Connection, stop: threading.Event) -> None:
    """Take the migration lock, trying again every 0.2 s until ``stop`` is
    set. Not a blocking ``pg_advisory_lock``: a waiting statement holds a
    snapshot, and an index built CONCURRENTLY by the process migrating waits
    for every older snapshot to go, which would be a deadlock."""
    waiting = False
    while not (turn := conn.exec_driver_sql(_MIGRATION_TURN).scalar()):
        if turn is None:  # current_schema() is NULL: no schema of the search_path exists
            raise StoreUnusable(
                "PostgreSQL finds none of the schemas the connection's search_path "
                "names: create the schema, or correct the URL's options"
            )
        conn.commit()
        if not waiting:
            log.info("another process is migrating the store; waiting for it")
            waiting = True
        if stop.wait(0.2):
            raise StoppedWaiting("told to stop while another process was migrating the store")
    conn.commit()


def _alembic_config(conn: Connection) -> AlembicConfig:
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = conn
    return cfg


def migrate(engine: Engine, to: str = HEAD_REVISION, stop: threading.Event | None = None) -> str:
    """Bring the schema to revision ``to``, forward or back (the newest by
    default); return the store's revision. Waiting for another process's
    migration ends with :class:`StoppedWaiting` once ``stop`` is set."""
    if to == HEAD_REVISION and current_revision(engine) == HEAD_REVISION:
        return HEAD_REVISION
    from alembic import command
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        sqlite = conn.dialect.name == "sqlite"
        if sqlite:
            # Revisions that rebuild tables drop and recreate parents of
            # foreign keys; SQLite takes this pragma only outside a transaction.
            # Processes on one file take turns at the writer lock.
            driver(conn).execute("PRAGMA foreign_keys=OFF")
        else:
            # A revision may rebuild a large table, and another replica's
            # may be waited for: longer than a call may wait. The session
            # ends with the migration (see the end), and the settings with it.
            driver(conn).execute("SET statement_timeout = 0")
            driver(conn).execute("SET idle_in_transaction_session_timeout = 0")
            # Replicas started together would each run the same revisions,
            # and all but one fail on what the first created. The first to
            # take this lock migrates; the others wait, then find the
            # revision they wanted.
            _wait_for_migration_turn(conn, stop or threading.Event())
        try:
            before = MigrationContext.configure(conn).get_current_revision()
            cfg = _alembic_config(conn)
            scripts = _revisions(cfg)
            order = [script.revision for script in scripts]
            if before is not None and before not in order:
                raise StoreFromANewerRelease(
                    f"the store is at schema revision {before}, newer than this release's "
                    f"newest ({HEAD_REVISION}): run the release that migrated it (or newer), "
                    "or take the store back to this one's with that release "
                    f"(geopunch migrate --to {HEAD_REVISION})"
                )
            if to not in order:
                raise ValueError(
                    f"no schema revision {to!r}: this release knows {order[0]}..{order[-1]}"
                )
            now = -1 if before is None else order.index(before)
            back = order.index(to) < now
            if back:
                # Refused before anything runs: a revision that rebuilds an
                # index CONCURRENTLY commits the steps before it, so a failure
                # part way down would leave the store between the two.
                for script in scripts[order.index(to) + 1 : now + 1]:
                    reason = getattr(script.module, "IRREVERSIBLE", None)
                    if reason:
                        raise NotImplementedError(f"revision {script.revision}: {reason}")
            if not sqlite:
                conn.commit()  # alembic then keeps its own transaction, as autocommit_block needs
            if back:
                command.downgrade(cfg, to)
            else:
                command.upgrade(cfg, to)
            # Only after a revision ran: the check reads every row that has a
            # foreign key, which a large store would pay on every start-up.
            moved = MigrationContext.configure(conn).get_current_revision() != before
            if sqlite and moved:
                broken = conn.exec_driver_sql("PRAGMA foreign_key_check").first()
                if broken is not None:
                    raise RuntimeError(f"migration left a dangling foreign key: {tuple(broken)}")
            conn.commit()
        finally:
            if sqlite:
                conn.rollback()
                driver(conn).execute("PRAGMA foreign_keys=ON")
            else:
                # Ending the session releases the lock whatever state a
                # failed revision left the connection in.
                conn.invalidate()
    return current_revision(engine)


class StoreUnusable(RuntimeError):
    """The store cannot be used as it is; the message says why and what to do."""


class StoppedWaiting(Exception):
    """Told to stop before the store was ready, nothing of it changed."""


class StoreFromANewerRelease(StoreUnusable):
    """The store is at a revision this release does not know: a newer release
    migrated it, and this one may not read what that one wrote."""


def _revisions(cfg: AlembicConfig) -> list[Script]:
    """This release's revisions, oldest first (the history is one line)."""
    from alembic.script import ScriptDirectory

    newest_first = ScriptDirectory.from_config(cfg).walk_revisions()
    return list(reversed(list(newest_first)))


def statistics_off(engine: Engine) -> list[str]:
    """The PostgreSQL settings that keep planner statistics from being
    gathered by themselves (empty elsewhere, and where they are on).

    Without statistics PostgreSQL takes an equality on a time clock for a
    handful of rows and may read by the index by start, every activity of
    the clock, where a few users' were wanted: ``CreateTimeActivities`` and
    a punch's state read then grow with the whole history
    (bench/README.md)."""
    if engine.dialect.name != "postgresql":
        return []
    with engine.connect() as conn:
        values = driver(conn).execute(
            "SELECT name FROM pg_settings "
            "WHERE name IN ('autovacuum', 'track_counts') AND setting = 'off' ORDER BY name"
        )
        return [name for (name,) in values.fetchall()]


def current_revision(engine: Engine) -> str:
    """The revision alembic recorded in the store ("" before the first one)."""
    with engine.connect() as conn:
        rev = None
        if inspect(conn).has_table("alembic_version"):
            rev = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
        conn.rollback()
    return rev or ""


class _Repositories:
    """The repositories of one account (or of none: housekeeping) on one connection."""

    time_clocks: SqlTimeClockRepository
    geofences: SqlGeofenceRepository
    activities: SqlActivityRepository
    idempotency: SqlIdempotencyRepository
    schedulers: SqlSchedulerRepository
    shifts: SqlShiftRepository
    events: SqlEventRepository
    locations: SqlLocationRepository
    index_changes: SqlIndexChangeRepository
    accounts: SqlAccountRepository
    api_keys: SqlApiKeyRepository
    webhooks: SqlWebhookRepository

    def _bind(self, conn: Connection, account: int | None, now: int) -> None:
        self.time_clocks = SqlTimeClockRepository(conn, account, now)
        self.geofences = SqlGeofenceRepository(conn, account, now)
        self.activities = SqlActivityRepository(conn, account)
        self.idempotency = SqlIdempotencyRepository(conn, account, now)
        self.schedulers = SqlSchedulerRepository(conn, account, now)
        self.shifts = SqlShiftRepository(conn, account)
        self.events = SqlEventRepository(conn, account)
        self.locations = SqlLocationRepository(conn, account)
        self.index_changes = SqlIndexChangeRepository(conn, account, now)
        self.accounts = SqlAccountRepository(conn, now)
        self.api_keys = SqlApiKeyRepository(conn, now)
        self.webhooks = SqlWebhookRepository(conn, account)


class SqlUnitOfWork(_Repositories):
    """One database transaction holding the repositories that share it, all
    seeing one account's rows (``account``; None for housekeeping across
    accounts). ``for_account`` gives another account's repositories in the
    same transaction: the group committer batches calls of many accounts."""

    def __init__(
        self,
        engine: Engine,
        *,
        account: int | None = None,
        readonly: bool = False,
        write_lock: WriterLock | None = None,
        on_events: Callable[[], None] | None = None,
        on_index_changes: Callable[[], None] | None = None,
        on_subscriptions: Callable[[], None] | None = None,
    ) -> None:
        self._engine = engine
        self._on_events = on_events
        self._on_index_changes = on_index_changes
        self._on_subscriptions = on_subscriptions
        self._readonly = readonly
        self._write_lock = None if readonly else write_lock
        self._conn: Connection | None = None
        self.account: int | None = account
        self._others: dict[int, _AccountRepositories] = {}

    def __enter__(self) -> Self:
        if self._write_lock is not None:
            try:
                self._write_lock.acquire()
            except WriterLockTimeout as exc:
                raise as_unavailable(exc) or exc from exc
        try:
            return self._open()
        except BaseException as exc:
            if self._write_lock is not None:
                self._write_lock.release()
            if (fault := as_unavailable(exc)) is not None:
                raise fault from exc
            raise

    def _open(self) -> Self:
        conn = self._engine.connect()
        if self._readonly:
            # One snapshot for the whole read on both stores: SQLite's read
            # transaction is one, PostgreSQL's READ COMMITTED takes a new one
            # per statement (a listed page reads its lines, then its last key).
            if conn.dialect.name == "postgresql":
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
            else:
                conn = conn.execution_options(sqlite_begin="DEFERRED")
        try:
            conn.begin()  # SQLite's writers wait here for the file's lock
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self._now = int(time.time())
        self._bind(conn, self.account, self._now)
        return self

    def for_account(self, account: int) -> SqlUnitOfWork | _AccountRepositories:
        if account == self.account:
            return self
        other = self._others.get(account)
        if other is None:
            assert self._conn is not None
            other = self._others[account] = _AccountRepositories(self, account)
        return other

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
        except Exception as cleanup:
            # The connection is gone: the pool drops it, and the server ends
            # its transaction. The work's own outcome is the one to answer:
            # its error, or (a read, or a batch whose every piece failed on
            # the lost connection) what it returned.
            if unavailable_reason(cleanup) is None:
                raise
        finally:
            self._conn.close()
            self._conn = None
            self._others.clear()
            if self._write_lock is not None:
                self._write_lock.release()
        if exc is None:
            return
        if transient(exc):
            # A deadlock or serialization failure: the work may run again,
            # like a lost race (the callers retry ConcurrentChange).
            raise as_conflict(exc) from exc
        if (fault := as_unavailable(exc)) is not None and fault is not exc:
            raise fault from exc

    def commit(self) -> None:
        assert self._conn is not None
        scopes: list[_Repositories] = [self, *self._others.values()]
        appended = any(repos.events.appended for repos in scopes)
        noted = any(repos.index_changes.noted for repos in scopes)
        subscribed = any(repos.webhooks.changed for repos in scopes)
        kinds = (EVENTS if appended else "") + (INDEX if noted else "")
        kinds += KEYS if self.api_keys.changed else ""
        # One round trip for the events' lock, the events, the notification
        # and the COMMIT.
        with together(self._conn, then_commit=True):
            write_noted(self._conn)
            write_appended(self._conn)
            if kinds and self._conn.dialect.name == "postgresql":
                # Delivered when (and only if) the transaction commits: every
                # replica's listener then catches up at once (see notify.py).
                notify(self._conn, kinds)
        self._conn.commit()  # a deadlock or serialization failure: see __exit__
        for repos in scopes:
            repos.events.appended = repos.index_changes.noted = repos.webhooks.changed = False
        self.api_keys.changed = False
        if appended and self._on_events is not None:
            self._on_events()
        if noted and self._on_index_changes is not None:
            self._on_index_changes()
        if subscribed and self._on_subscriptions is not None:
            self._on_subscriptions()

    def savepoint(self) -> AbstractContextManager[object]:
        assert self._conn is not None
        return savepoint(self._conn)

    def together(self) -> AbstractContextManager[object]:
        assert self._conn is not None
        if self._conn.dialect.name != "postgresql":  # SQLite: statements one by one
            return contextlib.nullcontext()
        return _sent_together(self._conn)

    def changes(self) -> int | None:
        assert self._conn is not None
        raw = driver(self._conn)
        name = self._conn.dialect.name
        # Events appended and index changes noted are written at the commit:
        # they count as changes now.
        unwritten = appended_unwritten(self._conn) + noted_unwritten(self._conn)
        if name == "sqlite":
            total: int = raw.total_changes  # sqlite3_total_changes()
            return total + unwritten
        if name == "postgresql":
            from geopunch.adapters.db.pg_writes import writes

            return writes(raw) + unwritten
        return None


@contextlib.contextmanager
def _sent_together(conn: Connection) -> Iterator[None]:
    try:
        with together(conn):
            yield
    except integrity_error(conn) as exc:
        raise ConcurrentChange(str(exc)) from exc


class _AccountRepositories(_Repositories):
    """Another account's repositories inside an open unit of work (``for_account``)."""

    def __init__(self, uow: SqlUnitOfWork, account: int) -> None:
        assert uow._conn is not None
        self._uow = uow
        self.account: int | None = account
        self._bind(uow._conn, account, uow._now)

    def for_account(self, account: int) -> SqlUnitOfWork | _AccountRepositories:
        return self._uow.for_account(account)

    def commit(self) -> None:
        self._uow.commit()

    def savepoint(self) -> AbstractContextManager[object]:
        return self._uow.savepoint()

    def together(self) -> AbstractContextManager[object]:
        return self._uow.together()

    def changes(self) -> int | None:
        return self._uow.changes()


class WriterLock:
    """SQLite's one-writer rule as a lock that a waiter sleeps on until it is
    free, or until the store timeout has passed.

    Threads of this process queue on a Python lock, then the one at the front
    takes an exclusive ``flock`` on ``PATH-writer.lock`` beside the database,
    so writers of other processes on the same file (workers of ``serve
    --processes``, a second server, the command line) queue in the kernel
    too. Without it they would meet in SQLite's busy handler, which retries
    in growing sleeps (up to 100 ms) and wrecks tail latency. A blocking
    ``flock`` is woken by the release itself; the ``filelock`` package polls
    with sleeps instead. The kernel drops the lock when its holder dies, so a
    killed process leaves nothing stuck; one that is frozen holding it (a
    stopped process, a second server on the same file) holds every other
    writer, so a wait past ``timeout_s`` raises ``WriterLockTimeout``, which
    the call answers UNAVAILABLE as for any other store that cannot answer.

    The kernel's wait has no deadline, so a contended one runs on a thread
    of its own (``_KernelWait``) that the caller stops waiting for; a free
    lock is taken at once without it.
    """

    def __init__(self, database: str, timeout_s: float = STORE_TIMEOUT_S) -> None:
        self._threads = threading.Lock()
        self.path = f"{database}-writer.lock"
        self._timeout = timeout_s
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        weakref.finalize(self, os.close, self._fd)
        self._kernel: _KernelWait | None = None

    def acquire(self) -> None:
        deadline = time.monotonic() + self._timeout
        if not self._threads.acquire(timeout=self._timeout):
            raise WriterLockTimeout(self._waited_out())
        try:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                pass
            if self._kernel is None:
                self._kernel = _KernelWait(self.path)
            if not self._kernel.take(deadline - time.monotonic()):
                raise WriterLockTimeout(self._waited_out())
        except BaseException:
            self._threads.release()
            raise

    def release(self) -> None:
        try:
            if self._kernel is not None and self._kernel.holds:  # taken by its wait
                self._kernel.give_back()
            else:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._threads.release()

    def _waited_out(self) -> str:
        return f"another writer held {self.path} for the whole store timeout ({self._timeout} s)"


class _KernelWait:
    """A blocking ``flock`` of a descriptor of its own, on a thread of its
    own, which a caller may stop waiting for at its deadline. At most one
    such wait is in the kernel at a time: a caller that gave up leaves it
    there for the next, and a lock it gets with nobody waiting is given
    back at once. The thread ends after a minute without a wait."""

    IDLE_S = 60.0

    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        weakref.finalize(self, os.close, self._fd)
        self._cond = threading.Condition()
        self._asked = False  # the thread is to take the lock, or is waiting for it
        self._wanted = False  # a caller waits for it now
        self._held = False  # this descriptor holds the lock for the caller
        self._thread: threading.Thread | None = None

    def take(self, timeout_s: float) -> bool:
        with self._cond:
            self._wanted = True
            self._asked = True
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="sqlite-writer-lock", daemon=True
                )
                self._thread.start()
            self._cond.notify_all()
            got = self._cond.wait_for(lambda: self._held, max(timeout_s, 0.0))
            self._wanted = False
            return got

    @property
    def holds(self) -> bool:
        """Whether this descriptor holds the lock, for the caller that waited."""
        return self._held

    def give_back(self) -> None:
        with self._cond:
            self._held = False
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._cond.wait_for(lambda: self._asked, self.IDLE_S):
                    self._thread = None
                    return
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            with self._cond:
                self._asked = False
                if self._wanted:
                    self._held = True
                    self._cond.notify_all()
                else:  # its caller gave up meanwhile
                    fcntl.flock(self._fd, fcntl.LOCK_UN)


class SqlUnitOfWorkFactory:
    """Units of work on one engine.

    SQLite has one writer at a time; writers wait on a :class:`WriterLock`
    before ``BEGIN IMMEDIATE``, at most ``timeout_s``. ``on_events`` runs
    after each commit that appended events, ``on_index_changes`` after each
    that changed a time clock's settings or fences, ``on_subscriptions``
    after each that created, changed, replayed or deleted a webhook
    subscription.
    """

    def __init__(
        self,
        engine: Engine,
        on_events: Callable[[], None] | None = None,
        on_index_changes: Callable[[], None] | None = None,
        on_subscriptions: Callable[[], None] | None = None,
        timeout_s: float = STORE_TIMEOUT_S,
    ) -> None:
        self.engine = engine
        database = engine.url.database
        self._write_lock = (
            WriterLock(database, timeout_s)
            if engine.dialect.name == "sqlite" and database
            else None
        )
        self._on_events = on_events
        self._on_index_changes = on_index_changes
        self._on_subscriptions = on_subscriptions

    def __call__(self, *, account: int | None = None, readonly: bool = False) -> SqlUnitOfWork:
        return SqlUnitOfWork(
            self.engine,
            account=account,
            readonly=readonly,
            write_lock=self._write_lock,
            on_events=self._on_events,
            on_index_changes=self._on_index_changes,
            on_subscriptions=self._on_subscriptions,
        )


class _Piece:
    """One caller's work and, once its batch is committed, the outcome that
    the caller's ``future`` receives (an asyncio one on the caller's event
    loop, or a thread's ``concurrent.futures`` one). ``after`` runs on the
    result once the batch is durable, before any later batch commits."""

    __slots__ = ("after", "context", "future", "ok", "order", "value", "work")

    def __init__(
        self,
        work: Callable[[Any], Any],
        future: asyncio.Future[Any] | concurrent.futures.Future[Any],
        order: tuple[int, ...],
        after: Callable[[Any], None] | None = None,
    ) -> None:
        self.work = work
        self.after = after
        self.order = order
        # The submitter's context variables (its request id) hold while its work runs.
        self.context = contextvars.copy_context()
        self.future = future
        self.ok = False
        self.value: Any = None

    def run(self, uow: Any) -> Any:
        return self.context.run(self.work, uow)


#: A piece's outcome: (True, result) or (False, exception).
_PieceOutcome = tuple[bool, Any]


def _settle(pieces: list[_Piece]) -> None:
    """On the event loop: hand each awaiting coroutine its outcome."""
    for p in pieces:
        fut = p.future
        if fut.cancelled():  # the call went away; its work is committed all the same
            continue
        if p.ok:
            fut.set_result(p.value)
        else:
            fut.set_exception(p.value)


class GroupCommitter:
    """Commits the work of many concurrent callers with one transaction and one fsync.

    Callers queue their work; one writer thread takes whatever has queued up
    (at most ``max_batch``), runs each piece so that a failing one leaves no
    writes (see ``_apply``), commits once and answers the whole batch. Under
    load one fsync serves many calls. Callers are coroutines awaiting
    ``submit`` (it implements :class:`geopunch.domain.ports.AsyncTransactionRunner`);
    a batch wakes each event loop once, not once per call, because under many
    punches in flight that hand-off, not the SQL, limits throughput.
    ``observe``, when given, is told each batch's seconds and piece count
    (from the writer thread).
    """

    def __init__(
        self,
        uows: UnitOfWorkFactory,
        max_batch: int = 128,
        observe: Callable[[float, int], None] | None = None,
        commit_lock: Callable[[], AbstractContextManager[None]] | None = None,
    ) -> None:
        self._uows = uows
        self._max_batch = max_batch
        self._observe = observe
        #: Held across the commit of a batch with ``after`` steps and those
        #: steps (the fence index's write lock: changes reach it in commit order).
        self._commit_lock = commit_lock
        self._cond = threading.Condition(threading.Lock())
        self._queue: deque[_Piece] = deque()
        self._closed = False
        self._thread = threading.Thread(target=self._write, name="group-commit", daemon=True)
        self._thread.start()

    def submit(
        self, work: Callable[[UnitOfWork], T], order: tuple[int, ...] = ()
    ) -> asyncio.Future[T]:
        """From a coroutine: a future of ``work``'s result, set once it is committed.
        ``order`` (account, time clock, user) places it in its batch, see ``_write``."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._enqueue(_Piece(work, future, order))
        return future

    def run(self, work: Callable[[UnitOfWork], T], after: Callable[[T], None] | None = None) -> T:
        """From a thread: ``work``'s result once it is committed (its
        exception if it failed), ``after(result)`` having run. Admin writes
        of concurrent callers share a transaction and its fsync this way, as
        punches do; one transaction apiece was most of a bulk load's time."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._enqueue(_Piece(work, future, (), after))
        return future.result()

    def _enqueue(self, piece: _Piece) -> None:
        with self._cond:
            if self._closed:
                raise RuntimeError("the store is closing")
            self._queue.append(piece)
            self._cond.notify()

    def close(self) -> None:
        """Refuse new work, finish what is queued, stop the writer thread."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()

    def _write(self) -> None:
        """The writer thread: batch after batch until closed and drained."""
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return
                take = min(len(self._queue), self._max_batch)
                batch = [self._queue.popleft() for _ in range(take)]
            # Every batch, on every replica, takes its row locks in one order
            # (by account, time clock and user; stable, so one user's punches
            # keep their order): two batches then wait for each other instead
            # of deadlocking.
            batch.sort(key=lambda p: p.order)
            started = time.perf_counter()
            with tracing.batch_span("group commit", [p.context for p in batch]):
                outcomes = self._run_batch([p.run for p in batch], [p.after for p in batch])
            if self._observe is not None:
                self._observe(time.perf_counter() - started, len(batch))
            waiting: dict[asyncio.AbstractEventLoop, list[_Piece]] = {}
            for p, (ok, value) in zip(batch, outcomes, strict=True):
                p.ok, p.value = ok, value
                if isinstance(p.future, concurrent.futures.Future):  # a thread waits
                    if ok:
                        p.future.set_result(value)
                    else:
                        p.future.set_exception(value)
                    continue
                waiting.setdefault(p.future.get_loop(), []).append(p)
            for loop, pieces in waiting.items():
                with contextlib.suppress(RuntimeError):  # a closed loop: no one to answer
                    loop.call_soon_threadsafe(_settle, pieces)

    def _run_batch(
        self,
        works: list[Callable[[Any], Any]],
        afters: list[Callable[[Any], None] | None] | None = None,
    ) -> list[_PieceOutcome]:
        """Run ``works`` in one transaction and commit once; one (ok, result or
        exception) per piece. A failing piece leaves none of its writes. The
        ``afters`` of the pieces that succeeded run once it is durable."""
        started = time.perf_counter()
        try:
            for guarded in (False, True):
                with self._uows() as uow:
                    outcomes = self._apply(uow, works, guarded)
                    if outcomes is not None:
                        self._commit(uow, outcomes, afters or [None] * len(works))
                        metrics.COMMIT_BATCH.observe(len(works))
                        metrics.COMMIT_SECONDS.observe(time.perf_counter() - started)
                        return outcomes
        except BaseException as exc:  # nothing of this batch is durable; no caller may hang
            return [(False, exc) for _ in works]
        raise AssertionError("the guarded round always finishes")

    def _commit(
        self,
        uow: Any,
        outcomes: list[_PieceOutcome],
        afters: list[Callable[[Any], None] | None],
    ) -> None:
        steps = [
            (after, value)
            for after, (ok, value) in zip(afters, outcomes, strict=True)
            if ok and after is not None
        ]
        lock = self._commit_lock if steps and self._commit_lock is not None else None
        with lock() if lock is not None else contextlib.nullcontext():
            uow.commit()
            for after, value in steps:
                try:
                    after(value)
                except Exception:  # committed all the same; the index follower repairs it
                    log.exception("a step after a group commit failed")

    @staticmethod
    def _apply(
        uow: UnitOfWork, works: list[Callable[[Any], Any]], guarded: bool
    ) -> list[_PieceOutcome] | None:
        """Run every piece in ``uow``; None means "start over guarded".

        A savepoint per piece costs two statements, and on SQLite every
        statement lets the GIL go to the RPC threads and waits to get it back.
        Where the store counts changed rows, pieces run bare: one that fails
        having changed nothing leaves nothing to undo (most refusals happen
        before any write); one that fails after writing sends the whole batch
        round again with a savepoint per piece.
        """
        outcomes: list[_PieceOutcome] = []
        for work in works:
            before = None if guarded else uow.changes()
            try:
                if before is None:
                    with uow.savepoint():
                        result = work(uow)
                else:
                    result = work(uow)
                outcomes.append((True, result))
            except Exception as exc:  # this caller's failure only
                if before is not None and uow.changes() != before:
                    return None
                if transient(exc):  # chosen as a deadlock's victim: its caller runs it again
                    exc = as_conflict(exc)
                elif (fault := as_unavailable(exc)) is not None:  # its statement timed out
                    exc = fault
                outcomes.append((False, exc))
        return outcomes
