"""The log of calls that cost nothing to send: one line a second per host."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
import time
from typing import TextIO

import pytest
from prometheus_client import REGISTRY

from geopunch.domain.errors import BrokerUnavailable, StoreUnavailable
from geopunch.logs import (
    FailureLog,
    JsonFormatter,
    OncePerSecond,
    RateLimitedLog,
    _Buffered,
    request_id_var,
)


def test_unwelcome_calls_get_a_line_a_second_per_host_with_a_count(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keyed by host, not address and port: an attacker opening a new
    connection a call got a line each."""
    now = [100.0]
    monkeypatch.setattr("geopunch.logs.time.monotonic", lambda: now[0])
    limited = RateLimitedLog(logging.getLogger("geopunch.test"))
    caplog.set_level(logging.INFO, "geopunch.test")
    for port in range(50):
        limited.note(f"ipv4:10.0.0.1:{port}", logging.INFO, "rpc", {"n": port})
        limited.note(f"10.0.0.2:{port}", logging.INFO, "rpc", {"n": port})
        limited.note(f"ipv6:[::1]:{port}", logging.INFO, "http", {"n": port})
    assert [(r.msg, r.fields["n"], r.fields["suppressed"]) for r in caplog.records] == [  # type: ignore[attr-defined]
        ("rpc", 0, 0),
        ("rpc", 0, 0),
        ("http", 0, 0),
    ]
    caplog.clear()
    now[0] += 1.0
    limited.note("ipv4:10.0.0.1:9999", logging.INFO, "rpc", {"n": 50})
    [line] = caplog.records
    assert line.fields == {"n": 50, "peer": "ipv4:10.0.0.1:9999", "suppressed": 49}  # type: ignore[attr-defined]


def test_a_librarys_repeated_line_passes_once_a_second_with_a_count(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """uvicorn warns for each malformed request, before any key is seen."""
    now = [100.0]
    monkeypatch.setattr("geopunch.logs.time.monotonic", lambda: now[0])
    logger = logging.getLogger("geopunch.test.library")
    logger.addFilter(OncePerSecond())
    caplog.set_level(logging.INFO, "geopunch.test.library")
    for _ in range(30):
        logger.warning("Invalid HTTP request received.")
        logger.warning("Unsupported upgrade request.")
    now[0] += 1.5
    logger.warning("Invalid HTTP request received.")
    assert [(r.msg, r.fields["suppressed"]) for r in caplog.records] == [  # type: ignore[attr-defined]
        ("Invalid HTTP request received.", 0),
        ("Unsupported upgrade request.", 0),
        ("Invalid HTTP request received.", 29),
    ]


def test_a_loops_failures_are_logged_first_then_a_line_a_minute(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1000.0]
    monkeypatch.setattr("geopunch.logs.time.monotonic", lambda: now[0])
    failures = FailureLog("claiming")
    with caplog.at_level(logging.INFO, logger="geopunch"):
        for _ in range(30):  # 30 s of failing once a second
            failures.failed(RuntimeError("boom"))
            now[0] += 1
        for _ in range(31):  # past the minute
            failures.failed(StoreUnavailable("unreachable", "the store cannot be reached"))
            now[0] += 1
        failures.succeeded()
        failures.succeeded()  # once only
    lines = [(r.getMessage(), r.exc_info is not None, r.fields) for r in caplog.records]  # type: ignore[attr-defined]
    assert lines == [
        ("claiming failed", True, {"failures": 1}),
        (
            "claiming failed",
            False,
            {"failures": 61, "error": "the store cannot be reached", "failing_s": 60.0},
        ),
        ("claiming recovered", False, {"failures": 61, "failing_s": 61.0}),
    ]


def test_a_store_or_broker_fault_first_is_logged_without_a_stack(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="geopunch"):
        FailureLog("watch").failed(StoreUnavailable("busy", "the store is held"))
        FailureLog("sink").failed(BrokerUnavailable("nats: timeout"))
    assert [r.exc_info for r in caplog.records] == [None, None]
    errors = [r.fields["error"] for r in caplog.records]  # type: ignore[attr-defined]
    assert errors == ["the store is held", "nats: timeout"]


def test_every_failure_is_counted_though_few_are_logged() -> None:
    """The log keeps to a line a minute; the counter sees each failure, so
    that an alert can tell a loop that keeps failing from one that failed once."""

    def counted() -> float:
        value = REGISTRY.get_sample_value(
            "geopunch_background_failures_total", {"what": "counted loop"}
        )
        return value or 0.0

    failures, before = FailureLog("counted loop"), counted()
    for _ in range(5):
        failures.failed(BrokerUnavailable("nats: timeout"))
    failures.succeeded()
    assert counted() - before == 5


def _dropped() -> float:
    return REGISTRY.get_sample_value("geopunch_log_lines_dropped_total") or 0.0


def _small_pipe() -> tuple[int, TextIO]:
    """A pipe's read end and its write end as a stream, full after 4 KiB."""
    read_fd, write_fd = os.pipe()
    fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, 4096)
    return read_fd, os.fdopen(write_fd, "w")


