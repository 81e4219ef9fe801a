"""SchedulerService and scheduler set-up end to end, through a real server process."""

from __future__ import annotations

import time
from functools import partial
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from sqlalchemy import create_engine

from geopunch.adapters.db.store import SqlUnitOfWorkFactory
from geopunch.domain.accounts import DEFAULT_ACCOUNT
from geopunch.v1 import admin_pb2, scheduler_pb2, timeclock_pb2
from tests.conftest import (
    SPEC_JOB,
    SPEC_USERS,
    Client,
    ServerProcess,
    make_scheduler,
    make_time_clock,
    next_time_clock_id,
)
from tests.helpers import expect_error

START, END = 1736924400, 1736953200  # the spec's sample shift: 8 hours
USER = SPEC_USERS[0]

# The example request bodies of the shift-creation document, keyed by name.
SPEC_EXAMPLES: dict[str, list[dict[str, Any]]] = {
    "basic-published": [
        {
            "startTime": START,
            "endTime": END,
            "title": "Morning Shift",
            "isPublished": True,
            "assignedUserIds": [9170357],
        }
    ],
    "draft": [
        {"startTime": START, "endTime": END, "title": "Planning Shift", "isPublished": False}
    ],
    "open-admin-approval": [
        {
            "startTime": START,
            "endTime": END,
            "title": "Weekend Coverage",
            "isOpenShift": True,
            "isRequireAdminApproval": True,
            "isPublished": True,
        }
    ],
    "job-location-override": [
        {
            "startTime": START,
            "endTime": END,
            "jobId": SPEC_JOB,
            "isPublished": True,
            "assignedUserIds": [9170357],
            "locationData": {
                "isReferencedToJob": False,
                "gps": {
                    "address": "456 Oak Avenue, Brooklyn, NY",
                    "latitude": 40.6782,
                    "longitude": -73.9442,
                },
            },
        }
    ],
    "breaks": [
        {
            "startTime": START,
            "endTime": 1736960400,
            "title": "Full Day Shift",
            "isPublished": True,
            "assignedUserIds": [9170357],
            "breaks": [
                {"name": "Morning Break", "type": "paid", "startTime": 600, "duration": 15},
                {"name": "Lunch", "type": "unpaid", "startTime": 720, "duration": 30},
                {"name": "Afternoon Break", "type": "paid", "startTime": 900, "duration": 15},
            ],
        }
    ],
    "notes": [
        {
            "startTime": START,
            "endTime": END,
            "title": "Special Event Shift",
            "isPublished": True,
            "assignedUserIds": [9170357],
            "notes": [
                {"html": "<p><b>Important:</b> Arrive 15 minutes early for briefing</p>"},
                {"html": "<p>Dress code: Business casual</p>"},
            ],
        }
    ],
    "shift-layers": [
        {
            "startTime": START,
            "endTime": END,
            "title": "Department Shift",
            "isPublished": True,
            "assignedUserIds": [9170357],
            "shiftDetails": {
                "shiftLayers": [{"id": "layer-dept-001", "value": {"id": "value-sales-001"}}],
                "shiftSource": "API Integration",
            },
        }
    ],
    "custom-fields": [
        {
            "startTime": START,
            "endTime": END,
            "title": "Project Shift",
            "isPublished": True,
            "assignedUserIds": [9170357],
            "customFields": [
                {"id": "field_abc123", "value": "PROJ-2024-001"},
                {"id": "field_def456", "value": "CC-Operations"},
            ],
        }
    ],
    "bulk": [
        {
            "startTime": START,
            "endTime": END,
            "title": "Morning Shift",
            "isPublished": True,
            "assignedUserIds": [9170357],
        },
        {
            "startTime": END,
            "endTime": 1736982000,
            "title": "Afternoon Shift",
            "isPublished": True,
            "assignedUserIds": [9170358],
        },
        {
            "startTime": 1736982000,
            "endTime": 1737010800,
            "title": "Night Shift",
            "isPublished": True,
            "assignedUserIds": [9170359],
        },
    ],
}
MULTI_SPOT = [
    {
        "startTime": START,
        "endTime": END,
        "title": "Event Staff",
        "isOpenShift": True,
        "openSpots": 5,
        "isPublished": True,
    }
]


