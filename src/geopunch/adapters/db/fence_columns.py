"""Enabled fences into columns (``FenceRows``): the fold both of the
store's readers share, and the program that reads a store's fences through
ADBC's SQLite or PostgreSQL driver into Arrow, run as a process of its own
(``python -m geopunch.adapters.db.fence_columns``) by ``ArrowFenceReader``.

Why ADBC: the ``sqlite3`` and ``psycopg`` drivers make a tuple a row and an
object a value, and the columns are then made from those; for a million
fences that took 2.5-3.4 s on SQLite and 4.0 s on PostgreSQL, where ADBC's
reads into Arrow columns take 1.2-1.5 s and 2.5 s (PostgreSQL's binary
``COPY``) and make no object a row (bench/README.md, start-up).

Why a process of its own: the SQLite driver carries its own copy of
SQLite, and two copies of SQLite in one process break SQLite's locking.
POSIX locks belong to the process, so when one copy closes the database file
the locks the other holds on it go too (SQLite's own list of ways to corrupt
a database names this). Read in the server's process, it left the server's
connections blind to other processes' commits (tests/e2e/test_accounts.py
caught it). The PostgreSQL driver has no such trouble, but brings its own
libpq and OpenSSL; one way for both keeps one path to test.
"""

from __future__ import annotations

import importlib
import pickle
import sys
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from itertools import pairwise
from typing import Any

import numpy as np
import numpy.typing as npt

from geopunch.domain.locations import FenceRows


class FenceColumnsBuilder:
    """The rows of ``enabled_fences``, added a chunk of columns at a time,
    folded into one ``FenceRows``."""

    _NAMES = ("clocks", "ids", "lats", "lons", "sizes", "actions")

    def __init__(self) -> None:
        self._parts: dict[str, list[npt.NDArray[Any]]] = {name: [] for name in self._NAMES}
        self._bound_at: list[npt.NDArray[np.intp]] = []
        self._bound_jobs: list[str] = []
        self._read = 0

    def add(
        self,
        columns: Sequence[npt.NDArray[Any]],
        bound: npt.NDArray[np.intp],
        jobs: list[str],
    ) -> None:
        """One chunk: its six columns in ``_NAMES``' order (ids as ``S<w>``),
        the rows in it that name a job, and those jobs."""
        for name, column in zip(self._NAMES, columns, strict=True):
            self._parts[name].append(column)
        self._bound_at.append(bound + self._read)
        self._bound_jobs.extend(jobs)
        self._read += len(columns[0])

    def rows(self) -> FenceRows:
        if not self._read:
            return FenceRows.of(())
        col = {name: np.concatenate(arrays) for name, arrays in self._parts.items()}
        self._parts.clear()
        bound = np.concatenate(self._bound_at)
        jobs = self._bound_jobs
        job_ids: dict[int, tuple[str, ...]]
        # Rows after the first of a fence bound to several jobs: only rows
        # that name a job can repeat the row before (the ids of those alone
        # are compared, a fifth of the rows in a typical fleet).
        repeats = bound[bound > 0]
        repeats = repeats[col["ids"][repeats] == col["ids"][repeats - 1]]
        if repeats.size:
            again = np.zeros(self._read, dtype=bool)
            again[repeats] = True
            fence_of_row = np.cumsum(~again) - 1
            grouped: dict[int, list[str]] = {}
            for row, job_id in zip(fence_of_row[bound].tolist(), jobs, strict=True):
                grouped.setdefault(row, []).append(job_id)
            job_ids = {row: tuple(names) for row, names in grouped.items()}
            col = {name: array[~again] for name, array in col.items()}
        else:  # one job a bound fence: rows are fences
            job_ids = dict(zip(bound.tolist(), zip(jobs), strict=True))
        return FenceRows(
            time_clock_ids=col["clocks"].astype(np.int64, copy=False),
            ids=col["ids"],
            latitudes=col["lats"].astype(np.float64, copy=False),
            longitudes=col["lons"].astype(np.float64, copy=False),
            sizes_m=col["sizes"].astype(np.float64, copy=False),
            exit_actions=col["actions"].astype(np.int8, copy=False),
            job_ids=job_ids,
        )


def read_arrow(
    driver: str,
    uri: str,
    first_sql: str | None,
    newest_sql: str,
    accounts: Sequence[tuple[int, str]],
    statement_options: dict[str, str],
) -> tuple[int, dict[int, FenceRows]]:
    """The newest seq ``newest_sql`` gives and each account's fences (the
    rows of its query), in one read transaction of the database at ``uri``
    through ADBC's ``driver`` ("sqlite" or "postgresql"), which ``first_sql``
    opens when given (PostgreSQL: one snapshot for every statement)."""
    import adbc_driver_manager

    connect = importlib.import_module(f"adbc_driver_{driver}").connect
    with (
        closing(connect(uri)) as database,
        closing(adbc_driver_manager.AdbcConnection(database)) as conn,
    ):
        # One transaction: the feed's newest change and the rows are of one snapshot.
        conn.set_autocommit(False)
        try:
            if first_sql is not None:
                with closing(adbc_driver_manager.AdbcStatement(conn)) as statement:
                    statement.set_sql_query(first_sql)
                    statement.execute_update()
            with _query(conn, newest_sql, statement_options) as newest:
                cursor = newest.read_all().column(0)[0].as_py() or 0
            rows = {}
            for account, sql in accounts:
                with _query(conn, sql, statement_options) as batches:
                    rows[account] = _fence_rows(batches)
        finally:
            conn.rollback()
    return int(cursor), rows


