"""Hot-path statements run straight on the driver, inside SQLAlchemy's transaction.

A punch runs four or five small indexed statements. Through
``Connection.execute`` each costs ~100 µs of Python (execution context, result
metadata, row objects) against ~10 µs of work in SQLite, and the group
committer runs them while every gRPC thread waits for the GIL. A
:class:`Prepared` statement is still written with SQLAlchemy Core, so the SQL
stays dialect-correct, but it is compiled once per dialect and executed on the
DBAPI connection that the SQLAlchemy ``Connection`` holds (SQLAlchemy exposes
it for this purpose as ``Connection.connection.dbapi_connection``); it takes
part in the same transaction. Parameters get their type's bind processor and
JSON columns their result processor, looked up once at compile time; other
results come as the driver gives them.
"""

from __future__ import annotations

import hashlib
import itertools
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, cast

import numpy as np
from sqlalchemy import JSON, Connection, bindparam
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler


@dataclass(frozen=True, slots=True)
class _Compiled:
    sql: str
    positional: tuple[str, ...] | None  # parameter order for qmark/format styles
    columns: tuple[str, ...]  # result column names, in order
    binds: tuple[tuple[str, Callable[[Any], Any]], ...]  # parameters that need converting
    results: tuple[Callable[[Any], Any] | None, ...] | None  # per column; None: none do
    order: Callable[[Mapping[str, Any]], Any] | None  # positional parameters out of a dict
    names: frozenset[str]  # the positional parameters' names (empty for named styles)
    #: The statement's own values (a literal in it, such as a CASE's), by parameter name.
    constants: Mapping[str, Any]

    def args(self, params: Mapping[str, Any]) -> Any:
        if self.constants:
            params = {**self.constants, **params}
        if self.binds:
            params = dict(params)
            for key, process in self.binds:
                params[key] = process(params[key])
        return params if self.order is None else self.order(params)

    def row(self, row: Sequence[Any]) -> tuple[Any, ...]:
        if self.results is None:
            return tuple(row)
        return tuple(v if f is None else f(v) for f, v in zip(self.results, row, strict=True))


