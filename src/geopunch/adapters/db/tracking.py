"""Repositories of what moves all day: live trails and the event log."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from functools import cache, lru_cache
from typing import Any

from sqlalchemy import (
    JSON,
    Connection,
    String,
    bindparam,
    delete,
    func,
    insert,
    select,
    type_coerce,
    update,
)

from geopunch.adapters.db.prepared import (
    Prepared,
    PreparedIn,
    in_seq_order,
    in_values,
    integrity_error,
    padded,
    until_commit,
)
from geopunch.adapters.db.repositories import AccountScoped
from geopunch.adapters.db.tables import (
    event_horizon,
    event_sinks,
    events,
    live_trails,
    webhook_subscriptions,
)
from geopunch.domain.errors import ConcurrentChange
from geopunch.domain.events import Event, LiveTrail, new_event_ids

#: Key of the PostgreSQL advisory lock that orders event writers.
_EVENTS_LOCK = 0x6765_6F70_6576  # "geopev"


_TRAIL = live_trails.c
_LOAD_TRAILS = PreparedIn(
    # inside comes undecoded (see _fences): JSON text on SQLite, a list on PostgreSQL.
    lambda n: (
        select(
            _TRAIL.user_id,
            _TRAIL.time_clock_id,
            _TRAIL.last_ts,
            type_coerce(_TRAIL.inside, String),
        )
        .where(_TRAIL.account_id == bindparam("acct"), _TRAIL.user_id.in_(in_values(n)))
        .with_for_update()
    )
)


@lru_cache(maxsize=4096)
def _decoded(text: str) -> tuple[str, ...]:
    return tuple(json.loads(text))


def _fences(raw: str | list[str]) -> tuple[str, ...]:
    """A stored ``inside`` value as a tuple of fence ids.

    psycopg decodes JSON columns itself; SQLite gives the text, which repeats
    from batch to batch (a user stays in the same fences), so decoded texts
    are remembered.
    """
    return _decoded(raw) if isinstance(raw, str) else tuple(raw)


_INSERT_TRAIL = Prepared(
    insert(live_trails).values({c.key: bindparam(c.key) for c in live_trails.c})
)
_WHERE_TRAIL = (
    _TRAIL.account_id == bindparam("acct"),
    _TRAIL.user_id == bindparam("u"),
    _TRAIL.time_clock_id == bindparam("k"),
)
_UPDATE_TRAIL = Prepared(
    update(live_trails)
    .where(*_WHERE_TRAIL)
    .values(last_ts=bindparam("ts"), inside=bindparam("fences", type_=JSON))
)
#: A trail that moved without entering or leaving a fence: no JSON to encode.
_MOVE_TRAIL = Prepared(update(live_trails).where(*_WHERE_TRAIL).values(last_ts=bindparam("ts")))


class SqlLocationRepository(AccountScoped):
    """Live trails, one row per (user, time clock).

    Every ReportLocations batch reads and writes a row per trail it touches,
    so these statements run on the driver (see ``prepared``).
    """

    def load(self, user_ids: Sequence[int]) -> dict[tuple[int, int], LiveTrail]:
        """Stored trails of these users, on every time clock, locked for update."""
        return {
            (user, clock): LiveTrail(last, _fences(inside))
            for user, clock, last, inside in _LOAD_TRAILS.all(
                self._conn, user_ids, {"acct": self.account}
            )
        }

    def save(
        self, new: dict[tuple[int, int], LiveTrail], known: Mapping[tuple[int, int], LiveTrail]
    ) -> None:
        """Write trails; those in ``known`` (as loaded) exist already, the others
        are inserted (ConcurrentChange when another call inserted one first)."""
        acct = self.account
        fresh = []
        moved = []
        changed = []
        for (u, k), v in new.items():
            old = known.get((u, k))
            if old is None:
                fresh.append(
                    {
                        "account_id": acct,
                        "user_id": u,
                        "time_clock_id": k,
                        "last_ts": v.last_ts,
                        "inside": list(v.inside),
                    }
                )
            elif old.inside == v.inside:
                moved.append({"acct": acct, "u": u, "k": k, "ts": v.last_ts})
            else:
                changed.append(
                    {"acct": acct, "u": u, "k": k, "ts": v.last_ts, "fences": list(v.inside)}
                )
        if fresh:
            # No savepoint of its own: a refused insert fails the whole unit of
            # work (or the group committer's savepoint around it), which is retried.
            try:
                _INSERT_TRAIL.many(self._conn, fresh)
            except integrity_error(self._conn) as exc:
                raise ConcurrentChange("another call started the same trail first") from exc
        if moved:
            _MOVE_TRAIL.many(self._conn, moved)
        if changed:
            _UPDATE_TRAIL.many(self._conn, changed)


_INSERT_EVENT = Prepared(
    insert(events).values({c.key: bindparam(c.key) for c in events.c if c.key != "seq"})
)

#: Under ``until_commit``: the (account, event) pairs appended, not yet written.
_APPENDED = "events"


def appended_unwritten(conn: Connection) -> int:
    """How many events the connection's transaction has appended and not yet written."""
    return len(until_commit(conn, _APPENDED))