def test_a_stalled_stderr_holds_up_no_caller_and_the_lines_it_missed_are_counted() -> None:
    """A pipe nobody reads (a stalled journald or container log driver) took
    every caller that logged into its write. Lines now wait in a bounded
    buffer and past it are dropped, counted, and said once stderr takes
    lines again; the lines kept come out whole and in order."""
    read_fd, stream = _small_pipe()
    handler = _Buffered(stream, JsonFormatter(worker=3), lines=50)
    logger = logging.getLogger("geopunch.test.stalled")
    logger.propagate = False
    logger.addHandler(handler)
    before = _dropped()
    try:
        started = time.monotonic()
        for n in range(2000):  # about 100 pipes' worth
            logger.warning("line", extra={"fields": {"n": n}})
        assert time.monotonic() - started < 5, "a caller waited for stderr"
        dropped = _dropped() - before
        assert 2000 - 50 - 4096 // 60 <= dropped < 2000
        with os.fdopen(read_fd, "r") as reader:
            drained = threading.Thread(target=lambda: lines.extend(reader), daemon=True)
            lines: list[str] = []
            drained.start()
            deadline = time.monotonic() + 10
            while handler._lines.qsize() and time.monotonic() < deadline:
                time.sleep(0.01)  # stderr takes lines again: the buffer empties
            logger.warning("line", extra={"fields": {"n": 2000}})
            handler.close()
            stream.close()
            drained.join(10)
    finally:
        logger.removeHandler(handler)
    entries = [json.loads(line) for line in lines]
    kept = [e["n"] for e in entries if e["msg"] == "line"]
    assert kept == sorted(kept) and kept[-1] == 2000
    assert len(kept) + dropped == 2001
    said = [e for e in entries if e["msg"] == "log lines dropped"]
    assert sum(e["dropped"] for e in said) == dropped
    assert all(e["level"] == "warning" and e["worker"] == 3 for e in said)
    # Each said before the next line kept: every line kept follows the count
    # of all those dropped before it.
    counted, position = 0, 0
    for e in entries:
        if e["msg"] == "log lines dropped":
            counted += e["dropped"]
        else:
            assert e["n"] - position == counted, e
            position += 1
    assert counted == dropped


def test_an_exit_waits_for_a_stalled_stderr_only_a_moment() -> None:
    read_fd, stream = _small_pipe()
    handler = _Buffered(stream, JsonFormatter(), lines=10)
    try:
        for n in range(200):
            handler.handle(logging.makeLogRecord({"msg": "line", "fields": {"n": n}}))
        started = time.monotonic()
        handler.close(timeout_s=0.5)
        assert time.monotonic() - started < 2
    finally:
        os.close(read_fd)  # the writer's blocked write fails; it ends
        with contextlib.suppress(OSError):
            stream.close()


def test_a_line_carries_the_request_id_of_the_call_that_logged_it() -> None:
    """Formatted on the caller's thread: the writer thread has no call's context."""
    read_fd, write_fd = os.pipe()
    stream = os.fdopen(write_fd, "w")
    handler = _Buffered(stream, JsonFormatter(), lines=10)
    token = request_id_var.set("req-1")
    try:
        handler.handle(logging.makeLogRecord({"msg": "rpc", "levelname": "INFO"}))
    finally:
        request_id_var.reset(token)
    handler.close()
    stream.close()
    with os.fdopen(read_fd) as reader:
        (entry,) = [json.loads(line) for line in reader]
    assert entry["request_id"] == "req-1" and entry["msg"] == "rpc"
