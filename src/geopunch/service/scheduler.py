"""Scheduler set-up and bulk shift creation use cases."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace

from geopunch.domain.errors import DomainError, ErrorCode
from geopunch.domain.ports import Clock, UnitOfWork, UnitOfWorkFactory
from geopunch.domain.shifts import (
    ScheduledShift,
    Scheduler,
    published_events,
    validate_scheduler,
    validate_shifts,
)

#: The widest window ListShifts answers for, in seconds.
MAX_LIST_WINDOW_S = 92 * 24 * 3600


def new_shift_id(now: int) -> str:
    """24 hex digits: the creation second, then 8 random bytes (sortable by time)."""
    return f"{now & 0xFFFFFFFF:08x}{os.urandom(8).hex()}"


def get_scheduler(uow: UnitOfWork, scheduler_id: int) -> Scheduler:
    """The scheduler, or DomainError(SCHEDULER_NOT_FOUND)."""
    s = uow.schedulers.get(scheduler_id)
    if s is None:
        raise DomainError(
            ErrorCode.SCHEDULER_NOT_FOUND,
            f"scheduler {scheduler_id} does not exist",
            {"schedulerId": str(scheduler_id)},
        )
    return s


def create_scheduler(
    uows: UnitOfWorkFactory,
    account: int,
    s: Scheduler,
    job_paths: Sequence[str],
    *,
    assign_id: bool,
) -> Scheduler:
    """Validate and store a new scheduler; with ``assign_id`` the store picks its id."""
    with uows(account=account) as uow:
        if assign_id:
            s = replace(s, id=uow.schedulers.next_id())
        validate_scheduler(s, job_paths)
        uow.schedulers.add(s)
        uow.commit()
    return s


def update_scheduler(
    uows: UnitOfWorkFactory, account: int, s: Scheduler, job_paths: Sequence[str]
) -> Scheduler:
    """Replace every setting of an existing scheduler. Stored shifts keep the
    users and jobs they were created with."""
    validate_scheduler(s, job_paths)
    with uows(account=account) as uow:
        get_scheduler(uow, s.id)
        uow.schedulers.replace(s)
        uow.commit()
    return s


def read_scheduler(uows: UnitOfWorkFactory, account: int, scheduler_id: int) -> Scheduler:
    with uows(account=account, readonly=True) as uow:
        return get_scheduler(uow, scheduler_id)


def create_shifts(
    uows: UnitOfWorkFactory,
    clock: Clock,
    account: int,
    scheduler_id: int,
    drafts: Sequence[ScheduledShift],
    *,
    notify_users: bool = True,
    created_by: int | None = None,
) -> list[ScheduledShift]:
    """Validate and store 1..500 shifts, all or none.

    Published shifts get one ``shiftPublished`` event per assigned user unless
    ``notify_users`` is false; the events are written in the shifts' transaction.
    """
    if created_by is not None and created_by <= 0:
        raise DomainError(ErrorCode.INVALID_ARGUMENT, "created_by must be a positive user id")
    with uows(account=account) as uow:
        scheduler = get_scheduler(uow, scheduler_id)
        now = int(clock.now())
        shifts = validate_shifts(
            scheduler, drafts, new_id=lambda: new_shift_id(now), now=now, created_by=created_by
        )
        uow.shifts.add_many(shifts)
        if notify_users:
            uow.events.append(published_events(shifts, now))
        uow.commit()
    return shifts


def list_shifts(
    uows: UnitOfWorkFactory, account: int, scheduler_id: int, start: int, end: int
) -> list[ScheduledShift]:
    """Shifts of the scheduler overlapping ``[start, end)``."""
    if end <= start or end - start > MAX_LIST_WINDOW_S:
        raise DomainError(
            ErrorCode.INVALID_ARGUMENT,
            f"the window [{start}, {end}) must be non-empty and at most "
            f"{MAX_LIST_WINDOW_S // 86400} days long",
        )
    with uows(account=account, readonly=True) as uow:
        get_scheduler(uow, scheduler_id)
        return uow.shifts.list_range(scheduler_id, start, end)
