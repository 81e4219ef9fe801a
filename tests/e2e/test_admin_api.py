"""AdminService end to end."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import grpc
from google.protobuf import json_format

from geopunch.v1 import admin_pb2
from tests.conftest import Client, ServerProcess, make_time_clock, next_time_clock_id
from tests.helpers import expect_error


def full_time_clock(tc_id: int) -> admin_pb2.TimeClock:
    return json_format.ParseDict(
        {
            "id": tc_id,
            "name": "Depot",
            "timezone": "Europe/Berlin",
            "jobEnforcement": True,
            "jobs": [
                {"id": "job-1", "name": "Drive", "subJobs": [{"id": "job-1a", "name": "Night"}]},
                {"id": "job-2", "name": "Load"},
            ],
            "userIds": [5, 3, 9],
            "manualBreaksEnabled": True,
            "manualBreakTypes": [
                {
                    "id": "8b8a161e-dfb5-42ac-bbf0-0448fc0c0c82",
                    "name": "Lunch",
                    "isMandatory": True,
                    "minDurationSeconds": 1800,
                },
                {"id": "rest", "name": "Rest"},
            ],
            "geofencePolicy": "REQUIRE_INSIDE",
            "accuracyToleranceM": 30,
            "exitDetection": {"bufferLowAccuracyM": 120},
        },
        admin_pb2.TimeClock(),
    )


def test_create_get_update_round_trip(client: Client) -> None:
    tc_id = next_time_clock_id()
    sent = full_time_clock(tc_id)
    created = client(
        client.admin.CreateTimeClock, admin_pb2.CreateTimeClockRequest(time_clock=sent)
    ).data
    expected = admin_pb2.TimeClock()
    expected.CopyFrom(sent)
    expected.user_ids[:] = [3, 5, 9]
    ed = expected.exit_detection
    ed.high_accuracy_max_m, ed.buffer_high_accuracy_m = 10, 50
    ed.low_accuracy_max_m, ed.buffer_unknown_accuracy_m = 300, 50
    assert created == expected
    got = client(client.admin.GetTimeClock, admin_pb2.GetTimeClockRequest(time_clock_id=tc_id)).data
    assert got == expected
    expected.name = "Renamed"
    expected.geofence_policy = admin_pb2.OFF
    del expected.jobs[1]
    updated = client(
        client.admin.UpdateTimeClock, admin_pb2.UpdateTimeClockRequest(time_clock=expected)
    ).data
    assert updated == expected
    assert (
        client(client.admin.GetTimeClock, admin_pb2.GetTimeClockRequest(time_clock_id=tc_id)).data
        == expected
    )


def test_server_assigns_an_id_when_none_is_given(client: Client) -> None:
    tc = admin_pb2.TimeClock(name="auto", timezone="UTC")
    a = client(client.admin.CreateTimeClock, admin_pb2.CreateTimeClockRequest(time_clock=tc)).data
    b = client(client.admin.CreateTimeClock, admin_pb2.CreateTimeClockRequest(time_clock=tc)).data
    assert a.id > 0 and b.id == a.id + 1


def test_duplicate_id_is_already_exists(client: Client) -> None:
    tc = make_time_clock(client)
    expect_error(
        lambda: client(
            client.admin.CreateTimeClock, admin_pb2.CreateTimeClockRequest(time_clock=tc)
        ),
        grpc.StatusCode.ALREADY_EXISTS,
        "TIME_CLOCK_ALREADY_EXISTS",
    )


def test_invalid_settings_are_named(client: Client) -> None:
    tc = full_time_clock(next_time_clock_id())
    tc.timezone = "Mars/Base"
    tc.jobs[0].sub_jobs[0].id = "job-2"  # clashes with a top-level job
    tc.accuracy_tolerance_m = -3
    _, violations = expect_error(
        lambda: client(
            client.admin.CreateTimeClock, admin_pb2.CreateTimeClockRequest(time_clock=tc)
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_TIMEZONE",
    )
    assert set(violations) == {
        ("time_clock.timezone", "INVALID_TIMEZONE"),
        ("time_clock.jobs[1].id", "INVALID_ARGUMENT"),
        ("time_clock.accuracy_tolerance_m", "INVALID_ARGUMENT"),
    }
    expect_error(
        lambda: client(
            client.admin.GetTimeClock, admin_pb2.GetTimeClockRequest(time_clock_id=tc.id)
        ),
        grpc.StatusCode.NOT_FOUND,
        "TIME_CLOCK_NOT_FOUND",
    )


def test_unknown_enum_numbers_are_invalid(client: Client) -> None:
    tc = full_time_clock(next_time_clock_id())
    tc.geofence_policy = 42  # type: ignore[assignment]
    expect_error(
        lambda: client(
            client.admin.CreateTimeClock, admin_pb2.CreateTimeClockRequest(time_clock=tc)
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )


def test_update_of_unknown_time_clock(client: Client) -> None:
    tc = full_time_clock(next_time_clock_id())
    expect_error(
        lambda: client(
            client.admin.UpdateTimeClock, admin_pb2.UpdateTimeClockRequest(time_clock=tc)
        ),
        grpc.StatusCode.NOT_FOUND,
        "TIME_CLOCK_NOT_FOUND",
    )


def test_lock_approve_unlock_days(client: Client) -> None:
    tc = make_time_clock(client)
    user = tc.user_ids[0]

    def set_status(
        dates: list[str], status: admin_pb2.DayStatus.ValueType
    ) -> list[tuple[str, int]]:
        resp = client(
            client.admin.SetDayStatus,
            admin_pb2.SetDayStatusRequest(
                time_clock_id=tc.id, user_id=user, dates=dates, status=status
            ),
        )
        return [(d.date, d.status) for d in resp.data.days]

    assert set_status(["2026-03-02", "2026-03-01"], admin_pb2.LOCKED) == [
        ("2026-03-01", admin_pb2.LOCKED),
        ("2026-03-02", admin_pb2.LOCKED),
    ]
    assert set_status(["2026-03-02"], admin_pb2.APPROVED)[1] == ("2026-03-02", admin_pb2.APPROVED)
    assert set_status(["2026-03-01"], admin_pb2.OPEN) == [("2026-03-02", admin_pb2.APPROVED)]
    listed = client(
        client.admin.ListDayStatuses,
        admin_pb2.ListDayStatusesRequest(time_clock_id=tc.id, user_id=user),
    )
    assert [(d.date, d.status) for d in listed.data.days] == [("2026-03-02", admin_pb2.APPROVED)]
    _, violations = expect_error(
        lambda: set_status(["2026-02-30", "yesterday"], admin_pb2.LOCKED),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )
    assert [f for f, _ in violations] == ["dates[0]", "dates[1]"]
    expect_error(
        lambda: client(
            client.admin.SetDayStatus,
            admin_pb2.SetDayStatusRequest(
                time_clock_id=tc.id, user_id=424242, dates=["2026-03-01"], status=admin_pb2.LOCKED
            ),
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "USER_NOT_ASSIGNED",
    )
    expect_error(
        lambda: set_status(["2026-03-01"], admin_pb2.DAY_STATUS_UNSPECIFIED),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )


def test_ids_beyond_the_limit_are_refused_and_assignment_survives_the_largest(
    tmp_path: Path,
) -> None:
    """On a server of its own: the ids it assigns fill the lowest gaps."""
    server = ServerProcess(db_url=f"sqlite:///{tmp_path / 'ids.db'}")
    server.start(tmp_path)
    client = Client(server.address)
    try:
        _ids_beyond_the_limit(client)
    finally:
        client.close()
        server.terminate()


def _ids_beyond_the_limit(client: Client) -> None:
    limit = 2**53 - 1
    for too_big in (limit + 1, 2**63 - 1):
        _, violations = expect_error(
            partial(
                client,
                client.admin.CreateTimeClock,
                admin_pb2.CreateTimeClockRequest(
                    time_clock=admin_pb2.TimeClock(id=too_big, name="big", timezone="UTC")
                ),
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_ARGUMENT",
        )
        assert ("time_clock.id", "INVALID_ARGUMENT") in violations
    tc = admin_pb2.TimeClock(id=limit, name="largest", timezone="UTC")
    assert (
        client(
            client.admin.CreateTimeClock, admin_pb2.CreateTimeClockRequest(time_clock=tc)
        ).data.id
        == limit
    )
    auto = admin_pb2.TimeClock(name="auto", timezone="UTC")
    made = client(client.admin.CreateTimeClock, admin_pb2.CreateTimeClockRequest(time_clock=auto))
    assert made.data.id == 1
    for kind in ("scheduler",):
        sched = admin_pb2.Scheduler(id=limit, name="largest", timezone="UTC")
        client(client.admin.CreateScheduler, admin_pb2.CreateSchedulerRequest(scheduler=sched))
        sched = admin_pb2.Scheduler(name="auto", timezone="UTC")
        made_s = client(
            client.admin.CreateScheduler, admin_pb2.CreateSchedulerRequest(scheduler=sched)
        )
        assert made_s.data.id == 1, kind
