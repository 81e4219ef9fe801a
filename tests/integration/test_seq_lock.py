"""The seq lock of a sequenced log is taken once a transaction, and again
after a savepoint that took it was rolled back (PostgreSQL releases it then)."""

from __future__ import annotations

import pytest
from sqlalchemy import Connection, Engine, event, text

from geopunch.adapters.db.prepared import in_seq_order, savepoint

KEY = 7_007_007


def _held(conn: Connection) -> int:
    return int(
        conn.execute(
            text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                "AND pid = pg_backend_pid() AND objid = :key"
            ),
            {"key": KEY},
        ).scalar_one()
    )


def test_the_lock_is_taken_once_and_again_after_a_rolled_back_savepoint(engine: Engine) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite has one writer at a time: no lock")
    statements: list[str] = []

    def seen(conn: object, cursor: object, statement: str, *args: object) -> None:
        if "pg_advisory_xact_lock" in statement:
            statements.append(statement)

    event.listen(engine, "before_cursor_execute", seen)
    try:
        with engine.connect() as conn:
            with conn.begin():
                with pytest.raises(RuntimeError), savepoint(conn):
                    in_seq_order(conn, KEY)
                    assert _held(conn) == 1
                    raise RuntimeError("this piece fails")
                assert _held(conn) == 0  # gone with its savepoint
                with savepoint(conn):
                    in_seq_order(conn, KEY)  # so it is taken again
                in_seq_order(conn, KEY)
                in_seq_order(conn, KEY)
                assert _held(conn) == 1
            assert len(statements) == 2
            with conn.begin():  # a new transaction takes it anew
                in_seq_order(conn, KEY)
                assert _held(conn) == 1
            assert len(statements) == 3
    finally:
        event.remove(engine, "before_cursor_execute", seen)
