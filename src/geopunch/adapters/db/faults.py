"""What a driver's error says about the store, for the caller's answer.

Two kinds are told apart from a defect (answered INTERNAL with a request id):

- a transaction the store chose to run again (a deadlock's victim, a
  serialization failure): :class:`ConcurrentChange`, which the use cases
  retry;
- a store that cannot do the work now, though nothing is wrong with the
  call: unreachable, restarting, timed out, locked, full.
  :class:`StoreUnavailable`, which both APIs answer UNAVAILABLE (HTTP 503),
  the code clients retry on.

The second must not read as a defect: clients retry UNAVAILABLE (the slim
client's offline queue keeps such a punch for later, where it sets a
refused one aside), and a restart or failover of the database should not
fill the log with a stack a call.
"""

from __future__ import annotations

import logging
import sqlite3
import sys
from typing import Any

from sqlalchemy import exc as sa_exc

from geopunch import metrics
from geopunch.domain.errors import ConcurrentChange, StoreUnavailable
from geopunch.logs import Throttle, first_line

log = logging.getLogger("geopunch")

#: SQLSTATEs of a transaction that lost to another one and may simply run
#: again: deadlock_detected, serialization_failure.
_TRANSIENT_SQLSTATES = frozenset({"40P01", "40001"})

#: Why a store cannot answer now, by reason: the sentence callers read.
SENTENCES = {
    "unreachable": "the store cannot be reached",
    "restarting": "the store is restarting",
    "timed_out": "the store did not answer in time",
    "busy": "the store is held by another transaction",
    "full": "the store has no room left",
    "read_only": "the store takes no writes (a standby)",
    "pool_exhausted": "every connection to the store is in use",
}

#: PostgreSQL SQLSTATEs (and classes, two characters) of a store that cannot
#: answer now, and the reason each is counted under.
_PG_REASONS = {
    "08": "unreachable",  # connection exceptions
    "57P01": "restarting",  # admin_shutdown
    "57P02": "restarting",  # crash_shutdown
    "57P03": "restarting",  # cannot_connect_now
    "53300": "unreachable",  # too_many_connections
    "57014": "timed_out",  # query_canceled: statement_timeout, or an operator's cancel
    "55P03": "busy",  # lock_not_available
    "53100": "full",  # disk_full
    "53200": "full",  # out_of_memory
    "25006": "read_only",  # read_only_sql_transaction: a standby after a failover
    "58": "unreachable",  # system errors: I/O on the server's side
}

#: SQLite's primary result codes of the same: BUSY, LOCKED, NOMEM, IOERR,
#: FULL, CANTOPEN. Other OperationalErrors (a syntax error, a missing
#: table) are defects.
_SQLITE_REASONS = {
    5: "busy",
    6: "busy",
    7: "full",
    10: "unreachable",
    13: "full",
    14: "unreachable",
}

# At most one line in ten seconds for each reason: during an outage every
# call fails the same way, and its access line already says so.
_throttle = Throttle(every_s=10.0)


def _sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a driver error, raw (prepared statements run on the
    driver) or wrapped by SQLAlchemy."""
    for candidate in (exc, getattr(exc, "orig", None)):
        state = getattr(candidate, "sqlstate", None)
        if isinstance(state, str):
            return state
    return None


def transient(exc: BaseException) -> bool:
    """Whether ``exc`` is the store telling a transaction to run again."""
    return _sqlstate(exc) in _TRANSIENT_SQLSTATES


def as_conflict(exc: BaseException) -> ConcurrentChange:
    code = _sqlstate(exc)
    log.info("store conflict, retried", extra={"fields": {"sqlstate": code}})
    return ConcurrentChange(f"the store chose this transaction to run again ({code})")


class WriterLockTimeout(TimeoutError):
    """SQLite's writer lock (``store.WriterLock``) stayed held by another
    writer for the whole store timeout."""


def unavailable_reason(exc: BaseException) -> str | None:
    """The reason (a key of :data:`SENTENCES`) when ``exc`` says the store
    cannot answer now; None for anything else."""
    if isinstance(exc, WriterLockTimeout):
        return "busy"
    if isinstance(exc, sa_exc.TimeoutError):  # the pool's wait for a connection
        return "pool_exhausted"
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return "unreachable"
    raw = getattr(exc, "orig", None) or exc
    if isinstance(raw, sqlite3.OperationalError):
        return _SQLITE_REASONS.get(getattr(raw, "sqlite_errorcode", 0) & 0xFF)
    state = _sqlstate(exc)
    if state is not None:
        return _PG_REASONS.get(state) or _PG_REASONS.get(state[:2])
    # psycopg's own failures have no SQLSTATE: a refused, lost or timed-out
    # connection. Loaded only when PostgreSQL is used.
    psycopg: Any = sys.modules.get("psycopg")
    if psycopg is not None and isinstance(raw, psycopg.OperationalError):
        return "unreachable"
    return None


def explain(exc: BaseException) -> str | None:
    """For an operator at a command line: what is wrong with the store, with
    the driver's own first line (``connection refused``, ``database is
    locked``); None when ``exc`` is not the store being unavailable."""
    if isinstance(exc, StoreUnavailable):
        cause = exc.__cause__
        said = SENTENCES.get(exc.reason, exc.message)
        return f"{said}: {first_line(cause)}" if cause is not None else said
    reason = unavailable_reason(exc)
    return None if reason is None else f"{SENTENCES[reason]}: {first_line(exc)}"


def as_unavailable(exc: BaseException) -> StoreUnavailable | None:
    """``exc`` as :class:`StoreUnavailable`, if it is one; logged (at most a
    line in ten seconds for each reason, with the driver's first line and no
    stack) and counted."""
    if isinstance(exc, StoreUnavailable):
        return exc
    reason = unavailable_reason(exc)
    if reason is None:
        return None
    metrics.STORE_UNAVAILABLE.labels(reason).inc()
    dropped = _throttle.admit(reason)
    if dropped is not None:
        fields = {"reason": reason, "sqlstate": _sqlstate(exc), "error": first_line(exc)}
        log.warning("store unavailable", extra={"fields": {**fields, "suppressed": dropped}})
    return StoreUnavailable(reason, f"{SENTENCES[reason]}; retry shortly")
