"""Prometheus metrics: what the server counts, and the text a scrape gets.

prometheus-client because it is the reference client and knows the case of
several processes: with ``PROMETHEUS_MULTIPROC_DIR`` set before this module
is imported (``serve --processes`` sets it for its workers), every process
writes its samples to files there and a scrape of any of them adds up all.
Each metric is described in docs/operations.md.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
)

#: Seconds buckets of a call: a live punch takes about a millisecond, a
#: 1,000,000-point check or a 1,000-activity import a second or more.
_CALL_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

CALLS = Counter(
    "geopunch_calls_total",
    "Calls answered, by API (grpc, http), method (RPC name or HTTP route) and status "
    "(gRPC code name or HTTP status)",
    ("api", "method", "status"),
)
CALL_SECONDS = Histogram(
    "geopunch_call_seconds",
    "Time from a call's start to its answer, by API and method",
    ("api", "method"),
    buckets=_CALL_BUCKETS,
)
PUNCHES = Counter(
    "geopunch_punches_total",
    "Punches by kind (clock_in, clock_out, start_break, end_break) and outcome "
    "(ok, replayed, or the refusal's reason)",
    ("kind", "outcome"),
)
COMMIT_BATCH = Histogram(
    "geopunch_commit_batch_size",
    "Pieces of work (punches, location batches) committed together by the group committer",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
COMMIT_SECONDS = Histogram(
    "geopunch_commit_seconds",
    "Time of one group-commit batch, from its transaction's start to its durable commit",
    buckets=_CALL_BUCKETS,
)
LIVE_SAMPLES = Counter(
    "geopunch_live_samples_total",
    "Live location samples (ReportLocations) by status",
    ("status",),
)
TIME_CLOCKS = Gauge(
    "geopunch_index_time_clocks",
    "Time clocks held in the fence index of the process that was scraped",
    multiprocess_mode="mostrecent",
)
FENCES = Gauge(
    "geopunch_index_fences",
    "Geofences held in the fence index of the process that was scraped",
    multiprocess_mode="mostrecent",
)
WEBHOOK_DELIVERIES = Counter(
    "geopunch_webhook_deliveries_total",
    "Webhook delivery attempts by result (ok, failed)",
    ("result",),
)
WEBHOOK_HELD = Gauge(
    "geopunch_webhook_subscriptions_held",
    "Webhook subscriptions whose deliveries the scraped process runs (the live processes "
    "and replicas share the active ones evenly)",
    multiprocess_mode="liveall",
)
WEBHOOK_LAG = Histogram(
    "geopunch_webhook_lag_seconds",
    "From an event's commit to its delivery's acknowledgement by the receiver",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
)
TRAIL_SAMPLES = Counter(
    "geopunch_trail_samples_total",
    "Trail samples judged by EvaluateTrails, by status",
    ("status",),
)
INDEX_CURRENT = Gauge(
    "geopunch_index_current_timestamp_seconds",
    "When the fence index last held every change committed to the store (Unix seconds): "
    "the reload lag is the time since; the oldest over live processes",
    multiprocess_mode="livemin",
)
EVENT_LAG = Gauge(
    "geopunch_event_lag_seconds",
    "Age of the oldest event a subscriber has yet to deliver (0 when caught up), by "
    "subscriber: a webhook subscription's id, or jetstream:<sink name>",
    ("subscriber",),
    multiprocess_mode="mostrecent",
)
STATUS_LINES = Counter(
    "geopunch_user_status_lines_total",
    "Lines (one per user) of GetUserStatuses answers, by API (grpc, http) and source: "
    "kept (the bytes of an earlier answer's line) or encoded (anew)",
    ("api", "source"),
)
STATUS_OPEN_ROWS = Counter(
    "geopunch_user_status_open_rows_total",
    "Open activities GetUserStatuses answered from, by source: kept (held in memory "
    "since an earlier look) or read (whole, from the store)",
    ("source",),
)
SINK_PUBLISHED = Counter(
    "geopunch_sink_published_total",
    "Events the JetStream sink published and the broker acknowledged",
)
BACKGROUND_FAILURES = Counter(
    "geopunch_background_failures_total",
    "Failed rounds of a background loop (the index refresh, the purges, the deliveries' claims, "
    "the event sink), by loop",
    ["what"],
)
DELIVERY_RESTARTS = Counter(
    "geopunch_delivery_restarts_total",
    "Times the webhook deliverer or the event sink failed on a defect and was started again",
    ["what"],
)

STORE_UNAVAILABLE = Counter(
    "geopunch_store_unavailable_total",
    "Units of work the store could not do (unreachable, restarting, timed out, locked, full), "
    "by reason; calls among them were answered UNAVAILABLE",
    ["reason"],
)

LOG_LINES_DROPPED = Counter(
    "geopunch_log_lines_dropped_total",
    "Log lines left out because stderr did not take them as fast as they came "
    "(the log buffer was full) or refused them",
)

WORKER_RESTARTS = Counter(
    "geopunch_worker_restarts_total",
    "Workers of serve --processes started again, by why the one before ended",
    ["reason"],
)


def exposition() -> tuple[bytes, str]:
    """The metrics as a scrape gets them (of every process when several write
    them), and their content type."""
    return generate_latest(_registry()), CONTENT_TYPE_LATEST


def _registry() -> CollectorRegistry:
    """This process's registry, or one that adds up every process's files."""
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


def serve(listen: str) -> Callable[[], None]:
    """Serve the metrics (of every process, in multi-process mode) over HTTP
    on ``listen`` (host:port), on a thread of prometheus-client's; returns
    the function that stops it."""
    host, _, port = listen.rpartition(":")
    server, thread = start_http_server(int(port), host.strip("[]"), registry=_registry())

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(5)

    return stop


def process_ended(pid: int) -> None:
    """Forget the live gauges of a worker process that ended (multi-process mode)."""
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
