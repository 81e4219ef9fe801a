"""Time clock set-up use cases."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace
from datetime import date
from typing import TypeVar

from geopunch.domain.errors import DomainError, ErrorCode
from geopunch.domain.models import DayStatus, Geofence, TimeClock
from geopunch.domain.ports import (
    FenceListener,
    NotedChange,
    TransactionRunner,
    UnitOfWork,
    UnitOfWorkFactory,
)
from geopunch.domain.rules import check_user, parse_dates, validate_time_clock

T = TypeVar("T")


def get_time_clock(uow: UnitOfWork, time_clock_id: int) -> TimeClock:
    """The time clock, or DomainError(TIME_CLOCK_NOT_FOUND)."""
    tc = uow.time_clocks.get(time_clock_id)
    if tc is None:
        raise DomainError(
            ErrorCode.TIME_CLOCK_NOT_FOUND,
            f"time clock {time_clock_id} does not exist",
            {"timeClockId": str(time_clock_id)},
        )
    return tc


def create_time_clock(
    uows: UnitOfWorkFactory,
    account: int,
    tc: TimeClock,
    job_paths: Sequence[str],
    *,
    assign_id: bool,
    listener: FenceListener | None = None,
    commit: TransactionRunner | None = None,
) -> TimeClock:
    """Validate and store a new time clock; with ``assign_id`` the store picks its id."""

    def work(uow: UnitOfWork) -> tuple[TimeClock, NotedChange]:
        made = replace(tc, id=uow.time_clocks.next_id()) if assign_id else tc
        validate_time_clock(made, job_paths)
        uow.time_clocks.add(made)
        return made, uow.index_changes.note(made.id)

    def after(done: tuple[TimeClock, NotedChange]) -> None:
        if listener is not None:
            listener.time_clock_changed(account, done[0], (), done[1].seq)

    return committed(uows, account, work, after, listener, commit)[0]


def update_time_clock(
    uows: UnitOfWorkFactory,
    account: int,
    tc: TimeClock,
    job_paths: Sequence[str],
    listener: FenceListener | None = None,
    commit: TransactionRunner | None = None,
) -> TimeClock:
    """Replace every setting of an existing time clock.

    A job that a geofence still names cannot be removed (JOB_IN_USE).
    """
    validate_time_clock(tc, job_paths)

    def work(uow: UnitOfWork) -> tuple[list[Geofence], NotedChange]:
        get_time_clock(uow, tc.id)
        missing = sorted(uow.geofences.job_ids_in_use(tc.id) - tc.job_ids)
        if missing:
            raise DomainError(
                ErrorCode.JOB_IN_USE,
                f"jobs {missing} are named by geofences of time clock {tc.id}; "
                "delete or change those geofences first",
            )
        uow.time_clocks.replace(tc)
        seq = uow.index_changes.note(tc.id)
        return (uow.geofences.list_for(tc.id) if listener is not None else []), seq

    def after(done: tuple[list[Geofence], NotedChange]) -> None:
        if listener is not None:
            listener.time_clock_changed(account, tc, done[0], done[1].seq)

    committed(uows, account, work, after, listener, commit)
    return tc


def committed(
    uows: UnitOfWorkFactory,
    account: int,
    work: Callable[[UnitOfWork], T],
    after: Callable[[T], None],
    listener: FenceListener | None,
    commit: TransactionRunner | None,
) -> T:
    """``work`` in ``account``'s unit of work, committed, then ``after`` on
    its result, under the listener's write lock so that changes reach the
    fence index in commit order. Through ``commit`` when given: concurrent
    callers then share a transaction and its fsync."""
    if commit is not None:
        return commit(lambda uow: work(uow.for_account(account)), after)
    with uows(account=account) as uow:
        result = work(uow)
        with locked(listener):
            uow.commit()
            after(result)
    return result


def locked(listener: FenceListener | None) -> AbstractContextManager[None]:
    """The listener's write lock, so that commits reach it in commit order."""
    return listener.write_lock() if listener is not None else nullcontext()


def read_time_clock(uows: UnitOfWorkFactory, account: int, time_clock_id: int) -> TimeClock:
    with uows(account=account, readonly=True) as uow:
        return get_time_clock(uow, time_clock_id)


def set_day_status(
    uows: UnitOfWorkFactory,
    account: int,
    time_clock_id: int,
    user_id: int,
    dates: Sequence[str],
    status: DayStatus,
) -> dict[date, DayStatus]:
    """Lock, approve or reopen days of a user; returns the user's closed days."""
    days = parse_dates(dates)
    with uows(account=account) as uow:
        tc = get_time_clock(uow, time_clock_id)
        check_user(tc, user_id)
        uow.time_clocks.set_day_status(time_clock_id, user_id, days, status)
        result = uow.time_clocks.day_statuses(time_clock_id, user_id)
        uow.commit()
    return result


def list_day_statuses(
    uows: UnitOfWorkFactory, account: int, time_clock_id: int, user_id: int
) -> dict[date, DayStatus]:
    with uows(account=account, readonly=True) as uow:
        get_time_clock(uow, time_clock_id)
        return uow.time_clocks.day_statuses(time_clock_id, user_id)
