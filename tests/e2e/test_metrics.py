"""/metrics of a real server: the counters move by exactly the calls made,
over gRPC and HTTP, and a scrape of any worker of ``serve --processes 2``
adds up both workers."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from geopunch.v1 import timeclock_pb2
from tests.conftest import Client, ServerProcess, make_time_clock
from tests.e2e.test_processes import _one_per_worker
from tests.helpers import free_port, scrape, value

USER = 9170357


def test_counters_move_by_the_calls_made(
    server: ServerProcess, client: Client, http: httpx.Client
) -> None:
    tc = int(make_time_clock(client).id)
    before = scrape(server.http_address)
    # Shifts with the device's own times, one after the other: no waiting for
    # the clock between them.
    t0 = int(time.time()) - 600
    for i in range(3):
        client(
            client.timeclock.ClockIn,
            timeclock_pb2.ClockInRequest(time_clock_id=tc, user_id=USER, timestamp=t0 + 10 * i),
        )
        client(
            client.timeclock.ClockOut,
            timeclock_pb2.ClockOutRequest(
                time_clock_id=tc, user_id=USER, timestamp=t0 + 10 * i + 5
            ),
        )
    for _ in range(2):  # refused: no open shift
        r = http.post(f"/time-clock/v1/time-clocks/{tc}/clock-out", json={"userId": USER})
        assert r.status_code == 400
    r = http.post(f"/time-clock/v1/time-clocks/{tc}/clock-in", json={"userId": USER})
    assert r.status_code == 200
    board = timeclock_pb2.GetUserStatusesRequest(time_clock_id=tc)
    looks = [client(client.timeclock.GetUserStatuses, board) for _ in range(2)]
    users = len(looks[0].data.statuses)
    after = scrape(server.http_address)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("geopunch_calls_total", api="grpc", method="ClockIn", status="OK") == 3
    assert moved("geopunch_calls_total", api="grpc", method="ClockOut", status="OK") == 3
    route = "/time-clock/v1/time-clocks/{timeClockId}"
    assert moved("geopunch_calls_total", api="http", method=f"{route}/clock-out", status="400") == 2
    assert moved("geopunch_calls_total", api="http", method=f"{route}/clock-in", status="200") == 1
    assert moved("geopunch_call_seconds_count", api="grpc", method="ClockIn") == 3
    assert moved("geopunch_punches_total", kind="clock_in", outcome="ok") == 4
    assert moved("geopunch_punches_total", kind="clock_out", outcome="ok") == 3
    assert moved("geopunch_punches_total", kind="clock_out", outcome="NO_OPEN_SHIFT") == 2
    # Every punch that was written went through a group-commit batch.
    assert moved("geopunch_commit_batch_size_sum") >= 7
    assert moved("geopunch_commit_seconds_count") >= 1
    assert value(after, "geopunch_index_time_clocks") >= 1
    # The board: USER's open shift read on the first look, kept for the
    # second; every line answered counted once, the second look's all kept.
    lines = "geopunch_user_status_lines_total"
    grpc = {"api": "grpc"}
    assert moved(lines, **grpc, source="kept") + moved(lines, **grpc, source="encoded") == 2 * users
    assert 1 <= moved(lines, **grpc, source="encoded") <= users
    rows = "geopunch_user_status_open_rows_total"
    assert (moved(rows, source="read"), moved(rows, source="kept")) == (1, 1)


def test_a_scrape_of_either_worker_counts_both(tmp_path: Path) -> None:
    own = f"127.0.0.1:{free_port()}"  # the supervisor's metrics listener
    env = {"GEOPUNCH_PROCESSES": "2", "GEOPUNCH_METRICS_LISTEN": own}
    srv = ServerProcess(db_url=f"sqlite:///{tmp_path / 'm.db'}", env_extra=env)
    srv.start(tmp_path)
    (a, b), opened = _one_per_worker(srv.address)
    try:
        tc = int(make_time_clock(a).id)
        for c, user in ((a, 9170357), (b, 9170358)):
            c(c.timeclock.ClockIn, timeclock_pb2.ClockInRequest(time_clock_id=tc, user_id=user))
        # Scrapes land on either worker (the kernel picks one per connection);
        # each must count the punches of both.
        for address in [srv.http_address] * 6 + [own]:
            samples = scrape(address)
            assert value(samples, "geopunch_punches_total", kind="clock_in", outcome="ok") == 2
            assert (
                value(samples, "geopunch_calls_total", api="grpc", method="ClockIn", status="OK")
                == 2
            )
    finally:
        for c in opened:
            c.close()
        srv.terminate()


def test_a_metrics_listener_of_its_own_when_the_http_api_is_off(tmp_path: Path) -> None:
    own = f"127.0.0.1:{free_port()}"
    env = {"GEOPUNCH_HTTP_LISTEN": "off", "GEOPUNCH_METRICS_LISTEN": own}
    srv = ServerProcess(db_url=f"sqlite:///{tmp_path / 'own.db'}", env_extra=env)
    srv.start(tmp_path)
    c = Client(srv.address)
    try:
        tc = int(make_time_clock(c).id)
        c(c.timeclock.ClockIn, timeclock_pb2.ClockInRequest(time_clock_id=tc, user_id=USER))
        samples = scrape(own)
        assert value(samples, "geopunch_punches_total", kind="clock_in", outcome="ok") == 1
        deadline = time.monotonic() + 10  # the index's size is copied every second
        while value(scrape(own), "geopunch_index_time_clocks") < 1:
            assert time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        c.close()
        srv.terminate()


def test_trail_samples_index_currency_and_event_lag_are_measured(
    server: ServerProcess, client: Client
) -> None:
    from geopunch.v1 import location_pb2
    from tests.e2e.test_webhooks import subscribe
    from tests.webhook_receiver import Receiver

    tc = int(make_time_clock(client).id)
    before = scrape(server.http_address)
    t0 = int(time.time()) - 60
    trail = location_pb2.TrailSamples(
        user_ids=[USER] * 3,
        time_clock_id=tc,
        timestamps=[t0, t0 + 1, t0 + 2],
        latitudes=[48.0, 48.0, 999.0],  # the last one is not a coordinate
        longitudes=[11.0, 11.001, 11.0],
    )
    client(client.locations.EvaluateTrails, location_pb2.EvaluateTrailsRequest(samples=trail))
    receiver = Receiver().start()
    try:
        sub = subscribe(client, receiver.url, time_clock_ids=[tc])
        client(
            client.timeclock.ClockIn,
            timeclock_pb2.ClockInRequest(time_clock_id=tc, user_id=USER, timestamp=t0),
        )
        deadline = time.monotonic() + 30
        while not receiver.accepted() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert receiver.accepted()
        deadline = time.monotonic() + 30
        while True:  # the deliverer finds the log empty after the event: caught up
            after = scrape(server.http_address)
            lag = (("subscriber", sub.id),)
            caught_up = after.get(("geopunch_event_lag_seconds", lag)) == 0.0
            if caught_up or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    finally:
        receiver.stop()

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("geopunch_trail_samples_total", status="OK") == 2
    assert moved("geopunch_trail_samples_total", status="INVALID_COORDINATES") == 1
    assert after.get(("geopunch_event_lag_seconds", (("subscriber", sub.id),))) == 0.0
    # Counted by the time the subscription is caught up (other tests' may add more).
    assert moved("geopunch_webhook_deliveries_total", result="ok") >= len(receiver.accepted())
    # The index follower runs every second: the index is at most a few seconds behind.
    current = value(after, "geopunch_index_current_timestamp_seconds")
    assert time.time() - 10 < current <= time.time()
