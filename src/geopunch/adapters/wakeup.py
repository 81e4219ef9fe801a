"""Wake-ups for coroutines on any event loop: new events, and the stop."""

from __future__ import annotations

import asyncio
import contextlib
import threading


class Wakeup:
    """Wakes event streams when a commit appended events: a counter, and the
    coroutines waiting for it to move. ``notify`` may be called from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self.version = 0

    def notify(self) -> None:
        with self._lock:
            self.version += 1
            waiters = list(self._waiters)
        for loop, event in waiters:
            with contextlib.suppress(RuntimeError):  # a closed loop: its stream is gone
                loop.call_soon_threadsafe(event.set)

    async def wait(self, seen: int, timeout: float) -> None:
        """Return once ``version`` has moved past ``seen``, or after ``timeout`` seconds."""
        me = (asyncio.get_running_loop(), asyncio.Event())
        with self._lock:
            if self.version != seen:
                return
            self._waiters.add(me)
        try:
            # asyncio.timeout, not wait_for: wait_for (3.11) drops a cancel
            # that arrives in the same turn of the loop as the wake-up, and a
            # deliverer ending a changed subscription's task then waited for
            # it forever.
            async with asyncio.timeout(timeout):
                await me[1].wait()
        except TimeoutError:
            pass
        finally:
            with self._lock:
                self._waiters.discard(me)


class Stop(threading.Event):
    """The server's stop: a ``threading.Event`` for its threads, which also
    ends at once the sleeps of coroutines on any event loop (deliveries
    waiting to retry or to renew a lease), so that a stop does not wait for
    their timers."""

    def __init__(self) -> None:
        super().__init__()
        self._wakeup = Wakeup()

    def set(self) -> None:
        super().set()
        self._wakeup.notify()

    async def sleep(self, seconds: float) -> bool:
        seen = self._wakeup.version  # read before the flag: a set() in between moves it
        if not self.is_set():
            await self._wakeup.wait(seen, seconds)
        return self.is_set()
