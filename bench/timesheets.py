"""Time activities and the read side over gRPC, each against a baseline of the same run.

    python3 dev.py run bench/timesheets.py [--users 10000] [--days 30]
        [--database-url postgresql+psycopg://postgres@127.0.0.1:5432/test]

Starts ``geopunch serve`` on a fresh store (SQLite with synchronous=FULL, or a
PostgreSQL schema of its own), creates a time clock with ``--users`` users and
records ``--days`` days of history through ``CreateTimeActivities``: for each
user and day a shift and the break after it (10,000 users x 30 days is
600,000 activities), 1,000 activities a call; on PostgreSQL with an
``ANALYZE`` between calls wherever autovacuum would have run one. Then:

- ``CreateTimeActivities`` of 1,000 activities, against a plain
  ``executemany`` of the same rows in one durable transaction on the same
  database (a table of its own with the same columns);
- ``ListTimeActivities`` of the whole history at 10,000 a page, against a plain
  read of the same rows into tuples (``sqlite3`` or a ``psycopg`` cursor),
  and the first page against ``Ping``; on PostgreSQL after a ``VACUUM`` of the
  loaded table, as autovacuum would run, and the first page before it too;
  the first page both right after a plain read of the whole history and
  repeated, alternating with ``Ping``;
- ``GetUserStatuses`` for every user (a third of them clocked in), against
  ``Ping``: the first look, looks with nothing changed between them, and
  looks with 1 % of the users punching between each two; and the same board
  over HTTP (JSON) against gRPC looks alternating with it;
- the first page with totals per user and day over the whole window, and the
  first page over HTTP (JSON), against gRPC first pages alternating with them.

Prints JSON with the figures and the ratios the issue sets bars for.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
from replicas import schema
from serverproc import serve_url_with_http

from geopunch.v1 import admin_pb2, admin_pb2_grpc, timeclock_pb2, timeclock_pb2_grpc

API_KEY = "bench-key-0123456789"
AUTH = (("x-api-key", API_KEY),)
TC = 1
DAY = 86_400
PER_CALL = 1000
COLUMNS = (
    "id, account_id, time_clock_id, user_id, kind, job_id, break_type_id, scheduler_shift_id, "
    "from_shift_id, start_ts, start_tz, start_address, start_lat, start_lon, start_accuracy, "
    "start_source, start_geofence_id, end_ts, end_tz, end_address, end_lat, end_lon, "
    "end_accuracy, end_source, end_geofence_id, created_at, modified_at, notes"
)


def p50(ms: list[float]) -> float:
    return round(float(np.percentile(np.asarray(ms), 50)), 3)


def timed(fn: Callable[[], Any], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def history(users: int, days: int, first_day: int) -> Iterator[timeclock_pb2.UserTimeActivities]:
    """Per user and day: an 8-hour shift, then a 30-minute break as it ends."""
    for d in range(days):
        for u in range(users):
            start = first_day + d * DAY + 6 * 3600 + (u % 600) * 60
            end = start + 8 * 3600
            yield timeclock_pb2.UserTimeActivities(
                user_id=u + 1,
                shifts=[
                    timeclock_pb2.TimeActivityShift(
                        start=timeclock_pb2.TimeActivityPoint(timestamp=start),
                        end=timeclock_pb2.TimeActivityPoint(timestamp=end),
                        job_id="j",
                    )
                ],
                manual_breaks=[
                    timeclock_pb2.TimeActivityBreak(
                        manual_break_id="rest",
                        start=timeclock_pb2.TimeActivityPoint(timestamp=end),
                        end=timeclock_pb2.TimeActivityPoint(timestamp=end + 1800),
                    )
                ],
            )


def rows_like(reply: timeclock_pb2.CreateTimeActivitiesResponse, offset: str) -> list[tuple]:
    """The rows of a created batch, with other ids, for the executemany baseline."""
    out = []
    for a in reply.data.time_activities:
        out.append(
            (
                a.id + offset, 1, TC, a.user_id, "shift" if a.kind == "shift" else "break",
                a.job_id or None, a.manual_break_id or None, None, None,
                a.start.timestamp, a.start.timezone, None, None, None, None, "timeActivity", None,
                a.end.timestamp, a.end.timezone, None, None, None, None, "timeActivity", None,
                a.created_at, a.modified_at, None,
            )
        )  # fmt: skip
    return out


@contextmanager
def store(url: str | None, tmp: Path) -> Iterator[str]:
    if url is None:
        yield f"sqlite:///{tmp / 'timesheets.db'}"
    else:
        with schema(url) as scoped:
            yield scoped


class Baseline:
    """Plain driver calls on the server's own database."""

    def __init__(self, url: str) -> None:
        self.pg = url.startswith("postgresql")
        if self.pg:
            import psycopg

            dsn = url.replace("postgresql+psycopg://", "postgresql://")
            self.conn: Any = psycopg.connect(dsn)
        else:
            self.conn = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
        self.mark = "%s" if self.pg else "?"
        self.analyzed = 0  # rows seen by the last ANALYZE
        cur = self.conn.cursor()
        cur.execute(
            "CREATE TABLE bench_activities AS SELECT * FROM activities WHERE 1 = 0"
            if self.pg
            else "CREATE TABLE bench_activities AS SELECT * FROM activities WHERE 0"
        )
        if self.pg:
            self.conn.commit()

    def insert(self, rows: list[tuple]) -> None:
        marks = ", ".join([self.mark] * len(rows[0]))
        cur = self.conn.cursor()
        if not self.pg:
            cur.execute("BEGIN IMMEDIATE")
        cur.executemany(f"INSERT INTO bench_activities ({COLUMNS}) VALUES ({marks})", rows)
        self.conn.commit() if self.pg else cur.execute("COMMIT")

    def keep_statistics(self, rows: int) -> None:
        """Between two seeding calls, an ``ANALYZE`` wherever autovacuum's
        rule (its defaults: 50 rows changed plus a tenth of the table) would
        have run one. This machine's PostgreSQL runs with autovacuum off;
        without statistics a call's overlap check read the time clock's whole
        history and each call grew with it (docs/operations.md)."""
        if self.pg and rows - self.analyzed > 50 + self.analyzed // 10:
            self.conn.execute("ANALYZE activities, events")
            self.conn.commit()
            self.analyzed = rows

    def analyze(self) -> None:
        """Planner statistics for the rows just loaded, as autovacuum would
        gather them within a minute: without them PostgreSQL planned the
        board's read of 3,334 open rows at 20-30 ms against 3 ms."""
        if self.pg:
            self.conn.execute("ANALYZE activities")
            self.conn.commit()

    def vacuum(self) -> None:
        """What autovacuum does within a minute of a load this size (more
        rows inserted than its insert threshold): the table's pages marked
        all-visible, so that a listed page is read from the index by start
        alone."""
        if self.pg:
            self.conn.autocommit = True
            self.conn.execute("VACUUM activities")
            self.conn.autocommit = False

    def read(self, start: int, end: int) -> int:
        m = self.mark
        cur = self.conn.cursor()
        cur.execute(
            f"SELECT {COLUMNS} FROM activities WHERE account_id = 1 AND time_clock_id = {m} "
            f"AND start_ts < {m} AND (end_ts IS NULL OR end_ts > {m}) ORDER BY start_ts, id",
            (TC, end, start),
        )
        n = len(cur.fetchall())
        if self.pg:
            self.conn.commit()
        return n


