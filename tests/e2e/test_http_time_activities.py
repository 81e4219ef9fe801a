"""Time activities and user statuses over HTTP: the spec's path, camelCase
bodies, the HTTP statuses of the shared error table, and an offline device's
whole flush (live punches for the recent part, time activities for the rest)."""

from __future__ import annotations

import time
from typing import Any

import httpx

from geopunch.v1 import admin_pb2
from tests.conftest import Client, make_time_clock

USER = 9170357
H = 3600


def _clock(client: Client) -> int:
    tc = make_time_clock(
        client,
        user_ids=[USER],
        manual_breaks_enabled=True,
        manual_break_types=[
            admin_pb2.ManualBreakType(id="lunch", name="Lunch", is_paid=False),
            admin_pb2.ManualBreakType(id="rest", name="Rest", is_paid=True),
        ],
    )
    return int(tc.id)


def _path(tc: int, tail: str = "time-activities") -> str:
    return f"/time-clock/v1/time-clocks/{tc}/{tail}"


def _span(start: int, end: int, **kw: Any) -> dict[str, Any]:
    return {"start": {"timestamp": start}, "end": {"timestamp": end}, **kw}


def test_time_activities_round_trip_over_http(http: httpx.Client, client: Client) -> None:
    tc = _clock(client)
    day = int(time.time()) - 3 * 24 * H
    r = http.post(
        _path(tc),
        json={
            "timeActivities": [
                {
                    "userId": USER,
                    "shifts": [_span(day, day + 4 * H, jobId="job-123", notes="import")],
                    "manualBreaks": [_span(day + 4 * H, day + 5 * H, manualBreakId="rest")],
                }
            ]
        },
    )
    assert r.status_code == 200, r.text
    made = r.json()["data"]["timeActivities"]
    shift, rest = made
    assert shift["kind"] == "shift" and rest["kind"] == "manualBreak"
    assert shift["userId"] == USER and isinstance(shift["createdAt"], int)
    assert shift["start"]["source"] == {"type": "timeActivity"}
    assert shift["end"]["timezone"] == "America/New_York"
    assert rest["jobId"] == "job-123" and rest["isSwitchFromShift"] is True
    assert shift["manualBreakId"] is None and shift["notes"] == "import"

    listed = http.get(
        _path(tc), params={"startTime": day - H, "endTime": day + 24 * H, "includeTotals": "true"}
    ).json()["data"]
    assert [a["id"] for a in listed["timeActivities"]] == [shift["id"], rest["id"]]
    assert listed["nextPageToken"] is None
    (totals,) = listed["totals"]
    assert (totals["workedSeconds"], totals["paidBreakSeconds"]) == (4 * H, H)
    assert sum(d["workedSeconds"] for d in totals["days"]) == 4 * H

    paged = http.get(
        _path(tc), params={"startTime": day - H, "endTime": day + 24 * H, "pageSize": 1}
    ).json()["data"]
    assert len(paged["timeActivities"]) == 1 and paged["nextPageToken"]
    assert paged["totals"] is None

    moved = http.put(
        f"{_path(tc)}/{shift['id']}",
        json={**_span(day, day + 3 * H, jobId="job-456"), "modifiedAt": shift["modifiedAt"]},
    )
    assert moved.status_code == 200, moved.text
    assert moved.json()["data"]["timeActivity"]["jobId"] == "job-456"
    stale = http.put(
        f"{_path(tc)}/{shift['id']}",
        json={**_span(day, day + 2 * H), "modifiedAt": shift["modifiedAt"]},
    )
    assert (stale.status_code, stale.json()["code"]) == (409, "STALE_MODIFIED_AT")
    # The shift now ends an hour before the break: the break was changed too
    # (no longer a switch from it), so the version read first is stale.
    stale = http.delete(f"{_path(tc)}/{rest['id']}", params={"modifiedAt": rest["modifiedAt"]})
    assert (stale.status_code, stale.json()["code"]) == (409, "STALE_MODIFIED_AT")
    listed = http.get(_path(tc), params={"startTime": day - H, "endTime": day + 24 * H}).json()
    (now_rest,) = [a for a in listed["data"]["timeActivities"] if a["id"] == rest["id"]]
    assert (now_rest["jobId"], now_rest["isSwitchFromShift"]) == (None, False)
    gone = http.delete(f"{_path(tc)}/{rest['id']}", params={"modifiedAt": now_rest["modifiedAt"]})
    assert gone.status_code == 200 and gone.json()["data"]["timeActivity"]["id"] == rest["id"]
    again = http.delete(f"{_path(tc)}/{rest['id']}", params={"modifiedAt": now_rest["modifiedAt"]})
    assert (again.status_code, again.json()["code"]) == (404, "TIME_ACTIVITY_NOT_FOUND")