def write_appended(conn: Connection) -> None:
    """Write the events the transaction appended, just before it commits.

    Their seq lock (see ``in_seq_order``) is then the last lock the
    transaction takes, and it waits for nothing once it holds it. Taken at
    the first append instead, a group commit's batch would hold it while its
    later punches wait on the rows of a concurrent import that waits for the
    same lock: a deadlock. It is held for less time too, so replicas'
    commits overlap more.
    """
    pending = until_commit(conn, _APPENDED)
    if not pending:
        return
    in_seq_order(conn, _EVENTS_LOCK)  # subscribers resume from a seq
    now = int(time.time())
    fresh = iter(new_event_ids(sum(1 for _, e in pending if not e.id)))
    # A dict a row: Prepared.many_columns gains nothing on a group commit's
    # few events and about 2 % of an import of a thousand.
    _INSERT_EVENT.many(
        conn,
        [
            {
                "account_id": acct,
                "type": e.type,
                "occurred_at": e.occurred_at,
                "time_clock_id": e.time_clock_id,
                "scheduler_id": e.scheduler_id,
                "user_id": e.user_id,
                "payload": e.payload,
                "recorded_at": now,
                "event_id": e.id or next(fresh),
            }
            for acct, e in pending
        ],
    )
    pending.clear()


# Reads of the event log, prepared (see prepared.py): every webhook delivery,
# event stream and the sink page through it, and SQLAlchemy's row objects
# cost about as much again as the driver's read and the events made of it
# (bench/README.md). A subscription's filter lists are fixed, so the
# statements are kept per filter shape, list lengths padded to a power of two
# with their last value (which changes no IN answer).
_EVENT_COLUMNS = tuple(events.c)
_MOST_IN = 64
_EVERY_AFTER = Prepared(
    select(*_EVENT_COLUMNS)
    .where(events.c.seq > bindparam("cursor"))
    .order_by(events.c.seq)
    .limit(bindparam("n"))
    .offset(bindparam("skip"))  # bound, not literal: SQLite renders an OFFSET with any bound LIMIT
)


def _after_query(types: int, clocks: int) -> Any:
    """One account's events after a cursor, with IN lists of ``types`` event
    types and ``clocks`` time clocks (0: no filter), bound as ``t0`` ... and
    ``c0`` ...."""
    query = select(*_EVENT_COLUMNS).where(
        events.c.account_id == bindparam("acct"), events.c.seq > bindparam("cursor")
    )
    if types:
        query = query.where(events.c.type.in_([bindparam(f"t{i}") for i in range(types)]))
    if clocks:
        query = query.where(events.c.time_clock_id.in_([bindparam(f"c{i}") for i in range(clocks)]))
    return query.order_by(events.c.seq).limit(bindparam("n")).offset(bindparam("skip"))


@cache  # at most 8 x 8 shapes: lengths are padded to powers of two
def _after_statement(types: int, clocks: int) -> Prepared:
    return Prepared(_after_query(types, clocks))


def _after_params(
    account: int, cursor: int, limit: int, types: list[str], clocks: list[int]
) -> dict[str, Any]:
    params: dict[str, Any] = {"acct": account, "cursor": cursor, "n": limit, "skip": 0}
    params.update({f"t{i}": v for i, v in enumerate(types)})
    params.update({f"c{i}": v for i, v in enumerate(clocks)})
    return params


