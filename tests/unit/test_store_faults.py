"""Which driver errors mean "the store cannot answer now", from real drivers
where the error can be made cheaply, and what libpq is told to wait at most."""

from __future__ import annotations

import socket
import sqlite3
from pathlib import Path

import psycopg
import pytest
from psycopg import errors as pg_errors
from sqlalchemy import event, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url

from geopunch.adapters.db.faults import as_unavailable, transient, unavailable_reason
from geopunch.adapters.db.store import StoreUnusable, make_engine
from geopunch.domain.errors import StoreUnavailable


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_refused_postgresql_connection_is_unreachable() -> None:
    engine = make_engine(f"postgresql+psycopg://nobody@127.0.0.1:{_closed_port()}/none")
    try:
        with pytest.raises(sa_exc.OperationalError) as raised:
            engine.connect()
    finally:
        engine.dispose()
    assert unavailable_reason(raised.value) == "unreachable"
    fault = as_unavailable(raised.value)
    assert isinstance(fault, StoreUnavailable)
    assert fault.message == "the store cannot be reached; retry shortly"


def test_sqlite_busy_past_the_timeout_is_busy_and_a_defect_is_not(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'busy.db'}"
    engine = make_engine(url, timeout_s=0.05)
    holder = sqlite3.connect(tmp_path / "busy.db", isolation_level=None)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
            conn.commit()
        holder.execute("BEGIN EXCLUSIVE")
        # BEGIN runs on the driver itself: its error comes unwrapped.
        with pytest.raises(sqlite3.OperationalError) as busy, engine.connect() as conn:
            conn.begin()
        assert unavailable_reason(busy.value) == "busy"
        holder.execute("ROLLBACK")
        with pytest.raises(sa_exc.OperationalError) as typo, engine.connect() as conn:
            conn.execute(text("SELECT nothing FROM nowhere"))
        assert unavailable_reason(typo.value) is None  # "no such table": a defect
        assert as_unavailable(typo.value) is None
    finally:
        holder.close()
        engine.dispose()


def test_a_pool_with_no_free_connection_for_the_timeout_is_exhausted(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'pool.db'}", pool_size=1, timeout_s=0.05)
    try:
        held = [engine.connect(), engine.connect()]  # the pool and its overflow
        with pytest.raises(sa_exc.TimeoutError) as raised:
            engine.connect()
        for conn in held:
            conn.close()
    finally:
        engine.dispose()
    assert unavailable_reason(raised.value) == "pool_exhausted"


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (pg_errors.QueryCanceled, "timed_out"),
        (pg_errors.LockNotAvailable, "busy"),
        (pg_errors.AdminShutdown, "restarting"),
        (pg_errors.CannotConnectNow, "restarting"),
        (pg_errors.TooManyConnections, "unreachable"),
        (pg_errors.DiskFull, "full"),
        (pg_errors.ReadOnlySqlTransaction, "read_only"),
        (pg_errors.ConnectionFailure, "unreachable"),  # class 08
        (pg_errors.IoError, "unreachable"),  # class 58
        (pg_errors.UniqueViolation, None),
        (pg_errors.UndefinedTable, None),
        (pg_errors.DeadlockDetected, None),  # run again instead: see transient
    ],
)
def test_postgresql_states(error: type[psycopg.Error], reason: str | None) -> None:
    assert unavailable_reason(error("x")) == reason
    wrapped = sa_exc.OperationalError("SELECT 1", {}, error("x"))
    assert unavailable_reason(wrapped) == reason


def test_a_deadlock_is_transient_not_unavailable() -> None:
    assert transient(pg_errors.DeadlockDetected("x"))
    assert not transient(pg_errors.QueryCanceled("x"))


class _Given(Exception):
    pass


def test_postgresql_connections_carry_the_timeouts() -> None:
    """What libpq is given (taken at the driver's door, before any network);
    the end-to-end tests show the timeouts acting."""
    engine = make_engine(
        "postgresql+psycopg://u@127.0.0.1:1/db?options=-csearch_path%3Dx", timeout_s=2.5
    )
    given: dict[str, object] = {}

    @event.listens_for(engine, "do_connect")
    def take(_dialect: object, _record: object, _args: object, params: dict[str, object]) -> None:
        given.update(params)
        raise _Given

    try:
        with pytest.raises(_Given):
            engine.connect()
    finally:
        engine.dispose()
    assert given["connect_timeout"] == 3
    assert given["tcp_user_timeout"] == 2500
    assert (given["keepalives"], given["keepalives_idle"], given["keepalives_interval"]) == (
        1,
        10,
        5,
    )
    assert given["keepalives_count"] == 3
    # The server's side is SET once connected (PgBouncer refuses start-up
    # options it does not know): the URL's options go as they were.
    assert given["options"] == "-csearch_path=x"
    assert engine.pool.timeout() == 2.5  # type: ignore[attr-defined]


def test_limits_given_in_the_url_win() -> None:
    from geopunch.adapters.db.store import _libpq_limits, _session_limits

    url = make_url(
        "postgresql+psycopg://u@h/db?options=-c%20statement_timeout%3D60000&connect_timeout=9"
    )
    assert "connect_timeout" not in _libpq_limits(url, 2.0)  # the URL's 9 stands
    assert _session_limits(url, 2.0) == (
        "SET idle_in_transaction_session_timeout = 2000; SET tcp_keepalives_idle = 10; "
        "SET tcp_keepalives_interval = 5; SET tcp_keepalives_count = 3"
    )


def test_a_sqlite_file_whose_folder_cannot_be_made_is_refused_plainly(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    with pytest.raises(StoreUnusable, match=r"cannot make the folder .*: File exists"):
        make_engine(f"sqlite:///{tmp_path / 'a-file' / 'g.db'}")