def create(
    client: Client, scheduler_id: int, shifts: list[dict[str, Any]], **query: Any
) -> dict[str, Any]:
    request = json_format.ParseDict(
        {"schedulerId": scheduler_id, **query, "shifts": shifts},
        scheduler_pb2.CreateShiftsRequest(),
    )
    return json_format.MessageToDict(client(client.scheduler.CreateShifts, request))


def create_fails(
    client: Client, scheduler_id: int, shifts: list[dict[str, Any]], reason: str
) -> list[tuple[str, str]]:
    code = grpc.StatusCode.INVALID_ARGUMENT
    if reason == "FEATURE_REQUIRED":
        code = grpc.StatusCode.FAILED_PRECONDITION
    elif reason == "SCHEDULER_NOT_FOUND":
        code = grpc.StatusCode.NOT_FOUND
    _, violations = expect_error(lambda: create(client, scheduler_id, shifts), code, reason)
    return violations


def ints(value: Any) -> Any:
    """int64 fields come back as JSON strings; turn them into numbers again."""
    if isinstance(value, list):
        return [ints(v) for v in value]
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return value


def listed(client: Client, scheduler_id: int) -> list[dict[str, Any]]:
    out = client(
        client.scheduler.ListShifts,
        scheduler_pb2.ListShiftsRequest(
            scheduler_id=scheduler_id, start_time=START - 86400, end_time=START + 5 * 86400
        ),
    )
    return [json_format.MessageToDict(s) for s in out.data.shifts]


def events_of(server: ServerProcess) -> list[Any]:
    engine = create_engine(server.db_url)
    try:
        with SqlUnitOfWorkFactory(engine)(account=DEFAULT_ACCOUNT, readonly=True) as uow:
            return uow.events.after(0, limit=100_000)
    finally:
        engine.dispose()


@pytest.mark.parametrize("name", sorted(SPEC_EXAMPLES))
def test_every_spec_example_is_created(client: Client, name: str) -> None:
    sid = make_scheduler(client).id
    out = create(client, sid, SPEC_EXAMPLES[name], createdBy=USER)
    assert set(out) == {"requestId", "data"}
    shifts = out["data"]["shifts"]
    assert len(shifts) == len(SPEC_EXAMPLES[name])
    for sent, got in zip(SPEC_EXAMPLES[name], shifts, strict=True):
        assert len(got["id"]) == 24 and int(got["id"], 16) >= 0
        assert int(got["createdBy"]) == USER
        assert abs(int(got["creationTime"]) - time.time()) < 30
        assert got["updateTime"] == got["creationTime"]
        assert got["timezone"] == "America/New_York"  # the scheduler's
        for key, value in sent.items():
            if key == "breaks":  # answered with their resolved timestamps as well
                assert [{k: b[k] for k in value[0]} for b in got["breaks"]] == value
            else:
                assert ints(got[key]) == value, key
    assert listed(client, sid) == shifts  # stored as answered


def test_defaults_are_filled_in(client: Client) -> None:
    sid = make_scheduler(client).id
    basic, open_shift, job_shift = create(
        client,
        sid,
        [
            SPEC_EXAMPLES["basic-published"][0],
            {**SPEC_EXAMPLES["open-admin-approval"][0], "isRequireAdminApproval": None},
            SPEC_EXAMPLES["job-location-override"][0],
        ],
    )["data"]["shifts"]
    assert basic["color"] == "#4B7AC5"
    assert basic["isOpenShift"] is False
    assert "openSpots" not in basic and "isRequireAdminApproval" not in basic
    assert "createdBy" not in basic  # no acting user given
    assert open_shift["openSpots"] == 1
    assert open_shift["isRequireAdminApproval"] is False
    assert job_shift["color"] == "#E91E63"  # the job's color
    draft = create(client, sid, SPEC_EXAMPLES["draft"])["data"]["shifts"][0]
    assert draft["isPublished"] is False


