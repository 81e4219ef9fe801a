"""Time activities and the read side, end to end on SQLite and PostgreSQL:
completed shifts and breaks, corrections, listing with totals, who is on the clock."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import grpc
import pytest
from google.protobuf import json_format

from geopunch.v1 import admin_pb2, timeclock_pb2
from tests.conftest import Client, ServerProcess, make_time_clock
from tests.e2e.test_accounts import events_of
from tests.helpers import expect_error, pg_schema

USER, OTHER = 9170357, 9170358
LUNCH, REST = "lunch", "rest"
BREAKS = [
    admin_pb2.ManualBreakType(id=LUNCH, name="Lunch", is_mandatory=True, min_duration_seconds=1800),
    admin_pb2.ManualBreakType(id=REST, name="Rest", is_paid=True),
]
NY = ZoneInfo("America/New_York")
H = 3600
BAD = grpc.StatusCode.INVALID_ARGUMENT
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def c(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    """A server of this module's own on each store (the database decides overlaps)."""
    tmp = tmp_path_factory.mktemp(f"activities-{request.param}")
    with _store(request.param, tmp) as url:
        srv = ServerProcess(db_url=url)
        srv.start(tmp)
        client = Client(srv.address)
        try:
            yield client
        finally:
            client.close()
            srv.terminate()


def _store(kind: str, tmp: Path) -> Any:
    if kind == "postgres":
        return pg_schema()

    class _Sqlite:
        def __enter__(self) -> str:
            return f"sqlite:///{tmp / 'activities.db'}"

        def __exit__(self, *exc: object) -> None:
            return None

    return _Sqlite()


def clock(c: Client, **kw: Any) -> int:
    kw.setdefault("manual_breaks_enabled", True)
    kw.setdefault("manual_break_types", BREAKS)
    return int(make_time_clock(c, **kw).id)


def local(y: int, mo: int, d: int, h: int = 0, mi: int = 0) -> int:
    return int(datetime(y, mo, d, h, mi, tzinfo=NY).timestamp())


def days_ago(n: int, hour: int = 9) -> int:
    """``hour`` o'clock New York time, ``n`` days before today."""
    today = datetime.now(NY).date().toordinal()
    day = datetime.fromordinal(today - n)
    return local(day.year, day.month, day.day, hour)


def point(ts: int, **kw: Any) -> dict[str, Any]:
    return {"timestamp": ts, **kw}


def shift(start: int, end: int, **kw: Any) -> dict[str, Any]:
    return {"start": point(start), "end": point(end), **kw}


def brk(start: int, end: int, break_id: str = REST, **kw: Any) -> dict[str, Any]:
    return {"manualBreakId": break_id, "start": point(start), "end": point(end), **kw}


def create(c: Client, tc: int, *groups: dict[str, Any], key: str = "") -> list[dict[str, Any]]:
    req = json_format.ParseDict(
        {"timeClockId": tc, "timeActivities": list(groups), "idempotencyKey": key},
        timeclock_pb2.CreateTimeActivitiesRequest(),
    )
    out = json_format.MessageToDict(
        c(c.timeclock.CreateTimeActivities, req), always_print_fields_with_no_presence=True
    )
    return list(out["data"]["timeActivities"])


def listing(c: Client, tc: int, start: int, end: int, **kw: Any) -> dict[str, Any]:
    req = json_format.ParseDict(
        {"timeClockId": tc, "startTime": start, "endTime": end, **kw},
        timeclock_pb2.ListTimeActivitiesRequest(),
    )
    out = c(c.timeclock.ListTimeActivities, req)
    return dict(json_format.MessageToDict(out, always_print_fields_with_no_presence=True)["data"])


