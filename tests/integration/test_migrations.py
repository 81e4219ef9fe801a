"""Migrating a store that other processes use: replicas started together on
one store, and a PostgreSQL index rebuilt while servers keep writing."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import Engine, create_engine, text

from geopunch.adapters.db.store import (
    _MIGRATION_TURN,
    HEAD_REVISION,
    StoreFromANewerRelease,
    StoreUnusable,
    _alembic_config,
    current_revision,
    make_engine,
    migrate,
)
from geopunch.domain.punches import Activity, ActivityKind, PunchPoint
from tests.helpers import AccountStore, eventually, pg_schema
from tests.integration.test_store import TC


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty store, never migrated."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    with pg_schema() as url:
        yield url


def _migrating(url: str) -> subprocess.Popen[str]:
    """A process that migrates the store, as a server does at start."""
    code = (
        "import logging, sys\n"
        "logging.basicConfig(level=logging.INFO, stream=sys.stderr)\n"
        "from geopunch.adapters.db.store import make_engine, migrate\n"
        f"print(migrate(make_engine({url!r})))\n"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _finished(procs: list[subprocess.Popen[str]]) -> list[str]:
    """Each process's stderr, once all ended at the newest revision."""
    logs = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert out.strip() == HEAD_REVISION
        logs.append(err)
    return logs


def test_replicas_started_together_migrate_one_store(store_url: str) -> None:
    """Before the migration lock, all but one of four PostgreSQL replicas
    failed here on a table or type another had just created."""
    _finished([_migrating(store_url) for _ in range(4)])
    engine = make_engine(store_url)
    try:
        assert migrate(engine) == HEAD_REVISION
    finally:
        engine.dispose()


def _activity(n: int) -> Activity:
    start = 1_700_000_000 + n * 3600
    return Activity(
        id=f"shift-{n}",
        time_clock_id=TC.id,
        user_id=1 + n % 3,
        kind=ActivityKind.SHIFT,
        start=PunchPoint(start, "UTC"),
        end=PunchPoint(start + 1800, "UTC"),
        job_id="a",
        created_at=start,
        modified_at=start,
    )


@pytest.fixture
def at_0014() -> Iterator[tuple[str, Engine]]:
    """A PostgreSQL store at revision 0014 holding a few activities."""
    with pg_schema() as url:
        engine = make_engine(url)
        try:
            with engine.connect() as conn:
                command.upgrade(_alembic_config(conn), "0014")
                conn.commit()
            with AccountStore(engine)() as uow:
                uow.time_clocks.add(TC)
                uow.activities.add_many([_activity(n) for n in range(30)])
                uow.commit()
            yield url, engine
        finally:
            engine.dispose()