def test_multi_spot_example_needs_the_feature(client: Client) -> None:
    without = make_scheduler(client).id
    violations = create_fails(client, without, MULTI_SPOT, "FEATURE_REQUIRED")
    assert violations == [("shifts[0].open_spots", "FEATURE_REQUIRED")]
    with_feature = make_scheduler(client, multi_user_shifts=True).id
    shift = create(client, with_feature, MULTI_SPOT)["data"]["shifts"][0]
    assert shift["openSpots"] == 5
    two_users = [{**SPEC_EXAMPLES["basic-published"][0], "assignedUserIds": list(SPEC_USERS[:2])}]
    create_fails(client, without, two_users, "FEATURE_REQUIRED")
    assert create(client, with_feature, two_users)["data"]["shifts"][0]["assignedUserIds"]


BASE = {"startTime": START, "endTime": END, "title": "Shift", "isPublished": False}


@pytest.mark.parametrize(
    ("change", "reason", "field"),
    [
        ({"title": None}, "TITLE_OR_JOB_REQUIRED", "title"),
        ({"assignedUserIds": [99999999]}, "ASSIGNED_USERS_NOT_FOUND", "assigned_user_ids"),
        ({"endTime": START + 25 * 3600}, "SHIFT_TOO_LONG", "end_time"),
        (
            {"breaks": [{"name": "Long", "type": "unpaid", "startTime": 600, "duration": 481}]},
            "BREAKS_EXCEED_SHIFT",
            "breaks",
        ),
        ({"startTime": START * 1000, "endTime": END * 1000}, "TIMESTAMP_NOT_SECONDS", "start_time"),
        ({"openSpots": 2}, "OPEN_SPOTS_NOT_OPEN_SHIFT", "open_spots"),
        ({"isOpenShift": True, "openSpots": 101}, "OPEN_SPOTS_LIMIT", "open_spots"),
        ({"endTime": START}, "INVALID_TIME_RANGE", "end_time"),
        ({"isPublished": True}, "PUBLISHED_SHIFT_NEEDS_USER", "assigned_user_ids"),
        (
            {"isOpenShift": True, "assignedUserIds": [USER]},
            "OPEN_SHIFT_HAS_USERS",
            "assigned_user_ids",
        ),
        ({"jobId": "job-elsewhere"}, "JOB_NOT_IN_SCHEDULER", "job_id"),
        ({"timezone": "Mars/Olympus"}, "INVALID_TIMEZONE", "timezone"),
        ({"color": "blue"}, "INVALID_ARGUMENT", "color"),
        ({"isRequireAdminApproval": True}, "INVALID_ARGUMENT", "is_require_admin_approval"),
    ],
)
def test_each_rule_gives_its_reason(
    client: Client, change: dict[str, Any], reason: str, field: str
) -> None:
    sid = make_scheduler(client).id
    shift = {k: v for k, v in {**BASE, **change}.items() if v is not None}
    violations = create_fails(client, sid, [shift], reason)
    assert (f"shifts[0].{field}", reason) in violations
    assert listed(client, sid) == []


def test_milliseconds_flag_both_ends(client: Client) -> None:
    sid = make_scheduler(client).id
    violations = create_fails(
        client,
        sid,
        [{**BASE, "startTime": START * 1000, "endTime": END * 1000}],
        "TIMESTAMP_NOT_SECONDS",
    )
    assert violations == [
        ("shifts[0].start_time", "TIMESTAMP_NOT_SECONDS"),
        ("shifts[0].end_time", "TIMESTAMP_NOT_SECONDS"),
    ]


def test_one_bad_shift_rejects_all_and_every_problem_is_named(client: Client) -> None:
    sid = make_scheduler(client).id
    good = dict(BASE)
    shifts = [good] * 500
    shifts[3] = {**BASE, "endTime": START - 60}
    shifts[250] = {**BASE, "title": None, "assignedUserIds": [42]}
    shifts[499] = {**BASE, "startTime": START * 1000}
    shifts = [{k: v for k, v in s.items() if v is not None} for s in shifts]
    violations = create_fails(client, sid, shifts, "INVALID_TIME_RANGE")
    assert violations == [
        ("shifts[3].end_time", "INVALID_TIME_RANGE"),
        ("shifts[250].title", "TITLE_OR_JOB_REQUIRED"),
        ("shifts[250].assigned_user_ids", "ASSIGNED_USERS_NOT_FOUND"),
        ("shifts[499].start_time", "TIMESTAMP_NOT_SECONDS"),
    ]
    assert listed(client, sid) == []
    assert len(create(client, sid, [good] * 500)["data"]["shifts"]) == 500


