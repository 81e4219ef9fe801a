"""A count, per PostgreSQL connection, of the statements that may have left
something to undo: what SQLite's ``total_changes`` tells the group committer.

The group committer runs many callers' work in one transaction. Where it can
tell that a failed piece changed nothing it needs no savepoint around each
piece: on PostgreSQL each savepoint was two more round trips a punch on the
committer's one thread (a fifth of its time under punches, bench/README.md).
PostgreSQL has no running total of changed rows, so the driver's cursors count
instead: every statement but a plain ``SELECT``, and every statement that
fails (a failed statement aborts the whole transaction, a read's failure
included). The count overshoots (a ``SAVEPOINT``, an ``UPDATE`` matching no
row), never undershoots: an overshoot only sends a batch round again with a
savepoint per piece.

This module imports psycopg: the store loads it for PostgreSQL engines only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import psycopg

#: The attribute on a psycopg connection holding its count.
_COUNT = "_geopunch_writes"


def writes(raw: psycopg.Connection[Any]) -> int:
    """Statements on ``raw`` so far that wrote, may have written, or failed."""
    count: int = getattr(raw, _COUNT, 0)
    return count


def _note(cursor: psycopg.Cursor[Any]) -> None:
    raw = cursor.connection
    setattr(raw, _COUNT, getattr(raw, _COUNT, 0) + 1)


def _reads_only(query: Any) -> bool:
    # Only plain text is judged; a composed query counts as a write.
    if isinstance(query, bytes):
        query = query.decode(errors="replace")
    return isinstance(query, str) and query.lstrip()[:6].upper() == "SELECT"


class WriteCountingCursor(psycopg.Cursor[Any]):
    """psycopg's client cursor, counting as :func:`writes` says. Set as the
    connections' ``cursor_factory``, so it serves SQLAlchemy's statements and
    those run on the driver alike."""

    __slots__ = ()

    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> WriteCountingCursor:
        _counted(self, query, super().execute, query, params, **kwargs)
        return self

    def executemany(self, query: Any, params_seq: Iterable[Any], **kwargs: Any) -> None:
        _counted(self, query, super().executemany, query, params_seq, **kwargs)

    def copy(self, *args: Any, **kwargs: Any) -> Any:
        _note(self)
        return super().copy(*args, **kwargs)


def _counted(
    cursor: psycopg.Cursor[Any], query: Any, run: Callable[..., Any], *args: Any, **kwargs: Any
) -> None:
    if not _reads_only(query):
        _note(cursor)
    try:
        run(*args, **kwargs)
    except BaseException:
        _note(cursor)
        raise
