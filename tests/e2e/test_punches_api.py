"""TimeClockService end to end: every state-table row and error reason of the spec."""

from __future__ import annotations

import sqlite3
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import grpc
import pytest
from google.protobuf import json_format

from geopunch.v1 import admin_pb2, geofences_pb2, scheduler_pb2, timeclock_pb2
from tests.conftest import Client, ServerProcess, make_scheduler, make_time_clock
from tests.helpers import details, expect_error

USER = 9170357
LUNCH = "8b8a161e-dfb5-42ac-bbf0-0448fc0c0c82"  # mandatory, 1800 s
REST = "rest"
BREAKS = [
    admin_pb2.ManualBreakType(id=LUNCH, name="Lunch", is_mandatory=True, min_duration_seconds=1800),
    admin_pb2.ManualBreakType(id=REST, name="Rest"),
]


def now() -> int:
    return int(time.time())


def clock(client: Client, **kw: Any) -> admin_pb2.TimeClock:
    kw.setdefault("manual_breaks_enabled", True)
    kw.setdefault("manual_break_types", BREAKS)
    return make_time_clock(client, **kw)


def call(
    client: Client, method: str, req_type: Any, tc: int, body: dict[str, Any], **path: Any
) -> dict[str, Any]:
    req = json_format.ParseDict({**body, "timeClockId": tc, **path}, req_type())
    return json_format.MessageToDict(client(getattr(client.timeclock, method), req))


def clock_in(client: Client, tc: int, **body: Any) -> dict[str, Any]:
    return call(client, "ClockIn", timeclock_pb2.ClockInRequest, tc, {"userId": USER, **body})


def clock_out(client: Client, tc: int, **body: Any) -> dict[str, Any]:
    return call(client, "ClockOut", timeclock_pb2.ClockOutRequest, tc, {"userId": USER, **body})


def start_break(client: Client, tc: int, break_id: str = REST, **body: Any) -> dict[str, Any]:
    return call(
        client,
        "StartManualBreak",
        timeclock_pb2.StartManualBreakRequest,
        tc,
        {"userId": USER, **body},
        manualBreakId=break_id,
    )


def end_break(client: Client, tc: int, **body: Any) -> dict[str, Any]:
    return call(
        client, "EndManualBreak", timeclock_pb2.EndManualBreakRequest, tc, {"userId": USER, **body}
    )


def fails(
    fn: Any, reason: str, code: grpc.StatusCode = grpc.StatusCode.FAILED_PRECONDITION
) -> grpc.RpcError:
    err, _ = expect_error(fn, code, reason)
    return err


BAD = grpc.StatusCode.INVALID_ARGUMENT
MISSING = grpc.StatusCode.NOT_FOUND


# --- real-time clocking --------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"userId": USER},
        {"userId": USER, "jobId": "job-123", "timezone": "America/New_York"},
        {
            "userId": USER,
            "jobId": "job-123",
            "timezone": "America/New_York",
            "locationData": {
                "address": "123 Main St, New York, NY 10001",
                "latitude": 40.7128,
                "longitude": -74.0060,
            },
        },
        {"userId": USER, "schedulerShiftId": "sched-shift-789", "timezone": "America/New_York"},
        {"userId": USER, "jobId": "job-123", "timezone": "America/New_York", "timestamp": "RETRO"},
    ],
    ids=["basic", "job", "location", "scheduler-shift", "retroactive"],
)
def test_spec_clock_in_examples_and_shapes(client: Client, body: dict[str, Any]) -> None:
    tc = clock(client).id
    retro = now() - 3600
    if body.get("timestamp") == "RETRO":
        body = {**body, "timestamp": retro}
    if "schedulerShiftId" in body:  # the spec's id stands for a shift scheduled for the user
        body = {**body, "schedulerShiftId": scheduled_shift_of(client, USER)}
    out = call(client, "ClockIn", timeclock_pb2.ClockInRequest, tc, body)
    assert set(out) == {"requestId", "data"}
    shift = out["data"]["shift"]
    assert {"id", "userId", "start", "createdAt", "modifiedAt"} <= set(shift)
    assert int(shift["userId"]) == USER
    assert shift["start"]["source"] == {"type": "api"}
    assert shift["start"]["timezone"] == body.get("timezone", "America/New_York")
    assert "end" not in shift
    if "timestamp" in body:
        assert int(shift["start"]["timestamp"]) == retro
    else:
        assert abs(int(shift["start"]["timestamp"]) - now()) <= 2
    if "locationData" in body:
        assert shift["start"]["locationData"] == body["locationData"]
    if "jobId" in body:
        assert shift["jobId"] == "job-123"
    if "schedulerShiftId" in body:
        assert shift["schedulerShiftId"] == body["schedulerShiftId"]