def every(c: Client, tc: int, start: int, end: int, **kw: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    token = ""
    while True:
        page = listing(c, tc, start, end, pageToken=token, **kw)
        found += page["timeActivities"]
        token = page["nextPageToken"]
        if not token:
            return found


def update(c: Client, tc: int, activity: dict[str, Any], **changes: Any) -> dict[str, Any]:
    body = {
        "timeClockId": tc,
        "activityId": activity["id"],
        "modifiedAt": activity["modifiedAt"],
        "start": {"timestamp": activity["start"]["timestamp"]},
        "end": {"timestamp": activity["end"]["timestamp"]},
        "jobId": activity["jobId"] if activity["kind"] == "shift" else "",
        "manualBreakId": activity["manualBreakId"],
        "notes": activity["notes"],
        **changes,
    }
    req = json_format.ParseDict(body, timeclock_pb2.UpdateTimeActivityRequest())
    out = json_format.MessageToDict(
        c(c.timeclock.UpdateTimeActivity, req), always_print_fields_with_no_presence=True
    )
    return dict(out["data"]["timeActivity"])


def delete(c: Client, tc: int, activity: dict[str, Any]) -> dict[str, Any]:
    req = timeclock_pb2.DeleteTimeActivityRequest(
        time_clock_id=tc, activity_id=activity["id"], modified_at=int(activity["modifiedAt"])
    )
    out = json_format.MessageToDict(
        c(c.timeclock.DeleteTimeActivity, req), always_print_fields_with_no_presence=True
    )
    return dict(out["data"]["timeActivity"])


def statuses(c: Client, tc: int, *users: int) -> list[dict[str, Any]]:
    req = timeclock_pb2.GetUserStatusesRequest(time_clock_id=tc, user_ids=users)
    out = json_format.MessageToDict(
        c(c.timeclock.GetUserStatuses, req), always_print_fields_with_no_presence=True
    )
    return list(out["data"]["statuses"])


def punch(c: Client, method: str, tc: int, **body: Any) -> Any:
    req_type = {
        "ClockIn": timeclock_pb2.ClockInRequest,
        "ClockOut": timeclock_pb2.ClockOutRequest,
        "StartManualBreak": timeclock_pb2.StartManualBreakRequest,
        "EndManualBreak": timeclock_pb2.EndManualBreakRequest,
    }[method]
    req = json_format.ParseDict({"timeClockId": tc, "userId": USER, **body}, req_type())
    return c(getattr(c.timeclock, method), req)


def ints(activities: list[dict[str, Any]], end: str = "start") -> list[int]:
    return [int(a[end]["timestamp"]) for a in activities]


# --- creating ------------------------------------------------------------------------------


def test_completed_shifts_and_breaks_are_stored_and_listed(c: Client) -> None:
    tc = clock(c)
    day = days_ago(3)
    made = create(
        c,
        tc,
        {
            "userId": USER,
            "shifts": [
                shift(day, day + 4 * H, jobId="job-123", notes="opening"),
                shift(day + 5 * H, day + 8 * H, jobId="job-456"),
            ],
            # Starts as the first shift ends: a switch from it, on its job.
            "manualBreaks": [brk(day + 4 * H, day + 5 * H, LUNCH)],
        },
    )
    assert [a["kind"] for a in made] == ["shift", "shift", "manualBreak"]
    first, second, lunch = made
    assert first["start"]["source"] == {"type": "timeActivity"}
    assert first["end"]["source"] == {"type": "timeActivity"}
    assert first["start"]["timezone"] == "America/New_York"
    assert first["notes"] == "opening" and not first["isOpen"]
    assert lunch["jobId"] == "job-123" and lunch["isSwitchFromShift"]
    assert not second["isSwitchFromShift"]
    listed = listing(c, tc, day - H, day + 24 * H)
    assert [a["id"] for a in listed["timeActivities"]] == [first["id"], lunch["id"], second["id"]]
    assert listed["nextPageToken"] == ""
    assert listed["timeActivities"][0] == first


def test_a_break_after_a_stored_shift_is_attributed_to_it(c: Client) -> None:
    tc = clock(c)
    day = days_ago(2)
    (stored,) = create(c, tc, {"userId": USER, "shifts": [shift(day, day + H, jobId="job-456")]})
    (rest,) = create(c, tc, {"userId": USER, "manualBreaks": [brk(day + H, day + 2 * H)]})
    assert rest["jobId"] == "job-456" and rest["isSwitchFromShift"]
    (later,) = create(c, tc, {"userId": USER, "manualBreaks": [brk(day + 3 * H, day + 4 * H)]})
    assert later["jobId"] == "" and not later["isSwitchFromShift"]
    assert stored["id"] != rest["id"]


def test_every_problem_of_every_activity_is_named_by_its_path(c: Client) -> None:
    tc = clock(c, job_enforcement=True)
    day = days_ago(2)
    future = int(time.time()) + H
    _, violations = expect_error(
        lambda: create(
            c,
            tc,
            {"userId": 42, "shifts": [shift(day, day + H, jobId="job-123")]},
            {
                "userId": USER,
                "shifts": [
                    shift(day + H, day, jobId="job-123"),
                    shift(day, day + 25 * H, jobId="job-123"),
                    shift(day, day + H),
                    shift(day, day + H, jobId="nope"),
                    shift(day + 2 * H, future, jobId="job-123"),
                    {
                        "start": point(day, timezone="Mars/Olympus"),
                        "end": point(day + H),
                        "jobId": "job-123",
                    },
                    {
                        "start": point(day, locationData={"address": "x", "latitude": 91}),
                        "end": point(day + H),
                        "jobId": "job-123",
                    },
                ],
            },
        ),
        PRECONDITION,
        "USER_NOT_ASSIGNED",
    )
    found = dict(violations)
    assert found == {
        "time_activities[0].user_id": "USER_NOT_ASSIGNED",
        "time_activities[1].shifts[0].end.timestamp": "INVALID_TIME_RANGE",
        "time_activities[1].shifts[1].end.timestamp": "SHIFT_TOO_LONG",
        "time_activities[1].shifts[2].job_id": "JOB_REQUIRED",
        "time_activities[1].shifts[3].job_id": "JOB_NOT_FOUND",
        "time_activities[1].shifts[4].end.timestamp": "INVALID_TIMESTAMP_FUTURE",
        "time_activities[1].shifts[5].start.timezone": "INVALID_TIMEZONE",
        "time_activities[1].shifts[6].start.location_data": "INVALID_LOCATION",
    }, violations
    # (gRPC trailers carry 8 violations at most; HTTP answers carry them all.)
    _, violations = expect_error(
        lambda: create(c, tc, {"userId": USER, "manualBreaks": [brk(day, day + H, "unknown")]}),
        grpc.StatusCode.NOT_FOUND,
        "MANUAL_BREAK_NOT_FOUND",
    )
    assert violations == [
        ("time_activities[0].manual_breaks[0].manual_break_id", "MANUAL_BREAK_NOT_FOUND")
    ]
    assert every(c, tc, day - 24 * H, day + 24 * H) == []  # all or none


def test_batch_limits(c: Client) -> None:
    tc = clock(c)
    expect_error(lambda: create(c, tc), BAD, "INVALID_ARGUMENT")
    day = days_ago(40)
    many = [shift(day + i * 60, day + i * 60 + 30) for i in range(1001)]
    expect_error(lambda: create(c, tc, {"userId": USER, "shifts": many}), BAD, "BATCH_TOO_LARGE")
    made = create(c, tc, {"userId": USER, "shifts": many[:1000]})
    assert len(made) == 1000
    assert len(every(c, tc, day, day + 24 * H, pageSize=300)) == 1000


def test_a_punch_older_than_12_hours_goes_to_time_activities(c: Client) -> None:
    tc = clock(c)
    start = int(time.time()) - 20 * H
    expect_error(lambda: punch(c, "ClockIn", tc, timestamp=start), BAD, "INVALID_TIMESTAMP_TOO_OLD")
    (done,) = create(c, tc, {"userId": USER, "shifts": [shift(start, start + 8 * H)]})
    # The live lifecycle goes on after it.
    punch(c, "ClockIn", tc)
    assert [s["state"] for s in statuses(c, tc, USER)] == ["ON_SHIFT"]
    assert done["end"]["timestamp"] == str(start + 8 * H)


# --- overlaps ------------------------------------------------------------------------------


def test_overlaps_within_a_request_are_refused_and_named(c: Client) -> None:
    tc = clock(c)
    day = days_ago(5)
    err, violations = expect_error(
        lambda: create(
            c,
            tc,
            {"userId": USER, "shifts": [shift(day, day + 2 * H), shift(day + H, day + 3 * H)]},
        ),
        PRECONDITION,
        "OVERLAPS_COMPLETED_ACTIVITY",
    )
    assert violations == [("time_activities[0].shifts[1]", "OVERLAPS_COMPLETED_ACTIVITY")]
    assert "time_activities[0].shifts[0]" in (err.details() or "")
    # Half-open: one may start in the second the other ends; other users are apart.
    made = create(
        c,
        tc,
        {
            "userId": USER,
            "shifts": [shift(day, day + H)],
            "manualBreaks": [brk(day + H, day + 2 * H)],
        },
        {"userId": OTHER, "shifts": [shift(day, day + 2 * H)]},
    )
    assert len(made) == 3


def test_overlaps_with_stored_and_open_activities_are_refused(c: Client) -> None:
    tc = clock(c)
    day = days_ago(4)
    (stored,) = create(c, tc, {"userId": USER, "shifts": [shift(day, day + 4 * H)]})
    err, violations = expect_error(
        lambda: create(c, tc, {"userId": USER, "manualBreaks": [brk(day + 3 * H, day + 5 * H)]}),
        PRECONDITION,
        "OVERLAPS_COMPLETED_ACTIVITY",
    )
    assert violations == [("time_activities[0].manual_breaks[0]", "OVERLAPS_COMPLETED_ACTIVITY")]
    assert stored["id"] in (err.details() or "")
    # A live shift opened an hour ago runs on: nothing may be recorded after its start.
    opened_at = int(time.time()) - H
    shift_id = punch(c, "ClockIn", tc, timestamp=opened_at).data.shift.id
    err, _ = expect_error(
        lambda: create(c, tc, {"userId": USER, "shifts": [shift(opened_at - 60, opened_at + 60)]}),
        PRECONDITION,
        "OVERLAPS_COMPLETED_ACTIVITY",
    )
    assert shift_id in (err.details() or "")
    create(c, tc, {"userId": USER, "shifts": [shift(opened_at - 2 * H, opened_at)]})
    # And a completed activity refuses a live punch that would start inside it.
    expect_error(
        lambda: punch(c, "ClockOut", tc, timestamp=opened_at - 30),
        BAD,
        "INVALID_TIMESTAMP_BEFORE_CLOCK_IN",
    )


def test_locked_and_approved_days_are_not_touched(c: Client) -> None:
    tc = clock(c)
    day = days_ago(6, hour=20)
    next_day = datetime.fromtimestamp(day + 24 * H, NY).date().isoformat()
    c(
        c.admin.SetDayStatus,
        admin_pb2.SetDayStatusRequest(
            time_clock_id=tc, user_id=USER, dates=[next_day], status=admin_pb2.LOCKED
        ),
    )
    # 20:00 to 02:00 runs into the locked day.
    _, violations = expect_error(
        lambda: create(c, tc, {"userId": USER, "shifts": [shift(day, day + 6 * H)]}),
        PRECONDITION,
        "HAS_LOCKED_DAYS",
    )
    assert violations == [("time_activities[0].shifts[0]", "HAS_LOCKED_DAYS")]
    (ok,) = create(c, tc, {"userId": USER, "shifts": [shift(day, day + 3 * H)]})
    (other,) = create(c, tc, {"userId": OTHER, "shifts": [shift(day, day + 6 * H)]})
    # Moving into the locked day is a change of it.
    expect_error(
        lambda: update(c, tc, ok, end={"timestamp": day + 5 * H}), PRECONDITION, "HAS_LOCKED_DAYS"
    )
    assert other["userId"] == str(OTHER)


def test_a_night_shift_across_the_dst_change_is_split_at_local_midnight(c: Client) -> None:
    tc = clock(c)
    # New York springs forward at 02:00 on 8 March 2026: that day has 23 hours.
    start, end = local(2026, 3, 7, 22), local(2026, 3, 8, 6)
    assert end - start == 7 * H
    create(c, tc, {"userId": USER, "shifts": [shift(start, end)]})
    out = listing(c, tc, local(2026, 3, 7), local(2026, 3, 9), includeTotals=True)
    (totals,) = out["totals"]
    assert totals["workedSeconds"] == str(7 * H)
    assert [(d["date"], d["workedSeconds"]) for d in totals["days"]] == [
        ("2026-03-07", str(2 * H)),
        ("2026-03-08", str(5 * H)),
    ]
    c(
        c.admin.SetDayStatus,
        admin_pb2.SetDayStatusRequest(
            time_clock_id=tc, user_id=USER, dates=["2026-03-08"], status=admin_pb2.APPROVED
        ),
    )
    expect_error(
        lambda: create(c, tc, {"userId": USER, "manualBreaks": [brk(end, end + H)]}),
        PRECONDITION,
        "HAS_LOCKED_DAYS",
    )


def test_scheduler_shifts_must_exist_and_admit_the_user(c: Client) -> None:
    from tests.e2e.test_punches_api import scheduled_shift_of

    tc = clock(c)
    day = days_ago(2)
    planned = scheduled_shift_of(c, USER)
    (done,) = create(
        c, tc, {"userId": USER, "shifts": [shift(day, day + H, schedulerShiftId=planned)]}
    )
    assert done["schedulerShiftId"] == planned
    _, violations = expect_error(
        lambda: create(
            c, tc, {"userId": USER, "shifts": [shift(day + H, day + 2 * H, schedulerShiftId="x")]}
        ),
        grpc.StatusCode.NOT_FOUND,
        "SCHEDULER_SHIFT_NOT_FOUND",
    )
    assert violations == [
        ("time_activities[0].shifts[0].scheduler_shift_id", "SCHEDULER_SHIFT_NOT_FOUND")
    ]


def test_an_idempotency_key_replays_the_first_answer(c: Client) -> None:
    tc = clock(c)
    day = days_ago(8)
    body = {"userId": USER, "shifts": [shift(day, day + H)]}
    first = create(c, tc, body, key=f"flush-{tc}")
    again = create(c, tc, body, key=f"flush-{tc}")
    assert again == first
    assert len(every(c, tc, day - H, day + 2 * H)) == 1
    other = {"userId": USER, "shifts": [shift(day + 2 * H, day + 3 * H)]}
    expect_error(lambda: create(c, tc, other, key=f"flush-{tc}"), BAD, "IDEMPOTENCY_KEY_REUSED")


# --- corrections ---------------------------------------------------------------------------


def test_corrections_check_the_version_read_and_are_audited(c: Client) -> None:
    tc = clock(c)
    day = days_ago(3)
    first, second = create(
        c,
        tc,
        {"userId": USER, "shifts": [shift(day, day + 2 * H), shift(day + 3 * H, day + 4 * H)]},
    )
    moved = update(c, tc, first, end={"timestamp": day + 150 * 60}, notes="left late")
    assert moved["end"]["timestamp"] == str(day + 150 * 60) and moved["notes"] == "left late"
    assert int(moved["modifiedAt"]) > int(first["modifiedAt"])
    # The version read first is stale now, even within the same second.
    expect_error(
        lambda: update(c, tc, first, notes="again"), grpc.StatusCode.ABORTED, "STALE_MODIFIED_AT"
    )
    expect_error(lambda: delete(c, tc, first), grpc.StatusCode.ABORTED, "STALE_MODIFIED_AT")
    expect_error(
        lambda: update(c, tc, moved, end={"timestamp": day + 3 * H + 1}),
        PRECONDITION,
        "OVERLAPS_COMPLETED_ACTIVITY",
    )
    gone = delete(c, tc, second)
    assert gone["id"] == second["id"]
    assert [a["id"] for a in every(c, tc, day - H, day + 24 * H)] == [first["id"]]
    expect_error(
        lambda: delete(c, tc, second), grpc.StatusCode.NOT_FOUND, "TIME_ACTIVITY_NOT_FOUND"
    )
    log = [e for e in events_of(c, time_clock_ids=[tc]) if e.type.startswith("timeActivity")]
    assert [e.type for e in log] == [
        "timeActivityCreated",
        "timeActivityCreated",
        "timeActivityUpdated",
        "timeActivityDeleted",
    ]
    updated = json_format.MessageToDict(log[2].payload)
    assert updated["before"]["end"]["timestamp"] == day + 2 * H
    assert updated["after"]["end"]["timestamp"] == day + 150 * 60
    deleted = json_format.MessageToDict(log[3].payload)
    assert deleted["after"] is None and deleted["before"]["id"] == second["id"]


def test_open_activities_are_corrected_by_punches_only(c: Client) -> None:
    tc = clock(c)
    punch(c, "ClockIn", tc)
    (open_shift,) = listing(c, tc, int(time.time()) - H, int(time.time()) + H)["timeActivities"]
    assert open_shift["isOpen"] and "end" not in open_shift
    req = timeclock_pb2.DeleteTimeActivityRequest(
        time_clock_id=tc, activity_id=open_shift["id"], modified_at=int(open_shift["modifiedAt"])
    )
    expect_error(lambda: c(c.timeclock.DeleteTimeActivity, req), PRECONDITION, "TIME_ACTIVITY_OPEN")


# --- listing and statuses -----------------------------------------------------------------


def test_listing_pages_filters_and_totals(c: Client) -> None:
    tc = clock(c)
    day = days_ago(10)
    mine = [
        shift(day + i * 2 * H, day + i * 2 * H + H, jobId="job-construction-001-a")
        for i in range(5)
    ]
    theirs = [shift(day + i * 2 * H, day + i * 2 * H + H, jobId="job-123") for i in range(5)]
    rests = [brk(day + i * 2 * H + H, day + i * 2 * H + H + 600) for i in range(5)]
    lunches = [brk(day + i * 2 * H + H + 600, day + i * 2 * H + H + 900, LUNCH) for i in range(5)]
    create(
        c,
        tc,
        {"userId": USER, "shifts": mine, "manualBreaks": rests + lunches},
        {"userId": OTHER, "shifts": theirs},
    )
    window = (day - H, day + 24 * H)
    pages = []
    token = ""
    while True:
        page = listing(c, tc, *window, pageSize=4, pageToken=token)
        pages.append(page["timeActivities"])
        token = page["nextPageToken"]
        if not token:
            break
    assert [len(p) for p in pages] == [4, 4, 4, 4, 4]
    flat = [a for p in pages for a in p]
    assert len({a["id"] for a in flat}) == 20
    assert ints(flat) == sorted(ints(flat))
    # A token belongs to its query.
    token = listing(c, tc, *window, pageSize=4)["nextPageToken"]
    expect_error(
        lambda: listing(c, tc, *window, pageSize=4, pageToken=token, userIds=[USER]),
        BAD,
        "INVALID_ARGUMENT",
    )
    expect_error(lambda: listing(c, tc, *window, pageToken="garbage"), BAD, "INVALID_ARGUMENT")
    expect_error(lambda: listing(c, tc, day, day + 93 * 24 * H), BAD, "INVALID_ARGUMENT")
    expect_error(lambda: listing(c, tc, day, day), BAD, "INVALID_ARGUMENT")
    # Filters: users; jobs with their sub-jobs (a break counts with its shift's job).
    assert {a["userId"] for a in every(c, tc, *window, userIds=[OTHER])} == {str(OTHER)}
    by_parent = every(c, tc, *window, jobIds=["job-construction-001"])
    assert len(by_parent) == 10  # the shifts on the sub-job and the rests after them
    # Totals cover the whole window on the first page, whatever its size.
    first = listing(c, tc, *window, pageSize=1, includeTotals=True)
    totals = {t["userId"]: t for t in first["totals"]}
    assert totals[str(USER)]["workedSeconds"] == str(5 * H)
    assert totals[str(USER)]["paidBreakSeconds"] == str(5 * 600)
    assert totals[str(USER)]["unpaidBreakSeconds"] == str(5 * 300)
    assert totals[str(OTHER)]["workedSeconds"] == str(5 * H)
    # A window cuts the activities it overlaps.
    part = listing(c, tc, day + 30 * 60, day + H, includeTotals=True)
    assert [t["workedSeconds"] for t in part["totals"]] == [str(30 * 60), str(30 * 60)]


def test_user_statuses_show_who_is_on_the_clock(c: Client) -> None:
    tc = clock(c, user_ids=[USER, OTHER, 9170359])
    before = int(time.time())
    punch(c, "ClockIn", tc, jobId="job-456")
    punch(c, "ClockIn", tc, userId=OTHER)
    punch(c, "StartManualBreak", tc, userId=OTHER, manualBreakId=LUNCH)
    board = {int(s["userId"]): s for s in statuses(c, tc)}
    assert [board[u]["state"] for u in (USER, OTHER, 9170359)] == ["ON_SHIFT", "ON_BREAK", "IDLE"]
    on_shift = board[USER]["activity"]
    assert on_shift["jobId"] == "job-456" and int(on_shift["start"]["timestamp"]) >= before
    on_break = board[OTHER]
    assert on_break["manualBreak"]["id"] == LUNCH and on_break["activity"]["isSwitchFromShift"]
    started = int(on_break["activity"]["start"]["timestamp"])
    assert int(on_break["endableAt"]) == started + 1800
    assert "activity" not in board[9170359] or not board[9170359]["activity"]["id"]
    assert [s["state"] for s in statuses(c, tc, OTHER)] == ["ON_BREAK"]
    expect_error(lambda: statuses(c, tc, 42), PRECONDITION, "USER_NOT_ASSIGNED")
    expect_error(
        lambda: statuses(c, 123456789, USER), grpc.StatusCode.NOT_FOUND, "TIME_CLOCK_NOT_FOUND"
    )


# --- concurrency ---------------------------------------------------------------------------


def test_racing_punches_and_time_activities_never_overlap(c: Client) -> None:
    """Punches and imports for the same users from many threads: whatever
    wins, the stored activities of each user never overlap (the database decides)."""
    tc = clock(c)
    now = int(time.time())
    base = now - 6 * H
    seq = itertools.count()
    errors: list[str] = []

    def importer() -> None:
        for _ in range(12):
            k = next(seq)
            start = base + (k % 40) * 300
            try:
                create(c, tc, {"userId": USER, "shifts": [shift(start, start + 900)]})
            except grpc.RpcError as err:
                if err.code() not in (PRECONDITION, grpc.StatusCode.ABORTED):
                    errors.append(f"{err.code()} {err.details()}")

    def puncher() -> None:
        for i in range(12):
            k = next(seq)
            ts = base + (k % 40) * 300 + 100
            method = "ClockIn" if i % 2 == 0 else "ClockOut"
            try:
                punch(c, method, tc, timestamp=ts)
            except grpc.RpcError as err:
                if err.code() not in (PRECONDITION, BAD, grpc.StatusCode.ABORTED):
                    errors.append(f"{err.code()} {err.details()}")

    threads = [threading.Thread(target=importer) for _ in range(4)]
    threads += [threading.Thread(target=puncher) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    stored = every(c, tc, base - 24 * H, now + H, userIds=[USER])
    assert stored, "something was stored"
    spans = sorted(
        (int(a["start"]["timestamp"]), int(a["end"]["timestamp"]) if "end" in a else 2**62)
        for a in stored
    )
    for (s1, e1), (s2, _) in itertools.pairwise(spans):
        assert e1 <= s2 or s1 == e1, f"overlap: [{s1}, {e1}) and [{s2}, ...)"


def test_breaks_follow_their_shift_through_corrections(c: Client) -> None:
    """A break is attributed to the shift it starts as it ends; correcting or
    deleting that shift keeps the rule true, and each change is audited."""
    tc = clock(c)
    day = days_ago(7)
    first, rest = create(
        c,
        tc,
        {
            "userId": USER,
            "shifts": [shift(day, day + 2 * H, jobId="job-123")],
            "manualBreaks": [brk(day + 2 * H, day + 2 * H + 900)],
        },
    )
    assert rest["jobId"] == "job-123" and rest["isSwitchFromShift"]

    def the_break() -> dict[str, Any]:
        (found,) = [a for a in every(c, tc, day - H, day + 24 * H) if a["id"] == rest["id"]]
        return found

    moved = update(c, tc, first, end={"timestamp": day + H})  # now ends an hour before it
    assert (the_break()["jobId"], the_break()["isSwitchFromShift"]) == ("", False)
    back = update(c, tc, moved, end={"timestamp": day + 2 * H}, jobId="job-456")
    assert (the_break()["jobId"], the_break()["isSwitchFromShift"]) == ("job-456", True)
    delete(c, tc, back)
    assert (the_break()["jobId"], the_break()["isSwitchFromShift"]) == ("", False)
    log = [e for e in events_of(c, time_clock_ids=[tc]) if e.type == "timeActivityUpdated"]
    touched = [json_format.MessageToDict(e.payload)["activityId"] for e in log]
    assert touched == [first["id"], rest["id"], first["id"], rest["id"], rest["id"]]