def test_batch_limits(client: Client) -> None:
    sid = make_scheduler(client).id
    create_fails(client, sid, [BASE] * 501, "TOO_MANY_SHIFTS")
    create_fails(client, sid, [], "INVALID_ARGUMENT")
    create_fails(client, next_time_clock_id(), [BASE], "SCHEDULER_NOT_FOUND")


def test_published_shifts_notify_each_assigned_user_in_the_same_commit(
    client: Client, server: ServerProcess
) -> None:
    sid = make_scheduler(client, multi_user_shifts=True).id
    shifts = [
        {**BASE, "isPublished": True, "assignedUserIds": [SPEC_USERS[0], SPEC_USERS[1]]},
        {**BASE, "isPublished": False, "assignedUserIds": [SPEC_USERS[2]]},  # draft: silent
        {**BASE, "isPublished": True, "assignedUserIds": [SPEC_USERS[2]]},
    ]
    created = create(client, sid, shifts)["data"]["shifts"]
    silent = create(client, sid, shifts[:1], notifyUsers=False)["data"]["shifts"]
    mine = [e for e in events_of(server) if e.scheduler_id == sid]
    assert [(e.type, e.user_id, e.payload["shiftId"]) for e in mine] == [
        ("shiftPublished", SPEC_USERS[0], created[0]["id"]),
        ("shiftPublished", SPEC_USERS[1], created[0]["id"]),
        ("shiftPublished", SPEC_USERS[2], created[2]["id"]),
    ]
    assert silent and all(e.payload["shiftId"] != silent[0]["id"] for e in mine)
    assert [e.seq for e in mine] == sorted(e.seq for e in mine)