def scheduled_shift_of(client: Client, user: int) -> str:
    scheduler = make_scheduler(client, user_ids=[user])
    request = scheduler_pb2.CreateShiftsRequest(
        scheduler_id=scheduler.id,
        shifts=[
            scheduler_pb2.ScheduledShift(
                start_time=now(), end_time=now() + 8 * 3600, title="Day", assigned_user_ids=[user]
            )
        ],
    )
    return str(client(client.scheduler.CreateShifts, request).data.shifts[0].id)


def test_offline_queue_flushed_oldest_first(client: Client) -> None:
    tc = clock(client).id
    t_in, t_out = now() - 8 * 3600, now() - 1800
    queue: list[tuple[str, dict[str, Any]]] = [
        ("clock-in", {"jobId": "job-123", "timestamp": t_in}),
        ("clock-out", {"timestamp": t_out}),
    ]
    answers = [
        clock_in(client, tc, **b) if kind == "clock-in" else clock_out(client, tc, **b)
        for kind, b in queue
    ]
    assert int(answers[0]["data"]["shift"]["start"]["timestamp"]) == t_in
    shift = answers[1]["data"]["shift"]
    assert int(shift["end"]["timestamp"]) == t_out
    assert int(shift["start"]["timestamp"]) == t_in and shift["jobId"] == "job-123"
    assert shift["end"]["source"] == {"type": "api"}
    fails(lambda: clock_out(client, tc), "NO_OPEN_SHIFT")


def test_clock_in_state_rules(client: Client) -> None:
    tc = clock(client).id
    clock_in(client, tc, timestamp=now() - 600)
    fails(lambda: clock_in(client, tc), "ALREADY_CLOCKED_IN")
    start_break(client, tc, timestamp=now() - 300)
    fails(lambda: clock_in(client, tc), "OPEN_BREAK")
    fails(lambda: clock_out(client, tc), "NO_OPEN_SHIFT")


def test_identity_job_and_timezone_rules(client: Client) -> None:
    tc = clock(client, job_enforcement=True).id
    fails(lambda: clock_in(client, tc, userId=424242), "USER_NOT_ASSIGNED")
    fails(lambda: clock_in(client, 999_999_999), "TIME_CLOCK_NOT_FOUND", MISSING)
    fails(lambda: clock_in(client, tc), "JOB_REQUIRED", BAD)
    fails(lambda: clock_in(client, tc, jobId="job-nope"), "JOB_NOT_FOUND", MISSING)
    fails(
        lambda: clock_in(client, tc, jobId="job-123", timezone="Mars/Base"), "INVALID_TIMEZONE", BAD
    )
    fails(
        lambda: clock_in(
            client,
            tc,
            jobId="job-123",
            locationData={"address": "x", "latitude": 91, "longitude": 0},
        ),
        "INVALID_LOCATION",
        BAD,
    )
    sub = clock_in(client, tc, jobId="job-construction-001-a")
    assert sub["data"]["shift"]["jobId"] == "job-construction-001-a"


