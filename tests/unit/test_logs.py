"""The log of calls that cost nothing to send: one line a second per host."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import REGISTRY

from geopunch.domain.errors import BrokerUnavailable, StoreUnavailable
from geopunch.logs import FailureLog, OncePerSecond, RateLimitedLog


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
