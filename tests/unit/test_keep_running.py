"""A deliverer or sink that ends on a defect is logged and started again,
and the stop ends the pause before the restart."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from geopunch import metrics
from geopunch.adapters.wakeup import Stop
from geopunch.service import delivery


def _restarts(what: str) -> float:
    return float(metrics.DELIVERY_RESTARTS.labels(what)._value.get())


def test_a_run_that_fails_is_logged_and_started_again(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(delivery, "RESTART_S", 0.05)
    stop, runs = Stop(), []

    async def run() -> None:
        runs.append(time.monotonic())
        if len(runs) == 1:
            raise RuntimeError("a defect")

    before = _restarts("test-restart")
    with caplog.at_level(logging.ERROR, "geopunch.webhooks"):
        asyncio.run(asyncio.wait_for(delivery.keep_running(run, stop, "test-restart"), 10))
    assert len(runs) == 2 and runs[1] - runs[0] >= 0.05
    assert _restarts("test-restart") == before + 1
    [record] = caplog.records
    assert record.getMessage() == "test-restart failed; starting again"
    assert record.exc_info and "a defect" in str(record.exc_info[1])


def test_the_stop_ends_the_pause_and_nothing_starts_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(delivery, "RESTART_S", 60.0)
    stop, runs = Stop(), []

    async def run() -> None:
        runs.append(1)
        stop.set()  # the server stops as the run fails
        raise RuntimeError("a defect")

    started = time.monotonic()
    asyncio.run(asyncio.wait_for(delivery.keep_running(run, stop, "test-stop"), 10))
    assert runs == [1] and time.monotonic() - started < 10