class Prepared:
    """A Core statement compiled once per dialect and executed on the DBAPI connection.

    The bind and result processors are those of the first engine of each
    dialect to run it: every engine of the process is made by ``make_engine``
    with the same JSON encoder, so any one stands for all."""

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
            # By the names the SQL uses: ``c.binds`` also keys a literal's
            # parameter by its anonymous name.
            named = {c.bind_names[bind]: bind for bind in c.binds.values()}
            binds = tuple(
                (key, process)
                for key, bind in named.items()
                if (process := bind.type.dialect_impl(dialect).bind_processor(dialect))
            )
            # Only JSON results are converted: other processors (PostgreSQL's
            # numerics) need the driver's column type, known only after a query.
            results = tuple(
                col.type.dialect_impl(dialect).result_processor(dialect, None)
                if isinstance(col.type, JSON)
                else None
                for col in (selected if selected is not None else ())
            )
            positional = tuple(c.positiontup or ()) if c.positional else None
            # A bindparam() the caller fills is required; a literal that
            # SQLAlchemy turned into a parameter carries its value.
            constants = {
                key: bind.effective_value for key, bind in named.items() if not bind.required
            }
            compiled = _Compiled(
                sql=c.string,
                positional=positional,
                columns=columns,
                binds=binds,
                results=results if any(f is not None for f in results) else None,
                order=None if positional is None else _getter(positional),
                names=frozenset(positional or ()),
                constants=constants,
            )
            self._by_dialect[dialect.name] = compiled
        return compiled

    def execute(self, conn: Connection, params: Mapping[str, Any]) -> Any:
        """Run with ``params``; return the driver's cursor."""
        c = self._compile(conn)
        return driver(conn).execute(c.sql, c.args(params))

    def many(self, conn: Connection, rows: Iterable[Mapping[str, Any]]) -> None:
        """Run once per parameter set (the driver's ``executemany``)."""
        c = self._compile(conn)
        cursor = driver(conn).cursor()
        try:
            cursor.executemany(c.sql, [c.args(p) for p in rows])
        finally:
            cursor.close()

    def many_columns(
        self,
        conn: Connection,
        columns: Mapping[str, Sequence[Any]],
        same: Mapping[str, Any] | None = None,
    ) -> None:
        """Run once per row of ``columns`` (equal-length values by parameter
        name), with ``same`` bound alike in every row.

        :meth:`many` makes a dict a row, and :meth:`_Compiled.args` copies it
        and picks the values out again: for a thousand fences most of the
        insert's time. Here each bind processor runs over its column, a
        constant is processed once, and the rows are zipped from the columns.
        """
        c = self._compile(conn)
        cols = dict(columns)
        fixed = {**c.constants, **(same or {})}
        for key, process in c.binds:
            if key in cols:
                cols[key] = [process(v) for v in cols[key]]
            elif key in fixed:
                fixed[key] = process(fixed[key])
        lengths = set(map(len, cols.values()))
        if len(lengths) != 1:
            raise ValueError("columns of different lengths, or none")
        n = lengths.pop()
        if n == 0:
            return
        rows: Iterable[Any]
        if c.positional is None:
            names = tuple(cols)
            rows = [
                {**fixed, **dict(zip(names, row, strict=True))}
                for row in zip(*cols.values(), strict=True)
            ]
        else:
            if not c.names.issuperset(cols) or not c.names.issuperset(fixed):
                extra = (cols.keys() | fixed.keys()) - c.names
                raise ValueError(f"not parameters of the statement: {sorted(extra)}")
            # A list, not a generator, and constants as tuples: a punch stores
            # one event through here, and the overhead counts.
            rows = zip(
                *[cols[k] if k in cols else (fixed[k],) * n for k in c.positional], strict=True
            )
        cursor = driver(conn).cursor()
        try:
            cursor.executemany(c.sql, rows)
        finally:
            cursor.close()

    def all(
        self, conn: Connection, params: Mapping[str, Any], *, binary: bool = False
    ) -> list[tuple[Any, ...]]:
        """Every row, as tuples in the order of the selected columns.
        ``binary``: results in PostgreSQL's binary format (ignored on
        SQLite), where a large ``bytea`` arrives as its bytes rather than as
        hex text twice its size (a listed page: 9-13 ms against 15-21)."""
        return self.send(conn, params, binary=binary)()

    def send(
        self, conn: Connection, params: Mapping[str, Any], *, binary: bool = False
    ) -> Callable[[], list[tuple[Any, ...]]]:
        """Run with ``params``; what gives its rows (as :meth:`all`) when
        called. Inside :func:`together` the statement is only queued, so
        statements sent one after another are answered in one round trip."""
        c = self._compile(conn)
        if binary and conn.dialect.name == "postgresql":
            cursor = driver(conn).execute(c.sql, c.args(params), binary=True)
        else:
            cursor = driver(conn).execute(c.sql, c.args(params))

        def rows() -> list[tuple[Any, ...]]:
            got = cursor.fetchall()
            cursor.close()
            return got if c.results is None else [c.row(r) for r in got]

        return rows

    def int64_rows(
        self, conn: Connection, params: Mapping[str, Any], columns: int, size: int
    ) -> Iterator[np.ndarray]:
        """PostgreSQL: the rows, every column a non-null ``int8``, as int64
        arrays of ``columns`` a row and at least ``size`` rows (the last
        fewer), through a binary ``COPY`` of the statement in the
        connection's transaction. Its rows are then of one width, so numpy
        reads a block of them at once where a cursor makes a tuple a row:
        184 ms against a server-side cursor's 262 for 300,000 rows of four
        (bench/README.md, totals); only a block and the bytes of a row cut
        across two are held at a time."""
        c = self._compile(conn)
        row = np.dtype(
            [("fields", ">i2")]
            + [(f"{part}{i}", kind) for i in range(columns) for part, kind in _COPY_FIELD]
        )
        pending = bytearray()
        header = False
        statement = f"COPY ({c.sql}) TO STDOUT (FORMAT BINARY)"
        with driver(conn).cursor() as cursor, cursor.copy(statement, c.args(params)) as copy:
            for block in copy:
                pending += block
                if not header:
                    if len(pending) < len(_COPY_SIGNATURE) + 8:
                        continue
                    if not pending.startswith(_COPY_SIGNATURE):
                        raise ValueError("not a binary COPY of PostgreSQL")
                    at = len(_COPY_SIGNATURE) + 4  # past the flags
                    del pending[: at + 4 + int.from_bytes(pending[at : at + 4], "big")]
                    header = True
                if len(pending) >= size * row.itemsize:
                    whole = len(pending) // row.itemsize * row.itemsize
                    yield _int64_columns(bytes(pending[:whole]), row, columns)
                    del pending[:whole]
        whole = len(pending) // row.itemsize * row.itemsize
        if bytes(pending[whole:]) != b"\xff\xff":  # the trailer: a field count of -1
            raise ValueError("a binary COPY of PostgreSQL cut short")
        if whole:
            yield _int64_columns(bytes(pending[:whole]), row, columns)

    def mappings(self, conn: Connection, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Every row as a dict keyed by column name."""
        c = self._compile(conn)
        return [dict(zip(c.columns, row, strict=True)) for row in self.all(conn, params)]

    def first(self, conn: Connection, params: Mapping[str, Any]) -> dict[str, Any] | None:
        """The first row as a dict keyed by column name, or None."""
        c = self._compile(conn)
        cursor = self.execute(conn, params)
        row = cursor.fetchone()
        cursor.close()
        return None if row is None else dict(zip(c.columns, c.row(row), strict=True))


def _getter(keys: tuple[str, ...]) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
    """Values of ``keys`` out of a dict, as a tuple (``itemgetter`` in C)."""
    if len(keys) == 1:
        (key,) = keys
        return lambda params: (params[key],)
    if not keys:
        return lambda params: ()
    getter: Callable[[Mapping[str, Any]], tuple[Any, ...]] = itemgetter(*keys)
    return getter


#: PostgreSQL's binary COPY: its signature, and each field's length and value
#: as ``int8`` gives them (see ``Prepared.int64_rows``).
_COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
_COPY_FIELD = (("length", ">i4"), ("value", ">i8"))


def _int64_columns(data: bytes, row: np.dtype[Any], columns: int) -> np.ndarray:
    """Whole rows of a binary COPY as an int64 array."""
    rows = np.frombuffer(data, row)
    lengths = np.column_stack([rows[f"length{i}"] for i in range(columns)])
    if (rows["fields"] != columns).any() or (lengths != 8).any():
        raise ValueError(f"rows of {columns} non-null int8 expected")
    return np.column_stack([rows[f"value{i}"] for i in range(columns)]).astype(np.int64)


def driver(conn: Connection) -> Any:
    """The DBAPI connection under ``conn`` (sqlite3 or psycopg)."""
    return conn.connection.dbapi_connection


def in_seq_order(conn: Connection, key: int) -> None:
    """Let writers of one sequenced log take turns until they commit.

    Readers of such a log (the event log, the index change feed) read in seq
    order and move their cursor past what they saw. On PostgreSQL a seq is
    drawn at insert time and an earlier one may commit later, behind a
    reader's cursor; the transaction-scoped advisory lock ``key`` makes seq
    order commit order. SQLite has one writer at a time: nothing to do.
    A savepoint around it must be this module's ``savepoint`` (a rollback of
    ``begin_nested`` would drop the lock unseen).
    """
    if conn.dialect.name != "postgresql":
        return
    # Once a transaction: each lock statement is a round trip. A lock taken
    # inside a savepoint that is rolled back is released with it: ``savepoint``
    # forgets it then.
    held = _held(conn)
    if key in held:
        return
    # On the driver: inside a pipeline (see ``together``) it waits for nothing.
    driver(conn).execute("SELECT pg_advisory_xact_lock(%s)", (key,))
    held[key] = None


#: Users of one time clock in one call from which the call takes the whole
#: clock's turn instead of one a user (see :func:`in_turn_for`).
MOST_OWN_TURNS = 32


def in_turn_for(conn: Connection, owners: Iterable[tuple[int, int, int]]) -> None:
    """Let writers of the same (account, time clock, user) take turns until they commit.

    PostgreSQL checks an exclusion constraint after inserting the row, so two
    transactions inserting overlapping rows at once each wait for the other:
    a deadlock, which costs its victim a second (``deadlock_timeout``) and,
    on the group committer, every punch of its batch that second. Holding a
    lock per owner before writing its rows makes the second writer wait for
    the first to commit and then meet a plain exclusion violation (a lost
    race, retried).

    A user's turn is the time clock's lock, shared, and the user's lock. A
    call writing more than ``MOST_OWN_TURNS`` users of one clock (an import)
    takes the clock's lock alone, exclusive: a lock a user would let a few
    concurrent imports of a thousand users fill PostgreSQL's lock table
    (``max_locks_per_transaction`` a connection), which fails every
    transaction that needs a lock meanwhile.

    Every writer takes these locks in (account, time clock, user) order, the
    clock's before its users' (the group committer sorts its batch the same
    way), and the event log's seq lock only at commit, after all of them, so
    waits never run in a circle (the index feed's seq lock is taken by admin
    writes of time clocks and fences, which take no turns). Two-key advisory
    locks: a key space apart from ``in_seq_order``'s. SQLite has one writer
    at a time: nothing to do.
    """
    if conn.dialect.name != "postgresql":
        return
    held = _held(conn)
    users_of: dict[tuple[int, int], set[int]] = {}
    for account, clock, user in owners:
        users_of.setdefault((account, clock), set()).add(user)
    wanted: list[tuple[tuple[int, int], bool]] = []  # (key, shared)
    noted: list[Any] = []
    for account, clock in sorted(users_of):
        whole = _turn_key(account, clock, None)
        if (_ALONE, whole) in held:
            continue  # this transaction has the whole clock's turn
        users = users_of[(account, clock)]
        if len(users) > MOST_OWN_TURNS:
            wanted.append((whole, False))
            noted.append((_ALONE, whole))
            continue
        if (_BESIDE, whole) not in held:
            wanted.append((whole, True))
            noted.append((_BESIDE, whole))
        for user in sorted(users):
            key = _turn_key(account, clock, user)
            if key not in held:
                wanted.append((key, False))
                noted.append(key)
    if not wanted:
        return
    # ``unnest`` yields the keys in the order given; the locks are volatile,
    # so they are taken row by row in that order.
    driver(conn).execute(
        "SELECT CASE WHEN s THEN pg_advisory_xact_lock_shared(a, b) "
        "ELSE pg_advisory_xact_lock(a, b) END "
        "FROM unnest(%s::int4[], %s::int4[], %s::bool[]) AS k(a, b, s)",
        ([k[0] for k, _ in wanted], [k[1] for k, _ in wanted], [s for _, s in wanted]),
    )
    held.update(dict.fromkeys(noted))


#: How a clock's lock is held, in the held list: alone (exclusive) or beside
#: other writers of its other users (shared).
_ALONE, _BESIDE = "alone", "beside"


def _turn_key(account: int, clock: int, user: int | None) -> tuple[int, int]:
    """Two signed 32-bit halves of a 64-bit digest of the owner (``user``
    None: the whole clock); a collision only makes two owners take turns."""
    fields = (account, clock, 0 if user is None else 1, user or 0)
    digest = hashlib.blake2b(struct.pack("<2qBq", *fields), digest_size=8).digest()
    first, second = struct.unpack("<2i", digest)
    return first, second


#: Under ``until_commit``'s name: the advisory locks the transaction holds (``_held``).
_HELD = "locks"

#: In a connection's ``info``: (its transaction, its lists by name).
_UNTIL_COMMIT = "geopunch_until_commit"


def until_commit(conn: Connection, name: str) -> list[Any]:
    """The list ``name`` of the connection's current transaction (a new
    transaction starts with an empty one). What is added inside a savepoint
    that is rolled back leaves the list with it (see :func:`savepoint`)."""
    items: list[Any] = _kept(conn, name, list)
    return items


def _held(conn: Connection) -> dict[Any, None]:
    """The advisory locks the transaction holds, as noted, like
    :func:`until_commit`'s lists: a dict, so that a batch's hundreds of
    locks are looked up at once, in the order they were taken."""
    held: dict[Any, None] = _kept(conn, _HELD, dict)
    return held


def _kept(conn: Connection, name: str, kind: type) -> Any:
    by_name = _this_transactions(conn)
    if by_name is None:
        by_name = {}
        conn.info[_UNTIL_COMMIT] = (conn.get_transaction(), by_name)
    items = by_name.get(name)
    if items is None:
        items = by_name[name] = kind()
    return items


def _this_transactions(conn: Connection) -> dict[str, Any] | None:
    """What is kept for the connection's current transaction, by name (None:
    nothing yet; what an earlier transaction kept is not its)."""
    kept = conn.info.get(_UNTIL_COMMIT)
    if kept is None or kept[0] is not conn.get_transaction():
        return None
    by_name: dict[str, Any] = kept[1]
    return by_name


def _lengths(conn: Connection) -> dict[str, int]:
    by_name = _this_transactions(conn) or {}
    return {name: len(items) for name, items in by_name.items()}


def _cut_back(conn: Connection, lengths: dict[str, int]) -> None:
    for name, items in (_this_transactions(conn) or {}).items():
        keep = lengths.get(name, 0)
        if isinstance(items, dict):
            for key in list(items)[keep:]:
                del items[key]
        else:
            del items[keep:]


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
    lengths = _lengths(conn)
    raw.execute(f"SAVEPOINT {name}")
    try:
        yield
    except BaseException:
        raw.execute(f"ROLLBACK TO SAVEPOINT {name}")
        raw.execute(f"RELEASE SAVEPOINT {name}")
        # The locks taken since are gone with the savepoint, and what was
        # set aside for the commit since is undone with it.
        _cut_back(conn, lengths)
        raise
    raw.execute(f"RELEASE SAVEPOINT {name}")


#: In a connection's ``info`` while :func:`together` runs: checks for its end.
_AFTER_SYNC = "geopunch_after_sync"


@contextmanager
def together(conn: Connection, *, then_commit: bool = False) -> Iterator[None]:
    """Send the statements run inside to PostgreSQL in one pipeline.

    A punch's writes (the activities closed and added, its event, its
    idempotency key) were a round trip each on the group committer's one
    thread. Inside this block they go out together and are answered in one
    round trip at its end, where the store's refusal of any of them is
    raised; :func:`after_sync` defers the checks that read their results.
    Reads inside still work (a fetch sends what is queued first). A block
    inside another is part of the outer one. On other stores the statements
    run one by one, as outside it.

    With ``then_commit`` an outermost block sends the transaction's COMMIT in
    the same round trip as its statements, unless a check is waiting for
    their answers (a check that fails must leave the transaction to be
    rolled back); the caller's commit afterwards then finds nothing to send.
    """
    if conn.dialect.name != "postgresql" or _AFTER_SYNC in conn.info:
        yield  # inside another, whose end answers these too
        return
    checks: list[Callable[[], None]] = []
    conn.info[_AFTER_SYNC] = checks
    try:
        with driver(conn).pipeline():
            yield
            if then_commit and not checks:
                # The COMMIT rides with the block's statements; the driver's
                # commit after it finds the transaction ended and sends nothing.
                driver(conn).execute("COMMIT")
    finally:
        del conn.info[_AFTER_SYNC]
    for check in checks:
        check()


def after_sync(conn: Connection, check: Callable[[], None]) -> None:
    """Run ``check`` now, or at the end of the enclosing :func:`together`,
    once the results it reads have come back."""
    later = conn.info.get(_AFTER_SYNC)
    if later is None:
        check()
    else:
        later.append(check)


class PreparedIn:
    """A statement filtering on an IN list, prepared for list lengths 1, 2, 4 ... ``most``.

    ``build(n)`` returns the statement for ``n`` values, bound as ``v0``,
    ``v1`` ... (see :func:`in_values`). A list is cut into chunks of at most
    ``most`` values and each chunk padded with its last value up to the next
    prepared length, which changes no IN answer and keeps a handful of
    compiled statements instead of one per length.

    ``postgresql``, when given, is the statement PostgreSQL runs instead: it
    takes every value at once as one array parameter ``vs``. psycopg prepares
    a statement on its fifth run and PostgreSQL then plans it once for any
    values; in such a generic plan an IN list is an array built from its
    parameters, and where the list filters rows rather than probing an index
    it is built again for every row (the board's read of 64 users: 3.0 ms
    against 1.0 ms planned for the values; bench/README.md).
    """

    def __init__(
        self,
        build: Callable[[int], ClauseElement],
        most: int = 256,
        postgresql: ClauseElement | None = None,
    ) -> None:
        self._build = build
        self._most = most
        self._by_size: dict[int, Prepared] = {}
        self._postgresql = None if postgresql is None else Prepared(postgresql)

    def _chunks(
        self, values: Sequence[Any], extra: Mapping[str, Any]
    ) -> Iterator[tuple[Prepared, dict[str, Any]]]:
        for start in range(0, len(values), self._most):
            chunk = padded(list(values[start : start + self._most]))
            stmt = self._by_size.get(len(chunk))
            if stmt is None:
                stmt = self._by_size[len(chunk)] = Prepared(self._build(len(chunk)))
            yield stmt, {**extra, **{f"v{i}": v for i, v in enumerate(chunk)}}

    def all(
        self, conn: Connection, values: Sequence[Any], extra: Mapping[str, Any] = {}
    ) -> list[tuple[Any, ...]]:
        """Rows for all ``values``, chunk after chunk; ``extra`` binds the
        statement's other parameters."""
        return self.send(conn, values, extra)()

    def send(
        self, conn: Connection, values: Sequence[Any], extra: Mapping[str, Any] = {}
    ) -> Callable[[], list[tuple[Any, ...]]]:
        """As :meth:`Prepared.send`: queued inside :func:`together` where
        PostgreSQL takes the values as one array; run at once otherwise."""
        if self._postgresql is not None and conn.dialect.name == "postgresql":
            return self._postgresql.send(conn, {**extra, "vs": list(values)})
        out: list[tuple[Any, ...]] = []
        for stmt, params in self._chunks(values, extra):
            out += stmt.all(conn, params)
        return lambda: out

    def cursors(
        self, conn: Connection, values: Sequence[Any], extra: Mapping[str, Any] = {}
    ) -> Iterator[Any]:
        """The driver's cursor of each statement run for ``values`` (one on
        PostgreSQL), one after the other, for rows read a chunk at a time."""
        if self._postgresql is not None and conn.dialect.name == "postgresql":
            yield self._postgresql.execute(conn, {**extra, "vs": list(values)})
            return
        for stmt, params in self._chunks(values, extra):
            yield stmt.execute(conn, params)


def padded(values: list[Any]) -> list[Any]:
    """``values`` grown to the next power of two with its last value (none
    stay none), which changes no IN answer: a statement prepared per padded
    length serves every list up to it."""
    size = 1 << (len(values) - 1).bit_length() if values else 0
    return values + values[-1:] * (size - len(values))


def in_values(n: int) -> list[Any]:
    """Parameters ``v0`` ... for :class:`PreparedIn`."""
    return [bindparam(f"v{i}") for i in range(n)]
