"""The server's background loops, each a named service with a thread of its own.

Each loop runs until its ``stopped`` event is set, and survives a store that
fails for a while: it logs the first failure with its stack, then at most
once a minute, and says when the store is back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from geopunch import metrics
from geopunch.adapters.wakeup import Wakeup
from geopunch.domain.ports import FenceEngine, FenceListener, UnitOfWorkFactory
from geopunch.entrypoints.process import SharedGenerations
from geopunch.logs import FailureLog
from geopunch.service.accounts import KeyRing
from geopunch.service.index_feed import follow_index_changes, newest_event, prune_index_changes

log = logging.getLogger("geopunch")

#: How often expired idempotency keys are purged (also once at start-up), and
#: how often the index-change feed is pruned.
HOUSEKEEPING_EVERY_S = 3600.0
#: Index changes older than this are pruned: every running process has long applied them.
INDEX_CHANGES_KEPT_S = 86400.0
#: How often a worker of ``serve --processes`` looks whether a sibling committed events.
EVENT_RELAY_S = 0.02
#: How often the index's size is copied into the metrics (a sum of a few lengths).
INDEX_GAUGES_EVERY_S = 1.0


class _Pokeable:
    """A loop that runs every ``poll_s``, or at once when poked (a store
    notification), whichever comes first."""

    _poll_s: float
    _stopped: threading.Event

    def __init__(self) -> None:
        self._poked = threading.Event()
        self.poked = False

    def poke(self) -> None:
        self._poked.set()

    def _next_round(self) -> bool:
        """Wait for the next round; False once stopped (seen within 0.25 s).
        ``self.poked``: whether a poke started it (else the poll's time did)."""
        deadline = time.monotonic() + self._poll_s
        while not self._stopped.is_set():
            left = deadline - time.monotonic()
            if self._poked.wait(max(0.0, min(0.25, left))):
                self._poked.clear()
                self.poked = True
                return True
            if left <= 0.25:
                self.poked = False
                return not self._stopped.is_set()
        return False


class IndexFollower(_Pokeable):
    """Applies time clock and geofence changes that other processes committed
    to this process's fence engine, every ``poll_s``; prunes the feed hourly
    when ``prune`` (one process of several does). ``catch_up`` does it at once.

    ``follow`` and ``prune_before`` are the store's feed (the use cases of
    ``service.index_feed``); tests pass their own.
    """

    def __init__(
        self,
        uows: UnitOfWorkFactory,
        engine: FenceListener,
        cursor: int,
        poll_s: float,
        stopped: threading.Event,
        *,
        prune: bool = True,
        follow: Callable[[UnitOfWorkFactory, FenceListener, int], int] = follow_index_changes,
        prune_before: Callable[[UnitOfWorkFactory, int], int] = prune_index_changes,
    ) -> None:
        super().__init__()
        self.cursor = cursor
        self._uows, self._engine = uows, engine
        self._poll_s, self._stopped, self._prune = poll_s, stopped, prune
        self._follow, self._prune_before = follow, prune_before
        # The loop's thread and callers catching up take turns.
        self._lock = threading.Lock()

    def catch_up(self) -> None:
        """Apply every change in the store's feed past the cursor."""
        with self._lock:
            before = self.cursor
            started = time.time()
            self.cursor = self._follow(self._uows, self._engine, before)
            # Everything committed before this round began is applied now.
            metrics.INDEX_CURRENT.set(started)
        if self.cursor != before:
            log.debug("fence index followed", extra={"fields": {"cursor": self.cursor}})

    def run(self) -> None:
        pruned_at = time.monotonic() - HOUSEKEEPING_EVERY_S
        failures = FailureLog("fence index refresh")
        # The first round at once: until one ends, the index's currency
        # gauge reads 0, an index decades behind to an alert on its age.
        first = True
        while first or self._next_round():
            first = False
            try:
                self.catch_up()
                if self._prune and time.monotonic() - pruned_at >= HOUSEKEEPING_EVERY_S:
                    pruned_at = time.monotonic()
                    self._prune_before(self._uows, int(time.time() - INDEX_CHANGES_KEPT_S))
            except Exception as exc:  # the store may be briefly unavailable; try again later
                failures.failed(exc)
                continue
            failures.succeeded()


class Purger:
    """Forgets what is older than ``retention_s`` (idempotency keys, events),
    now and then hourly."""

    def __init__(
        self,
        what: str,
        purge: Callable[[UnitOfWorkFactory, float, float], int],
        uows: UnitOfWorkFactory,
        retention_s: float,
        stopped: threading.Event,
    ) -> None:
        self._what, self._purge = what, purge
        self._uows, self._retention_s, self._stopped = uows, retention_s, stopped

    def run(self) -> None:
        failures = FailureLog(f"{self._what} purge")
        while True:
            try:
                removed = self._purge(self._uows, time.time(), self._retention_s)
                if removed:
                    log.info(f"{self._what} purged", extra={"fields": {"removed": removed}})
                failures.succeeded()
            except Exception as exc:  # the store may be briefly unavailable; try again later
                failures.failed(exc)
            if self._stopped.wait(HOUSEKEEPING_EVERY_S):
                return


class IndexGauges:
    """Keeps the fence index's size in the metrics (a scrape of the HTTP
    listener's /metrics also sets it at once)."""

    def __init__(self, index: FenceEngine, stopped: threading.Event) -> None:
        self._index, self._stopped = index, stopped

    def run(self) -> None:
        while True:
            clocks, fences = self._index.totals()
            metrics.TIME_CLOCKS.set(clocks)
            metrics.FENCES.set(fences)
            if self._stopped.wait(INDEX_GAUGES_EVERY_S):
                return


class EventRelay:
    """Wakes this worker's event streams when a sibling worker committed events."""

    def __init__(
        self, generations: SharedGenerations, wakeup: Wakeup, stopped: threading.Event
    ) -> None:
        self._generations, self._wakeup, self._stopped = generations, wakeup, stopped

    def run(self) -> None:
        seen = self._generations.events
        while not self._stopped.wait(EVENT_RELAY_S):
            now = self._generations.events
            if now != seen:
                seen = now
                self._wakeup.notify()


class StoreWatcher(_Pokeable):
    """Every ``poll_s``: reloads the API keys when any was added or revoked
    (so a revoked key stops working on every process and replica), and wakes
    event streams when the event log grew, whoever wrote it. Streams do not
    poll the store themselves: one look here serves them all. A poke looks
    at the log only, unless ``poke_keys`` asked for the keys too."""

    def __init__(
        self,
        uows: UnitOfWorkFactory,
        keys: KeyRing,
        wakeup: Wakeup,
        event_cursor: int,
        poll_s: float,
        stopped: threading.Event,
    ) -> None:
        super().__init__()
        self._uows, self._keys, self._wakeup = uows, keys, wakeup
        self._seen, self._poll_s, self._stopped = event_cursor, poll_s, stopped
        self._keys_due = False

    def poke_keys(self) -> None:
        self._keys_due = True
        self.poke()

    def look(self, keys: bool = True) -> None:
        if keys:
            self._keys_due = False
            self._keys.refresh(self._uows)
        newest = newest_event(self._uows)
        if newest != self._seen:
            self._seen = newest
            self._wakeup.notify()

    def run(self) -> None:
        failures = FailureLog("store watch")
        while self._next_round():
            try:
                self.look(keys=self._keys_due or not self.poked)
            except Exception as exc:  # the store may be briefly unavailable; try again later
                failures.failed(exc)
                continue
            failures.succeeded()


def start(name: str, loop: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()
    return thread
