"""Repositories of schedulers and their scheduled shifts."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    Connection,
    Row,
    delete,
    exists,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from geopunch.adapters.db.repositories import AccountScoped, job_columns, next_free_id
from geopunch.adapters.db.tables import (
    scheduled_shifts,
    scheduler_jobs,
    scheduler_users,
    schedulers,
    shift_users,
)
from geopunch.domain.errors import DomainError, ErrorCode
from geopunch.domain.events import Json
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


class SqlSchedulerRepository(AccountScoped):
    def __init__(self, conn: Connection, account: int | None, now: int) -> None:
        super().__init__(conn, account)
        self._now = now

    def get(self, scheduler_id: int) -> Scheduler | None:
        acct = self.account
        row = self._conn.execute(
            select(schedulers).where(
                schedulers.c.account_id == acct, schedulers.c.id == scheduler_id
            )
        ).first()
        if row is None:
            return None
        jobs = tuple(
            Job(j.job_id, j.name, j.parent_job_id, j.color or "")
            for j in self._conn.execute(
                select(scheduler_jobs)
                .where(
                    scheduler_jobs.c.account_id == acct,
                    scheduler_jobs.c.scheduler_id == scheduler_id,
                )
                .order_by(scheduler_jobs.c.position)
            )
        )
        users = frozenset(
            self._conn.execute(
                select(scheduler_users.c.user_id).where(
                    scheduler_users.c.account_id == acct,
                    scheduler_users.c.scheduler_id == scheduler_id,
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
                scheduler_users.c.account_id == self.account,
                scheduler_users.c.scheduler_id == scheduler_id,
                scheduler_users.c.user_id == user_id,
            )
        )
        return bool(self._conn.execute(query).scalar())

    def next_id(self) -> int:
        return next_free_id(self._conn, schedulers.c.id, self.account)

    def add(self, s: Scheduler) -> None:
        try:
            with self._conn.begin_nested():
                self._conn.execute(
                    insert(schedulers).values(
                        account_id=self.account,
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
            .where(schedulers.c.account_id == self.account, schedulers.c.id == s.id)
            .values(
                name=s.name,
                timezone=s.timezone,
                multi_user_shifts=s.multi_user_shifts,
                updated_at=self._now,
            )
        )
        for table in (scheduler_jobs, scheduler_users):
            self._conn.execute(
                delete(table).where(
                    table.c.account_id == self.account, table.c.scheduler_id == s.id
                )
            )
        self._write_children(s)

    def _write_children(self, s: Scheduler) -> None:
        if s.jobs:
            self._conn.execute(
                insert(scheduler_jobs),
                [
                    {
                        "account_id": self.account,
                        "scheduler_id": s.id,
                        "job_id": j.id,
                        **job_columns(pos, j),
                    }
                    for pos, j in enumerate(s.jobs)
                ],
            )
        if s.user_ids:
            self._conn.execute(
                insert(scheduler_users),
                [
                    {"account_id": self.account, "scheduler_id": s.id, "user_id": u}
                    for u in sorted(s.user_ids)
                ],
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


class SqlShiftRepository(AccountScoped):
    def add_many(self, shifts: Sequence[ScheduledShift]) -> None:
        if not shifts:
            return
        self._conn.execute(
            insert(scheduled_shifts),
            [
                {
                    "id": s.id,
                    "account_id": self.account,
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
            select(scheduled_shifts).where(
                scheduled_shifts.c.account_id == self.account, scheduled_shifts.c.id == shift_id
            )
        ).all()
        found = self._load(rows)
        return found[0] if found else None

    def list_range(self, scheduler_id: int, start: int, end: int) -> list[ScheduledShift]:
        """Shifts overlapping ``[start, end)``, by start time then id."""
        t = scheduled_shifts.c
        rows = self._conn.execute(
            select(scheduled_shifts)
            .where(
                t.account_id == self.account,
                t.scheduler_id == scheduler_id,
                t.start_ts < end,
                t.end_ts > start,
            )
            .order_by(t.start_ts, t.id)
        ).all()
        return self._load(rows)