def test_scheduler_set_up_round_trip_and_validation(client: Client) -> None:
    s = make_scheduler(client)
    got = client(client.admin.GetScheduler, admin_pb2.GetSchedulerRequest(scheduler_id=s.id)).data
    assert got == s
    assert got.jobs[0].color == "#E91E63" and got.jobs[1].sub_jobs[0].id == "job-kitchen-prep"
    s.user_ids.append(1234)
    s.multi_user_shifts = True
    updated = client(
        client.admin.UpdateScheduler, admin_pb2.UpdateSchedulerRequest(scheduler=s)
    ).data
    assert 1234 in updated.user_ids and updated.multi_user_shifts
    expect_error(
        lambda: client(client.admin.CreateScheduler, admin_pb2.CreateSchedulerRequest(scheduler=s)),
        grpc.StatusCode.ALREADY_EXISTS,
        "SCHEDULER_ALREADY_EXISTS",
    )
    bad = admin_pb2.Scheduler(
        name="x", timezone="Nowhere/Land", jobs=[admin_pb2.Job(id="a", color="red")]
    )
    _, violations = expect_error(
        lambda: client(
            client.admin.CreateScheduler, admin_pb2.CreateSchedulerRequest(scheduler=bad)
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_TIMEZONE",
    )
    assert ("scheduler.jobs[0].color", "INVALID_ARGUMENT") in violations
    expect_error(
        lambda: client(
            client.admin.GetScheduler,
            admin_pb2.GetSchedulerRequest(scheduler_id=next_time_clock_id()),
        ),
        grpc.StatusCode.NOT_FOUND,
        "SCHEDULER_NOT_FOUND",
    )
    assigned = client(
        client.admin.CreateScheduler,
        admin_pb2.CreateSchedulerRequest(
            scheduler=admin_pb2.Scheduler(name="auto", timezone="Europe/Paris")
        ),
    ).data
    assert assigned.id > 0


def test_sub_jobs_of_the_scheduler_are_assignable(client: Client) -> None:
    sid = make_scheduler(client).id
    shift = create(client, sid, [{**BASE, "title": None, "jobId": "job-kitchen-prep"}])
    assert shift["data"]["shifts"][0]["jobId"] == "job-kitchen-prep"


def clock_in(client: Client, tc: int, body: dict[str, Any]) -> dict[str, Any]:
    request = json_format.ParseDict({**body, "timeClockId": tc}, timeclock_pb2.ClockInRequest())
    return json_format.MessageToDict(client(client.timeclock.ClockIn, request))


def test_clock_in_links_a_scheduled_shift_of_the_user(client: Client) -> None:
    tc = make_time_clock(client, user_ids=list(SPEC_USERS)).id
    sid = make_scheduler(client).id
    mine, open_shift, other = create(
        client,
        sid,
        [
            SPEC_EXAMPLES["basic-published"][0],
            SPEC_EXAMPLES["open-admin-approval"][0],
            {**SPEC_EXAMPLES["basic-published"][0], "assignedUserIds": [SPEC_USERS[1]]},
        ],
    )["data"]["shifts"]
    out = clock_in(client, tc, {"userId": USER, "schedulerShiftId": mine["id"]})
    assert out["data"]["shift"]["schedulerShiftId"] == mine["id"]
    # An open shift may be taken by any user of its scheduler.
    user3 = SPEC_USERS[2]
    out = clock_in(client, tc, {"userId": user3, "schedulerShiftId": open_shift["id"]})
    assert out["data"]["shift"]["schedulerShiftId"] == open_shift["id"]
    elsewhere = make_time_clock(client, user_ids=list(SPEC_USERS)).id
    for user, shift_id in (
        (USER, other["id"]),  # someone else's shift
        (USER, "000000000000000000000000"),
        (SPEC_USERS[1], "sched-shift-789"),
    ):
        expect_error(
            partial(clock_in, client, elsewhere, {"userId": user, "schedulerShiftId": shift_id}),
            grpc.StatusCode.NOT_FOUND,
            "SCHEDULER_SHIFT_NOT_FOUND",
        )


def test_list_shifts_window(client: Client) -> None:
    sid = make_scheduler(client).id
    create(client, sid, SPEC_EXAMPLES["bulk"])
    out = client(
        client.scheduler.ListShifts,
        scheduler_pb2.ListShiftsRequest(scheduler_id=sid, start_time=END, end_time=END + 1),
    )
    assert [s.title for s in out.data.shifts] == ["Afternoon Shift"]  # half-open intervals
    expect_error(
        lambda: client(
            client.scheduler.ListShifts,
            scheduler_pb2.ListShiftsRequest(scheduler_id=sid, start_time=END, end_time=END),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )


def test_validate_punch_predicts_the_scheduled_shift_check(client: Client) -> None:
    tc = make_time_clock(client, user_ids=list(SPEC_USERS)).id
    sid = make_scheduler(client).id
    mine = create(client, sid, SPEC_EXAMPLES["basic-published"])["data"]["shifts"][0]

    def validate(shift_id: str) -> dict[str, Any]:
        req = json_format.ParseDict(
            {"clockIn": {"timeClockId": tc, "userId": USER, "schedulerShiftId": shift_id}},
            timeclock_pb2.ValidatePunchRequest(),
        )
        data: dict[str, Any] = json_format.MessageToDict(
            client(client.timeclock.ValidatePunch, req)
        )["data"]
        return data

    assert validate(mine["id"]) == {"allowed": True}
    refused = validate("f" * 24)
    assert refused["reason"] == "SCHEDULER_SHIFT_NOT_FOUND" and not refused.get("allowed")


def test_unknown_schedulers_and_bad_acting_users_are_refused(client: Client) -> None:
    missing = next_time_clock_id()
    expect_error(
        lambda: client(
            client.scheduler.ListShifts,
            scheduler_pb2.ListShiftsRequest(scheduler_id=missing, start_time=START, end_time=END),
        ),
        grpc.StatusCode.NOT_FOUND,
        "SCHEDULER_NOT_FOUND",
    )
    ghost = admin_pb2.Scheduler(id=missing, name="ghost", timezone="UTC")
    expect_error(
        lambda: client(
            client.admin.UpdateScheduler, admin_pb2.UpdateSchedulerRequest(scheduler=ghost)
        ),
        grpc.StatusCode.NOT_FOUND,
        "SCHEDULER_NOT_FOUND",
    )
    sid = make_scheduler(client).id
    expect_error(
        lambda: create(client, sid, [BASE], createdBy=-5),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )
    assert listed(client, sid) == []