def run(address: str, http_address: str, url: str, users: int, days: int) -> dict[str, Any]:
    opts = [
        ("grpc.max_send_message_length", 256 << 20),
        ("grpc.max_receive_message_length", 256 << 20),
    ]
    now = int(time.time())
    first_day = (now // DAY - days - 1) * DAY
    with grpc.insecure_channel(address, options=opts) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        tk = timeclock_pb2_grpc.TimeClockServiceStub(channel)
        clock = admin_pb2.TimeClock(
            id=TC,
            name="bench",
            timezone="America/New_York",
            user_ids=range(1, users + 1),
            jobs=[admin_pb2.Job(id="j", name="J")],
            manual_breaks_enabled=True,
            manual_break_types=[admin_pb2.ManualBreakType(id="rest", name="Rest", is_paid=True)],
        )
        admin.CreateTimeClock(admin_pb2.CreateTimeClockRequest(time_clock=clock), metadata=AUTH)
        baseline = Baseline(url)

        create_ms: list[float] = []
        insert_ms: list[float] = []
        batch: list[timeclock_pb2.UserTimeActivities] = []
        seeded = 0
        for group in history(users, days, first_day):
            batch.append(group)
            if len(batch) * 2 < PER_CALL:
                continue
            req = timeclock_pb2.CreateTimeActivitiesRequest(time_clock_id=TC, time_activities=batch)
            t = time.perf_counter()
            reply = tk.CreateTimeActivities(req, metadata=AUTH, timeout=120)
            create_ms.append((time.perf_counter() - t) * 1000)
            seeded += len(reply.data.time_activities)
            baseline.keep_statistics(seeded)
            if len(insert_ms) < 50:  # the baseline, interleaved with the calls
                rows = rows_like(reply, f"-{len(insert_ms)}")
                insert_ms += timed(lambda rows=rows: baseline.insert(rows), 1)
            batch = []

        baseline.analyze()
        ping = lambda: admin.Ping(admin_pb2.PingRequest(), metadata=AUTH)  # noqa: E731
        ping_ms = timed(ping, 300)

        window = (first_day, first_day + (days + 1) * DAY)

        def page_request(**more: Any) -> timeclock_pb2.ListTimeActivitiesRequest:
            return timeclock_pb2.ListTimeActivitiesRequest(
                time_clock_id=TC, start_time=window[0], end_time=window[1], page_size=10_000, **more
            )

        first = page_request()
        listing = lambda: tk.ListTimeActivities(first, metadata=AUTH, timeout=120)  # noqa: E731
        # On PostgreSQL, the first page before vacuum has marked the freshly
        # loaded table all-visible: each row then read from the table too.
        unvacuumed_ms = timed(listing, 20) if baseline.pg else []
        baseline.vacuum()
        read_s = []
        list_s = []
        first_page_ms = []
        listed = 0
        for _ in range(3):  # alternating, so both see the same machine
            t = time.perf_counter()
            plain = baseline.read(*window)
            read_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            token, listed = "", 0
            while True:
                t_page = time.perf_counter()
                page = tk.ListTimeActivities(
                    page_request(page_token=token), metadata=AUTH, timeout=120
                )
                if not token:
                    first_page_ms.append((time.perf_counter() - t_page) * 1000)
                listed += len(page.data.time_activities)
                token = page.data.next_page_token
                if not token:
                    break
            list_s.append(time.perf_counter() - t)
            assert listed == plain == seeded, (listed, plain, seeded)

        # The first page again, each right after the one before it and
        # alternating with Pings: above, each first page came right after
        # the plain read of the whole table, which on PostgreSQL evicts the
        # index by start from shared buffers (the default 128 MB here).
        warm_page_ms: list[float] = []
        warm_ping_ms: list[float] = []
        for _ in range(20):
            warm_page_ms += timed(listing, 1)
            warm_ping_ms += timed(ping, 5)

        # Payroll's read: the first page with each user's totals per day
        # over the whole window; and the first page over HTTP (JSON), each
        # alternating with the plain first page over gRPC.
        with_totals = page_request(include_totals=True)
        with httpx.Client(
            base_url=f"http://{http_address}", headers={"x-api-key": API_KEY}, timeout=120
        ) as web:
            params = {"startTime": window[0], "endTime": window[1], "pageSize": 10_000}
            path = f"/time-clock/v1/time-clocks/{TC}/time-activities"
            # Plain JSON, and gzipped as httpx asks by default (the answer
            # compressed on the server, decompressed here).
            plain = {"Accept-Encoding": "identity"}
            web_page = lambda: web.get(path, params=params, headers=plain).raise_for_status()  # noqa: E731
            gzip_page = lambda: web.get(path, params=params).raise_for_status()  # noqa: E731
            totals_ms: list[float] = []
            http_page_ms: list[float] = []
            gzip_page_ms: list[float] = []
            grpc_page_ms: list[float] = []
            for _ in range(5):
                totals_ms += timed(
                    lambda: tk.ListTimeActivities(with_totals, metadata=AUTH, timeout=300), 1
                )
                http_page_ms += timed(web_page, 1)
                gzip_page_ms += timed(gzip_page, 1)
                grpc_page_ms += timed(listing, 1)
        reply = tk.ListTimeActivities(with_totals, metadata=AUTH, timeout=300)
        assert len(reply.data.totals) == users

        for u in range(1, users + 1, 3):
            tk.ClockIn(timeclock_pb2.ClockInRequest(time_clock_id=TC, user_id=u), metadata=AUTH)
        statuses = timeclock_pb2.GetUserStatusesRequest(time_clock_id=TC)
        board = lambda: tk.GetUserStatuses(statuses, metadata=AUTH)  # noqa: E731
        first_status_ms = timed(board, 1)
        status_ms = timed(board, 20)
        # The same board over HTTP (JSON), looks alternating with gRPC ones.
        with httpx.Client(
            base_url=f"http://{http_address}", headers={"x-api-key": API_KEY}, timeout=60
        ) as web:
            path = f"/time-clock/v1/time-clocks/{TC}/user-statuses"
            web_board = lambda: web.get(path).raise_for_status()  # noqa: E731
            web_board()
            http_status_ms: list[float] = []
            grpc_beside_ms: list[float] = []
            for _ in range(20):
                http_status_ms += timed(web_board, 1)
                grpc_beside_ms += timed(board, 1)
        # A busy site: between two looks at the board 1 % of the users punch
        # (half clock out, half clock in), so each look meets new lines.
        churn_ms: list[float] = []
        on, off = list(range(1, users + 1, 3)), list(range(2, users + 1, 3))
        step = max(1, users // 200)
        for k in range(20):
            for u in on[k * step : (k + 1) * step]:
                tk.ClockOut(
                    timeclock_pb2.ClockOutRequest(time_clock_id=TC, user_id=u), metadata=AUTH
                )
            for u in off[k * step : (k + 1) * step]:
                tk.ClockIn(timeclock_pb2.ClockInRequest(time_clock_id=TC, user_id=u), metadata=AUTH)
            churn_ms += timed(board, 1)
        reply = board()
        assert len(reply.data.statuses) == users
        assert sum(s.state != s.IDLE for s in reply.data.statuses) == len(on)
        ping_ms += timed(ping, 300)

    list_rate = listed / float(np.median(list_s))
    read_rate = listed / float(np.median(read_s))
    create_rate = PER_CALL / (p50(create_ms) / 1000)
    insert_rate = PER_CALL / (p50(insert_ms) / 1000)
    before_vacuum = {"first_page_before_vacuum_p50_ms": p50(unvacuumed_ms)} if unvacuumed_ms else {}
    return {
        "workload": {
            "store": "postgresql" if url.startswith("postgresql") else "sqlite synchronous=FULL",
            "users": users,
            "days": days,
            "activities": seeded,
        },
        "ping_p50_ms": p50(ping_ms),
        "create_1000_p50_ms": p50(create_ms),
        "executemany_1000_p50_ms": p50(insert_ms),
        "create_vs_executemany_rate": round(create_rate / insert_rate, 3),
        "list_rows_per_s": round(list_rate),
        "plain_read_rows_per_s": round(read_rate),
        "list_vs_plain_read_rate": round(list_rate / read_rate, 3),
        "first_page_p50_ms": p50(first_page_ms),
        "first_page_over_ping": round(p50(first_page_ms) / p50(ping_ms), 1),
        **before_vacuum,
        "first_page_warm_p50_ms": p50(warm_page_ms),
        "first_page_warm_over_ping": round(p50(warm_page_ms) / p50(warm_ping_ms), 1),
        "first_page_with_totals_p50_ms": p50(totals_ms),
        "totals_over_first_page": round(p50(totals_ms) / p50(grpc_page_ms), 1),
        "first_page_http_p50_ms": p50(http_page_ms),
        "first_page_http_vs_grpc": round(p50(http_page_ms) / p50(grpc_page_ms), 2),
        "first_page_http_gzip_p50_ms": p50(gzip_page_ms),
        "first_page_http_gzip_vs_plain": round(p50(gzip_page_ms) / p50(http_page_ms), 2),
        "user_statuses_p50_ms": p50(status_ms),
        "user_statuses_over_ping": round(p50(status_ms) / p50(ping_ms), 1),
        "user_statuses_first_ms": round(first_status_ms[0], 3),
        "user_statuses_http_p50_ms": p50(http_status_ms),
        "user_statuses_http_vs_grpc": round(p50(http_status_ms) / p50(grpc_beside_ms), 2),
        "user_statuses_churn_p50_ms": p50(churn_ms),
        "user_statuses_churn_over_ping": round(p50(churn_ms) / p50(ping_ms), 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--database-url", default=None, help="PostgreSQL; default: SQLite")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        url = stack.enter_context(store(args.database_url, Path(tmp)))
        address, http_address = stack.enter_context(serve_url_with_http(url, API_KEY))
        print(json.dumps(run(address, http_address, url, args.users, args.days), indent=2))


if __name__ == "__main__":
    main()
