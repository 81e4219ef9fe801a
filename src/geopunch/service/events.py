"""Reading the event log, for every protocol that streams it."""

from __future__ import annotations

from collections.abc import Sequence

from geopunch.domain.events import Event
from geopunch.domain.ports import UnitOfWorkFactory

#: Events read per page while a stream catches up.
EVENT_PAGE = 500
#: Event streams do not poll: this process's commits, its sibling workers'
#: and (through the server's store watcher) other replicas' wake them. This
#: is only a safety net against a lost wake-up.
IDLE_RECHECK_S = 30.0


def events_after(
    uows: UnitOfWorkFactory,
    account: int,
    after: int,
    types: Sequence[str],
    time_clock_ids: Sequence[int],
) -> list[Event]:
    """The next page of ``account``'s events after ``after``, filtered."""
    with uows(account=account, readonly=True) as uow:
        return uow.events.after(after, EVENT_PAGE, list(types), list(time_clock_ids))
