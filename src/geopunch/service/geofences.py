"""Geofence use cases."""

from __future__ import annotations

from collections.abc import Sequence

from geopunch.domain.errors import DomainError, ErrorCode
from geopunch.domain.ids import ordered_hexes
from geopunch.domain.models import Geofence, GeofenceDraft, TimeClock
from geopunch.domain.ports import (
    FenceListener,
    NotedChange,
    TransactionRunner,
    UnitOfWork,
    UnitOfWorkFactory,
)
from geopunch.domain.rules import validate_geofences
from geopunch.service.admin import committed, get_time_clock


def new_fence_ids(n: int) -> list[str]:
    return [f"fence-{h}" for h in ordered_hexes(n)]


def list_geofences(uows: UnitOfWorkFactory, account: int, time_clock_id: int) -> list[Geofence]:
    with uows(account=account, readonly=True) as uow:
        get_time_clock(uow, time_clock_id)
        return uow.geofences.list_for(time_clock_id)


def get_geofence(
    uows: UnitOfWorkFactory, account: int, time_clock_id: int, fence_id: str
) -> Geofence:
    with uows(account=account, readonly=True) as uow:
        get_time_clock(uow, time_clock_id)
        fence = uow.geofences.get(time_clock_id, fence_id)
    if fence is None:
        raise _not_found(time_clock_id, fence_id)
    return fence


def create_geofences(
    uows: UnitOfWorkFactory,
    account: int,
    time_clock_id: int,
    drafts: Sequence[GeofenceDraft],
    listener: FenceListener | None = None,
    commit: TransactionRunner | None = None,
) -> list[Geofence]:
    """Validate and store all drafts in one transaction, or none of them."""

    def work(uow: UnitOfWork) -> tuple[TimeClock, list[Geofence], NotedChange]:
        tc = get_time_clock(uow, time_clock_id)
        fences = validate_geofences(drafts, tc, iter(new_fence_ids(len(drafts))).__next__)
        uow.geofences.add_many(fences)
        return tc, fences, uow.index_changes.note(tc.id)

    def after(done: tuple[TimeClock, list[Geofence], NotedChange]) -> None:
        if listener is not None:
            listener.fences_changed(account, done[0], done[1], (), done[2].seq)

    return committed(uows, account, work, after, listener, commit)[1]


def delete_geofence(
    uows: UnitOfWorkFactory,
    account: int,
    time_clock_id: int,
    fence_id: str,
    listener: FenceListener | None = None,
    commit: TransactionRunner | None = None,
) -> None:
    def work(uow: UnitOfWork) -> tuple[TimeClock, NotedChange]:
        tc = get_time_clock(uow, time_clock_id)
        if not uow.geofences.delete(time_clock_id, fence_id):
            raise _not_found(time_clock_id, fence_id)
        return tc, uow.index_changes.note(tc.id)

    def after(done: tuple[TimeClock, NotedChange]) -> None:
        if listener is not None:
            listener.fences_changed(account, done[0], (), (fence_id,), done[1].seq)

    committed(uows, account, work, after, listener, commit)


def _not_found(time_clock_id: int, fence_id: str) -> DomainError:
    return DomainError(
        ErrorCode.GEOFENCE_NOT_FOUND,
        f"geofence {fence_id!r} does not exist on time clock {time_clock_id}",
        {"fenceId": fence_id, "timeClockId": str(time_clock_id)},
    )