@contextmanager
def _query(conn: Any, sql: str, options: dict[str, str]) -> Iterator[Any]:
    """The result of ``sql`` as a ``pyarrow.RecordBatchReader``. SQLite's
    driver types each column by its first batch: the columns read have one
    SQLite storage class each (see ``fence_rows.enabled_fences``)."""
    import adbc_driver_manager
    import pyarrow as pa

    with closing(adbc_driver_manager.AdbcStatement(conn)) as statement:
        if options:
            statement.set_options(**options)
        statement.set_sql_query(sql)
        stream, _ = statement.execute_query()
        with pa.RecordBatchReader.from_stream(stream) as batches:
            yield batches


def _fence_rows(batches: Any) -> FenceRows:
    built = FenceColumnsBuilder()
    for batch in batches:
        clocks, ids, lats, lons, sizes, actions, jobs = batch.columns
        bound, names = _nonempty(jobs)
        built.add(
            (
                _values(clocks),
                _fixed_width(ids),
                _values(lats),
                _values(lons),
                _values(sizes),
                _values(actions),
            ),
            bound,
            names,
        )
    return built.rows()


# The arrays are read from their buffers here: pyarrow's own conversions
# (``to_numpy``, ``take``, ``filter``) load ``pyarrow.compute`` and, through
# their checks for pandas types, pandas when installed: 20-50 MB of a
# server's memory for good.


def _values(column: Any) -> npt.NDArray[Any]:
    """A primitive Arrow array (no NULLs: every column read is NOT NULL) as
    numpy, a view of its buffer."""
    if column.null_count:
        raise ValueError(f"a NULL in a fence column of type {column.type}")
    dtype = np.dtype(str(column.type))  # "int64", "double"
    return np.frombuffer(column.buffers()[1], dtype, len(column), column.offset * dtype.itemsize)


def _buffers(strings: Any) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.uint8]]:
    """An Arrow string array's offsets (n + 1) and its UTF-8 bytes."""
    if str(strings.type) != "string" or strings.null_count:  # 32-bit offsets, no NULLs
        raise ValueError(f"a fence column of {strings.type} with {strings.null_count} NULLs")
    _, offsets, data = strings.buffers()
    n = len(strings)
    at = np.frombuffer(offsets, np.int32, n + 1, strings.offset * 4)
    return at, np.frombuffer(data, np.uint8) if data is not None else np.zeros(0, np.uint8)


def _nonempty(strings: Any) -> tuple[npt.NDArray[np.intp], list[str]]:
    """Where an Arrow string array's strings are not empty, and those strings."""
    offsets, data = _buffers(strings)
    at = np.flatnonzero(np.diff(offsets))
    raw = data.tobytes()
    starts = offsets[at].tolist()
    ends = offsets[at + 1].tolist()
    return at, [raw[s:e].decode() for s, e in zip(starts, ends, strict=True)]


def _fixed_width(strings: Any) -> npt.NDArray[np.bytes_]:
    """An Arrow string array as ``S<w>`` (UTF-8, NUL-padded to the longest),
    as the index keeps fence ids."""
    offsets, data = _buffers(strings)
    lengths = np.diff(offsets)
    width = max(int(lengths.max(initial=0)), 1)
    used = data[offsets[0] : offsets[-1]]
    if lengths.size and (lengths == width).all():  # ids of one length: the bytes as they are
        return used.copy().view(f"S{width}")
    # Ids of several lengths: cut from one bytes object, padded by numpy
    # (about 0.15 s a million; numpy's scatter of the bytes into a padded
    # block took 1.6 s).
    raw = used.tobytes()
    at = (offsets - offsets[0]).tolist()
    return np.array([raw[s:e] for s, e in pairwise(at)], dtype=f"S{width}")


def main() -> None:
    """Reads the request ``ArrowFenceReader`` pickles to stdin (``read_arrow``'s
    arguments) and pickles the answer to stdout; a failure exits non-zero
    with its traceback on stderr."""
    request = pickle.load(sys.stdin.buffer)
    answer = read_arrow(**request)
    pickle.dump(answer, sys.stdout.buffer, protocol=pickle.HIGHEST_PROTOCOL)
    sys.stdout.buffer.flush()


if __name__ == "__main__":
    main()