def _by_start(engine: Engine) -> list[tuple[str, str, bool]]:
    """The activities' indexes by start: name, definition, valid."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT c.relname, pg_get_indexdef(i.indexrelid), i.indisvalid "
                "FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                "WHERE i.indrelid = 'activities'::regclass "
                "AND c.relname LIKE 'ix_activities_start%' ORDER BY c.relname"
            )
        ).all()
    return [(name, ddl, valid) for name, ddl, valid in rows]


def _holds_the_head_index(engine: Engine) -> None:
    [(name, ddl, valid)] = _by_start(engine)
    assert name == "ix_activities_start" and valid
    assert "(account_id, time_clock_id, start_ts, id) INCLUDE (end_ts, encoded)" in ddl


@pytest.mark.postgres
def test_writers_go_on_while_a_stored_index_is_rebuilt(at_0014: tuple[str, Engine]) -> None:
    """Revision 0015 rebuilds the index by start of a populated table. A
    server of the release before, still running, holds a write transaction
    open; the build waits for it, and meanwhile another writer is served at
    once. A plain rebuild's lock request would queue every writer behind it.
    A second replica starting at the same time waits its turn (it must not
    hold a snapshot the build would wait for: a deadlock)."""
    url, engine = at_0014
    pg = create_engine(engine.url, isolation_level="AUTOCOMMIT")
    procs: list[subprocess.Popen[str]] = []
    try:
        with pg.connect() as holder:
            holder.exec_driver_sql("BEGIN")
            holder.exec_driver_sql("LOCK TABLE activities IN ROW EXCLUSIVE MODE")
            holder_pid = holder.exec_driver_sql("SELECT pg_backend_pid()").scalar()
            procs += [_migrating(url), _migrating(url)]

            def build_waits() -> bool:
                with pg.connect() as probe:
                    return bool(
                        probe.exec_driver_sql(
                            "SELECT EXISTS (SELECT FROM pg_stat_activity "
                            "WHERE %(holder)s = ANY(pg_blocking_pids(pid)))",
                            {"holder": holder_pid},
                        ).scalar()
                    )

            eventually(build_waits, 60, "the migration waiting for the open transaction")
            with pg.connect() as writer:
                writer.exec_driver_sql("SET lock_timeout = '5s'")
                writer.exec_driver_sql("BEGIN")
                writer.exec_driver_sql(
                    "UPDATE activities SET notes = 'corrected' WHERE id = 'shift-1'"
                )
                writer.exec_driver_sql("COMMIT")
            time.sleep(0.3)  # the second replica is still waiting, not failed
            assert all(proc.poll() is None for proc in procs)
            holder.exec_driver_sql("COMMIT")
        logs = _finished(procs)
    finally:
        pg.dispose()
        for proc in procs:
            proc.kill()
    assert sum("another process is migrating" in log for log in logs) == 1
    _holds_the_head_index(engine)
    with engine.connect() as conn:
        assert conn.exec_driver_sql(
            "SELECT notes FROM activities WHERE id = 'shift-1'"
        ).scalar() == ("corrected")


@pytest.mark.postgres
def test_a_rebuild_stopped_part_way_is_finished_by_the_next_start(
    at_0014: tuple[str, Engine],
) -> None:
    """A build cut short (a killed process, a cancelled statement) leaves an
    invalid index under the new name; the next start drops it and builds
    again. Down to 0014 and up again leaves the same index."""
    _, engine = at_0014
    pg = create_engine(engine.url, isolation_level="AUTOCOMMIT")
    try:
        with pg.connect() as conn, pytest.raises(Exception, match="could not create unique"):
            # Duplicate clocks fail a unique build after its catalog entry exists.
            conn.exec_driver_sql(
                "CREATE UNIQUE INDEX CONCURRENTLY ix_activities_start_next "
                "ON activities (time_clock_id)"
            )
    finally:
        pg.dispose()
    assert [(n, v) for n, _, v in _by_start(engine)] == [
        ("ix_activities_start", True),
        ("ix_activities_start_next", False),
    ]
    assert migrate(engine) == HEAD_REVISION
    _holds_the_head_index(engine)
    with engine.connect() as conn:
        command.downgrade(_alembic_config(conn), "0014")
        conn.commit()
    [(_, ddl, valid)] = _by_start(engine)
    assert valid and "INCLUDE" not in ddl
    assert migrate(engine) == HEAD_REVISION
    _holds_the_head_index(engine)


def _geopunch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "geopunch", *args], capture_output=True, text=True, timeout=120
    )


def test_a_store_from_a_newer_release_is_refused_with_a_plain_message(store_url: str) -> None:
    """An older release started on a store a newer one migrated (a rollback
    of the binary alone) stops at once, saying what to do, where alembic's
    own error named a revision it could not locate."""
    engine = make_engine(store_url)
    try:
        migrate(engine)
        with engine.begin() as conn:
            conn.exec_driver_sql("UPDATE alembic_version SET version_num = '9999'")
        with pytest.raises(
            StoreFromANewerRelease, match=rf"revision 9999, newer .* \({HEAD_REVISION}\)"
        ):
            migrate(engine)
    finally:
        engine.dispose()
    serve = _geopunch(
        "serve",
        "--database-url",
        store_url,
        "--listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
    )
    assert serve.returncode == 2
    assert (
        serve.stderr.strip()
        .splitlines()[-1]
        .startswith("geopunch: the store is at schema revision 9999")
    )
    # Its listeners were up: stopped before the exit, which with them running
    # crashed now and then (SIGSEGV, -11, under load).
    assert '"msg":"stopped"' in serve.stderr, serve.stderr[-2000:]


@pytest.mark.parametrize(
    "command",
    [
        ["serve", "--listen", "127.0.0.1:0", "--http-listen", "off"],
        ["serve", "--processes", "2", "--listen", "127.0.0.1:0", "--http-listen", "off"],
        ["keys", "create", "--account", "acme", "--scopes", "read"],
    ],
    ids=lambda c: " ".join(c[:3]),
)
def test_a_store_that_cannot_be_reached_is_named_in_one_line(command: list[str]) -> None:
    """A PostgreSQL server not running (or a wrong port): each command says
    so in one line and exits 1 (nothing is wrong with the command itself),
    where it printed the driver's traceback of about 120 lines."""
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/none"
    done = _geopunch(*command, "--database-url", url)
    assert done.returncode == 1, done.stderr
    said = [line for line in done.stderr.splitlines() if not line.startswith("{")]
    assert said == [
        "geopunch: the store cannot be reached: connection failed: connection to server at "
        f'"127.0.0.1", port {port} failed: Connection refused'
    ]


