"""The server's index follower keeps polling through store failures without
flooding the log."""

from __future__ import annotations

import logging
import threading
from dataclasses import replace

import pytest

from geopunch.adapters.grpc import server as server_module
from geopunch.adapters.grpc.server import Server
from geopunch.config import Config
from geopunch.geo.index import FenceIndex


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
        return cursor


def test_failures_are_logged_once_then_recovery(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    srv = Server.__new__(Server)  # only what the follower loop touches
    srv.config = replace(Config(), index_poll_seconds=0.001)
    srv._stopped = threading.Event()
    srv._uows = None  # type: ignore[assignment]
    srv.index = FenceIndex()
    srv.worker = None
    srv._cursor, srv._follow_lock = 0, threading.Lock()
    store = _FlakyStore(failures=50, calls=60, stop=srv._stopped)
    monkeypatch.setattr(server_module, "follow_index_changes", store)
    monkeypatch.setattr(server_module, "prune_index_changes", lambda uows, before: 0)
    with caplog.at_level(logging.INFO, logger="geopunch"):
        srv._follow_index()
    failed = [r for r in caplog.records if r.getMessage() == "fence index refresh failed"]
    recovered = [r for r in caplog.records if r.getMessage() == "fence index refresh recovered"]
    assert store.seen == 60
    assert len(failed) == 1 and failed[0].exc_info is not None  # not 50 stacks
    assert len(recovered) == 1
