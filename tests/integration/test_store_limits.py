"""What a PostgreSQL session of the store is told to wait at most, acting on
a real server: a transaction its client left idle gives its locks back, and
a statement is cut at the limit."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import create_engine

from geopunch.adapters.db.store import make_engine
from tests.helpers import pg_migrated

pytestmark = pytest.mark.postgres


def test_a_transaction_left_idle_gives_its_locks_back() -> None:
    """A server frozen (or cut off without the database being told) in the
    middle of a transaction: its row locks would hold up every replica that
    needs the same rows for as long as the database kept the session."""
    with pg_migrated() as url:
        engine = make_engine(url, timeout_s=1.0)
        # Without the limit the lock would never come: fail, not hang.
        other = create_engine(url, connect_args={"options": "-c lock_timeout=5000"})
        try:
            frozen = engine.connect()
            frozen.exec_driver_sql("SELECT pg_advisory_xact_lock(4242)")
            # ... and nothing more is sent on it.
            with other.connect() as conn:
                started = time.monotonic()
                conn.exec_driver_sql("SELECT pg_advisory_xact_lock(4242)")
                waited = time.monotonic() - started
                conn.rollback()
            assert 0.5 < waited < 5, waited
            frozen.invalidate()
            frozen.close()
        finally:
            other.dispose()
            engine.dispose()


def test_sessions_carry_the_limits() -> None:
    with pg_migrated() as url:
        engine = make_engine(url, timeout_s=1.5)
        try:
            with engine.connect() as conn:
                shown = [
                    conn.exec_driver_sql(f"SHOW {name}").scalar()
                    for name in ("statement_timeout", "idle_in_transaction_session_timeout")
                ]
                conn.rollback()
            assert shown == ["1500ms", "1500ms"]
            # A statement longer than the limit is cut.
            with pytest.raises(Exception, match="statement timeout"), engine.connect() as conn:
                conn.exec_driver_sql("SELECT pg_sleep(3)")
        finally:
            engine.dispose()
