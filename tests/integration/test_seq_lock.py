"""The seq lock of a sequenced log is taken once a transaction, and again
after a savepoint that took it was rolled back (PostgreSQL releases it then)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Connection, Engine, text

from geopunch.adapters.db import prepared
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


def test_the_lock_is_taken_once_and_again_after_a_rolled_back_savepoint(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite has one writer at a time: no lock")
    statements: list[str] = []
    on_driver = prepared.driver

    class Seen:
        """The driver connection, noting the lock statements run on it."""

        def __init__(self, raw: Any) -> None:
            self._raw = raw

        def execute(self, query: str, *args: Any) -> Any:
            if "pg_advisory_xact_lock" in query:
                statements.append(query)
            return self._raw.execute(query, *args)

        def __getattr__(self, name: str) -> Any:
            return getattr(self._raw, name)

    monkeypatch.setattr(prepared, "driver", lambda conn: Seen(on_driver(conn)))
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
