"""The index follower keeps polling through store failures without flooding the log."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import REGISTRY

from geopunch.entrypoints.background import IndexFollower
from geopunch.geo.engine import AccountFences


def _follower(
    follow: Callable[[Any, Any, int], int],
    *,
    cursor: int,
    poll_s: float,
    stopped: threading.Event,
    **options: Any,
) -> IndexFollower:
    """A follower of no store: ``follow`` stands for its reads."""
    return IndexFollower(
        None,  # type: ignore[arg-type]
        AccountFences(),
        cursor=cursor,
        poll_s=poll_s,
        stopped=stopped,
        follow=follow,
        **options,
    )


class _FlakyStore:
    """Fails ``failures`` times, then has no changes; stops the loop after ``calls``."""

    def __init__(self, failures: int, calls: int, stop: threading.Event) -> None:
        self.failures, self.calls, self.stop, self.seen = failures, calls, stop, 0

    def __call__(self, uows: object, index: object, cursor: int) -> int:
        self.seen += 1
        if self.seen >= self.calls:
            self.stop.set()
        if self.seen <= self.failures:
            raise ConnectionError("store down")
        return cursor + 1


def test_failures_are_logged_once_then_recovery(caplog: pytest.LogCaptureFixture) -> None:
    stopped = threading.Event()
    store = _FlakyStore(failures=50, calls=60, stop=stopped)
    pruned: list[int] = []
    follower = _follower(
        store,
        cursor=7,
        poll_s=0.001,
        stopped=stopped,
        prune_before=lambda uows, before: pruned.append(before) or 0,  # type: ignore[func-returns-value]
    )
    with caplog.at_level(logging.INFO, logger="geopunch"):
        follower.run()
    failed = [r for r in caplog.records if r.getMessage() == "fence index refresh failed"]
    recovered = [r for r in caplog.records if r.getMessage() == "fence index refresh recovered"]
    assert store.seen == 60
    assert len(failed) == 1 and failed[0].exc_info is not None  # not 50 stacks
    assert len(recovered) == 1
    assert follower.cursor == 7 + 10  # each successful look moved the cursor
    assert len(pruned) == 1  # the first successful round prunes; the next is an hour away


def test_catch_up_moves_the_cursor_without_the_loop() -> None:
    seen: list[int] = []

    def follow(uows: object, engine: object, cursor: int) -> int:
        seen.append(cursor)
        return cursor + 3

    follower = _follower(follow, cursor=0, poll_s=60, stopped=threading.Event())
    follower.catch_up()
    follower.catch_up()
    assert seen == [0, 3] and follower.cursor == 6


def test_the_first_round_runs_at_once_and_sets_the_index_currency() -> None:
    """Not a poll later: until a round ends, the currency gauge reads 0 (an
    index decades behind to an alert on its age)."""
    stopped = threading.Event()
    seen: list[int] = []

    def follow(uows: object, engine: object, cursor: int) -> int:
        seen.append(cursor)
        stopped.set()
        return cursor

    follower = _follower(follow, cursor=5, poll_s=3600, stopped=stopped, prune=False)
    started = time.time()
    runner = threading.Thread(target=follower.run, daemon=True)
    runner.start()
    runner.join(10)
    assert not runner.is_alive() and seen == [5]
    current = REGISTRY.get_sample_value("geopunch_index_current_timestamp_seconds")
    assert current is not None and current >= started
