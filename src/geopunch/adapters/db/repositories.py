"""Repositories over SQLAlchemy Core; rows in, frozen domain values out."""

from __future__ import annotations

import dataclasses
import functools
import gc
import sqlite3
import threading
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import date
from operator import itemgetter
from typing import Any, NamedTuple

import numpy as np
from sqlalchemy import (
    BigInteger,
    Column,
    ColumnElement,
    Connection,
    Integer,
    LargeBinary,
    Select,
    String,
    Table,
    and_,
    any_,
    bindparam,
    case,
    cast,
    delete,
    exists,
    func,
    insert,
    literal_column,
    or_,
    select,
    true,
    tuple_,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from geopunch.adapters.activity_messages import encode_line, line_key
from geopunch.adapters.db.fence_columns import FenceColumnsBuilder
from geopunch.adapters.db.fence_rows import NEWEST_INDEX_CHANGE, enabled_fences, fence_rows
from geopunch.adapters.db.prepared import (
    Prepared,
    PreparedIn,
    after_sync,
    in_seq_order,
    in_turn_for,
    in_values,
    integrity_error,
    padded,
    savepoint,
    together,
    until_commit,
)
from geopunch.adapters.db.tables import (
    LONGEST_KEPT_LINE,
    activities,
    day_statuses,
    geofence_jobs,
    geofences,
    idempotency_keys,
    index_changes,
    index_feed,
    manual_break_types,
    time_clock_jobs,
    time_clock_users,
    time_clocks,
)
from geopunch.domain.errors import ConcurrentChange, DomainError, ErrorCode
from geopunch.domain.locations import FenceRows
from geopunch.domain.models import (
    DayStatus,
    ExitAction,
    ExitDetectionSettings,
    Geofence,
    GeofencePolicy,
    Job,
    ManualBreakType,
    TimeClock,
)
from geopunch.domain.ports import EncodedPage, NotedChange, PageQuery
from geopunch.domain.punches import (
    PAID_BREAK,
    UNPAID_BREAK,
    WORKED,
    Activity,
    ActivityKind,
    ActivityRow,
    PunchPoint,
    PunchState,
    point_fields,
)
from geopunch.domain.rules import MAX_ENTITY_ID
from geopunch.metrics import STATUS_OPEN_ROWS


def job_columns(position: int, job: Job) -> dict[str, object]:
    return {
        "position": position,
        "name": job.name,
        "parent_job_id": job.parent_id,
        "color": job.color or None,
    }


def next_free_id(conn: Connection, column: Column[int], account: int) -> int:
    """An id for a new row of ``account``: one above its largest, or, once that
    would pass ``MAX_ENTITY_ID`` (a caller chose an id near it), its lowest free one."""
    table = column.table
    mine = table.c.account_id == account
    current = int(conn.execute(select(func.max(column)).where(mine)).scalar() or 0)
    if current < MAX_ENTITY_ID:
        return current + 1
    if not conn.execute(select(exists().where(mine, column == 1))).scalar():
        return 1
    other = table.alias()
    gap = conn.execute(
        select(func.min(column + 1)).where(
            mine,
            ~exists().where(other.c.account_id == account, other.c[column.key] == column + 1),
        )
    ).scalar()
    assert gap is not None  # some id below the maximum is free: the account holds fewer rows
    return int(gap)


class AccountScoped:
    """A repository that reads and writes one account's rows only.

    ``account`` is None in the store's own housekeeping (loading the fence
    index, purging), which reaches only the methods documented for it; any
    other method then fails loudly rather than see every account.
    """

    def __init__(self, conn: Connection, account: int | None) -> None:
        self._conn = conn
        self._account = account

    @property
    def account(self) -> int:
        if self._account is None:
            raise RuntimeError(f"{type(self).__name__} used without an account")
        return self._account


def _of_clock(table: Table) -> tuple[ColumnElement[bool], ...]:
    return (table.c.account_id == bindparam("acct"), table.c.time_clock_id == bindparam("tc"))


#: The columns a job and a break type are made from (``_job``, ``_break_type``).
_JOB_COLUMNS = ("job_id", "name", "parent_job_id", "color")
_BREAK_COLUMNS = ("break_id", "name", "is_mandatory", "min_duration_s", "is_paid")

#: Some time clocks by id, as one array on PostgreSQL.
_CLOCK_IDS = bindparam("vs", type_=postgresql.ARRAY(BigInteger))


class _ClockPart(NamedTuple):
    """One table's part of some time clocks (``some``: ids bound as
    :class:`PreparedIn` values) or of all of an account's (``every``)."""

    some: PreparedIn
    every: Prepared


def _clock_part(table: Table, clock: Column[Any], *columns: ColumnElement[Any]) -> _ClockPart:
    """``columns`` of the rows of ``table`` of an account (``acct``), by
    clock, and by position where the table keeps one."""
    order = [clock, *([table.c.position] if "position" in table.c else [])]

    def picked(*where: ColumnElement[bool]) -> Select[Any]:
        return (
            select(*columns).where(table.c.account_id == bindparam("acct"), *where).order_by(*order)
        )

    return _ClockPart(
        PreparedIn(
            lambda n: picked(clock.in_(in_values(n))), postgresql=picked(clock == any_(_CLOCK_IDS))
        ),
        Prepared(picked()),
    )


def _children(table: Table, *names: str) -> _ClockPart:
    clock = table.c.time_clock_id
    return _clock_part(table, clock, clock, *(table.c[n] for n in names))


_CLOCK_ROWS = _clock_part(time_clocks, time_clocks.c.id, *time_clocks.c)
_CLOCK_JOB_ROWS = _children(time_clock_jobs, *_JOB_COLUMNS)
_CLOCK_USER_ROWS = _children(time_clock_users, "user_id")
_CLOCK_BREAK_ROWS = _children(manual_break_types, *_BREAK_COLUMNS)
_CLOCK_PARTS = (_CLOCK_ROWS, _CLOCK_JOB_ROWS, _CLOCK_USER_ROWS, _CLOCK_BREAK_ROWS)
#: The enabled fences of some clocks of an account (see ``fence_rows``).
_FENCE_ROWS_OF = PreparedIn(
    lambda n: fence_rows(
        (geofences.c.account_id == bindparam("acct")) & geofences.c.time_clock_id.in_(in_values(n))
    ),
    postgresql=fence_rows(
        (geofences.c.account_id == bindparam("acct"))
        & (geofences.c.time_clock_id == any_(_CLOCK_IDS))
    ),
)


def _job(job_id: str, name: str, parent_id: str | None, color: str | None) -> Job:
    return Job(job_id, name, parent_id, color or "")


def _break_type(
    break_id: str, name: str, mandatory: Any, min_duration_s: int, paid: Any
) -> ManualBreakType:
    # Booleans as the driver gives them too (SQLite: 0 and 1).
    return ManualBreakType(break_id, name, bool(mandatory), min_duration_s, bool(paid))


def _inserting(table: Table) -> Prepared:
    """An insert of every column of ``table``, each bound by its name."""
    return Prepared(insert(table).values({c.key: bindparam(c.key) for c in table.c}))


_INSERT_CLOCK = _inserting(time_clocks)
_INSERT_CLOCK_JOB = _inserting(time_clock_jobs)
_INSERT_CLOCK_USER = _inserting(time_clock_users)
_INSERT_BREAK_TYPE = _inserting(manual_break_types)


class SqlTimeClockRepository(AccountScoped):
    def __init__(self, conn: Connection, account: int | None, now: int) -> None:
        super().__init__(conn, account)
        self._now = now

    def get(self, time_clock_id: int) -> TimeClock | None:
        found = self.list_of((time_clock_id,))
        return found[0] if found else None

    def list_all(self) -> list[TimeClock]:
        acct = {"acct": self.account}
        return self._assembled(lambda part: part.every.all(self._conn, acct))

    def list_of(self, time_clock_ids: Collection[int]) -> list[TimeClock]:
        ids, acct = sorted(set(time_clock_ids)), {"acct": self.account}
        # The four tables' reads in one round trip on PostgreSQL. Prepared:
        # every CreateGeofences call loads its time clock, and a replica
        # rereads what another changed; building these statements anew was
        # most of the time either took (bench/README.md).
        with together(self._conn):
            sent = [(part, part.some.send(self._conn, ids, acct)) for part in _CLOCK_PARTS]
        got = {part: rows() for part, rows in sent}
        return self._assembled(got.__getitem__)

    def _assembled(self, read: Callable[[_ClockPart], list[tuple[Any, ...]]]) -> list[TimeClock]:
        """Time clocks from the rows that ``read`` gives of each table's part."""
        names = time_clocks.c.keys()
        rows = [dict(zip(names, row, strict=True)) for row in read(_CLOCK_ROWS)]
        if not rows:
            return []
        jobs: dict[int, list[Job]] = defaultdict(list)
        for tc_id, *job in read(_CLOCK_JOB_ROWS):
            jobs[tc_id].append(_job(*job))
        users: dict[int, set[int]] = defaultdict(set)
        for tc_id, user_id in read(_CLOCK_USER_ROWS):
            users[tc_id].add(user_id)
        breaks: dict[int, list[ManualBreakType]] = defaultdict(list)
        for tc_id, *kind in read(_CLOCK_BREAK_ROWS):
            breaks[tc_id].append(_break_type(*kind))
        return [self._time_clock(r, jobs[r["id"]], users[r["id"]], breaks[r["id"]]) for r in rows]

    @staticmethod
    def _time_clock(
        row: Mapping[Any, Any], jobs: list[Job], users: set[int], breaks: list[ManualBreakType]
    ) -> TimeClock:
        return TimeClock(
            id=row["id"],
            name=row["name"],
            timezone=row["timezone"],
            job_enforcement=bool(row["job_enforcement"]),
            jobs=tuple(jobs),
            user_ids=frozenset(users),
            manual_breaks_enabled=bool(row["manual_breaks_enabled"]),
            manual_break_types=tuple(breaks),
            geofence_policy=GeofencePolicy(row["geofence_policy"]),
            accuracy_tolerance_m=float(row["accuracy_tolerance_m"]),
            exit_detection=ExitDetectionSettings(
                high_accuracy_max_m=float(row["exit_high_accuracy_max_m"]),
                buffer_high_accuracy_m=float(row["exit_buffer_high_accuracy_m"]),
                low_accuracy_max_m=float(row["exit_low_accuracy_max_m"]),
                buffer_low_accuracy_m=float(row["exit_buffer_low_accuracy_m"]),
                buffer_unknown_accuracy_m=float(row["exit_buffer_unknown_accuracy_m"]),
            ),
        )

    def next_id(self) -> int:
        return next_free_id(self._conn, time_clocks.c.id, self.account)

    @staticmethod
    def _columns(tc: TimeClock) -> dict[str, object]:
        ed = tc.exit_detection
        return {
            "name": tc.name,
            "timezone": tc.timezone,
            "job_enforcement": tc.job_enforcement,
            "manual_breaks_enabled": tc.manual_breaks_enabled,
            "geofence_policy": tc.geofence_policy.value,
            "accuracy_tolerance_m": tc.accuracy_tolerance_m,
            "exit_high_accuracy_max_m": ed.high_accuracy_max_m,
            "exit_buffer_high_accuracy_m": ed.buffer_high_accuracy_m,
            "exit_low_accuracy_max_m": ed.low_accuracy_max_m,
            "exit_buffer_low_accuracy_m": ed.buffer_low_accuracy_m,
            "exit_buffer_unknown_accuracy_m": ed.buffer_unknown_accuracy_m,
        }

    def add(self, tc: TimeClock) -> None:
        row = {
            "account_id": self.account,
            "id": tc.id,
            "created_at": self._now,
            "updated_at": self._now,
            **self._columns(tc),
        }
        try:
            with savepoint(self._conn):
                _INSERT_CLOCK.execute(self._conn, row).close()
        except integrity_error(self._conn) as exc:
            raise DomainError(
                ErrorCode.TIME_CLOCK_ALREADY_EXISTS,
                f"time clock {tc.id} already exists; use UpdateTimeClock to change it",
                {"timeClockId": str(tc.id)},
            ) from exc
        self._write_children(tc, existing_jobs=set())

    def replace(self, tc: TimeClock) -> None:
        acct = self.account
        self._conn.execute(
            update(time_clocks)
            .where(time_clocks.c.account_id == acct, time_clocks.c.id == tc.id)
            .values(updated_at=self._now, **self._columns(tc))
        )
        mine = (time_clock_jobs.c.account_id == acct) & (time_clock_jobs.c.time_clock_id == tc.id)
        existing_jobs = set(
            self._conn.execute(select(time_clock_jobs.c.job_id).where(mine)).scalars()
        )
        gone = existing_jobs - tc.job_ids
        if gone:
            self._conn.execute(
                delete(time_clock_jobs).where(mine, time_clock_jobs.c.job_id.in_(gone))
            )
        for table in (time_clock_users, manual_break_types):
            self._conn.execute(
                delete(table).where(table.c.account_id == acct, table.c.time_clock_id == tc.id)
            )
        self._write_children(tc, existing_jobs=existing_jobs - gone)

    def _write_children(self, tc: TimeClock, existing_jobs: set[str]) -> None:
        # Jobs that geofences reference are updated in place, never deleted.
        acct = self.account
        new_rows = []
        for pos, job in enumerate(tc.jobs):
            values = job_columns(pos, job)
            if job.id in existing_jobs:
                self._conn.execute(
                    update(time_clock_jobs)
                    .where(
                        time_clock_jobs.c.account_id == acct,
                        time_clock_jobs.c.time_clock_id == tc.id,
                        time_clock_jobs.c.job_id == job.id,
                    )
                    .values(**values)
                )
            else:
                new_rows.append(
                    {"account_id": acct, "time_clock_id": tc.id, "job_id": job.id, **values}
                )
        # Prepared (see prepared.py): a bulk load creates a time clock per
        # hundred fences, and these inserts went through SQLAlchemy's
        # per-row parameter handling.
        if new_rows:
            _INSERT_CLOCK_JOB.many(self._conn, new_rows)
        if tc.user_ids:
            _INSERT_CLOCK_USER.many(
                self._conn,
                [
                    {"account_id": acct, "time_clock_id": tc.id, "user_id": u}
                    for u in sorted(tc.user_ids)
                ],
            )
        if tc.manual_break_types:
            _INSERT_BREAK_TYPE.many(
                self._conn,
                [
                    {
                        "account_id": acct,
                        "time_clock_id": tc.id,
                        "break_id": b.id,
                        "position": pos,
                        "name": b.name,
                        "is_mandatory": b.is_mandatory,
                        "min_duration_s": b.min_duration_s,
                        "is_paid": b.is_paid,
                    }
                    for pos, b in enumerate(tc.manual_break_types)
                ],
            )

    def day_statuses(self, time_clock_id: int, user_id: int) -> dict[date, DayStatus]:
        rows = self._conn.execute(
            select(day_statuses.c.day, day_statuses.c.status)
            .where(
                day_statuses.c.account_id == self.account,
                day_statuses.c.time_clock_id == time_clock_id,
                day_statuses.c.user_id == user_id,
            )
            .order_by(day_statuses.c.day)
        ).all()
        return {date.fromisoformat(r.day): DayStatus(r.status) for r in rows}

    def day_statuses_of(
        self, time_clock_id: int, user_ids: Sequence[int], first: date, last: date
    ) -> dict[int, dict[date, DayStatus]]:
        """Statuses of the users' days from ``first`` to ``last`` (inclusive)."""
        d = day_statuses.c
        rows = self._conn.execute(
            select(d.user_id, d.day, d.status).where(
                d.account_id == self.account,
                d.time_clock_id == time_clock_id,
                d.user_id.in_(sorted(set(user_ids))),
                d.day >= first.isoformat(),
                d.day <= last.isoformat(),
            )
        ).all()
        found: dict[int, dict[date, DayStatus]] = defaultdict(dict)
        for r in rows:
            found[r.user_id][date.fromisoformat(r.day)] = DayStatus(r.status)
        return dict(found)

    def set_day_status(
        self, time_clock_id: int, user_id: int, days: Sequence[date], status: DayStatus
    ) -> None:
        keys = sorted({d.isoformat() for d in days})
        self._conn.execute(
            delete(day_statuses).where(
                day_statuses.c.account_id == self.account,
                day_statuses.c.time_clock_id == time_clock_id,
                day_statuses.c.user_id == user_id,
                day_statuses.c.day.in_(keys),
            )
        )
        if status is not DayStatus.OPEN:
            self._conn.execute(
                insert(day_statuses),
                [
                    {
                        "account_id": self.account,
                        "time_clock_id": time_clock_id,
                        "user_id": user_id,
                        "day": k,
                        "status": status,
                    }
                    for k in keys
                ],
            )


_LAST_POSITION = Prepared(select(func.max(geofences.c.position)).where(*_of_clock(geofences)))
_INSERT_FENCE = _inserting(geofences)
_INSERT_FENCE_JOB = _inserting(geofence_jobs)


@contextmanager
def _collector_paused() -> Iterator[None]:
    """No cyclic garbage collection inside: for bulk reads whose many young
    objects hold no cycles. Restores the collector's former state."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class SqlGeofenceRepository(AccountScoped):
    def __init__(self, conn: Connection, account: int | None, now: int) -> None:
        super().__init__(conn, account)
        self._now = now

    def _load(self, where: ColumnElement[bool]) -> list[Geofence]:
        rows = self._conn.execute(
            select(geofences)
            .where(geofences.c.account_id == self.account, where)
            .order_by(geofences.c.position, geofences.c.id)
        ).all()
        if not rows:
            return []
        ids = [r.id for r in rows]
        jobs: dict[str, list[str]] = defaultdict(list)
        # Chunked so that a large fleet stays under the bound-parameter limits.
        for start in range(0, len(ids), 5000):
            for fence_id, job_id in self._conn.execute(
                select(geofence_jobs.c.fence_id, geofence_jobs.c.job_id)
                .where(geofence_jobs.c.fence_id.in_(ids[start : start + 5000]))
                .order_by(geofence_jobs.c.fence_id, geofence_jobs.c.position)
            ):
                jobs[fence_id].append(job_id)
        return [
            Geofence(
                id=r.id,
                time_clock_id=r.time_clock_id,
                name=r.name,
                is_enabled=r.is_enabled,
                fence_size_m=r.fence_size_m,
                job_ids=tuple(jobs.get(r.id, ())),
                exit_action=ExitAction(r.exit_action),
                address=r.address,
                latitude=r.latitude,
                longitude=r.longitude,
            )
            for r in rows
        ]

    def list_for(self, time_clock_id: int) -> list[Geofence]:
        return self._load(geofences.c.time_clock_id == time_clock_id)

    def enabled_rows(self, time_clock_ids: Collection[int] | None = None) -> FenceRows:
        """Every enabled fence of the account as columns, for a full index
        build. Read through the driver's own cursor and turned into arrays a
        chunk at a time: at a million fences, a row object apiece (and the
        interpreter memory they leave behind) was most of a server's start-up
        time and memory."""
        built = FenceColumnsBuilder()
        # The collector would walk the young row tuples over and over while
        # they are turned into arrays, a large share of a big read's time
        # (bench/README.md, start-up); none of them can be in a cycle.
        if time_clock_ids is None:
            chunks = self._driver_chunks(enabled_fences(self.account))
        else:
            # Prepared (a replica rereads the clock another changed: building
            # the statement with its ids written in was a tenth of that).
            chunks = self._chunks_of(
                _FENCE_ROWS_OF.cursors(self._conn, sorted(time_clock_ids), {"acct": self.account})
            )
        with _collector_paused():
            for chunk in chunks:
                clock_ids, ids, lats, lons, sizes, actions, jobs = zip(*chunk, strict=True)
                bound = [k for k, job in enumerate(jobs) if job]
                built.add(
                    (
                        np.array(clock_ids, dtype=np.int64),
                        np.array([i.encode() for i in ids], dtype=np.bytes_),
                        np.array(lats, dtype=np.float64),
                        np.array(lons, dtype=np.float64),
                        np.array(sizes, dtype=np.float64),
                        np.array(actions, dtype=np.int8),
                    ),
                    np.array(bound, dtype=np.intp),
                    [jobs[k] for k in bound],
                )
        return built.rows()

    #: Rows per chunk of a driver read: large enough that the per-chunk cost
    #: vanishes, small enough that a chunk's row objects stay a few MB.
    DRIVER_CHUNK = 50_000

    def _driver_chunks(self, stmt: Select[Any]) -> Iterator[Sequence[Any]]:
        """The rows of ``stmt`` as the DBAPI driver returns them (plain tuples),
        a chunk at a time, in this unit of work's transaction. Its parameters
        (the account id, a boolean) are rendered as literals: they are values
        the server made, never a caller's text."""
        sql = str(stmt.compile(self._conn, compile_kwargs={"literal_binds": True}))
        cursor = self._conn.connection.cursor()
        try:
            cursor.execute(sql)
        except BaseException:
            cursor.close()
            raise
        return self._chunks_of((cursor,))

    def _chunks_of(self, cursors: Iterable[Any]) -> Iterator[Sequence[Any]]:
        """The rows of each of the driver's ``cursors`` a chunk at a time."""
        for cursor in cursors:
            try:
                while chunk := cursor.fetchmany(self.DRIVER_CHUNK):
                    yield chunk
            finally:
                cursor.close()

    def get(self, time_clock_id: int, fence_id: str) -> Geofence | None:
        found = self._load(
            (geofences.c.time_clock_id == time_clock_id) & (geofences.c.id == fence_id)
        )
        return found[0] if found else None

    def add_many(self, fences: Sequence[Geofence]) -> None:
        if not fences:
            return
        # Positions order a clock's fences by creation; they count per clock.
        # (The largest over the whole table meant a scan of every geofence per
        # call: a bulk load got slower with each clock stored.)
        following: dict[int, int] = {}
        positions = []
        for f in fences:
            if f.time_clock_id not in following:
                newest = _LAST_POSITION.all(
                    self._conn, {"acct": self.account, "tc": f.time_clock_id}
                )[0][0]
                following[f.time_clock_id] = int(newest or 0) + 1
            positions.append(following[f.time_clock_id])
            following[f.time_clock_id] += 1
        # Prepared (see prepared.py), and column by column: a thousand
        # fences a call went through SQLAlchemy's per-row parameter handling,
        # then through a dict a row.
        _INSERT_FENCE.many_columns(
            self._conn,
            {
                "id": [f.id for f in fences],
                "time_clock_id": [f.time_clock_id for f in fences],
                "position": positions,
                "name": [f.name for f in fences],
                "is_enabled": [f.is_enabled for f in fences],
                "fence_size_m": [f.fence_size_m for f in fences],
                "exit_action": [f.exit_action.value for f in fences],
                "address": [f.address for f in fences],
                "latitude": [f.latitude for f in fences],
                "longitude": [f.longitude for f in fences],
            },
            {"account_id": self.account, "created_at": self._now},
        )
        jobs = [(f.id, f.time_clock_id, pos, j) for f in fences for pos, j in enumerate(f.job_ids)]
        if jobs:
            fence_id, time_clock_id, position, job_id = zip(*jobs, strict=True)
            _INSERT_FENCE_JOB.many_columns(
                self._conn,
                {
                    "fence_id": fence_id,
                    "time_clock_id": time_clock_id,
                    "position": position,
                    "job_id": job_id,
                },
                {"account_id": self.account},
            )

    def delete(self, time_clock_id: int, fence_id: str) -> bool:
        self._conn.execute(
            delete(geofence_jobs).where(
                geofence_jobs.c.account_id == self.account,
                geofence_jobs.c.time_clock_id == time_clock_id,
                geofence_jobs.c.fence_id == fence_id,
            )
        )
        result = self._conn.execute(
            delete(geofences).where(
                geofences.c.account_id == self.account,
                geofences.c.time_clock_id == time_clock_id,
                geofences.c.id == fence_id,
            )
        )
        return bool(result.rowcount)

    def job_ids_in_use(self, time_clock_id: int) -> set[str]:
        return set(
            self._conn.execute(
                select(geofence_jobs.c.job_id)
                .where(
                    geofence_jobs.c.account_id == self.account,
                    geofence_jobs.c.time_clock_id == time_clock_id,
                )
                .distinct()
            ).scalars()
        )


_POINT_KEYS = ("ts", "tz", "address", "lat", "lon", "accuracy", "source", "geofence_id")


def _point_columns(prefix: str, p: PunchPoint | None) -> dict[str, object]:
    return dict(zip((f"{prefix}_{k}" for k in _POINT_KEYS), point_fields(p), strict=True))


def _kept_line(row: ActivityRow) -> bytes | None:
    """The line the store keeps for ``row``: None past LONGEST_KEPT_LINE."""
    line = encode_line(row)
    return line if len(line) <= LONGEST_KEPT_LINE else None


def _activity_row(account: int | None, activity: Activity) -> dict[str, object]:
    """The columns of ``activity``: an :class:`ActivityRow` names them, and
    its line follows them."""
    row = ActivityRow.of(activity)
    return {"account_id": account, **row._asdict(), "encoded": _kept_line(row)}


#: Every column of ``activities`` but the line: what reads that make rows
#: or activities select (the line is read by ``page_lines`` alone).
_COLUMNS = [c for c in activities.c if c.key != "encoded"]
_AT = {c.key: i for i, c in enumerate(_COLUMNS)}


#: An ``activities`` row without its account: an :class:`ActivityRow`'s fields.
_ROW_FIELDS = itemgetter(0, *range(2, len(_AT)))


def _row_of(row: Sequence[Any]) -> ActivityRow:
    """The flat activity in a row that starts with every column of ``activities``."""
    return ActivityRow._make(_ROW_FIELDS(row))


def _activity_of(row: Sequence[Any]) -> Activity:
    """An activity from a row that starts with every column of ``activities``."""
    return _row_of(row).activity()


def _activity(row: Mapping[str, Any]) -> Activity:
    """An activity from a row keyed by column name."""
    return _activity_of([row[name] for name in _AT])


def _open(*where: ColumnElement[bool]) -> Select[Any]:
    """Open activities of one time clock (and of whom ``where`` says)."""
    return select(*_COLUMNS).where(*_of_clock(activities), *where, activities.c.end_ts.is_(None))


#: Open activities of one time clock.
_OPEN_FOR = Prepared(_open())
#: Every activity of one user of one time clock, in start order. Prepared:
#: the punch state machine's test reads it after each of its 6,000 steps,
#: and building the statement each time was most of that test's time.
_USER_HISTORY = Prepared(
    select(*_COLUMNS)
    .where(*_of_clock(activities), activities.c.user_id == bindparam("user"))
    .order_by(activities.c.start_ts, activities.c.created_at)
)
#: Who of one time clock is on an open activity, and which row version.
_OPEN_KEYS = Prepared(
    _open().with_only_columns(activities.c.user_id, activities.c.id, activities.c.modified_at)
)


_USERS = (
    func.unnest(bindparam("vs", type_=postgresql.ARRAY(BigInteger)))
    .table_valued("id")
    .render_derived("u")
)
_OPEN_OF_USER = _open(activities.c.user_id == _USERS.c.id).limit(literal_column("1")).lateral()

#: Open activities of some users of one time clock: the one-open index answers.
#: By id, or by (time clock, user) row values, SQLite chose the index by
#: account and walked every activity of the account. PostgreSQL probes the
#: index once a user through a LATERAL subquery (its LIMIT keeps the planner
#: from flattening it into a join): planned from statistics older than the
#: day's clock-ins, a plain IN read every open row of the time clock.
_OPEN_OF_USERS = PreparedIn(
    lambda n: _open(activities.c.user_id.in_(in_values(n))),
    postgresql=select(_OPEN_OF_USER).select_from(_USERS).join(_OPEN_OF_USER, true()),
)


class _OpenRows:
    """Open activities' rows by ``(id, modified_at)``, shared by the
    process's units of work, at most ``most`` of them.

    A row is never changed while it is open: the store's only two updates of
    an activity close an open one and correct a completed one, and ids are
    never reused. So a kept row is the store's row for as long as it is
    open, and the board of a time clock reads three columns of its open
    activities and only the rows it has not seen: building every open row's
    tuple (28 values, a third of them strings) was most of a large board's
    read (bench/README.md, GetUserStatuses). ``modified_at`` is in the key
    all the same, so that a future update of an open row cannot be missed.
    A kept row costs about 870 B: 16,384 of them about 14 MiB."""

    def __init__(self, most: int) -> None:
        self._most = most
        self._rows: dict[tuple[str, int], ActivityRow] = {}
        self._lock = threading.Lock()

    def get(self, key: tuple[str, int]) -> ActivityRow | None:
        return self._rows.get(key)

    def keep(self, rows: Sequence[ActivityRow], in_use: Iterable[ActivityRow] = ()) -> None:
        """Keep ``rows``. Past ``most``, the store is cut to half: the rows
        ``in_use`` (every open row of the board that filled it, those just
        read included) stay, and of the others the newest. By age alone a
        long-open row, kept early, would go before rows closed since, and the
        next look would read it again. So the store holds at least the open
        rows of the last time clock looked at, even past ``most``."""
        with self._lock:  # units of work run on several threads
            kept = self._rows
            for r in rows:
                kept[r.id, r.modified_at] = r
            if len(kept) > self._most:
                spared = {(r.id, r.modified_at) for r in in_use}
                others = [key for key in kept if key not in spared]
                for key in others[: len(kept) - self._most // 2]:
                    del kept[key]


_OPEN_ROWS = _OpenRows(most=1 << 14)
#: The part of a window whose activities totals read in one statement on
#: SQLite: a day, 20,000 rows (1.3 MB of hex) at 10,000 users with two
#: activities a day, and far below SQLite's 1 GB a value (15 million rows;
#: a day past it is halved, ``_span_slice``). As quick as a week a statement
#: or the whole window (bench/README.md, totals).
_SPAN_SLICE_S = 86_400
#: Rows of a window's totals read at a time on PostgreSQL: 1.6 MB.
_SPAN_CHUNK = 50_000


class _hex_row(FunctionElement[Any]):
    """SQLite: a row's integer columns as one text value, each column 16 hex
    digits (two's complement for a negative one, as ``printf``'s ``%x``
    prints a 64-bit int). SQLite has no integer-to-bytes function; joined
    with ``group_concat``, many rows are one ``bytes.fromhex`` and
    ``np.frombuffer`` instead of a Python tuple a row: the rows of a
    window's totals made tuples cost more than reading them
    (bench/README.md, totals)."""

    inherit_cache = True
    name = "hex_row"


@compiles(_hex_row, "sqlite")
def _hex_row_sqlite(element: _hex_row, compiler: SQLCompiler, **kw: Any) -> str:
    formats = "%016x" * len(element.clauses)
    return f"printf('{formats}', {compiler.process(element.clauses, **kw)})"


def _unhexed(value: str | None, columns: int) -> np.ndarray:
    """Rows of ``_hex_row`` joined, as an array of ``columns`` int64 a row."""
    if not value:  # no rows
        return np.empty((0, columns), np.int64)
    return np.frombuffer(bytes.fromhex(value), ">i8").reshape(-1, columns).astype(np.int64)


#: Rows a board may lack before one read of every open row is cheaper than
#: reading the lacking ones user by user.
_OPEN_BY_USER_MOST = 512
#: Whether the kept rows serve (more open activities than _OpenRows holds
#: shows as rows read whole on every look).
_ROWS_KEPT = STATUS_OPEN_ROWS.labels("kept")
_ROWS_READ = STATUS_OPEN_ROWS.labels("read")


# Statements of the punch path, compiled once and run on the driver (see prepared.py).
# One row whether or not an activity is open: the open one (if any) joined to
# a constant, with the last end and the day's status as scalar subqueries.
_ANCHOR = select(literal_column("1").label("one")).subquery("anchor")
_PAST = activities.alias("past")
_PUNCH_STATE = Prepared(
    select(
        *_COLUMNS,
        select(func.max(_PAST.c.end_ts))
        .where(
            _PAST.c.account_id == bindparam("acct"),
            _PAST.c.time_clock_id == bindparam("tc"),
            _PAST.c.user_id == bindparam("user"),
        )
        .scalar_subquery()
        .label("last_end"),
        select(day_statuses.c.status)
        .where(
            day_statuses.c.account_id == bindparam("acct"),
            day_statuses.c.time_clock_id == bindparam("tc"),
            day_statuses.c.user_id == bindparam("user"),
            day_statuses.c.day == bindparam("day"),
        )
        .scalar_subquery()
        .label("day_status"),
    ).select_from(
        _ANCHOR.outerjoin(
            activities,
            and_(
                activities.c.account_id == bindparam("acct"),
                activities.c.time_clock_id == bindparam("tc"),
                activities.c.user_id == bindparam("user"),
                activities.c.end_ts.is_(None),
            ),
        )
    )
)
_INSERT_ACTIVITY = Prepared(
    insert(activities).values({c.key: bindparam(c.key) for c in activities.c})
)
_CLOSE = Prepared(
    update(activities)
    .where(
        activities.c.account_id == bindparam("acct"),
        activities.c.id == bindparam("activity_id"),
        activities.c.end_ts.is_(None),
    )
    .values(
        {c: bindparam(c) for c in (*(f"end_{k}" for k in _POINT_KEYS), "modified_at", "encoded")}
    )
)


def _closed_it(cursor: Any, activity_id: str) -> Callable[[], None]:
    """The check that a close found ``activity_id`` still open (run once the
    statement's answer is in, see after_sync)."""

    def check() -> None:
        count = cursor.rowcount
        cursor.close()
        if count != 1:
            raise ConcurrentChange(f"activity {activity_id} was closed meanwhile")

    return check


class _PageShape(NamedTuple):
    """What a page's statement depends on besides its values."""

    users: int  # user ids named, padded to a power of two (an IN list of this many), or 0
    jobs: int  # job ids named, padded alike, or 0
    after: bool  # whether it starts after a cursor
    paid: int  # paid break types named (spans only), padded alike, or 0


@functools.lru_cache(maxsize=256)
def _paging(kind: str, shape: _PageShape) -> Prepared:
    """A listed page's statement, prepared once per shape (compiling it anew
    was a fifth of a page's read as lines). ``kind``: ``rows`` (whole rows),
    ``lines`` (whole rows, each followed by its line), ``spans`` (what
    totals read, unordered), ``kept`` (the lines alone), ``joined`` (the
    rows counted and their lines joined by SQLite) or ``tail`` (a full
    page's last row and the one after it)."""
    a = activities.c
    where = [
        a.account_id == bindparam("acct"),
        a.time_clock_id == bindparam("tc"),
        a.start_ts < bindparam("end"),
        or_(a.end_ts.is_(None), a.end_ts > bindparam("start")),
    ]
    if shape.users:
        where.append(a.user_id.in_([bindparam(f"u{i}") for i in range(shape.users)]))
    if shape.jobs:
        where.append(a.job_id.in_([bindparam(f"j{i}") for i in range(shape.jobs)]))
    if shape.after:
        where.append(
            tuple_(a.start_ts, a.id) > tuple_(bindparam("after_ts"), bindparam("after_id"))
        )

    def ordered(*columns: Any) -> Select[Any]:
        return select(*columns).where(*where).order_by(a.start_ts, a.id)

    # Constants as literals, each limit with an offset of its own: a
    # Prepared statement binds only the values a call passes, and SQLite's
    # compiler adds a bound OFFSET 0 to a limit without one.
    limit = bindparam("limit", type_=Integer)
    none: ColumnElement[int] = literal_column("0")
    if kind == "rows":
        return Prepared(
            ordered(*(a[name] for name in ActivityRow._fields)).limit(limit).offset(none)
        )
    if kind == "lines":
        row = (a[name] for name in ActivityRow._fields)
        return Prepared(ordered(*row, a.encoded).limit(limit).offset(none))
    if kind == "tail":
        skip = bindparam("skip", type_=Integer)
        return Prepared(ordered(a.start_ts, a.id).limit(literal_column("2")).offset(skip))
    if kind in ("spans", "span_rows"):
        # The column each activity counts in and an open one's end worked
        # out by the database: four integers a row, where reading the kind
        # and break type as text and sorting them out in Python cost about
        # as much as the read itself (bench/README.md, totals).
        shift: ColumnElement[str] = literal_column(f"'{ActivityKind.SHIFT.value}'")
        whens: list[tuple[ColumnElement[bool], int]] = [(a.kind == shift, WORKED)]
        if shape.paid:
            paid = [bindparam(f"p{i}", type_=String) for i in range(shape.paid)]
            whens.append((a.break_type_id.in_(paid), PAID_BREAK))
        column = case(
            *((test, literal_column(str(value))) for test, value in whens),
            else_=literal_column(str(UNPAID_BREAK)),
        )
        end = func.coalesce(a.end_ts, bindparam("now", type_=BigInteger))
        if kind == "span_rows":  # PostgreSQL: four int8 a row, for a binary COPY
            return Prepared(
                select(a.user_id, cast(column, BigInteger), a.start_ts, end).where(*where)
            )
        # SQLite: one slice of the window a statement (see _SPAN_SLICE_S),
        # ``end`` bound to the slice's end, ``since`` to its start.
        since = a.start_ts >= bindparam("since", type_=BigInteger)
        hex_rows = func.group_concat(
            _hex_row(a.user_id, column, a.start_ts, end), literal_column("''")
        )
        return Prepared(select(hex_rows).where(*where, since))
    if kind == "kept":
        return Prepared(ordered(a.encoded).limit(limit).offset(none))
    assert kind == "joined"
    rows = ordered(a.start_ts, a.id, a.encoded).limit(limit).offset(none).subquery()
    # group_concat has no ORDER BY of its own before SQLite 3.44: it takes a
    # lone subquery's rows in the subquery's order (tests/integration/
    # test_store.py pages through ties to hold it).
    joined = cast(func.group_concat(rows.c.encoded, literal_column("''")), LargeBinary)
    return Prepared(select(func.count(), func.count(rows.c.encoded), joined))


class SqlActivityRepository(AccountScoped):
    def punch_state(self, time_clock_id: int, user_id: int, day: date) -> PunchState:
        row = _PUNCH_STATE.first(
            self._conn,
            {"acct": self.account, "tc": time_clock_id, "user": user_id, "day": day.isoformat()},
        )
        assert row is not None  # the anchor always yields one row
        status = row["day_status"]
        return PunchState(
            open=_activity(row) if row["id"] is not None else None,
            last_end=int(row["last_end"]) if row["last_end"] is not None else None,
            day_status=DayStatus(status) if status is not None else None,
        )

    def add(self, activity: Activity) -> None:
        values = _activity_row(self.account, activity)
        in_turn_for(self._conn, [(self.account, activity.time_clock_id, activity.user_id)])
        try:
            _INSERT_ACTIVITY.execute(self._conn, values).close()
        except integrity_error(self._conn) as exc:
            # The one-open-activity index refused it: the unit of work is rolled back
            # and the use case retried, so no savepoint is needed here.
            raise ConcurrentChange(str(exc)) from exc

    def close(self, activity: Activity, end: PunchPoint, modified_at: int) -> None:
        self.close_many([(activity, end, modified_at)])

    def close_many(self, closes: Sequence[tuple[Activity, PunchPoint, int]]) -> None:
        # A closed row is checked against the others like a new one: the
        # users' turns first, all at once (see in_turn_for).
        in_turn_for(self._conn, [(self.account, a.time_clock_id, a.user_id) for a, _, _ in closes])
        for activity, end, modified_at in closes:
            closed = ActivityRow.of(dataclasses.replace(activity, end=end, modified_at=modified_at))
            params = {
                "acct": self.account,
                "activity_id": activity.id,
                "modified_at": modified_at,
                **_point_columns("end", end),
                "encoded": _kept_line(closed),
            }
            after_sync(self._conn, _closed_it(_CLOSE.execute(self._conn, params), activity.id))

    def add_many(self, new: Sequence[Activity]) -> None:
        """Insert completed activities at once; an overlap that the store
        refuses (PostgreSQL's exclusion constraint) is a lost race."""
        if not new:
            return
        in_turn_for(self._conn, {(self.account, a.time_clock_id, a.user_id) for a in new})
        try:
            # Column by column (see Prepared.many_columns): a dict an
            # activity was a tenth of a thousand-activity call.
            rows = [ActivityRow.of(a) for a in new]
            columns = dict(zip(ActivityRow._fields, zip(*rows, strict=True), strict=True))
            _INSERT_ACTIVITY.many_columns(
                self._conn,
                {**columns, "encoded": list(map(_kept_line, rows))},
                {"account_id": self.account},
            )
        except integrity_error(self._conn) as exc:
            raise ConcurrentChange(str(exc)) from exc

    def get(self, time_clock_id: int, activity_id: str) -> Activity | None:
        row = self._conn.execute(
            select(*_COLUMNS).where(
                activities.c.account_id == self.account,
                activities.c.time_clock_id == time_clock_id,
                activities.c.id == activity_id,
            )
        ).first()
        return _activity_of(row) if row is not None else None

    def near(
        self, time_clock_id: int, user_ids: Sequence[int], lo: int, hi: int
    ) -> dict[int, list[Activity]]:
        """Each user's activities that overlap or touch ``[lo, hi]``, open ones included."""
        a = activities.c
        mine = (
            a.account_id == self.account,
            a.time_clock_id == time_clock_id,
            a.user_id.in_(sorted(set(user_ids))),
            # ``+ 0``: not a range on the index by start, which SQLite would
            # otherwise pick and scan the time clock's whole history with.
            a.start_ts + 0 <= hi,
        )
        # Two statements, so that each seeks per user in the index by end:
        # ``end IS NULL OR end >= lo`` cannot be a range in it.
        completed = select(*_COLUMNS).where(*mine, a.end_ts >= lo)
        still_open = select(*_COLUMNS).where(*mine, a.end_ts.is_(None))
        rows = self._conn.execute(union_all(completed, still_open)).all()
        found: dict[int, list[Activity]] = defaultdict(list)
        for r in rows:
            found[r.user_id].append(_activity_of(r))
        return dict(found)

    def replace(self, activity: Activity, read_modified_at: int) -> None:
        """Store the corrected ``activity`` if it is still as it was read."""
        values = _activity_row(self.account, activity)
        for key in ("id", "account_id", "time_clock_id", "user_id", "kind", "created_at"):
            del values[key]
        in_turn_for(self._conn, [(self.account, activity.time_clock_id, activity.user_id)])
        a = activities.c
        try:
            result = self._conn.execute(
                update(activities)
                .where(
                    a.account_id == self.account,
                    a.id == activity.id,
                    a.modified_at == read_modified_at,
                    a.end_ts.is_not(None),
                )
                .values(values)
            )
        except IntegrityError as exc:
            raise ConcurrentChange(str(exc.orig)) from exc
        if result.rowcount != 1:
            raise ConcurrentChange(f"activity {activity.id} was changed meanwhile")

    def remove(self, activity_id: str, read_modified_at: int) -> None:
        a = activities.c
        result = self._conn.execute(
            delete(activities).where(
                a.account_id == self.account,
                a.id == activity_id,
                a.modified_at == read_modified_at,
                a.end_ts.is_not(None),
            )
        )
        if result.rowcount != 1:
            raise ConcurrentChange(f"activity {activity_id} was changed meanwhile")

    def page(self, q: PageQuery) -> list[ActivityRow]:
        # On the driver: a page may hold 10,000 rows, and SQLAlchemy's row
        # objects cost as much as the read (bench/README.md, ListTimeActivities).
        shape, params = self._page_params(q)
        return list(map(ActivityRow._make, _paging("rows", shape).all(self._conn, params)))

    def spans(self, q: PageQuery, paid_breaks: Sequence[str], now: int) -> Iterator[np.ndarray]:
        shape, params = self._page_params(q._replace(after=None), paid_breaks)
        params["now"] = now
        if self._conn.dialect.name == "postgresql":
            # One statement: its index by start does not hold these columns,
            # so a slice of a quarter of the table was a sequential scan of
            # all of it (bench/README.md, totals).
            statement = _paging("span_rows", shape)
            yield from statement.int64_rows(self._conn, params, 4, _SPAN_CHUNK)
            return
        statement = _paging("spans", shape)
        # The first slice also holds what began before the window and runs into it.
        since = -(1 << 62)
        while since < q.end:
            until = min(max(since, q.start) + _SPAN_SLICE_S, q.end)
            yield from self._span_slice(statement, params, since, until, q.start)
            since = until

    def _span_slice(
        self, statement: Prepared, params: dict[str, Any], since: int, until: int, start: int
    ) -> Iterator[np.ndarray]:
        """SQLite: the spans of the activities begun in ``[since, until)``,
        halved until their joined rows fit in one value: a day of a clock
        with millions of activities passes SQLite's longest value (1 GB by
        default). A second always fits: at most one activity a user begins
        in it."""
        try:
            ((value,),) = statement.all(self._conn, {**params, "since": since, "end": until})
        except sqlite3.DataError:
            if until - max(since, start) <= 1:
                raise
            middle = (max(since, start) + until) // 2
            yield from self._span_slice(statement, params, since, middle, start)
            yield from self._span_slice(statement, params, middle, until, start)
            return
        yield _unhexed(value, 4)

    def page_lines(self, q: PageQuery) -> EncodedPage:
        """The activities of ``page`` as their kept lines, joined
        (bench/README.md, ListTimeActivities)."""
        shape, params = self._page_params(q)
        conn = self._conn
        if conn.dialect.name == "postgresql":
            # The lines as rows, and the page's last key from its last line:
            # one value of a megabyte or more is dear on PostgreSQL
            # (string_agg's buffer and the answer's, each grown by doubling),
            # 14 ms against 9 for the rows and their join here.
            read = _paging("kept", shape).all(conn, {**params, "limit": q.limit + 1}, binary=True)
            lines = list(map(itemgetter(0), read[: q.limit]))
            if None not in lines:
                after = line_key(lines[-1]) if len(read) > q.limit else None
                return EncodedPage(len(lines), b"".join(lines), after)
        else:
            # SQLite joins the lines in process, cheaper than a row apiece.
            size, kept, joined = _paging("joined", shape).all(conn, params)[0]
            if kept == size:
                # A read-only unit of work is one snapshot, so a second
                # statement finds the page's last row and whether one follows
                # it: built in the aggregate, the key cost 5-7 ms more.
                tail = _paging("tail", shape).all(conn, params) if size == q.limit else []
                return EncodedPage(size, bytes(joined or b""), tail[0] if len(tail) == 2 else None)
        # Rows stored without their line (written by hand, or a line too long
        # to keep): the page read again whole, those lines made from the columns.
        read = _paging("lines", shape).all(conn, {**params, "limit": q.limit + 1})
        rows = [(ActivityRow._make(row), line) for *row, line in read[: q.limit]]
        lines = [encode_line(row) if line is None else line for row, line in rows]
        last = rows[-1][0] if len(read) > q.limit else None
        return EncodedPage(len(lines), b"".join(lines), (last.start_ts, last.id) if last else None)

    def _page_params(
        self, q: PageQuery, paid_breaks: Sequence[str] = ()
    ) -> tuple[_PageShape, dict[str, Any]]:
        """The shape of a page's statements and their values (``paid_breaks``
        for the spans). The IN lists are padded to a power of two (see
        ``padded``), so that a handful of statements serves every length."""
        users, jobs = padded(list(q.user_ids)), padded(list(q.job_ids))
        paid = padded(list(paid_breaks))
        params: dict[str, Any] = {
            "acct": self.account,
            "tc": q.time_clock_id,
            "start": q.start,
            "end": q.end,
            "limit": q.limit,
            "skip": q.limit - 1,
        }
        params.update((f"u{i}", u) for i, u in enumerate(users))
        params.update((f"j{i}", j) for i, j in enumerate(jobs))
        params.update((f"p{i}", b) for i, b in enumerate(paid))
        if q.after is not None:
            params["after_ts"], params["after_id"] = q.after
        return _PageShape(len(users), len(jobs), q.after is not None, len(paid)), params

    def open_for(self, time_clock_id: int) -> dict[int, ActivityRow]:
        # Prepared, rows kept flat (the board is answered from the rows
        # without the objects of an Activity apiece), and only the rows not
        # kept from an earlier read are read whole (see _OpenRows).
        params = {"acct": self.account, "tc": time_clock_id}
        out: dict[int, ActivityRow] = {}
        lacking: dict[str, int] = {}
        lacking_users: list[int] = []
        kept = _OPEN_ROWS.get
        # Binary: its integers arrive as numbers, not as text to parse.
        for user, activity_id, modified_at in _OPEN_KEYS.all(self._conn, params, binary=True):
            row = kept((activity_id, modified_at))
            if row is None:
                lacking[activity_id] = modified_at
                lacking_users.append(user)
            else:
                out[user] = row
        _ROWS_KEPT.inc(len(out))
        if not lacking:
            return out
        if len(lacking) > _OPEN_BY_USER_MOST:
            read = _OPEN_FOR.all(self._conn, params)
        else:
            read = _OPEN_OF_USERS.all(self._conn, lacking_users, params)
        # Only the rows the first read lacked, at its version, are taken: a
        # read of every open row brings the kept ones back too, and outside a
        # read-only unit of work (READ COMMITTED on PostgreSQL) an activity
        # may close, or another open, between the two reads.
        fresh = [r for r in map(_row_of, read) if lacking.get(r.id) == r.modified_at]
        for r in fresh:
            out[r.user_id] = r
        _OPEN_ROWS.keep(fresh, in_use=out.values())  # read only if the store is cut
        _ROWS_READ.inc(len(fresh))
        return out

    def open_many(self, pairs: Sequence[tuple[int, int]]) -> dict[tuple[int, int], Activity]:
        """Open activities of (time clock, user) pairs."""
        users: dict[int, list[int]] = defaultdict(list)
        for time_clock_id, user_id in pairs:
            users[time_clock_id].append(user_id)
        return {
            (a.time_clock_id, a.user_id): a
            for time_clock_id, some in users.items()
            for a in map(
                _activity_of,
                _OPEN_OF_USERS.all(self._conn, some, {"acct": self.account, "tc": time_clock_id}),
            )
        }

    def list_for(self, time_clock_id: int, user_id: int) -> list[Activity]:
        params = {"acct": self.account, "tc": time_clock_id, "user": user_id}
        return list(map(_activity_of, _USER_HISTORY.all(self._conn, params)))


_INSERT_KEY = Prepared(
    insert(idempotency_keys).values({c.key: bindparam(c.key) for c in idempotency_keys.c})
)
_GET_KEY = Prepared(
    select(
        idempotency_keys.c.method, idempotency_keys.c.body_hash, idempotency_keys.c.response
    ).where(
        idempotency_keys.c.account_id == bindparam("acct"),
        idempotency_keys.c.key == bindparam("key"),
    )
)


class SqlIdempotencyRepository(AccountScoped):
    """Keys are per account: one account's key never answers, nor is refused, for another."""

    def __init__(self, conn: Connection, account: int | None, now: int) -> None:
        super().__init__(conn, account)
        self._now = now

    def get(self, key: str) -> tuple[str, str, bytes] | None:
        row = _GET_KEY.first(self._conn, {"acct": self.account, "key": key})
        return (row["method"], row["body_hash"], bytes(row["response"])) if row else None

    def put(self, key: str, method: str, body_hash: str, response: bytes) -> None:
        values = {
            "account_id": self.account,
            "key": key,
            "method": method,
            "body_hash": body_hash,
            "response": response,
            "created_at": self._now,
        }
        try:
            # A lost race leaves this transaction to be rolled back (or its
            # savepoint, under the group committer) and the punch retried.
            _INSERT_KEY.execute(self._conn, values).close()
        except integrity_error(self._conn) as exc:
            raise ConcurrentChange(f"idempotency key {key!r} was used meanwhile") from exc

    def purge(self, created_before: int, limit: int) -> int:
        """Forget keys older than ``created_before``, of every account (housekeeping)."""
        k = idempotency_keys.c
        oldest = (
            select(k.account_id, k.key)
            .where(k.created_at < created_before)
            .order_by(k.created_at)
            .limit(limit)
        )
        result = self._conn.execute(
            delete(idempotency_keys).where(tuple_(k.account_id, k.key).in_(oldest))
        )
        return int(result.rowcount)


#: Key of the PostgreSQL advisory lock that orders writers of index changes.
_INDEX_LOCK = 0x6765_6F70_6978  # "geopix"


_NOTE_CHANGE = Prepared(
    insert(index_changes)
    .values(
        account_id=bindparam("acct"), time_clock_id=bindparam("tc"), changed_at=bindparam("now")
    )
    .returning(index_changes.c.seq)
)


#: Under ``until_commit``: the index changes noted, not yet written.
_NOTED = "index_changes"


def noted_unwritten(conn: Connection) -> int:
    """How many index changes the connection's transaction noted and has not yet written."""
    return len(until_commit(conn, _NOTED))


def write_noted(conn: Connection) -> None:
    """Write the index changes the transaction noted, just before it commits
    and before its events (``tracking.write_appended``).

    As for the events: taken where a change was noted, the feed's seq lock
    was held while the rest of the transaction waited for other locks. A
    group commit's batch that noted a change and then waited for a user's
    turn, against another replica's batch holding that turn and waiting for
    the seq lock, deadlocked. Taken at the commit, the two seq locks are the
    last a transaction takes, always in this order."""
    pending = until_commit(conn, _NOTED)
    if not pending:
        return
    in_seq_order(conn, _INDEX_LOCK)  # followers resume from a seq
    for acct, tc, now, change in pending:
        cursor = _NOTE_CHANGE.execute(conn, {"acct": acct, "tc": tc, "now": now})
        (change.seq,) = cursor.fetchone()
        cursor.close()
    pending.clear()


class SqlIndexChangeRepository(AccountScoped):
    """The ``index_changes`` feed (see its table); ``after``, ``last`` and
    ``prune`` read every account's changes (the fence index follows them all)."""

    def __init__(self, conn: Connection, account: int | None, now: int) -> None:
        super().__init__(conn, account)
        self._now = now
        #: Set by ``note``; the unit of work tells its listener after the commit.
        self.noted = False

    def note(self, time_clock_id: int) -> NotedChange:
        self.noted = True
        change = NotedChange()
        until_commit(self._conn, _NOTED).append((self.account, time_clock_id, self._now, change))
        return change

    def after(self, cursor: int, limit: int = 1000) -> list[tuple[int, int, int]]:
        """(seq, account, time clock) of changes past ``cursor``, in order."""
        c = index_changes.c
        rows = self._conn.execute(
            select(c.seq, c.account_id, c.time_clock_id)
            .where(c.seq > cursor)
            .order_by(c.seq)
            .limit(limit)
        )
        return [(int(seq), int(acct), int(tc)) for seq, acct, tc in rows]

    def last(self) -> int:
        newest = self._conn.execute(NEWEST_INDEX_CHANGE).scalar()
        return int(newest or 0)

    def prune(self, before: int) -> int:
        c = index_changes.c
        gone = self._conn.execute(select(func.max(c.seq)).where(c.changed_at < before)).scalar()
        if gone is None:
            return 0
        # Recorded in the same transaction: a checkpoint older than this seq
        # cannot be completed from the feed any more.
        self._conn.execute(
            update(index_feed).values(
                pruned_through=func.max(index_feed.c.pruned_through, int(gone))
                if self._conn.dialect.name == "sqlite"
                else func.greatest(index_feed.c.pruned_through, int(gone))
            )
        )
        done = self._conn.execute(delete(index_changes).where(c.seq <= int(gone)))
        return int(done.rowcount)

    def identity(self) -> tuple[str, int]:
        feed_id, pruned = self._conn.execute(
            select(index_feed.c.id, index_feed.c.pruned_through)
        ).one()
        return str(feed_id), int(pruned)

    def count_after(self, cursor: int) -> int:
        c = index_changes.c
        return int(self._conn.execute(select(func.count()).where(c.seq > cursor)).scalar() or 0)

    def at(self, seq: int) -> tuple[int, int, int] | None:
        c = index_changes.c
        row = self._conn.execute(
            select(c.account_id, c.time_clock_id, c.changed_at).where(c.seq == seq)
        ).first()
        return None if row is None else (int(row[0]), int(row[1]), int(row[2]))