def test_timestamp_rules(client: Client) -> None:
    tc = clock(client).id
    err = fails(
        lambda: clock_in(client, tc, timestamp=now() + 120), "INVALID_TIMESTAMP_FUTURE", BAD
    )
    assert "future" in (err.details() or "")
    err = fails(
        lambda: clock_in(client, tc, timestamp=now() - 13 * 3600), "INVALID_TIMESTAMP_TOO_OLD", BAD
    )
    assert "12 hours" in (err.details() or "")
    fails(lambda: clock_in(client, tc, timestamp=now() * 1000), "INVALID_TIMESTAMP_FUTURE", BAD)
    start = now() - 3600
    clock_in(client, tc, timestamp=start)
    fails(lambda: clock_out(client, tc, timestamp=start), "INVALID_TIMESTAMP_BEFORE_CLOCK_IN", BAD)
    fails(
        lambda: clock_out(client, tc, timestamp=start - 5), "INVALID_TIMESTAMP_BEFORE_CLOCK_IN", BAD
    )
    assert (
        int(clock_out(client, tc, timestamp=start + 1)["data"]["shift"]["end"]["timestamp"])
        == start + 1
    )


def test_overlapping_a_completed_activity(client: Client) -> None:
    tc = clock(client).id
    a, b = now() - 4 * 3600, now() - 2 * 3600
    clock_in(client, tc, timestamp=a)
    clock_out(client, tc, timestamp=b)
    fails(lambda: clock_in(client, tc, timestamp=a + 60), "OVERLAPS_COMPLETED_ACTIVITY")
    fails(lambda: start_break(client, tc, timestamp=a - 60), "OVERLAPS_COMPLETED_ACTIVITY")
    assert clock_in(client, tc, timestamp=b)["data"]["shift"]  # half-open: touching is fine


def test_locked_and_approved_days(client: Client) -> None:
    tc = clock(client).id
    ts = now() - 120
    day = datetime.fromtimestamp(ts, ZoneInfo("America/New_York")).date().isoformat()

    def set_day(status: admin_pb2.DayStatus.ValueType) -> None:
        client(
            client.admin.SetDayStatus,
            admin_pb2.SetDayStatusRequest(
                time_clock_id=tc, user_id=USER, dates=[day], status=status
            ),
        )

    set_day(admin_pb2.LOCKED)
    fails(lambda: clock_in(client, tc, timestamp=ts), "HAS_LOCKED_DAYS")
    set_day(admin_pb2.APPROVED)
    fails(lambda: clock_in(client, tc, timestamp=ts), "HAS_LOCKED_DAYS")
    set_day(admin_pb2.OPEN)
    assert clock_in(client, tc, timestamp=ts)["data"]["shift"]


# --- geofence policy ----------------------------------------------------------------------------


def fence_at(
    client: Client, tc: int, lat: float, lon: float, size: int, jobs: list[str] | None = None
) -> str:
    req = geofences_pb2.CreateGeofencesRequest(time_clock_id=tc)
    g = req.geofences.add(name="site", fence_size=size, job_ids=jobs or [])
    g.location.address, g.location.latitude, g.location.longitude = "a", lat, lon
    return str(client(client.geofences.CreateGeofences, req).data.geofences[0].fence_id)


HERE = {"address": "123 Main St", "latitude": 40.7128, "longitude": -74.0060}
AWAY = {"address": "elsewhere", "latitude": 40.7228, "longitude": -74.0060}  # ~1.1 km north


def test_require_location(client: Client) -> None:
    tc = clock(client, geofence_policy=admin_pb2.REQUIRE_LOCATION).id
    fails(lambda: clock_in(client, tc), "LOCATION_REQUIRED", BAD)
    fails(
        lambda: clock_in(client, tc, locationData={"address": "only an address"}),
        "LOCATION_REQUIRED",
        BAD,
    )
    assert clock_in(client, tc, locationData=AWAY)["data"]["shift"]


