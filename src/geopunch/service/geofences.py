"""Geofence use cases."""

from __future__ import annotations

from collections.abc import Sequence

from geopunch.domain.errors import DomainError, ErrorCode
from geopunch.domain.ids import ordered_hex
from geopunch.domain.models import Geofence, GeofenceDraft
from geopunch.domain.ports import FenceListener, UnitOfWorkFactory
from geopunch.domain.rules import validate_geofences
from geopunch.service.admin import get_time_clock, locked


def new_fence_id() -> str:
    return f"fence-{ordered_hex()}"


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
) -> list[Geofence]:
    """Validate and store all drafts in one transaction, or none of them."""
    with uows(account=account) as uow:
        tc = get_time_clock(uow, time_clock_id)
        fences = validate_geofences(drafts, tc, new_fence_id)
        uow.geofences.add_many(fences)
        seq = uow.index_changes.note(tc.id)
        with locked(listener):
            uow.commit()
            if listener is not None:
                listener.fences_changed(account, tc, fences, (), seq)
    return fences


def delete_geofence(
    uows: UnitOfWorkFactory,
    account: int,
    time_clock_id: int,
    fence_id: str,
    listener: FenceListener | None = None,
) -> None:
    with uows(account=account) as uow:
        tc = get_time_clock(uow, time_clock_id)
        if not uow.geofences.delete(time_clock_id, fence_id):
            raise _not_found(time_clock_id, fence_id)
        seq = uow.index_changes.note(tc.id)
        with locked(listener):
            uow.commit()
            if listener is not None:
                listener.fences_changed(account, tc, (), (fence_id,), seq)


def _not_found(time_clock_id: int, fence_id: str) -> DomainError:
    return DomainError(
        ErrorCode.GEOFENCE_NOT_FOUND,
        f"geofence {fence_id!r} does not exist on time clock {time_clock_id}",
        {"fenceId": fence_id, "timeClockId": str(time_clock_id)},
    )
