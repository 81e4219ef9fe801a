"""The server's stop: a threading.Event that also ends coroutine sleeps on
other threads' event loops at once."""

from __future__ import annotations

import asyncio
import threading
import time

from geopunch.adapters.wakeup import Stop


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
    assert stopped is True and slept < 10


def test_a_sleep_after_the_stop_returns_at_once_and_one_without_it_runs_out() -> None:
    stop = Stop()
    assert asyncio.run(stop.sleep(0.01)) is False  # ran out: no stop
    stop.set()
    assert stop.is_set() and stop.wait(0)  # still a threading.Event for threads
    started = time.monotonic()
    assert asyncio.run(stop.sleep(60.0)) is True
    assert time.monotonic() - started < 10