def test_require_inside(client: Client) -> None:
    tc = clock(client, geofence_policy=admin_pb2.REQUIRE_INSIDE, accuracy_tolerance_m=0).id
    fails(lambda: clock_in(client, tc, locationData=HERE), "OUTSIDE_GEOFENCE")  # no fence yet
    fid = fence_at(client, tc, 40.7128, -74.0060, 150, ["job-123"])
    err = fails(
        lambda: clock_in(client, tc, locationData=AWAY, jobId="job-123"), "OUTSIDE_GEOFENCE"
    )
    info, _ = details(err)
    assert float(info.metadata["distanceMeters"]) == pytest.approx(1109.6 - 150, abs=5)
    assert info.metadata["fenceId"] == fid
    fails(lambda: clock_in(client, tc, locationData=HERE, jobId="job-456"), "OUTSIDE_GEOFENCE")
    shift = clock_in(client, tc, locationData=HERE, jobId="job-123", timestamp=now() - 60)["data"][
        "shift"
    ]
    assert shift["start"]["geofenceId"] == fid
    fails(lambda: clock_out(client, tc, locationData=AWAY), "OUTSIDE_GEOFENCE")
    fails(lambda: clock_out(client, tc), "LOCATION_REQUIRED", BAD)
    out = clock_out(client, tc, locationData=HERE, timestamp=now())
    assert out["data"]["shift"]["end"]["geofenceId"] == fid


# --- manual breaks ------------------------------------------------------------------------------


def test_standalone_break(client: Client) -> None:
    tc = clock(client).id
    started = start_break(client, tc, timestamp=now() - 600)["data"]
    assert started["isSwitchFromShift"] is False  # present when false: clients read it
    assert "closedShift" not in started
    fails(lambda: start_break(client, tc), "ALREADY_ON_BREAK")
    ended = end_break(client, tc, isResumeShift=True, timestamp=now() - 60)["data"]
    assert ended["id"] == started["id"]
    assert ended["isResumeShift"] is False and "resumedShift" not in ended
    fails(lambda: end_break(client, tc), "NO_OPEN_BREAK")


def test_break_from_shift_and_resume(client: Client) -> None:
    tc = clock(client).id
    t0 = now() - 3 * 3600
    shift = clock_in(client, tc, jobId="job-456", timestamp=t0)["data"]["shift"]
    started = start_break(client, tc, timestamp=t0 + 3600)["data"]
    assert started["isSwitchFromShift"] is True
    closed = started["closedShift"]
    assert closed["id"] == shift["id"]
    assert int(closed["end"]["timestamp"]) == int(started["start"]["timestamp"]) == t0 + 3600
    assert started["jobId"] == "job-456"
    ended = end_break(client, tc, timestamp=t0 + 4000)["data"]
    assert ended["isResumeShift"] is True
    resumed = ended["resumedShift"]
    assert resumed["jobId"] == "job-456" and resumed["id"] != shift["id"]
    assert int(resumed["start"]["timestamp"]) == int(ended["end"]["timestamp"]) == t0 + 4000
    fails(lambda: clock_in(client, tc), "ALREADY_CLOCKED_IN")
    # and without resuming
    start_break(client, tc, timestamp=t0 + 5000)
    ended = end_break(client, tc, isResumeShift=False, timestamp=t0 + 5100)["data"]
    assert ended["isResumeShift"] is False and "resumedShift" not in ended
    fails(lambda: clock_out(client, tc), "NO_OPEN_SHIFT")


def test_break_settings_rules(client: Client) -> None:
    off = clock(client, manual_breaks_enabled=False).id
    fails(lambda: start_break(client, off), "MANUAL_BREAKS_DISABLED")
    tc = clock(client).id
    fails(lambda: start_break(client, tc, "no-such-break"), "MANUAL_BREAK_NOT_FOUND", MISSING)
    fails(lambda: start_break(client, tc, userId=424242), "USER_NOT_ASSIGNED")
    listed = json_format.MessageToDict(
        client(
            client.timeclock.ListManualBreaks,
            timeclock_pb2.ListManualBreaksRequest(time_clock_id=tc),
        )
    )
    assert listed["data"]["isEnabled"] is True
    assert [b["id"] for b in listed["data"]["manualBreaks"]] == [LUNCH, REST]
    assert listed["data"]["manualBreaks"][0]["minDurationSeconds"] == 1800


