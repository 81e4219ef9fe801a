"""On PostgreSQL a unit of work's COMMIT goes out in one round trip with its
last writes (``together(then_commit=True)``), and only when nothing in that
round trip is still to be checked; a COMMIT the database refuses is raised
from the block and leaves nothing behind."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from psycopg.pq import TransactionStatus
from sqlalchemy import Connection, Engine, text

from geopunch.adapters.db.prepared import after_sync, driver, together
from geopunch.adapters.db.store import make_engine
from tests.helpers import pg_schema

pytestmark = pytest.mark.postgres


@pytest.fixture
def engine() -> Iterator[Engine]:
    with pg_schema() as url:
        made = make_engine(url, pool_size=2)
        with made.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE t (k int UNIQUE DEFERRABLE INITIALLY DEFERRED)")
        try:
            yield made
        finally:
            made.dispose()


def _stored(engine: Engine) -> list[int]:
    with engine.connect() as conn:
        return list(conn.execute(text("SELECT k FROM t ORDER BY k")).scalars())


def _status(conn: Connection) -> TransactionStatus:
    return TransactionStatus(driver(conn).info.transaction_status)


def test_the_commit_goes_out_with_the_last_writes(engine: Engine) -> None:
    with engine.connect() as conn:
        conn.begin()
        with together(conn, then_commit=True):
            driver(conn).execute("INSERT INTO t VALUES (1), (2)")
            assert _status(conn) is TransactionStatus.ACTIVE  # queued, nothing answered yet
        assert _status(conn) is TransactionStatus.IDLE  # answered, committed with them
        assert _stored(engine) == [1, 2]
        conn.commit()  # the driver finds the transaction ended: nothing to send
        conn.execute(text("INSERT INTO t VALUES (3)"))  # the next transaction as usual
        conn.commit()
    assert _stored(engine) == [1, 2, 3]


def test_a_commit_the_database_refuses_is_raised_and_keeps_nothing(engine: Engine) -> None:
    """A deferred unique constraint is checked at the COMMIT itself."""
    with engine.connect() as conn:
        conn.begin()
        with pytest.raises(psycopg.errors.UniqueViolation), together(conn, then_commit=True):
            driver(conn).execute("INSERT INTO t VALUES (1), (1)")
        conn.rollback()
        conn.execute(text("INSERT INTO t VALUES (4)"))
        conn.commit()
    assert _stored(engine) == [4]


def test_with_a_check_still_to_run_the_commit_waits_for_it(engine: Engine) -> None:
    """A check reads what the round trip answered (a row it had to change):
    the COMMIT is not sent until it has passed, and one that fails leaves
    the transaction to be rolled back."""

    def refuse() -> None:
        raise RuntimeError("the row it had to change was not there")

    with engine.connect() as conn:
        conn.begin()
        with pytest.raises(RuntimeError), together(conn, then_commit=True):
            driver(conn).execute("INSERT INTO t VALUES (5)")
            after_sync(conn, refuse)
        assert _status(conn) is TransactionStatus.INTRANS
        conn.rollback()
    assert _stored(engine) == []

    with engine.connect() as conn:
        conn.begin()
        with together(conn, then_commit=True):
            driver(conn).execute("INSERT INTO t VALUES (6)")
            after_sync(conn, lambda: None)
        assert _status(conn) is TransactionStatus.INTRANS  # the commit is the caller's
        conn.commit()
    assert _stored(engine) == [6]
