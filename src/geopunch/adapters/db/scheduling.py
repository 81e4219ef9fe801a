"""Repositories of schedulers, scheduled shifts and the event log."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

from sqlalchemy import (
    JSON,
    Connection,
    Row,
    String,
    bindparam,
    delete,
    exists,
    func,
    insert,
    select,
    type_coerce,
    update,
)
from sqlalchemy.exc import IntegrityError

from geopunch.adapters.db.prepared import (
    Prepared,
    PreparedIn,
    in_seq_order,
    in_values,
    integrity_error,
)
from geopunch.adapters.db.repositories import job_columns
from geopunch.adapters.db.tables import (
    events,
    live_trails,
    scheduled_shifts,
    scheduler_jobs,
    scheduler_users,
    schedulers,
    shift_users,
)
from geopunch.domain.errors import ConcurrentChange, DomainError, ErrorCode
from geopunch.domain.events import Event, Json, LiveTrail
from geopunch.domain.models import Job
from geopunch.domain.punches import PunchLocation
from geopunch.domain.shifts import (
    CustomField,
    ScheduledShift,
    Scheduler,
    ShiftBreak,
    ShiftLayer,
    ShiftLocation,
)

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
        .where(_TRAIL.user_id.in_(in_values(n)))
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
_WHERE_TRAIL = (_TRAIL.user_id == bindparam("u"), _TRAIL.time_clock_id == bindparam("k"))
_UPDATE_TRAIL = Prepared(
    update(live_trails)
    .where(*_WHERE_TRAIL)
    .values(last_ts=bindparam("ts"), inside=bindparam("fences", type_=JSON))
)
#: A trail that moved without entering or leaving a fence: no JSON to encode.
_MOVE_TRAIL = Prepared(update(live_trails).where(*_WHERE_TRAIL).values(last_ts=bindparam("ts")))


class SqlLocationRepository:
    """Live trails, one row per (user, time clock).

    Every ReportLocations batch reads and writes a row per trail it touches,
    so these statements run on the driver (see ``prepared``).
    """

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def load(self, user_ids: Sequence[int]) -> dict[tuple[int, int], LiveTrail]:
        """Stored trails of these users, on every time clock, locked for update."""
        return {
            (user, clock): LiveTrail(last, _fences(inside))
            for user, clock, last, inside in _LOAD_TRAILS.all(self._conn, user_ids)
        }

    def save(
        self, new: dict[tuple[int, int], LiveTrail], known: Mapping[tuple[int, int], LiveTrail]
    ) -> None:
        """Write trails; those in ``known`` (as loaded) exist already, the others
        are inserted (ConcurrentChange when another call inserted one first)."""
        fresh = []
        moved = []
        changed = []
        for (u, k), v in new.items():
            old = known.get((u, k))
            if old is None:
                fresh.append(
                    {
                        "user_id": u,
                        "time_clock_id": k,
                        "last_ts": v.last_ts,
                        "inside": list(v.inside),
                    }
                )
            elif old.inside == v.inside:
                moved.append({"u": u, "k": k, "ts": v.last_ts})
            else:
                changed.append({"u": u, "k": k, "ts": v.last_ts, "fences": list(v.inside)})
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


class SqlSchedulerRepository:
    def __init__(self, conn: Connection, now: int) -> None:
        self._conn = conn
        self._now = now

    def get(self, scheduler_id: int) -> Scheduler | None:
        row = self._conn.execute(select(schedulers).where(schedulers.c.id == scheduler_id)).first()
        if row is None:
            return None
        jobs = tuple(
            Job(j.job_id, j.name, j.parent_job_id, j.color or "")
            for j in self._conn.execute(
                select(scheduler_jobs)
                .where(scheduler_jobs.c.scheduler_id == scheduler_id)
                .order_by(scheduler_jobs.c.position)
            )
        )
        users = frozenset(
            self._conn.execute(
                select(scheduler_users.c.user_id).where(
                    scheduler_users.c.scheduler_id == scheduler_id
                )
            ).scalars()
        )
        return Scheduler(
            id=row.id,
            name=row.name,
            timezone=row.timezone,
            jobs=jobs,
            user_ids=users,
            multi_user_shifts=row.multi_user_shifts,
        )

    def has_user(self, scheduler_id: int, user_id: int) -> bool:
        query = select(
            exists().where(
                scheduler_users.c.scheduler_id == scheduler_id,
                scheduler_users.c.user_id == user_id,
            )
        )
        return bool(self._conn.execute(query).scalar())

    def next_id(self) -> int:
        current = self._conn.execute(select(func.max(schedulers.c.id))).scalar()
        return int(current or 0) + 1

    def add(self, s: Scheduler) -> None:
        try:
            with self._conn.begin_nested():
                self._conn.execute(
                    insert(schedulers).values(
                        id=s.id,
                        name=s.name,
                        timezone=s.timezone,
                        multi_user_shifts=s.multi_user_shifts,
                        created_at=self._now,
                        updated_at=self._now,
                    )
                )
        except IntegrityError as exc:
            raise DomainError(
                ErrorCode.SCHEDULER_ALREADY_EXISTS,
                f"scheduler {s.id} already exists; use UpdateScheduler to change it",
                {"schedulerId": str(s.id)},
            ) from exc
        self._write_children(s)

    def replace(self, s: Scheduler) -> None:
        self._conn.execute(
            update(schedulers)
            .where(schedulers.c.id == s.id)
            .values(
                name=s.name,
                timezone=s.timezone,
                multi_user_shifts=s.multi_user_shifts,
                updated_at=self._now,
            )
        )
        for table in (scheduler_jobs, scheduler_users):
            self._conn.execute(delete(table).where(table.c.scheduler_id == s.id))
        self._write_children(s)

    def _write_children(self, s: Scheduler) -> None:
        if s.jobs:
            self._conn.execute(
                insert(scheduler_jobs),
                [
                    {"scheduler_id": s.id, "job_id": j.id, **job_columns(pos, j)}
                    for pos, j in enumerate(s.jobs)
                ],
            )
        if s.user_ids:
            self._conn.execute(
                insert(scheduler_users),
                [{"scheduler_id": s.id, "user_id": u} for u in sorted(s.user_ids)],
            )


def _body(s: ScheduledShift) -> dict[str, Json]:
    loc = s.location
    location: dict[str, Json] | None = None
    if loc is not None:
        gps = loc.gps
        location = {
            "isReferencedToJob": loc.is_referenced_to_job,
            "gps": None
            if gps is None
            else {"address": gps.address, "latitude": gps.latitude, "longitude": gps.longitude},
        }
    return {
        "location": location,
        "notes": list(s.notes),
        "breaks": [
            [b.name, b.type, b.start_minute, b.duration_min, b.start_ts, b.end_ts] for b in s.breaks
        ],
        "statuses": list(s.statuses),
        "details": None
        if not s.has_details
        else {
            "layers": [[x.id, x.value_id] for x in s.shift_layers],
            "source": s.shift_source,
        },
        "customFields": [[c.id, c.value] for c in s.custom_fields],
    }


def _shift(row: Row[Any], users: Sequence[int]) -> ScheduledShift:
    body = row.body
    loc = body["location"]
    location = None
    if loc is not None:
        gps = loc["gps"]
        point = None
        if gps is not None:
            point = PunchLocation(gps["address"], gps["latitude"], gps["longitude"])
        location = ShiftLocation(loc["isReferencedToJob"], point)
    details = body["details"]
    return ScheduledShift(
        id=row.id,
        scheduler_id=row.scheduler_id,
        start_time=row.start_ts,
        end_time=row.end_ts,
        title=row.title,
        job_id=row.job_id,
        timezone=row.timezone,
        is_published=row.is_published,
        is_open_shift=row.is_open_shift,
        open_spots=row.open_spots,
        is_require_admin_approval=row.is_require_admin_approval,
        assigned_user_ids=tuple(users),
        location=location,
        color=row.color,
        notes=tuple(body["notes"]),
        breaks=tuple(ShiftBreak(*b) for b in body["breaks"]),
        statuses=tuple(body["statuses"]),
        has_details=details is not None,
        shift_layers=tuple(ShiftLayer(*x) for x in (details or {}).get("layers", ())),
        shift_source=(details or {}).get("source"),
        custom_fields=tuple(CustomField(*c) for c in body["customFields"]),
        created_by=row.created_by,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


class SqlShiftRepository:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def add_many(self, shifts: Sequence[ScheduledShift]) -> None:
        if not shifts:
            return
        self._conn.execute(
            insert(scheduled_shifts),
            [
                {
                    "id": s.id,
                    "scheduler_id": s.scheduler_id,
                    "start_ts": s.start_time,
                    "end_ts": s.end_time,
                    "title": s.title,
                    "job_id": s.job_id,
                    "timezone": s.timezone,
                    "is_published": bool(s.is_published),
                    "is_open_shift": bool(s.is_open_shift),
                    "open_spots": s.open_spots,
                    "is_require_admin_approval": s.is_require_admin_approval,
                    "color": s.color,
                    "body": _body(s),
                    "created_by": s.created_by,
                    "created_at": s.created_at,
                    "updated_at": s.updated_at,
                }
                for s in shifts
            ],
        )
        user_rows = [
            {"shift_id": s.id, "user_id": u, "position": pos}
            for s in shifts
            for pos, u in enumerate(s.assigned_user_ids)
        ]
        if user_rows:
            self._conn.execute(insert(shift_users), user_rows)

    def _load(self, rows: Sequence[Row[Any]]) -> list[ScheduledShift]:
        if not rows:
            return []
        users: dict[str, list[int]] = defaultdict(list)
        for shift_id, user_id in self._conn.execute(
            select(shift_users.c.shift_id, shift_users.c.user_id)
            .where(shift_users.c.shift_id.in_([r.id for r in rows]))
            .order_by(shift_users.c.shift_id, shift_users.c.position)
        ):
            users[shift_id].append(user_id)
        return [_shift(r, users[r.id]) for r in rows]

    def get(self, shift_id: str) -> ScheduledShift | None:
        rows = self._conn.execute(
            select(scheduled_shifts).where(scheduled_shifts.c.id == shift_id)
        ).all()
        found = self._load(rows)
        return found[0] if found else None

    def list_range(self, scheduler_id: int, start: int, end: int) -> list[ScheduledShift]:
        """Shifts overlapping ``[start, end)``, by start time then id."""
        t = scheduled_shifts.c
        rows = self._conn.execute(
            select(scheduled_shifts)
            .where(t.scheduler_id == scheduler_id, t.start_ts < end, t.end_ts > start)
            .order_by(t.start_ts, t.id)
        ).all()
        return self._load(rows)


#: Every exit of a ReportLocations batch appends events: on the driver too.
_INSERT_EVENT = Prepared(
    insert(events).values({c.key: bindparam(c.key) for c in events.c if c.key != "seq"})
)


class SqlEventRepository:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        #: Set once this transaction appended events (the unit of work signals their commit).
        self.appended = False

    def append(self, new: Sequence[Event]) -> None:
        if not new:
            return
        self.appended = True
        in_seq_order(self._conn, _EVENTS_LOCK)  # subscribers resume from a seq
        _INSERT_EVENT.many(
            self._conn,
            [
                {
                    "type": e.type,
                    "occurred_at": e.occurred_at,
                    "time_clock_id": e.time_clock_id,
                    "scheduler_id": e.scheduler_id,
                    "user_id": e.user_id,
                    "payload": e.payload,
                }
                for e in new
            ],
        )

    def after(
        self,
        cursor: int,
        limit: int = 1000,
        types: Sequence[str] = (),
        time_clock_ids: Sequence[int] = (),
    ) -> list[Event]:
        """Events with ``seq > cursor`` in log order, of the given types and
        time clocks (empty: any)."""
        query = select(events).where(events.c.seq > cursor)
        if types:
            query = query.where(events.c.type.in_(list(types)))
        if time_clock_ids:
            query = query.where(events.c.time_clock_id.in_(list(time_clock_ids)))
        rows = self._conn.execute(query.order_by(events.c.seq).limit(limit))
        return [
            Event(
                type=r.type,
                occurred_at=r.occurred_at,
                payload=r.payload,
                user_id=r.user_id,
                time_clock_id=r.time_clock_id,
                scheduler_id=r.scheduler_id,
                seq=r.seq,
            )
            for r in rows
        ]