def test_problems_are_named_in_the_bodys_own_spelling(http: httpx.Client, client: Client) -> None:
    tc = _clock(client)
    day = int(time.time()) - 2 * 24 * H
    r = http.post(
        _path(tc),
        json={
            "timeActivities": [
                {
                    "userId": USER,
                    "shifts": [_span(day + H, day), _span(day, day + H, jobId="nope")],
                    "manualBreaks": [_span(day, day + H, manualBreakId="rest")],
                }
            ]
        },
    )
    assert r.status_code == 400, r.text
    body = r.json()
    assert {(e["field"], e["code"]) for e in body["errors"]} == {
        ("timeActivities[0].shifts[0].end.timestamp", "INVALID_TIME_RANGE"),
        ("timeActivities[0].shifts[1].jobId", "JOB_NOT_FOUND"),
    }
    assert body["detail"].startswith("2 problems")
    # A string where an integer belongs is the body's problem, not a rule's.
    r = http.post(_path(tc), json={"timeActivities": [{"userId": "9170357"}]})
    assert (r.status_code, r.json()["code"]) == (400, "INVALID_ARGUMENT")


def test_an_offline_device_flushes_a_queue_older_than_12_hours(
    http: httpx.Client, client: Client
) -> None:
    """The worked example of docs/http.md: yesterday's shift as a time activity,
    today's punches live, each with its idempotency key; a second flush changes nothing."""
    tc = _clock(client)
    now = int(time.time())
    queue = [
        ("yesterday", now - 30 * H, now - 22 * H),  # older than 12 hours
    ]

    def flush() -> list[int]:
        codes = []
        for key, start, end in queue:
            r = http.post(
                _path(tc),
                json={"timeActivities": [{"userId": USER, "shifts": [_span(start, end)]}]},
                headers={"Idempotency-Key": f"dev-7-{tc}-{key}"},
            )
            codes.append(r.status_code)
        for key, kind, ts in (("in", "clock-in", now - 3 * H), ("out", "clock-out", now - H)):
            r = http.post(
                _path(tc, kind),
                json={"userId": USER, "timestamp": ts},
                headers={"Idempotency-Key": f"dev-7-{tc}-{key}"},
            )
            codes.append(r.status_code)
        return codes

    assert flush() == [200, 200, 200]
    assert flush() == [200, 200, 200]  # replayed, nothing added
    listed = http.get(_path(tc), params={"startTime": now - 48 * H, "endTime": now}).json()
    spans = [
        (a["start"]["timestamp"], a["end"]["timestamp"]) for a in listed["data"]["timeActivities"]
    ]
    assert spans == [(now - 30 * H, now - 22 * H), (now - 3 * H, now - H)]


def test_user_statuses_over_http(http: httpx.Client, client: Client) -> None:
    tc = _clock(client)
    assert http.post(_path(tc, "clock-in"), json={"userId": USER}).status_code == 200
    r = http.post(_path(tc, "manual-breaks/lunch/clock-in"), json={"userId": USER})
    assert r.status_code == 200, r.text
    (status,) = http.get(_path(tc, "user-statuses")).json()["data"]["statuses"]
    assert status["state"] == "ON_BREAK" and status["userId"] == USER
    assert status["manualBreak"]["id"] == "lunch" and status["endableAt"] is None
    assert status["activity"]["isOpen"] is True
    assert status["activity"]["end"] is None
    r = http.get(_path(tc, "user-statuses"), params={"userIds": [42]})
    assert (r.status_code, r.json()["code"]) == (400, "USER_NOT_ASSIGNED")