@pytest.mark.parametrize(
    "elapsed,resume,reason",
    [
        (45, True, None),
        (46, True, "MANDATORY_BREAK_TOO_SHORT"),
        (1799, False, "MANDATORY_BREAK_TOO_SHORT"),
        (1800, True, None),
        (30, False, None),
    ],
)
def test_mandatory_break(client: Client, elapsed: int, resume: bool, reason: str | None) -> None:
    tc = clock(client).id
    t0 = now() - 3 * 3600
    clock_in(client, tc, timestamp=t0, jobId="job-123")
    start_break(client, tc, LUNCH, timestamp=t0 + 600)

    def end() -> dict[str, Any]:
        return end_break(client, tc, timestamp=t0 + 600 + elapsed, isResumeShift=resume)

    if reason:
        err = fails(end, reason)
        assert "1800" in (err.details() or "")
    else:
        assert end()["data"].get("isResumeShift", False) is resume


def test_break_timestamp_rules(client: Client) -> None:
    tc = clock(client).id
    t0 = now() - 3600
    start_break(client, tc, timestamp=t0)
    fails(lambda: end_break(client, tc, timestamp=t0), "INVALID_TIMESTAMP_BEFORE_START", BAD)
    fails(lambda: end_break(client, tc, timestamp=now() + 60), "INVALID_TIMESTAMP_FUTURE", BAD)
    tc2 = clock(client).id
    clock_in(client, tc2, timestamp=t0)
    fails(
        lambda: start_break(client, tc2, timestamp=t0 - 1), "INVALID_TIMESTAMP_BEFORE_CLOCK_IN", BAD
    )


def test_time_clocks_are_independent(client: Client) -> None:
    a, b = clock(client).id, clock(client).id
    clock_in(client, a, timestamp=now() - 600)
    started = start_break(client, b, timestamp=now() - 300)["data"]
    assert started["isSwitchFromShift"] is False
    assert clock_out(client, a)["data"]["shift"]["end"]


# --- validate, idempotency, durability -----------------------------------------------------------


def validate(client: Client, **punch: Any) -> dict[str, Any]:
    req = json_format.ParseDict(punch, timeclock_pb2.ValidatePunchRequest())
    data: dict[str, Any] = json_format.MessageToDict(client(client.timeclock.ValidatePunch, req))[
        "data"
    ]
    return data


def test_validate_punch_changes_nothing(client: Client) -> None:
    tc = clock(client, geofence_policy=admin_pb2.REQUIRE_INSIDE).id
    fence_at(client, tc, 40.7128, -74.0060, 150)
    ok = validate(client, clockIn={"timeClockId": tc, "userId": USER, "locationData": HERE})
    assert ok == {"allowed": True}
    bad = validate(client, clockIn={"timeClockId": tc, "userId": USER, "locationData": AWAY})
    assert bad["allowed"] is False if "allowed" in bad else True
    assert bad["reason"] == "OUTSIDE_GEOFENCE"
    assert float(bad["metadata"]["distanceMeters"]) > 900
    assert (
        validate(client, clockOut={"timeClockId": tc, "userId": USER})["reason"] == "NO_OPEN_SHIFT"
    )
    assert (
        validate(client, endManualBreak={"timeClockId": tc, "userId": USER})["reason"]
        == "NO_OPEN_BREAK"
    )
    # the allowed validation did not clock in
    assert clock_in(client, tc, locationData=HERE)["data"]["shift"]


def test_idempotent_retries(tmp_path: Path) -> None:
    srv = ServerProcess(db_url=f"sqlite:///{tmp_path / 'idem.db'}")
    srv.start(tmp_path)
    c = Client(srv.address)
    try:
        tc = clock(c).id
        ts = now() - 900
        first = clock_in(c, tc, timestamp=ts, idempotencyKey="punch-1")
        again = clock_in(c, tc, timestamp=ts, idempotencyKey="punch-1")
        assert again == first
        fails(
            lambda: clock_in(c, tc, timestamp=ts + 1, idempotencyKey="punch-1"),
            "IDEMPOTENCY_KEY_REUSED",
            BAD,
        )
        fails(lambda: clock_out(c, tc, idempotencyKey="punch-1"), "IDEMPOTENCY_KEY_REUSED", BAD)
        out = clock_out(c, tc, timestamp=ts + 300, idempotencyKey="punch-2")
        c.close()
        srv.kill()  # acknowledged punches and their keys survive kill -9
        srv.start(tmp_path)
        c = Client(srv.address)
        assert clock_in(c, tc, timestamp=ts, idempotencyKey="punch-1") == first
        assert clock_out(c, tc, timestamp=ts + 300, idempotencyKey="punch-2") == out
        fails(lambda: clock_out(c, tc), "NO_OPEN_SHIFT")
    finally:
        c.close()
        srv.terminate()


