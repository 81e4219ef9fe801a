"""Reading the event log, for every protocol that streams it."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from geopunch.domain.errors import DomainError, ErrorCode
from geopunch.domain.events import Event
from geopunch.domain.ports import UnitOfWork, UnitOfWorkFactory

#: Events read per page while a stream catches up.
EVENT_PAGE = 500
#: Event streams do not poll: this process's commits, its sibling workers'
#: and (through the server's store watcher) other replicas' wake them. This
#: is only a safety net against a lost wake-up.
IDLE_RECHECK_S = 30.0


#: Event streams one key may hold when nothing else is configured
#: (GEOPUNCH_MAX_STREAMS_PER_KEY).
STREAMS_PER_KEY = 32


class StreamSlots:
    """The event streams each API key holds open in this process, over gRPC
    (``WatchEvents``) and HTTP (Server-Sent Events) together: one key may
    hold ``per_key`` of them, so that a key cannot tie up the process with
    streams that each wake and read the store on every commit.

    Taken and given back on the event loop's thread only (both APIs' stream
    handlers run there), so the counts need no lock."""

    def __init__(self, per_key: int = STREAMS_PER_KEY) -> None:
        self.per_key = per_key
        self._held: dict[str, int] = {}

    def take(self, key_id: str) -> Callable[[], None]:
        """A slot for ``key_id``, or TOO_MANY_STREAMS; the answer gives it back
        (calling it again does nothing)."""
        held = self._held.get(key_id, 0)
        if held >= self.per_key:
            raise DomainError(
                ErrorCode.TOO_MANY_STREAMS,
                f"this key holds {held} event streams, the most one key may; "
                "close one, or use another key",
                {"limit": str(self.per_key)},
            )
        self._held[key_id] = held + 1
        given_back = False

        def give_back() -> None:
            nonlocal given_back
            if given_back:
                return
            given_back = True
            left = self._held[key_id] - 1
            if left:
                self._held[key_id] = left
            else:
                del self._held[key_id]

        return give_back

    def held(self, key_id: str) -> int:
        return self._held.get(key_id, 0)


def events_after(
    uows: UnitOfWorkFactory,
    account: int,
    after: int,
    types: Sequence[str],
    time_clock_ids: Sequence[int],
) -> list[Event]:
    """The next page of ``account``'s events after ``after``, filtered.

    ``after`` 0 reads from the oldest event kept; a cursor that retention has
    passed is EVENTS_PURGED, so a subscriber learns it missed events instead
    of silently going on after a gap."""
    with uows(account=account, readonly=True) as uow:
        _check_resumable(uow, after)
        return uow.events.after(after, EVENT_PAGE, list(types), list(time_clock_ids))


def check_resumable(uows: UnitOfWorkFactory, account: int, after: int) -> None:
    """EVENTS_PURGED when retention removed events after ``after`` (before a
    stream starts, so that the refusal can still be its status)."""
    with uows(account=account, readonly=True) as uow:
        _check_resumable(uow, after)


def _check_resumable(uow: UnitOfWork, after: int) -> None:
    horizon = uow.events.horizon()
    if 0 < after < horizon:
        raise DomainError(
            ErrorCode.EVENTS_PURGED,
            f"the events after seq {after} up to {horizon} are no longer kept "
            "(retention); resume from 0 for the oldest kept, and reconcile what was missed",
            {"purgedThrough": str(horizon)},
        )


def purge_events(uows: UnitOfWorkFactory, now: float, retention_s: float, batch: int = 1000) -> int:
    """Forget events recorded more than ``retention_s`` before ``now``, oldest
    first, ``batch`` per transaction (writers wait for one short one at most)."""
    cutoff = int(now - retention_s)
    return in_batches(uows, lambda uow: uow.events.purge(cutoff, batch), batch)


def in_batches(uows: UnitOfWorkFactory, remove: Callable[[UnitOfWork], int], batch: int) -> int:
    """Run ``remove`` (which removes at most ``batch`` rows) in a transaction
    of its own until it removes fewer; the total removed. Housekeeping in
    short transactions: writers waiting for the lock wait for one at most."""
    total = 0
    while True:
        with uows() as uow:
            removed = remove(uow)
            uow.commit()
        total += removed
        if removed < batch:
            return total
