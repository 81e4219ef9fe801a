"""A durable punch queue for devices that lose their connection.

Punches are stored in a SQLite file on the device the moment they happen,
each with its own time and idempotency key, and sent oldest-first when the
server can be reached:

- a punch younger than the server's limit for live punches (12 hours, less
  a margin for clock skew) goes as itself, with its key;
- older ones cannot be live punches any more: each user's old punches are
  paired into completed shifts and manual breaks (clock-in to clock-out or
  to a break's start, break start to break end, a resumed shift from the
  break's end) and sent with ``CreateTimeActivities`` under a key made from
  the punches' own keys. A chain that is not complete yet (the user is
  still clocked in) waits for the punch that completes it.

A row leaves the queue only in the local transaction that follows the
server's answer. A device that dies mid-flush sends the same rows again,
with the same keys and bodies, and the server answers them as the first
time: nothing is lost and nothing is punched twice. Punches the server
refuses (a user not on the clock, a shift longer than allowed) move to the
``rejected`` table with the server's status, for the application to show.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import grpc

from geopunch_client._client import (
    PUNCH_REQUESTS,
    RETRYABLE,
    GeopunchClient,
    new_idempotency_key,
)
from geopunch_client.v1 import timeclock_pb2

#: The server refuses live punches older than 12 hours; a queued punch is
#: routed to time activities a little before that, for clocks that differ.
LIVE_LIMIT_S = 12 * 3600 - 600

_SCHEMA = """
CREATE TABLE IF NOT EXISTS queued (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    time_clock_id INTEGER NOT NULL,
    user_id INTEGER NOT NULL,
    timestamp INTEGER NOT NULL,
    idempotency_key TEXT NOT NULL UNIQUE,
    request BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS splits (
    head_seq INTEGER PRIMARY KEY,
    at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS rejected (
    seq INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    time_clock_id INTEGER NOT NULL,
    user_id INTEGER NOT NULL,
    timestamp INTEGER NOT NULL,
    idempotency_key TEXT NOT NULL,
    request BLOB NOT NULL,
    status TEXT NOT NULL,
    message TEXT NOT NULL,
    rejected_at INTEGER NOT NULL
);
"""


@dataclass(frozen=True)
class Queued:
    seq: int
    kind: str
    time_clock_id: int
    user_id: int
    timestamp: int
    idempotency_key: str
    request: Any


@dataclass
class FlushReport:
    #: Punches sent as live punches.
    sent: int = 0
    #: Punches sent as parts of time activities, and the activities made.
    routed: int = 0
    activities: int = 0
    #: Punches the server refused (now in the ``rejected`` table).
    rejected: int = 0
    #: Still queued: waiting for the server, or for the punch completing a chain.
    remaining: int = 0
    #: The flush stopped because the server could not be reached.
    offline: bool = False


class _Offline(Exception):
    """The server is away: stop flushing, keep everything."""


class OfflineQueue:
    """Punches kept in the SQLite file ``path`` until :meth:`flush` delivers them."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Callable[[], float] = time.time,
        live_limit_s: int = LIVE_LIMIT_S,
    ) -> None:
        # Autocommit mode: every write below is its own durable transaction
        # unless wrapped in BEGIN ... COMMIT.
        self._db = sqlite3.connect(os.fspath(path), isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._clock = clock
        self._live_limit_s = live_limit_s

    def close(self) -> None:
        self._db.close()

    # --- recording punches --------------------------------------------------------
    def _add(self, kind: str, request: Any, timestamp: float | None) -> str:
        request.timestamp = int(self._clock() if timestamp is None else timestamp)
        if not request.idempotency_key:
            request.idempotency_key = new_idempotency_key()
        self._db.execute(
            "INSERT INTO queued (kind, time_clock_id, user_id, timestamp, idempotency_key, request)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (
                kind,
                request.time_clock_id,
                request.user_id,
                request.timestamp,
                request.idempotency_key,
                request.SerializeToString(deterministic=True),
            ),
        )
        return str(request.idempotency_key)

    def clock_in(
        self,
        time_clock_id: int,
        user_id: int,
        *,
        job_id: str = "",
        timestamp: float | None = None,
        **fields: Any,
    ) -> str:
        """Queue a clock-in (at ``timestamp``, default now); its idempotency key."""
        req = timeclock_pb2.ClockInRequest(
            time_clock_id=time_clock_id, user_id=user_id, job_id=job_id, **fields
        )
        return self._add("clock_in", req, timestamp)

    def clock_out(
        self, time_clock_id: int, user_id: int, *, timestamp: float | None = None, **fields: Any
    ) -> str:
        req = timeclock_pb2.ClockOutRequest(time_clock_id=time_clock_id, user_id=user_id, **fields)
        return self._add("clock_out", req, timestamp)

    def start_break(
        self,
        time_clock_id: int,
        user_id: int,
        manual_break_id: str,
        *,
        timestamp: float | None = None,
        **fields: Any,
    ) -> str:
        req = timeclock_pb2.StartManualBreakRequest(
            time_clock_id=time_clock_id, user_id=user_id, manual_break_id=manual_break_id, **fields
        )
        return self._add("start_break", req, timestamp)

    def end_break(
        self,
        time_clock_id: int,
        user_id: int,
        *,
        resume_shift: bool = True,
        timestamp: float | None = None,
        **fields: Any,
    ) -> str:
        req = timeclock_pb2.EndManualBreakRequest(
            time_clock_id=time_clock_id, user_id=user_id, is_resume_shift=resume_shift, **fields
        )
        return self._add("end_break", req, timestamp)

    # --- reading ------------------------------------------------------------------
    def pending(self) -> list[Queued]:
        rows = self._db.execute(
            "SELECT seq, kind, time_clock_id, user_id, timestamp, idempotency_key, request"
            " FROM queued ORDER BY seq"
        ).fetchall()
        return [
            Queued(seq, kind, tc, user, ts, key, PUNCH_REQUESTS[kind].FromString(blob))
            for seq, kind, tc, user, ts, key, blob in rows
        ]

    def rejected(self) -> list[tuple[str, str, str]]:
        """(idempotency key, status code name, message) of refused punches, oldest first."""
        rows = self._db.execute(
            "SELECT idempotency_key, status, message FROM rejected ORDER BY seq"
        ).fetchall()
        return [(str(k), str(s), str(m)) for k, s, m in rows]

    # --- delivering ---------------------------------------------------------------
    def flush(self, client: GeopunchClient) -> FlushReport:
        """Send what is queued, oldest first per user; stop at the first sign
        that the server is away (``offline`` in the report)."""
        report = FlushReport()
        chains: dict[tuple[int, int], list[Queued]] = {}
        for q in self.pending():
            chains.setdefault((q.time_clock_id, q.user_id), []).append(q)
        try:
            for rows in chains.values():
                self._flush_user(client, rows, report)
        except _Offline:
            report.offline = True
        (report.remaining,) = self._db.execute("SELECT count(*) FROM queued").fetchone()
        return report

    def _flush_user(self, client: GeopunchClient, rows: list[Queued], report: FlushReport) -> None:
        i = 0
        while i < len(rows):
            q = rows[i]
            recent = self._clock() - q.timestamp <= self._live_limit_s
            used, request, live = (0, None, None) if recent else _activities(rows[i:])
            # Recent, or old but out of sequence (the server then says why): as itself.
            if recent or (not used and not _opens_chain(q)):
                answer = self._send(partial(client.punch, q.kind, q.request), [q])
                report.sent += answer is not None
                report.rejected += answer is None
                i += 1
                continue
            if not used:
                # Old and still running: the part up to a recent second is a
                # completed shift, the rest a live one from that second (the
                # kiosk then shows the user on the clock). The second is kept,
                # so that a flush started again sends the same requests.
                split = self._split_point(q.seq)
                used, request, live = _activities(rows[i:], split)
                if not used:  # on a break, or nothing to split: wait for more punches
                    return
            chain = rows[i : i + used]
            create = partial(
                client.call, client.timeclock.CreateTimeActivities, request, retry=True
            )
            if live is None:
                answer = self._send(create, chain)
            else:
                answer = self._send(
                    partial(_both, create, partial(client.punch, "clock_in", live)), chain
                )
            if answer is not None:
                report.routed += used
                report.activities += len(answer.data.time_activities)
            else:
                report.rejected += used
            i += used

    def _split_point(self, head_seq: int) -> int:
        self._db.execute(
            "INSERT OR IGNORE INTO splits (head_seq, at) VALUES (?, ?)",
            (head_seq, int(self._clock()) - 1),
        )
        (at,) = self._db.execute("SELECT at FROM splits WHERE head_seq = ?", (head_seq,)).fetchone()
        return int(at)

    def _send(self, send: Callable[[], Any], rows: Sequence[Queued]) -> Any:
        """Send, then settle ``rows`` in one local transaction: gone when
        answered, moved to ``rejected`` when refused, kept when unsent."""
        try:
            answer = send()
        except grpc.RpcError as err:
            code = err.code()
            if code in RETRYABLE or code in (
                grpc.StatusCode.UNAUTHENTICATED,
                grpc.StatusCode.PERMISSION_DENIED,
            ):
                raise _Offline() from err
            self._settle(rows, (code.name, err.details() or ""))
            return None
        self._settle(rows, None)
        return answer

    def _settle(self, rows: Sequence[Queued], refusal: tuple[str, str] | None) -> None:
        seqs = [(q.seq,) for q in rows]
        self._db.execute("BEGIN IMMEDIATE")
        try:
            if refusal is not None:
                self._db.executemany(
                    "INSERT INTO rejected SELECT seq, kind, time_clock_id, user_id, timestamp,"
                    f" idempotency_key, request, ?, ?, {int(self._clock())}"
                    " FROM queued WHERE seq = ?",
                    [(*refusal, s) for (s,) in seqs],
                )
            self._db.executemany("DELETE FROM queued WHERE seq = ?", seqs)
            self._db.executemany("DELETE FROM splits WHERE head_seq = ?", seqs)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise


def _opens_chain(q: Queued) -> bool:
    return q.kind in ("clock_in", "start_break")


def _point(q: Queued) -> timeclock_pb2.TimeActivityPoint:
    loc = q.request.location_data if q.request.HasField("location_data") else None
    point = timeclock_pb2.TimeActivityPoint(timestamp=q.timestamp, timezone=q.request.timezone)
    if loc is not None:
        point.location_data.CopyFrom(loc)
    return point


def _activities(
    rows: Sequence[Queued], split_at: int | None = None
) -> tuple[int, timeclock_pb2.CreateTimeActivitiesRequest, timeclock_pb2.ClockInRequest | None]:
    """The longest prefix of one user's punches that leaves the user idle,
    as completed activities: (punches used, the request, None); 0 when none
    does. With ``split_at``, punches that all lead to a running shift are
    used too: the shift is completed at ``split_at`` and the third item is
    the live clock-in continuing it from there.

    A shift runs from a clock-in to a clock-out or to a break's start; a
    break from its start to its end, which resumes the shift it came from
    (on the same job) unless told not to. The walk stops at a punch that
    does not follow from the ones before it.
    """
    first = rows[0]
    shifts: list[timeclock_pb2.TimeActivityShift] = []
    breaks: list[timeclock_pb2.TimeActivityBreak] = []
    done = (0, 0, 0)  # punches, shifts and breaks up to the last idle point
    walked_all = False
    shift: tuple[Queued, str] | None = None  # (its start, its job)
    brk: tuple[Queued, str | None] | None = None  # (its start, the job it resumes)
    for n, q in enumerate(rows, start=1):
        r = q.request
        if q.kind == "clock_in" and shift is None and brk is None:
            shift = (q, r.job_id)
        elif q.kind == "clock_out" and shift is not None:
            shifts.append(_shift(shift, q))
            shift = None
        elif q.kind == "start_break" and brk is None:
            resumes = None
            if shift is not None:
                shifts.append(_shift(shift, q))
                resumes, shift = shift[1], None
            brk = (q, resumes)
        elif q.kind == "end_break" and brk is not None:
            start = brk[0]
            breaks.append(
                timeclock_pb2.TimeActivityBreak(
                    manual_break_id=start.request.manual_break_id,
                    start=_point(start),
                    end=_point(q),
                )
            )
            resume = not r.HasField("is_resume_shift") or r.is_resume_shift
            shift = (q, brk[1]) if resume and brk[1] is not None else None
            brk = None
        else:
            break
        if shift is None and brk is None:
            done = (n, len(shifts), len(breaks))
    else:
        walked_all = True
    used, n_shifts, n_breaks = done
    live = None
    running = walked_all and brk is None and shift is not None
    if split_at is not None and running and shift is not None and shift[0].timestamp < split_at:
        shifts.append(_shift(shift, split_at))
        used, n_shifts, n_breaks = len(rows), len(shifts), len(breaks)
        keys = "".join(q.idempotency_key for q in rows)
        live = timeclock_pb2.ClockInRequest(
            time_clock_id=first.time_clock_id,
            user_id=first.user_id,
            job_id=shift[1],
            timezone=shift[0].request.timezone,
            timestamp=split_at,
            idempotency_key="offline-live-" + hashlib.sha256(keys.encode()).hexdigest()[:40],
        )
    keys = "".join(q.idempotency_key for q in rows[:used])
    return (
        used,
        timeclock_pb2.CreateTimeActivitiesRequest(
            time_clock_id=first.time_clock_id,
            time_activities=[
                timeclock_pb2.UserTimeActivities(
                    user_id=first.user_id, shifts=shifts[:n_shifts], manual_breaks=breaks[:n_breaks]
                )
            ],
            # The same punches make the same request under the same key, so a
            # flush repeated after a crash gets the first answer back.
            idempotency_key="offline-" + hashlib.sha256(keys.encode()).hexdigest()[:40],
        ),
        live,
    )


def _shift(start: tuple[Queued, str], end: Queued | int) -> timeclock_pb2.TimeActivityShift:
    if isinstance(end, int):
        point = timeclock_pb2.TimeActivityPoint(timestamp=end, timezone=start[0].request.timezone)
    else:
        point = _point(end)
    return timeclock_pb2.TimeActivityShift(start=_point(start[0]), end=point, job_id=start[1])


def _both(first: Callable[[], Any], then: Callable[[], Any]) -> Any:
    """``first()``, then ``then()``; ``first``'s answer."""
    answer = first()
    then()
    return answer


__all__ = ["FlushReport", "OfflineQueue", "Queued"]
