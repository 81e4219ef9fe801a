"""What a server process of ``serve --processes`` shares with its siblings, and
the signal handling and limits every server process uses."""

from __future__ import annotations

import logging
import resource
import signal
import threading
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("geopunch")


class SharedGenerations:
    """Two counters in shared memory: fence index changes and event commits."""

    def __init__(self, ctx: Any) -> None:
        self._index = ctx.Value("q", 0)  # lock=True: bumps from several processes add up
        self._events = ctx.Value("q", 0)

    # Reads skip the lock: every call reads ``index``, and an aligned 8-byte
    # load is atomic; the lock only keeps concurrent bumps from losing one.
    @property
    def index(self) -> int:
        value: int = self._index.get_obj().value
        return value

    @property
    def events(self) -> int:
        value: int = self._events.get_obj().value
        return value

    def bump_index(self) -> None:
        with self._index.get_lock():
            self._index.value += 1

    def bump_events(self) -> None:
        with self._events.get_lock():
            self._events.value += 1


@dataclass(frozen=True, slots=True)
class WorkerSlot:
    """Which worker a process is, and what it shares with its siblings."""

    number: int
    generations: SharedGenerations

    @property
    def runs_housekeeping(self) -> bool:
        """Purges and pruning run in one worker only."""
        return self.number == 0


def stop_on_signals() -> threading.Event:
    """An event that SIGTERM or SIGINT sets (logged). Call from the main thread,
    and wait on the event in slices: a handler runs only when that thread wakes."""
    stop = threading.Event()

    def _on_signal(signum: int, _frame: object) -> None:
        log.info("signal received", extra={"fields": {"signal": signal.Signals(signum).name}})
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    return stop


def raise_open_files_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit, and
    return it. Every connection of either API holds a descriptor, and a
    soft limit of 1,024 (a common default) let a caller without a key hold
    them all with a thousand idle connections: every call was refused until
    the receive deadline closed them. The hard limit is the operator's."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:  # a hard limit the kernel will not grant
            log.warning("cannot raise the open files limit", extra={"fields": {"error": str(exc)}})
    return soft
