"""The query that gives a full build of the fence index its rows, and the
reader that runs it beside start-up: through ADBC's drivers in a process of
its own (``fence_columns`` says why both)."""

from __future__ import annotations

import pickle
import subprocess
import sys
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

from sqlalchemy import ColumnElement, Engine, Select, case, func, select

from geopunch.adapters.db.tables import geofence_jobs, geofences, index_changes
from geopunch.domain.locations import EXIT_ACTION_CODES
from geopunch.domain.ports import FenceSnapshot

#: The index change feed's newest seq: the cursor a start-up's load reads
#: (``SqlIndexChangeRepository.last``) and the one the reader beside it
#: reads with its rows. Their equality is what lets the load use those rows.
NEWEST_INDEX_CHANGE = select(func.max(index_changes.c.seq))


def enabled_fences(account: int) -> Select[Any]:
    """The enabled fences of ``account``, as ``fence_rows`` gives them."""
    return fence_rows(geofences.c.account_id == account)


def fence_rows(where: ColumnElement[bool]) -> Select[Any]:
    """The enabled fences that ``where`` picks, one row a fence and job: a
    fence bound to k jobs comes as k rows in a row, and one that names none
    as one row whose job is ''. One query for fences and jobs: a query of
    its own for the bindings would walk every fence again."""
    return (
        select(
            geofences.c.time_clock_id,
            geofences.c.id,
            geofences.c.latitude,
            geofences.c.longitude,
            geofences.c.fence_size_m,
            # As codes: a small int is no new object, a string is.
            case(
                {str(a): code for a, code in EXIT_ACTION_CODES.items()},
                value=geofences.c.exit_action,
            ),
            # '' rather than NULL: ADBC's SQLite driver types a column by its
            # first batch, and a batch of NULLs would make this one an int.
            func.coalesce(geofence_jobs.c.job_id, ""),
        )
        .select_from(geofences.outerjoin(geofence_jobs, geofence_jobs.c.fence_id == geofences.c.id))
        .where(where & geofences.c.is_enabled.is_(True))
        # By clock first: the index on (account, clock, position) orders most
        # of it, and the engine groups fences by clock anyway; a clock's own
        # fences keep their creation order, a fence's jobs theirs.
        .order_by(
            geofences.c.time_clock_id,
            geofences.c.position,
            geofences.c.id,
            geofence_jobs.c.position,
        )
    )


class ArrowFenceReader:
    """Reads a SQLite file's or a PostgreSQL database's enabled fences in a
    child process (a ``FenceSnapshotReader``): while it reads, this process's
    interpreter is free for the rest of start-up, and the other core (or the
    database server) does the reading."""

    #: Below this many stored fences the child is not worth starting: its
    #: interpreter and imports take about 0.3 s, the unit of work's own read
    #: of 50,000 fences about 0.15 s.
    MIN_FENCES = 50_000
    #: Rows per Arrow batch of SQLite's driver (its default is 1,024): fewer,
    #: larger chunks to fold.
    BATCH_ROWS = 65_536

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        url = engine.url
        if url.get_backend_name() == "sqlite":
            # Read-only: the child never writes, nor creates a missing file.
            self._driver, self._uri = "sqlite", f"file:{quote(url.database or '')}?mode=ro"
            self._first_sql = None
        else:  # libpq's URI: the same host, database, user and options
            self._driver = "postgresql"
            self._uri = url.set(drivername="postgresql").render_as_string(hide_password=False)
            # Every statement of the transaction in one snapshot.
            self._first_sql = "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"

    def __call__(self, accounts: Sequence[int]) -> FenceSnapshot | None:
        if self._stored_fences() < self.MIN_FENCES:
            return None
        options = (
            {"adbc.sqlite.query.batch_rows": str(self.BATCH_ROWS)}
            if self._driver == "sqlite"
            else {}
        )
        request = {
            "driver": self._driver,
            # On stdin, not in the child's arguments: the URI may hold a password.
            "uri": self._uri,
            "first_sql": self._first_sql,
            "newest_sql": self._sql(NEWEST_INDEX_CHANGE),
            "accounts": [(a, self._sql(enabled_fences(a))) for a in accounts],
            "statement_options": options,
        }
        child = subprocess.Popen(
            [sys.executable, "-m", "geopunch.adapters.db.fence_columns"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert child.stdin is not None and child.stdout is not None and child.stderr is not None
        try:
            with child.stdin:
                child.stdin.write(pickle.dumps(request))
            try:
                # Straight from the pipe: each array's bytes are read once,
                # into the array itself.
                cursor, rows = pickle.load(child.stdout)
            except (EOFError, pickle.UnpicklingError):  # it failed: stderr says why
                cursor = rows = None
            why = child.stderr.read().decode(errors="replace")
        finally:
            code = child.wait()
            child.stdout.close()
            child.stderr.close()
        if code != 0 or rows is None:
            raise RuntimeError(f"the fence reader exited with {code}: {why[-2000:]}")
        return FenceSnapshot(cursor, rows)

    def _sql(self, stmt: Select[Any]) -> str:
        # Only ints and fixed strings of the server's own are rendered inline.
        compiled = stmt.compile(
            dialect=self._engine.dialect, compile_kwargs={"literal_binds": True}
        )
        return str(compiled)

    def _stored_fences(self) -> int:
        """How many fences are stored, counted up to ``MIN_FENCES``."""
        some = select(geofences.c.id).limit(self.MIN_FENCES).subquery()
        with self._engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(some)).scalar_one())
