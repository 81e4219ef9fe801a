"""Every error code of the spec's tables, brought about over HTTP: the
documented status, ``detail`` in the spec's form and the reason in ``code``.

The tables are read from ../shared/spec at test time, so a code the spec
lists and this file cannot bring about fails here instead of going unseen.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from geopunch.domain.errors import ErrorCode
from tests.conftest import next_time_clock_id

SPEC = Path(__file__).resolve().parents[3] / "shared" / "spec"
USER, STRANGER = 7770001, 7770002
HERE = {"address": "1 Main St", "latitude": 40.7128, "longitude": -74.0060}
FAR = {"address": "far", "latitude": 40.8, "longitude": -74.0060}

pytestmark = pytest.mark.skipif(not SPEC.is_dir(), reason=f"the spec is not at {SPEC}")


def spec_table(document: str) -> dict[str, int]:
    """Reason -> HTTP status, from the document's error table; rows without a
    reason ("—") are named by what they describe."""
    text = (SPEC / document).read_text()
    table = text[text.rindex("Error Responses") :]
    found: dict[str, int] = {}
    # Rows are "400 | CODE | when" or, run together, "400CODEWhen"; codes are
    # told apart from the text after them by the reasons geopunch knows (a row
    # with an unknown one is not matched, and the row counts below fail).
    codes = "|".join(sorted((c.value for c in ErrorCode), key=len, reverse=True))
    row = re.compile(rf"^(\d{{3}})\s*\|?\s*({codes}|—)\s*\|?\s*(.*)$", re.M)
    for status, code, when in row.findall(table):
        if code == "—":
            code = "USER_NOT_ASSIGNED" if "not assigned" in when else "ALREADY_CLOCKED_IN"
        found[code] = int(status)
    return found


def _clock(http: httpx.Client, **fields: Any) -> int:
    r = http.post(
        "/geopunch/v1/time-clocks",
        json={
            "name": "Errors",
            "timezone": "UTC",
            "userIds": [USER],
            "jobs": [{"id": "job-1"}],
            "manualBreaksEnabled": True,
            "manualBreakTypes": [
                {"id": "rest", "name": "Rest"},
                {"id": "meal", "name": "Meal", "isMandatory": True, "minDurationSeconds": 1800},
            ],
            **fields,
        },
    )
    assert r.status_code == 200, r.text
    return int(r.json()["data"]["id"])


def _fenced(http: httpx.Client, policy: str) -> int:
    tc = _clock(http, geofencePolicy=policy)
    fence = {
        "name": "HQ",
        "location": {"address": "1 Main St", "latitude": "40.7128", "longitude": "-74.0060"},
    }
    r = http.post(f"/time-clock/v1/time-clocks/{tc}/geofences", json={"geofences": [fence]})
    assert r.status_code == 200, r.text
    return tc


def _go(http: httpx.Client, tc: int, path: str, **body: Any) -> httpx.Response:
    return http.post(f"/time-clock/v1/time-clocks/{tc}/{path}", json={"userId": USER, **body})


def _first(http: httpx.Client, tc: int, path: str, **body: Any) -> None:
    r = _go(http, tc, path, **body)
    assert r.status_code == 200, r.text


def _lock_today(http: httpx.Client, tc: int) -> None:
    today = datetime.now(UTC).date().isoformat()
    r = http.post(
        f"/geopunch/v1/time-clocks/{tc}/users/{USER}/days",
        json={"dates": [today], "status": "LOCKED"},
    )
    assert r.status_code == 200, r.text


Scenario = Callable[[httpx.Client], httpx.Response]


def now() -> int:
    return int(time.time())


def _clocking(http: httpx.Client, code: str) -> httpx.Response:
    tc = _clock(http)
    if code == "INVALID_TIMESTAMP_FUTURE":
        return _go(http, tc, "clock-in", timestamp=now() + 3600)
    if code == "INVALID_TIMESTAMP_TOO_OLD":
        return _go(http, tc, "clock-in", timestamp=now() - 13 * 3600)
    if code == "INVALID_TIMESTAMP_BEFORE_CLOCK_IN":
        _first(http, tc, "clock-in", timestamp=now() - 600)
        return _go(http, tc, "clock-out", timestamp=now() - 900)
    if code == "HAS_LOCKED_DAYS":
        _lock_today(http, tc)
        return _go(http, tc, "clock-in")
    if code == "USER_NOT_ASSIGNED":
        return http.post(f"/time-clock/v1/time-clocks/{tc}/clock-in", json={"userId": STRANGER})
    if code == "ALREADY_CLOCKED_IN":
        _first(http, tc, "clock-in")
        return _go(http, tc, "clock-in")
    if code == "NO_OPEN_SHIFT":
        return _go(http, tc, "clock-out")
    if code == "JOB_REQUIRED":
        return _go(http, _clock(http, jobEnforcement=True), "clock-in")
    if code == "OPEN_BREAK":
        _first(http, tc, "manual-breaks/rest/clock-in")
        return _go(http, tc, "clock-in")
    if code == "OUTSIDE_GEOFENCE":
        return _go(http, _fenced(http, "REQUIRE_INSIDE"), "clock-in", locationData=FAR)
    raise AssertionError(f"no scenario for {code}")


def _breaks(http: httpx.Client, code: str) -> httpx.Response:
    tc = _clock(http)
    start = "manual-breaks/rest/clock-in"
    if code == "MANUAL_BREAKS_DISABLED":
        return _go(http, _clock(http, manualBreaksEnabled=False, manualBreakTypes=[]), start)
    if code == "MANUAL_BREAK_NOT_FOUND":
        return _go(http, tc, "manual-breaks/nap/clock-in")
    if code == "ALREADY_ON_BREAK":
        _first(http, tc, start)
        return _go(http, tc, start)
    if code == "NO_OPEN_BREAK":
        return _go(http, tc, "manual-breaks/clock-out")
    if code == "MANDATORY_BREAK_TOO_SHORT":
        _first(http, tc, "manual-breaks/meal/clock-in", timestamp=now() - 60)
        return _go(http, tc, "manual-breaks/clock-out")
    if code == "INVALID_TIMESTAMP_FUTURE":
        return _go(http, tc, start, timestamp=now() + 3600)
    if code == "INVALID_TIMESTAMP_TOO_OLD":
        return _go(http, tc, start, timestamp=now() - 13 * 3600)
    if code == "INVALID_TIMESTAMP_BEFORE_START":
        _first(http, tc, start, timestamp=now() - 600)
        return _go(http, tc, "manual-breaks/clock-out", timestamp=now() - 900)
    if code == "OUTSIDE_GEOFENCE":
        return _go(http, _fenced(http, "REQUIRE_INSIDE"), start, locationData=FAR)
    if code == "LOCATION_REQUIRED":
        return _go(http, _fenced(http, "REQUIRE_LOCATION"), start)
    if code == "USER_NOT_ASSIGNED":
        return http.post(f"/time-clock/v1/time-clocks/{tc}/{start}", json={"userId": STRANGER})
    if code == "HAS_LOCKED_DAYS":
        _lock_today(http, tc)
        return _go(http, tc, start)
    raise AssertionError(f"no scenario for {code}")


CASES = [
    ("time-clock-clocking.txt", c, s, _clocking)
    for c, s in (spec_table("time-clock-clocking.txt") if SPEC.is_dir() else {}).items()
] + [
    ("manual-breaks.txt", c, s, _breaks)
    for c, s in (spec_table("manual-breaks.txt") if SPEC.is_dir() else {}).items()
]


def test_the_tables_were_read() -> None:
    assert len(spec_table("time-clock-clocking.txt")) == 10
    assert len(spec_table("manual-breaks.txt")) == 12


@pytest.mark.parametrize(
    ("document", "code", "status", "scenario"), CASES, ids=lambda v: v if isinstance(v, str) else ""
)
def test_each_punch_error_of_the_spec(
    http: httpx.Client,
    document: str,
    code: str,
    status: int,
    scenario: Callable[[httpx.Client, str], httpx.Response],
) -> None:
    r = scenario(http, code)
    body = r.json()
    assert (r.status_code, body.get("code")) == (status, code), r.text
    assert isinstance(body["detail"], str) and body["detail"]
    assert body["requestId"] == r.headers["X-Request-ID"]


def test_geofence_errors_in_the_specs_forms(http: httpx.Client) -> None:
    tc = _clock(http, jobEnforcement=True)
    url = f"/time-clock/v1/time-clocks/{tc}/geofences"

    def fence(**kw: Any) -> dict[str, Any]:
        return {
            "name": "Site A",
            "location": {"address": "x", "latitude": "40.1", "longitude": "-74.1"},
            "jobIds": ["job-1"],
            **kw,
        }

    cases = [
        (
            fence(location={"address": "x", "latitude": "north", "longitude": "-74"}),
            "INVALID_COORDINATES",
        ),
        (fence(jobIds=["job-invalid"]), "JOBS_NOT_IN_TIME_CLOCK"),
        (fence(jobIds=[]), "JOB_IDS_REQUIRED"),
    ]
    for f, code in cases:
        r = http.post(url, json={"geofences": [f]})
        body = r.json()
        assert (r.status_code, body["code"]) == (400, code), r.text
        assert isinstance(body["detail"], list) and all(
            isinstance(d, str) for d in body["detail"]
        ), body
    r = http.get(f"{url}/fence-nope")
    assert (r.status_code, r.json()["code"]) == (404, "GEOFENCE_NOT_FOUND")
    assert isinstance(r.json()["detail"], str)
    r = http.delete(f"{url}/fence-nope")
    assert (r.status_code, r.json()["code"]) == (404, "GEOFENCE_NOT_FOUND")


def test_shift_errors_in_the_specs_forms(http: httpx.Client) -> None:
    s = http.post(
        "/geopunch/v1/schedulers", json={"name": "S", "timezone": "UTC", "userIds": [USER]}
    )
    assert s.status_code == 200, s.text
    url = f"/scheduler/v1/schedulers/{s.json()['data']['id']}/shifts"
    t = 1767945600

    def shift(**kw: Any) -> dict[str, Any]:
        return {"startTime": t, "endTime": t + 8 * 3600, "title": "S", **kw}

    cases = [
        (shift(title=None), "TITLE_OR_JOB_REQUIRED"),
        (shift(isPublished=True, assignedUserIds=[99999999]), "ASSIGNED_USERS_NOT_FOUND"),
        (shift(endTime=t + 25 * 3600), "SHIFT_TOO_LONG"),
        (
            shift(breaks=[{"name": "b", "type": "paid", "startTime": 0, "duration": 600}]),
            "BREAKS_EXCEED_SHIFT",
        ),
        (shift(startTime=t * 1000, endTime=t * 1000 + 3600_000), "TIMESTAMP_NOT_SECONDS"),
        (shift(openSpots=3), "OPEN_SPOTS_NOT_OPEN_SHIFT"),
        (shift(isOpenShift=True, openSpots=101), "OPEN_SPOTS_LIMIT"),
    ]
    for body_shift, code in cases:
        r = http.post(url, json=[shift(title="ok"), body_shift])
        body = r.json()
        assert (r.status_code, body["code"]) == (400, code), r.text
        assert set(body["detail"]) == {"shift-1"}, body
        assert all(isinstance(d, str) for d in body["detail"]["shift-1"])
        assert body["errors"][0]["field"].startswith("shifts[1]"), body
    r = http.post(
        f"/scheduler/v1/schedulers/{next_time_clock_id() + 10**12}/shifts", json=[shift()]
    )
    assert (r.status_code, r.json()["code"]) == (404, "SCHEDULER_NOT_FOUND")