def _after(
    account: int, cursor: int, limit: int, types: list[str], clocks: list[int]
) -> tuple[Prepared, dict[str, Any]]:
    types, clocks = padded(types), padded(clocks)
    return (
        _after_statement(len(types), len(clocks)),
        _after_params(account, cursor, limit, types, clocks),
    )


class SqlEventRepository(AccountScoped):
    def __init__(self, conn: Connection, account: int | None) -> None:
        super().__init__(conn, account)
        #: Set once this transaction appended events (the unit of work signals their commit).
        self.appended = False

    def append(self, new: Sequence[Event]) -> None:
        """Set ``new`` aside for the commit (see :func:`write_appended`)."""
        if not new:
            return
        self.appended = True
        acct = self.account
        until_commit(self._conn, _APPENDED).extend((acct, e) for e in new)

    def horizon(self) -> int:
        """The log holds no event at or below this seq any more (0: none purged)."""
        return int(self._conn.execute(select(event_horizon.c.purged_through)).scalar() or 0)

    def purge(self, recorded_before: int, limit: int) -> int:
        """Remove the oldest events, of every account, recorded before
        ``recorded_before``: at most ``limit``, and only a prefix of the log
        (the first newer event stops it), so the horizon says exactly what
        is gone."""
        oldest = self._conn.execute(
            select(events.c.seq, events.c.recorded_at).order_by(events.c.seq).limit(limit)
        ).all()
        # Never what a webhook subscription or a sink has yet to deliver.
        undelivered = self._conn.execute(select(func.min(webhook_subscriptions.c.cursor))).scalar()
        sink = self._conn.execute(select(func.min(event_sinks.c.cursor))).scalar()
        keep_from = min((c + 1 for c in (undelivered, sink) if c is not None), default=None)
        gone = []
        for seq, recorded_at in oldest:
            if recorded_at is not None and recorded_at >= recorded_before:
                break
            if keep_from is not None and seq >= keep_from:
                break
            gone.append(seq)
        if not gone:
            return 0
        self._conn.execute(delete(events).where(events.c.seq <= gone[-1]))
        # Only forward: another replica's purge may have gone further meanwhile.
        self._conn.execute(
            update(event_horizon)
            .where(event_horizon.c.id == 1, event_horizon.c.purged_through < gone[-1])
            .values(purged_through=gone[-1])
        )
        return len(gone)

    def newest(self) -> int:
        """The newest seq of any account, 0 for none (store-wide)."""
        return int(self._conn.execute(select(func.max(events.c.seq))).scalar() or 0)

    def every_after(self, cursor: int, limit: int) -> list[Event]:
        """Every account's events with ``seq > cursor`` (a sink's read, store-wide)."""
        return [
            self._event(r)
            for r in _EVERY_AFTER.all(self._conn, {"cursor": cursor, "n": limit, "skip": 0})
        ]

    @staticmethod
    def _event(r: Sequence[Any]) -> Event:
        """An event from a row of ``_EVENT_COLUMNS``."""
        seq, acct, type_, occurred_at, clock, scheduler, user, payload, recorded_at, eid = r
        return Event(
            type=type_,
            occurred_at=occurred_at,
            payload=payload,
            user_id=user,
            time_clock_id=clock,
            scheduler_id=scheduler,
            seq=seq,
            id=eid or f"evt_{seq}",
            account_id=acct,
            recorded_at=recorded_at or 0,
        )

    def after(
        self,
        cursor: int,
        limit: int = 1000,
        types: Sequence[str] = (),
        time_clock_ids: Sequence[int] = (),
    ) -> list[Event]:
        """This account's events with ``seq > cursor`` in log order, of the
        given types and time clocks (empty: any)."""
        types, clocks = list(types), list(time_clock_ids)
        rows: Sequence[Sequence[Any]]
        if len(types) > _MOST_IN or len(clocks) > _MOST_IN:  # a filter past the prepared sizes
            query = _after_query(len(types), len(clocks))
            params = _after_params(self.account, cursor, limit, types, clocks)
            rows = self._conn.execute(query, params).all()
        else:
            stmt, params = _after(self.account, cursor, limit, types, clocks)
            rows = stmt.all(self._conn, params)
        return [self._event(r) for r in rows]
