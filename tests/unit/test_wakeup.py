"""The wake-ups of adapters/wakeup.py: the server's stop, a threading.Event
that also ends coroutine sleeps on other threads' event loops at once, and
the event counter's waits; neither loses a cancel that comes with it."""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from geopunch.adapters.wakeup import Stop, Wakeup


def _sleep_on_a_loop_of_its_own(
    stop: Stop, seconds: float
) -> tuple[threading.Thread, list[object]]:
    got: list[object] = []

    def run() -> None:
        started = time.monotonic()
        stopped = asyncio.run(stop.sleep(seconds))
        got.extend([stopped, time.monotonic() - started])

    thread = threading.Thread(target=run)
    thread.start()
    return thread, got


def test_a_set_from_another_thread_ends_a_long_sleep_at_once() -> None:
    stop = Stop()
    thread, got = _sleep_on_a_loop_of_its_own(stop, 60.0)
    time.sleep(0.2)  # asleep by now
    stop.set()
    thread.join(10)
    assert not thread.is_alive(), "the sleep outlived the stop"
    stopped, slept = got
    assert stopped is True and isinstance(slept, float) and slept < 10


def test_a_sleep_after_the_stop_returns_at_once_and_one_without_it_runs_out() -> None:
    stop = Stop()
    assert asyncio.run(stop.sleep(0.01)) is False  # ran out: no stop
    stop.set()
    assert stop.is_set() and stop.wait(0)  # still a threading.Event for threads
    started = time.monotonic()
    assert asyncio.run(stop.sleep(60.0)) is True
    assert time.monotonic() - started < 10


async def _cancelled_as_it_wakes(
    sleep: Callable[[], Coroutine[Any, Any, object]], wake: Callable[[], None]
) -> None:
    """Wake a sleeper, then cancel it before it has run again."""
    task = asyncio.create_task(sleep())
    await asyncio.sleep(0)  # asleep
    wake()  # its wake-up is scheduled (call_soon_threadsafe)...
    await asyncio.sleep(0)  # ...and has run: the sleeper is due to resume
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_a_cancel_with_the_wake_up_is_not_lost() -> None:
    """A task waiting for events that is cancelled as events arrive ends
    (the deliverer waits for such a task when its subscription changes)."""
    wakeup = Wakeup()

    async def run() -> None:
        for _ in range(20):
            sleep = functools.partial(wakeup.wait, wakeup.version, 60.0)
            await _cancelled_as_it_wakes(sleep, wakeup.notify)

    asyncio.run(asyncio.wait_for(run(), 30))


def test_a_cancel_with_the_stop_is_not_lost() -> None:
    async def run() -> None:
        stop = Stop()
        await _cancelled_as_it_wakes(lambda: stop.sleep(60.0), stop.set)

    asyncio.run(asyncio.wait_for(run(), 30))