@pytest.mark.postgres
def test_a_search_path_without_its_schema_is_refused_with_a_plain_message() -> None:
    """A URL whose search_path names a schema that does not exist left
    current_schema() NULL, so the migration lock was never taken and the
    server waited for ever, logging that another process was migrating."""
    with pg_schema() as url:
        missing = url.replace("search_path%3Dgp_", "search_path%3Dnone_")
    engine = make_engine(missing)
    try:
        with pytest.raises(StoreUnusable, match="none of the schemas"):
            migrate(engine)
    finally:
        engine.dispose()
    serve = _geopunch(
        "serve", "--database-url", missing, "--listen", "127.0.0.1:0", "--http-listen", "off"
    )
    assert serve.returncode == 2
    assert "search_path names: create the schema" in serve.stderr.strip().splitlines()[-1]


def test_the_store_goes_back_to_an_older_release_and_forward_again(store_url: str) -> None:
    """Every revision back to the accounts (0007) has a way down that keeps
    the stored activities; 0007 has none, and asking to cross it changes
    nothing (refused before the first step down: a concurrent index rebuild
    commits the steps before it, so a failure further down would leave the
    store half way)."""
    done = _geopunch("migrate", "--database-url", store_url)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"store at schema revision {HEAD_REVISION}"
    engine = make_engine(store_url)
    try:
        stored = [_activity(n) for n in range(30)]
        with AccountStore(engine)() as uow:
            uow.time_clocks.add(TC)
            uow.activities.add_many(stored)
            uow.commit()
        assert migrate(engine, "0007") == "0007"
        assert migrate(engine) == HEAD_REVISION
        with AccountStore(engine)(readonly=True) as uow:
            back = [a for user in (1, 2, 3) for a in uow.activities.list_for(TC.id, user)]
        assert sorted(back, key=lambda a: a.id) == sorted(stored, key=lambda a: a.id)

        refused = _geopunch("migrate", "--database-url", store_url, "--to", "0006")
        assert refused.returncode == 2
        assert refused.stderr.strip().splitlines()[-1] == (
            "geopunch: cannot go back to 0006: revision 0007: "
            "accounts cannot be folded back into one namespace"
        )
        assert current_revision(engine) == HEAD_REVISION
        unknown = _geopunch("migrate", "--database-url", store_url, "--to", "0999")
        assert unknown.returncode == 2 and "no schema revision '0999'" in unknown.stderr
    finally:
        engine.dispose()


@pytest.mark.postgres
@pytest.mark.parametrize("processes", ["1", "2"])
def test_a_server_waiting_for_the_migration_lock_stops_on_sigterm(processes: str) -> None:
    """A replica started while another migrates waits for its turn. Told to
    stop meanwhile (a rolled-back deployment, an operator's Ctrl-C), it
    logged the signal and went on waiting until the other's migration ended:
    a lock held by a stuck process kept it alive for ever."""
    with pg_schema() as url:
        pg = create_engine(url, isolation_level="AUTOCOMMIT")
        try:
            with pg.connect() as holder:
                assert holder.exec_driver_sql(_MIGRATION_TURN).scalar()
                serve = subprocess.Popen(
                    [
                        *(sys.executable, "-m", "geopunch", "serve", "--database-url", url),
                        *("--listen", "127.0.0.1:0", "--http-listen", "off"),
                        *("--processes", processes),
                    ],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                try:
                    assert serve.stderr is not None
                    for line in serve.stderr:
                        if "another process is migrating the store" in line:
                            break
                    else:
                        pytest.fail(f"the server ended without waiting: {serve.wait()}")
                    serve.send_signal(signal.SIGTERM)
                    rest = serve.communicate(timeout=10)[1]
                finally:
                    if serve.poll() is None:
                        serve.kill()
                        serve.communicate()
                assert serve.returncode == 0, rest
                assert "stopped before the store was ready" in rest
                assert "Traceback" not in rest and "ERROR" not in rest, rest
                # It left the store as it found it: nothing migrated.
                assert (
                    holder.exec_driver_sql(
                        "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()"
                    ).scalar()
                    == 0
                )
        finally:
            pg.dispose()