def test_expired_idempotency_keys_are_forgotten_at_start_up(tmp_path: Path) -> None:
    db = tmp_path / "expire.db"
    srv = ServerProcess(db_url=f"sqlite:///{db}", env_extra={"GEOPUNCH_IDEMPOTENCY_DAYS": "1"})
    srv.start(tmp_path)
    c = Client(srv.address)
    try:
        tc = clock(c).id
        ts = now() - 900
        first = clock_in(c, tc, timestamp=ts, idempotencyKey="kept")
        clock_out(c, tc, timestamp=ts + 60, idempotencyKey="aged")
    finally:
        c.close()
        assert srv.terminate() == 0
    with sqlite3.connect(db) as conn:  # make one key two days old
        conn.execute(
            "UPDATE idempotency_keys SET created_at = created_at - 2 * 86400 WHERE key = 'aged'"
        )
    srv.start(tmp_path)
    c = Client(srv.address)
    try:
        deadline = time.monotonic() + 20  # the purge runs beside serving, right after start-up
        while "idempotency keys purged" not in srv.logs() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "idempotency keys purged" in srv.logs()
        assert clock_in(c, tc, timestamp=ts, idempotencyKey="kept") == first  # still replayed
        # "aged" was forgotten: the same body is a new punch now, judged on its own
        fails(lambda: clock_out(c, tc, timestamp=ts + 60, idempotencyKey="aged"), "NO_OPEN_SHIFT")
    finally:
        c.close()
        srv.terminate()


def test_validate_agrees_with_the_real_call(client: Client) -> None:
    """For every punch in every state, ValidatePunch predicts the real call's outcome."""
    tc = clock(client, geofence_policy=admin_pb2.REQUIRE_LOCATION).id
    t0 = now() - 6 * 3600
    step = iter(range(10_000))
    punches = {
        "clockIn": ("ClockIn", timeclock_pb2.ClockInRequest, {"jobId": "job-123"}),
        "clockOut": ("ClockOut", timeclock_pb2.ClockOutRequest, {}),
        "startManualBreak": (
            "StartManualBreak",
            timeclock_pb2.StartManualBreakRequest,
            {"manualBreakId": LUNCH},
        ),
        "endManualBreak": ("EndManualBreak", timeclock_pb2.EndManualBreakRequest, {}),
    }
    sequence = [
        "clockOut",
        "endManualBreak",
        "clockIn",
        "clockIn",
        "startManualBreak",
        "startManualBreak",
        "clockIn",
        "endManualBreak",
        "clockOut",
        "clockOut",
        "startManualBreak",
        "endManualBreak",
        "endManualBreak",
        "clockIn",
    ]
    outcomes = []
    for name in sequence:
        method, req_type, extra = punches[name]
        for with_location in (False, True):
            body = {"timeClockId": tc, "userId": USER, "timestamp": t0 + 100 * next(step), **extra}
            if with_location:
                body["locationData"] = HERE
            predicted = validate(client, **{name: body})
            try:
                client(getattr(client.timeclock, method), json_format.ParseDict(body, req_type()))
                actual = ""
            except grpc.RpcError as err:
                actual = details(err)[0].reason
            assert predicted.get("reason", "") == actual, (name, with_location, predicted, actual)
            assert bool(predicted.get("allowed", False)) == (actual == "")
            outcomes.append(actual)
    assert "" in outcomes and "LOCATION_REQUIRED" in outcomes and "NO_OPEN_SHIFT" in outcomes
    assert "MANDATORY_BREAK_TOO_SHORT" in outcomes
