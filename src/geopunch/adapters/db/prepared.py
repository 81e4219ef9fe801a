"""Hot-path statements run straight on the driver, inside SQLAlchemy's transaction.

A punch runs four or five small indexed statements. Through
``Connection.execute`` each costs ~100 µs of Python (execution context, result
metadata, row objects) against ~10 µs of work in SQLite, and the group
committer runs them while every gRPC thread waits for the GIL. A
:class:`Prepared` statement is still written with SQLAlchemy Core, so the SQL
stays dialect-correct, but it is compiled once per dialect and executed on the
DBAPI connection that the SQLAlchemy ``Connection`` holds (SQLAlchemy exposes
it for this purpose as ``Connection.connection.dbapi_connection``); it takes
part in the same transaction. Only plain column types belong here: no bind or
result processing is applied.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Connection
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler


@dataclass(frozen=True, slots=True)
class _Compiled:
    sql: str
    positional: tuple[str, ...] | None  # parameter order for qmark/format styles
    columns: tuple[str, ...]  # result column names, in order


class Prepared:
    """A Core statement compiled once per dialect and executed on the DBAPI connection."""

    def __init__(self, statement: ClauseElement) -> None:
        self._statement = statement
        self._by_dialect: dict[str, _Compiled] = {}

    def _compile(self, conn: Connection) -> _Compiled:
        dialect = conn.dialect
        compiled = self._by_dialect.get(dialect.name)
        if compiled is None:
            c = cast(SQLCompiler, self._statement.compile(dialect=dialect))
            selected = getattr(self._statement, "selected_columns", None)
            columns = tuple(selected.keys()) if selected is not None else ()
            compiled = _Compiled(
                sql=c.string,
                positional=tuple(c.positiontup or ()) if c.positional else None,
                columns=columns,
            )
            self._by_dialect[dialect.name] = compiled
        return compiled

    def execute(self, conn: Connection, params: Mapping[str, Any]) -> Any:
        """Run with ``params``; return the driver's cursor."""
        c = self._compile(conn)
        args: Any = params if c.positional is None else tuple(params[k] for k in c.positional)
        return driver(conn).execute(c.sql, args)

    def first(self, conn: Connection, params: Mapping[str, Any]) -> dict[str, Any] | None:
        """The first row as a dict keyed by column name, or None."""
        columns = self._compile(conn).columns
        cursor = self.execute(conn, params)
        row = cursor.fetchone()
        cursor.close()
        return None if row is None else dict(zip(columns, row, strict=True))

    def rowcount(self, conn: Connection, params: Mapping[str, Any]) -> int:
        cursor = self.execute(conn, params)
        count: int = cursor.rowcount
        cursor.close()
        return count


def driver(conn: Connection) -> Any:
    """The DBAPI connection under ``conn`` (sqlite3 or psycopg)."""
    return conn.connection.dbapi_connection


def integrity_error(conn: Connection) -> type[Exception]:
    """The driver's IntegrityError class (PEP 249 puts it on the DBAPI module)."""
    error: type[Exception] = conn.dialect.loaded_dbapi.IntegrityError
    return error


_names = itertools.count()


@contextmanager
def savepoint(conn: Connection) -> Iterator[None]:
    """A savepoint issued on the driver: released on success, rolled back to on error.

    Equivalent to ``conn.begin_nested()`` for statements run inside it, at a
    small fraction of its cost; the outer transaction stays SQLAlchemy's.
    """
    raw = driver(conn)
    name = f"gp_{next(_names)}"
    raw.execute(f"SAVEPOINT {name}")
    try:
        yield
    except BaseException:
        raw.execute(f"ROLLBACK TO SAVEPOINT {name}")
        raw.execute(f"RELEASE SAVEPOINT {name}")
        raise
    raw.execute(f"RELEASE SAVEPOINT {name}")
