"""What a server process of ``serve --processes`` shares with its siblings, and
the signal handling and limits every server process uses."""

from __future__ import annotations

import contextlib
import faulthandler
import gc
import logging
import os
import resource
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("geopunch")

#: How often a worker's event loop beats (see Heartbeats).
HEARTBEAT_S = 1.0


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


class Heartbeats:
    """When each worker's event loop last ran, in shared memory, so that the
    supervisor can tell a worker that hangs from one that is busy.

    A slot holds the pid that beat and when (``time.monotonic``, one clock
    for every process of a Linux machine). The pid keeps a replaced worker
    that beats once more on its way out from vouching for its replacement.
    """

    def __init__(self, ctx: Any, workers: int) -> None:
        # lock=False: one process writes a slot, and an aligned 8-byte store
        # or load is atomic; the pid is written after the time it vouches for.
        self._slots = ctx.Array("d", 2 * workers, lock=False)

    def beat(self, number: int, pid: int) -> None:
        self._slots[2 * number] = time.monotonic()
        self._slots[2 * number + 1] = pid

    def beaten(self, number: int, pid: int) -> bool:
        """Whether ``pid`` has beaten in slot ``number``: it serves."""
        return bool(self._slots[2 * number + 1] == pid)

    def silent_for(self, number: int, pid: int, now: float) -> float:
        """Seconds since ``pid`` last beat in slot ``number``; 0 before its first beat."""
        if not self.beaten(number, pid):
            return 0.0
        at: float = self._slots[2 * number]
        return now - at


@dataclass(frozen=True, slots=True)
class WorkerSlot:
    """Which worker a process is, and what it shares with its siblings."""

    number: int
    generations: SharedGenerations
    heartbeats: Heartbeats

    def beat(self) -> None:
        self.heartbeats.beat(self.number, os.getpid())

    @property
    def runs_housekeeping(self) -> bool:
        """Purges and pruning run in one worker only."""
        return self.number == 0


@contextlib.contextmanager
def lasting_imports() -> Iterator[None]:
    """Import a command's modules inside this (the server's, the store's):
    what they make lives as long as the process, so the cyclic collector is
    paused while they load and all of it is frozen out of its reach at the
    end (``gc.freeze``).

    Loading numpy, numba, SQLAlchemy, FastAPI and grpc makes hundreds of
    thousands of objects; with the collector running, it walked them 450
    times while the server's modules loaded, about an eighth of the
    import's CPU (bench/README.md). The imports leave about 1,700 objects
    of cyclic garbage, which stay: well under a megabyte.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()


def stop_on_signals() -> threading.Event:
    """An event that SIGTERM or SIGINT sets (logged); SIGUSR1 writes every
    thread's stack to stderr and changes nothing. Call from the main thread.

    The handler runs on the main thread between two of its bytecodes, and
    may find that thread holding the very lock that setting an event or
    logging a line takes (inside ``Event.wait``, between its checks): it then
    waited for itself for good, and a supervisor once never drained its
    workers. So the handler only writes the signal's number into a pipe, and
    a thread of its own reads it, logs and sets the event."""
    stop = threading.Event()
    readable, writable = os.pipe()
    os.set_blocking(writable, False)

    def _on_signal(signum: int, _frame: object) -> None:
        with contextlib.suppress(BlockingIOError):  # a full pipe already says stop
            os.write(writable, bytes([signum]))

    def _relay() -> None:
        while True:
            for signum in os.read(readable, 64):
                log.info(
                    "signal received", extra={"fields": {"signal": signal.Signals(signum).name}}
                )
                stop.set()

    threading.Thread(target=_relay, name="signals", daemon=True).start()
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    # An operator (or a test) can see where every thread is: kill -USR1 PID.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
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
