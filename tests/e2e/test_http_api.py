"""The HTTP/JSON API at the spec's paths: punches and manual breaks, against
the real server's HTTP listener (the same process and store as gRPC), and
the spec's own JavaScript integration classes run unchanged by Node.js."""

from __future__ import annotations

import functools
import gzip
import json
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import grpc
import httpx
import psutil
import pytest

from geopunch.entrypoints.http_server import MAX_HEAD_BYTES, MAX_HEADERS, MAX_URL_BYTES
from geopunch.v1 import admin_pb2
from tests.conftest import API_KEY, Client, ServerProcess, make_time_clock, next_time_clock_id
from tests.e2e.test_accounts import provision
from tests.helpers import expect_error, pipelined_gets, refused_raw

SPEC = Path(__file__).resolve().parents[3] / "shared" / "spec"
USER = 9170357
HQ = {"address": "123 Main St, New York, NY 10001", "latitude": 40.7128, "longitude": -74.0060}


def _clock(client: Client, **fields: Any) -> int:
    tc = make_time_clock(
        client,
        user_ids=[USER],
        manual_breaks_enabled=True,
        manual_break_types=[admin_pb2.ManualBreakType(id="lunch", name="Lunch")],
        **fields,
    )
    return int(tc.id)


def _post(http: httpx.Client, tc: int, path: str, body: dict[str, Any], **kw: Any) -> Any:
    return http.post(f"/time-clock/v1/time-clocks/{tc}/{path}", json=body, **kw)


def test_clock_in_and_out_answer_the_specs_json(http: httpx.Client, client: Client) -> None:
    tc = _clock(client)
    r = _post(
        http,
        tc,
        "clock-in",
        {
            "userId": USER,
            "jobId": "job-123",
            "timezone": "America/New_York",
            "locationData": HQ,
            "timestamp": int(time.time()) - 120,
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"requestId", "data"}
    assert r.headers["X-Request-ID"] == body["requestId"]
    shift = body["data"]["shift"]
    assert set(shift) == {
        "id",
        "userId",
        "start",
        "jobId",
        "schedulerShiftId",
        "createdAt",
        "modifiedAt",
    }
    assert shift["userId"] == USER and isinstance(shift["userId"], int)
    assert shift["schedulerShiftId"] is None
    assert shift["start"]["locationData"] == HQ
    assert shift["start"]["source"] == {"type": "api"}
    assert shift["start"]["timezone"] == "America/New_York"
    out = _post(http, tc, "clock-out", {"userId": USER}).json()["data"]["shift"]
    assert out["id"] == shift["id"]
    assert out["end"]["timestamp"] >= out["start"]["timestamp"]


def test_errors_carry_the_specs_status_and_a_reason(http: httpx.Client, client: Client) -> None:
    tc = _clock(client)
    assert _post(http, tc, "clock-in", {"userId": USER}).status_code == 200
    cases: list[tuple[int, str, dict[str, Any], int, str]] = [
        (tc, "clock-in", {"userId": USER}, 400, "ALREADY_CLOCKED_IN"),
        (tc, "clock-in", {"userId": 1}, 400, "USER_NOT_ASSIGNED"),
        (
            tc,
            "clock-in",
            {"userId": USER, "timestamp": int(time.time()) + 3600},
            400,
            "INVALID_TIMESTAMP_FUTURE",
        ),
        (
            tc,
            "clock-out",
            {"userId": USER, "timestamp": int(time.time()) - 13 * 3600},
            400,
            "INVALID_TIMESTAMP_TOO_OLD",
        ),
        (next_time_clock_id(), "clock-in", {"userId": USER}, 404, "TIME_CLOCK_NOT_FOUND"),
        (tc, "clock-in", {"userId": "9170357"}, 400, "INVALID_ARGUMENT"),
        (tc, "clock-in", {}, 400, "INVALID_ARGUMENT"),
        (tc, "manual-breaks/nap/clock-in", {"userId": USER}, 400, "MANUAL_BREAK_NOT_FOUND"),
        (tc, "manual-breaks/clock-out", {"userId": USER}, 400, "NO_OPEN_BREAK"),
    ]
    for clock, path, body, status, code in cases:
        r = _post(http, clock, path, body)
        assert (r.status_code, r.json()["code"]) == (status, code), (path, body, r.text)
        # field paths ("errors") only where fields are to blame
        assert set(r.json()) - {"errors"} == {"detail", "code", "requestId"}
        assert ("errors" in r.json()) == (code == "INVALID_ARGUMENT"), r.text
        assert r.headers["X-Request-ID"] == r.json()["requestId"]
    r = http.post(f"/time-clock/v1/time-clocks/{tc}/clock-in", content=b"{not json")
    assert (r.status_code, r.json()["code"]) == (400, "INVALID_ARGUMENT")
    nokey = httpx.post(
        f"http://{http.base_url.host}:{http.base_url.port}/time-clock/v1/time-clocks/{tc}/clock-in",
        json={"userId": USER},
    )
    assert (nokey.status_code, nokey.json()["code"]) == (401, "API_KEY_INVALID")


def test_a_locked_day_is_409(http: httpx.Client, client: Client) -> None:
    tc = _clock(client, timezone="UTC")
    today = time.strftime("%Y-%m-%d", time.gmtime())
    client(
        client.admin.SetDayStatus,
        admin_pb2.SetDayStatusRequest(
            time_clock_id=tc, user_id=USER, dates=[today], status=admin_pb2.LOCKED
        ),
    )
    r = _post(http, tc, "clock-in", {"userId": USER})
    assert (r.status_code, r.json()["code"]) == (409, "HAS_LOCKED_DAYS")


def test_a_break_from_a_shift_and_back(http: httpx.Client, client: Client) -> None:
    tc = _clock(client)
    t = int(time.time()) - 600
    shift = _post(http, tc, "clock-in", {"userId": USER, "jobId": "job-123", "timestamp": t})
    started = _post(
        http, tc, "manual-breaks/lunch/clock-in", {"userId": USER, "timestamp": t + 60}
    ).json()["data"]
    assert started["isSwitchFromShift"] is True
    assert started["closedShift"]["id"] == shift.json()["data"]["shift"]["id"]
    assert started["closedShift"]["end"]["timestamp"] == t + 60
    assert set(started["start"]) == {"timestamp", "timezone"}
    ended = _post(
        http, tc, "manual-breaks/clock-out", {"userId": USER, "timestamp": t + 120}
    ).json()["data"]
    assert ended["id"] == started["id"] and ended["isResumeShift"] is True
    assert ended["resumedShift"]["jobId"] == "job-123"
    assert ended["end"] == {"timestamp": t + 120, "timezone": "America/New_York"}
    # A standalone break ends without resuming, whatever was asked.
    _post(http, tc, "clock-out", {"userId": USER, "timestamp": t + 180})
    _post(http, tc, "manual-breaks/lunch/clock-in", {"userId": USER, "timestamp": t + 240})
    alone = _post(
        http,
        tc,
        "manual-breaks/clock-out",
        {"userId": USER, "timestamp": t + 300, "isResumeShift": True},
    ).json()["data"]
    assert alone["isResumeShift"] is False and "resumedShift" not in alone


def test_an_idempotency_key_replays_the_first_answer(http: httpx.Client, client: Client) -> None:
    tc = _clock(client)
    key = {"Idempotency-Key": f"kiosk-7-{next_time_clock_id()}"}
    first = _post(http, tc, "clock-in", {"userId": USER}, headers=key)
    again = _post(http, tc, "clock-in", {"userId": USER}, headers=key)
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json()  # the same shift and the same requestId
    other = _post(http, tc, "clock-out", {"userId": USER}, headers=key)
    assert (other.status_code, other.json()["code"]) == (400, "IDEMPOTENCY_KEY_REUSED")


def test_accounts_and_scopes_hold_over_http(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'http.db'}"
    tenants = provision(url, "alpha", "beta")
    srv = ServerProcess(db_url=url)
    srv.start(tmp_path)
    base = f"http://{srv.http_address}"
    try:
        alpha = Client(srv.address, tenants["alpha"].keys["all"])
        tc = _clock(alpha)
        alpha.close()
        path = f"{base}/time-clock/v1/time-clocks/{tc}/clock-in"
        answers = {
            who: httpx.post(path, json={"userId": USER}, headers={"X-API-KEY": key})
            for who, key in (
                ("beta", tenants["beta"].keys["all"]),
                ("alpha-read", tenants["alpha"].keys["read"]),
                ("alpha-punch", tenants["alpha"].keys["punch"]),
            )
        }
    finally:
        srv.terminate()
    assert (answers["beta"].status_code, answers["beta"].json()["code"]) == (
        404,
        "TIME_CLOCK_NOT_FOUND",
    )
    assert answers["alpha-read"].status_code == 403
    assert answers["alpha-read"].json()["code"] == "SCOPE_REQUIRED"
    assert answers["alpha-punch"].status_code == 200


def _spec_code(document: str, start: str, end: str) -> str:
    text = (SPEC / document).read_text()
    i = text.index(start)
    j = text.index(end, i) if end else len(text)
    return text[i:j]


#: Wraps fetch so that the spec's classes, unchanged, reach this server
#: instead of the vendor's host, and records every answer.
_HARNESS = """
const BASE = process.argv[2];
const realFetch = globalThis.fetch;
const calls = [];
globalThis.fetch = async (url, init) => {
  const local = String(url).replace('https://api.connecteam.com', BASE);
  const response = await realFetch(local, init);
  calls.push({ url: local, status: response.status, body: await response.clone().json() });
  return response;
};
process.on('beforeExit', () => { console.log('CALLS ' + JSON.stringify(calls)); });
"""


def _run_node(tmp_path: Path, code: str, base: str) -> tuple[list[dict[str, Any]], str]:
    node = shutil.which("node")
    assert node is not None, "Node.js is needed to run the spec's examples"
    script = tmp_path / "example.mjs"
    script.write_text(_HARNESS + code)
    done = subprocess.run(
        [node, str(script), base],
        capture_output=True,
        text=True,
        timeout=60,
        env={"TZ": "America/New_York", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    line = next(x for x in done.stdout.splitlines() if x.startswith("CALLS "))
    return json.loads(line[len("CALLS ") :]), done.stdout


@pytest.fixture
def spec_server(tmp_path: Path) -> Iterator[tuple[ServerProcess, Client]]:
    """A server whose key is the examples' own placeholder, with the time
    clock, user, job and break type the examples name."""
    srv = ServerProcess(
        db_url=f"sqlite:///{tmp_path / 'spec.db'}", env_extra={"GEOPUNCH_API_KEYS": "YOUR_API_KEY"}
    )
    srv.start(tmp_path)
    c = Client(srv.address, "YOUR_API_KEY")
    make_time_clock(
        c,
        id=12345,
        user_ids=[USER],
        manual_breaks_enabled=True,
        manual_break_types=[
            admin_pb2.ManualBreakType(id="8b8a161e-dfb5-42ac-bbf0-0448fc0c0c82", name="Lunch")
        ],
    )
    try:
        yield srv, c
    finally:
        c.close()
        srv.terminate()


def test_the_specs_time_clock_integration_runs_unchanged(
    spec_server: tuple[ServerProcess, Client], tmp_path: Path
) -> None:
    srv, _ = spec_server
    code = _spec_code("time-clock-clocking.txt", "class TimeClockIntegration", "Error Responses")
    calls, _ = _run_node(tmp_path, code, f"http://{srv.http_address}")
    assert [re.sub(r".*/", "", c["url"]) for c in calls] == ["clock-in", "clock-out"] * 2
    live_in, live_out, offline_in, offline_out = calls
    assert live_in["status"] == live_out["status"] == 200
    assert live_in["body"]["data"]["shift"]["jobId"] == "job-123"
    assert live_out["body"]["data"]["shift"]["id"] == live_in["body"]["data"]["shift"]["id"]
    assert live_in["body"]["data"]["shift"]["start"]["timezone"] == "America/New_York"
    # The example's queued punches are from 2025: more than 12 hours old here.
    assert offline_in["status"] == 400
    assert offline_in["body"]["code"] == "INVALID_TIMESTAMP_TOO_OLD"
    assert offline_out["body"]["code"] == "INVALID_TIMESTAMP_TOO_OLD"


def test_the_specs_manual_break_integration_runs_unchanged(
    spec_server: tuple[ServerProcess, Client], tmp_path: Path
) -> None:
    srv, _ = spec_server
    # The example starts from a shift ("On shift -> take break").
    httpx.post(
        f"http://{srv.http_address}/time-clock/v1/time-clocks/12345/clock-in",
        json={"userId": USER, "jobId": "job-123"},
        headers={"X-API-KEY": "YOUR_API_KEY"},
    ).raise_for_status()
    code = _spec_code("manual-breaks.txt", "class ManualBreakIntegration", "Error Responses")
    calls, stdout = _run_node(tmp_path, code, f"http://{srv.http_address}")
    assert [c["status"] for c in calls] == [200, 200]
    assert "Switched from shift: true" in stdout
    assert "Resumed shift: true" in stdout
    assert calls[1]["body"]["data"]["resumedShift"]["jobId"] == "job-123"


def test_geofences_over_http(http: httpx.Client, client: Client) -> None:
    tc = _clock(client)
    base = f"/time-clock/v1/time-clocks/{tc}/geofences"
    site = {
        "address": "789 Business Park, Chicago, IL 60601",
        "latitude": "41.8781",
        "longitude": "-87.6298",
    }
    made = http.post(
        base,
        json={
            "geofences": [
                {
                    "name": "Client Site A",
                    "location": site,
                    "fenceSize": 200,
                    "onGeofenceExitAction": "sendNotification",
                },
                {
                    "name": "Construction Site",
                    "location": {**site, "latitude": 29.7604},
                    "jobIds": ["job-123"],
                    "onGeofenceExitAction": "autoClockOut",
                },
            ]
        },
    )
    assert made.status_code == 200, made.text
    created = made.json()["data"]["geofences"]
    assert [g["name"] for g in created] == ["Client Site A", "Construction Site"]
    listed = http.get(base).json()["data"]["geofences"]
    assert [g["id"] for g in listed] == [g["fenceId"] for g in created]
    first = listed[0]
    assert set(first) == {
        "id",
        "name",
        "isEnabled",
        "fenceSize",
        "jobIds",
        "onGeofenceExitAction",
        "location",
    }
    assert first["location"] == site  # numeric strings, as sent
    assert first["isEnabled"] is True and first["jobIds"] == [] and first["fenceSize"] == 200
    assert listed[1]["fenceSize"] == 150 and listed[1]["location"]["latitude"] == "29.7604"
    one = http.get(f"{base}/{created[1]['fenceId']}").json()["data"]["geofence"]
    assert one == listed[1]
    assert http.delete(f"{base}/{created[1]['fenceId']}").json()["data"] == {}
    gone = http.get(f"{base}/{created[1]['fenceId']}")
    assert (gone.status_code, gone.json()["code"]) == (404, "GEOFENCE_NOT_FOUND")
    for fence, code in (
        ({"name": "x", "location": {**site, "latitude": "north"}}, "INVALID_COORDINATES"),
        ({"name": "x", "location": {**site, "latitude": "91"}}, "INVALID_COORDINATES"),
        ({"name": "", "location": site}, "INVALID_NAME"),
        ({"name": "x", "location": site, "fenceSize": 5}, "INVALID_FENCE_SIZE"),
        ({"name": "x", "location": site, "jobIds": ["job-invalid"]}, "JOBS_NOT_IN_TIME_CLOCK"),
    ):
        bad = http.post(base, json={"geofences": [fence]})
        assert (bad.status_code, bad.json()["code"]) == (400, code), bad.text
    assert len(http.get(base).json()["data"]["geofences"]) == 1  # nothing more was made


def test_the_specs_bulk_geofence_function_runs_unchanged(
    spec_server: tuple[ServerProcess, Client], tmp_path: Path
) -> None:
    srv, _ = spec_server
    code = _spec_code("geofences.txt", "async function createGeofences", "\nResponse\n")
    calls, _ = _run_node(tmp_path, code, f"http://{srv.http_address}")
    assert [c["status"] for c in calls] == [200]
    assert [g["name"] for g in calls[0]["body"]["data"]["geofences"]] == ["Site A", "Site B"]
    listed = httpx.get(
        f"http://{srv.http_address}/time-clock/v1/time-clocks/12345/geofences",
        headers={"X-API-KEY": "YOUR_API_KEY"},
    ).json()["data"]["geofences"]
    assert [(g["fenceSize"], g["location"]["latitude"]) for g in listed] == [
        (200, "40.7128"),
        (150, "40.7145"),
    ]
    assert all(g["onGeofenceExitAction"] == "sendNotification" for g in listed)


def test_punches_answer_alike_on_the_fast_lane_and_through_fastapi(
    http: httpx.Client, client: Client
) -> None:
    """A well-formed punch is served by the punch lane; one with another JSON
    content type goes through the FastAPI route. Both must give the same
    answers and refusals, and a body either refuses is refused the same way."""
    lane = {"Content-Type": "application/json"}
    routed = {"Content-Type": "application/vnd.api+json"}  # JSON to FastAPI, not to the lane

    def both(path: str, body: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
        out = []
        for headers in (lane, routed):
            tc = _clock(client)
            r = _post(http, tc, path, body, headers=headers)
            answer = r.json()
            assert r.headers["X-Request-ID"] == answer["requestId"]
            answer.pop("requestId")
            if isinstance(answer.get("detail"), str):
                answer["detail"] = answer["detail"].replace(str(tc), "<clock>")
            if "data" in answer:
                shift = answer["data"]["shift"]
                for key in ("id", "createdAt", "modifiedAt"):
                    shift.pop(key)
                shift["start"].pop("timestamp")
            out.append((r.status_code, answer))
        return out

    ok = both("clock-in", {"userId": USER, "jobId": "job-123", "locationData": HQ})
    assert ok[0] == ok[1] and ok[0][0] == 200
    for body, status in (
        ({"userId": USER, "jobId": "no-such-job"}, 400),
        ({"userId": 42}, 400),
        ({"userId": "9170357"}, 400),  # a string: the lane leaves it to FastAPI
        ({"userId": USER, "timestamp": 10**13}, 400),
    ):
        lane_answer, routed_answer = both("clock-in", body)
        assert lane_answer == routed_answer and lane_answer[0] == status, body
    tc = _clock(client)
    r = _post(http, tc, "clock-in", {"userId": USER}, headers={"X-API-KEY": "wrong-key-0000"})
    assert (r.status_code, r.json()["code"]) == (401, "API_KEY_INVALID")
    r = http.post(
        f"/time-clock/v1/time-clocks/{tc}/clock-in",
        content=b'{"userId": 9170357',  # cut short
        headers=lane,
    )
    assert (r.status_code, r.json()["code"]) == (400, "INVALID_ARGUMENT")


def test_a_break_type_id_with_a_slash_is_reached_by_its_encoded_path(
    http: httpx.Client, client: Client
) -> None:
    """A break type's id is the caller's to choose; one holding "/" is sent
    percent-encoded, which the server receives decoded. It is started on
    the punch lane and through the FastAPI route alike."""
    for headers in ({"Content-Type": "application/json"},
                    {"Content-Type": "application/vnd.api+json"}):  # fmt: skip
        tc = make_time_clock(
            client,
            user_ids=[USER],
            manual_breaks_enabled=True,
            manual_break_types=[admin_pb2.ManualBreakType(id="lunch/30 %", name="Lunch")],
        ).id
        path = f"/time-clock/v1/time-clocks/{tc}/manual-breaks/{quote('lunch/30 %', safe='')}"
        r = http.post(f"{path}/clock-in", json={"userId": USER}, headers=headers)
        assert r.status_code == 200, (headers, r.text)
        statuses = http.get(f"/time-clock/v1/time-clocks/{tc}/user-statuses").json()["data"]
        assert statuses["statuses"][0]["activity"]["manualBreakId"] == "lunch/30 %"
        missing = http.post(f"{path}%2Fmore/clock-in", json={"userId": USER}, headers=headers)
        assert missing.status_code in (400, 404), missing.text
        assert "lunch/30 %/more" in missing.json()["detail"], missing.text
    # Counted under the route's template on either way, not the convertor's.
    exposition = http.get("/metrics").text
    assert "/manual-breaks/{manualBreakId}/clock-in" in exposition
    assert ":path" not in exposition


def test_each_http_call_logs_one_line_with_its_caller(
    server: ServerProcess, http: httpx.Client, client: Client
) -> None:
    tc = _clock(client)
    answers = [
        _post(http, tc, "clock-in", {"userId": USER}),  # the punch lane
        http.get(f"/time-clock/v1/time-clocks/{tc}/manual-breaks"),  # a FastAPI route
    ]
    # A call without a key gets a line if its host had none in the last
    # second (a test before may have made one): one a second at most.
    time.sleep(1.05)
    answers.append(
        http.get(
            f"/time-clock/v1/time-clocks/{tc}/manual-breaks", headers={"X-API-KEY": "nope1234"}
        )
    )
    unlogged = http.get(
        f"/time-clock/v1/time-clocks/{tc}/manual-breaks", headers={"X-API-KEY": "nope1234"}
    )
    ids = [r.json()["requestId"] for r in answers]
    deadline = time.monotonic() + 5
    while True:
        lines = [json.loads(x) for x in server.logs().splitlines() if x.startswith("{")]
        found = {e["request_id"]: e for e in lines if e.get("msg") == "http"}
        if all(i in found for i in ids) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    punch, read, refused = (found[i] for i in ids)
    assert punch["method"] == "POST /time-clock/v1/time-clocks/{timeClockId}/clock-in"
    assert (punch["status"], punch["account"]) == (200, 1)
    assert punch["key"].startswith("bootstrap")  # the key id, never the secret
    assert read["method"] == "GET /time-clock/v1/time-clocks/{timeClockId}/manual-breaks"
    assert refused["status"] == 401 and "account" not in refused
    assert refused["peer"].startswith("127.0.0.1:")
    assert unlogged.json()["requestId"] not in found
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", punch["ts"])
    assert isinstance(punch["ms"], float)


def test_out_of_range_numbers_are_refused_by_name_never_a_server_error(
    http: httpx.Client, client: Client
) -> None:
    """Integers past int64 or past what a JSON client holds exactly, and an
    integer too large for a float: each a 400 naming the field, where some
    reached the store's driver and came back as a 500."""
    tc = _clock(client)
    huge, past_float = 10**30, 10**400
    tcs, clock = "/geopunch/v1/time-clocks", f"/time-clock/v1/time-clocks/{tc}"
    setup = {"name": "x", "timezone": "UTC"}
    shift = {"startTime": int(time.time()) + 86_400, "endTime": int(time.time()) + 90_000}
    cases: list[tuple[str, str, Any, str]] = [
        ("POST", tcs, {**setup, "userIds": [USER, huge]}, "userIds[1]"),
        ("POST", tcs, {**setup, "userIds": [USER, -4, 2**53]}, "userIds"),
        ("POST", tcs, {**setup, "userIds": [2**63 - 1]}, "userIds"),
        ("PUT", f"{tcs}/{tc}", {**setup, "userIds": [huge]}, "userIds[0]"),
        ("POST", "/geopunch/v1/schedulers", {**setup, "userIds": [huge]}, "userIds[0]"),
        ("POST", "/geopunch/v1/schedulers", {**setup, "userIds": [2**53]}, "userIds"),
        (
            "GET",
            f"{clock}/time-activities?startTime=0&endTime=60&userIds={huge}",
            None,
            "userIds[0]",
        ),
        ("GET", f"{clock}/user-statuses?userIds=5&userIds={huge}", None, "userIds[1]"),
        ("GET", f"/geopunch/v1/events?timeClockIds={huge}", None, "timeClockIds[0]"),
        (
            "POST",
            f"{tcs}/{tc}/check-locations",
            {"points": [{"latitude": past_float, "longitude": 1}]},
            "points[0].latitude",
        ),
        (
            "POST",
            f"{clock}/geofences",
            {"geofences": [{"name": "a", "location": HQ, "fenceSize": huge}]},
            "geofences[0].fenceSize",
        ),
        (
            "POST",
            f"{clock}/time-activities",
            {"timeActivities": [{"userId": huge, "shifts": []}]},
            "timeActivities[0].userId",
        ),
        (
            "POST",
            "/scheduler/v1/schedulers/1/shifts",
            [{**shift, "assignedUserIds": [huge]}],
            "shifts[0].assignedUserIds[0]",
        ),
    ]
    for verb, path, body, field in cases:
        r = http.request(verb, path, json=body)
        assert r.status_code == 400, (path, body and str(body)[:80], r.status_code, r.text)
        found = r.json()
        assert found["code"] == "INVALID_ARGUMENT", (path, found)
        assert field in {e["field"] for e in found["errors"]}, (path, found)
    # A malformed body gets its route's shape of detail, as a broken rule does:
    # a list for a batch of geofences, keyed by shift for shifts.
    fences = {"geofences": [{"name": "a", "location": HQ, "fenceSize": huge}]}
    detail = http.post(f"{clock}/geofences", json=fences).json()["detail"]
    assert detail == ["geofences[0].fenceSize: Input should be less than or equal to 2147483647"]
    bad_shift = [{**shift, "title": "t"}, {**shift, "assignedUserIds": [huge]}]
    detail = http.post("/scheduler/v1/schedulers/1/shifts", json=bad_shift).json()["detail"]
    assert list(detail) == ["shift-1"], detail
    # Through the punch lane too: the latitude arrives as a float too large
    # to be finite, and the rule on coordinates names it.
    r = _post(http, tc, "clock-in", {"userId": USER, "locationData": {"latitude": past_float}})
    assert r.status_code == 400 and r.json()["code"] == "INVALID_LOCATION", r.text
    # The bounds themselves are taken.
    r = http.post(tcs, json={**setup, "userIds": [1, 2**53 - 1]})
    assert r.status_code == 200, r.text
    assert r.json()["data"]["userIds"] == [1, 2**53 - 1]


def test_what_the_framework_refuses_has_the_usual_error_body(
    http: httpx.Client, client: Client
) -> None:
    """Refusals made before any route runs (an unknown path or method, a body
    that is not JSON, not UTF-8, nested past the parser, compressed, or sent without its
    content type) carry code, detail and request id, and say what to fix."""
    tc = _clock(client)
    punch = f"/time-clock/v1/time-clocks/{tc}/clock-in"
    deep = b'{"userId": 5, "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    json_type, plain = {"Content-Type": "application/json"}, {"Content-Type": "text/plain"}
    cases: list[tuple[str, str, Any, dict[str, str], int, str, str]] = [
        ("POST", punch, b'{"userId": 5,', json_type, 400, "INVALID_ARGUMENT", "at character 13"),
        ("POST", punch, b'{"userId": 5}', plain, 400, "INVALID_ARGUMENT", "Content-Type"),
        (
            "POST",
            punch,
            gzip.compress(b'{"userId": 5}'),
            {**json_type, "Content-Encoding": "gzip"},
            415,
            "INVALID_ARGUMENT",
            "uncompressed",
        ),
        ("POST", punch, b'["userId"]', json_type, 400, "INVALID_ARGUMENT", "a JSON object"),
        (
            "POST",
            punch,
            b'{"userId": 5, "jobId": "\xff"}',
            json_type,
            400,
            "INVALID_ARGUMENT",
            "UTF-8",
        ),
        ("POST", punch, deep, json_type, 400, "INVALID_ARGUMENT", "nests too deeply"),
        ("GET", "/time-clock/v1/nothing-here", None, {}, 404, "ROUTE_NOT_FOUND", "/openapi.json"),
        ("DELETE", punch, None, {}, 405, "METHOD_NOT_ALLOWED", "allowed: POST"),
    ]
    for verb, path, body, headers, status, code, says in cases:
        r = http.request(verb, path, content=body, headers=headers)
        assert r.status_code == status, (path, body and body[:40], r.text)
        found = r.json()
        assert found["code"] == code, found
        assert says in found["detail"], found
        assert found["requestId"] == r.headers["x-request-id"]
    assert http.request("DELETE", punch).headers["allow"] == "POST"
    # A path whose methods are routes of their own: the answer names them all.
    for path, served in (
        (f"/time-clock/v1/time-clocks/{tc}/geofences", "GET, HEAD, POST"),
        ("/webhooks/v1/subscriptions/whsub_1", "DELETE, GET, HEAD, PATCH"),
        ("/geopunch/v1/api-keys", "GET, HEAD, POST"),
    ):
        r = http.request("OPTIONS", path)
        assert (r.status_code, r.headers["allow"]) == (405, served), (path, r.text)
        assert r.json()["detail"].endswith(f"allowed: {served}")
    # A text past its bound, in a path, a body and a query, is counted in
    # characters (pydantic's own sentence spoke of "items after validation").
    activities = f"/time-clock/v1/time-clocks/{tc}/time-activities"
    for r, field, length, limit in (
        (http.post(f"/geopunch/v1/api-keys/{'k' * 1001}/rotate"), "keyId", 1001, 1000),
        (http.post("/geopunch/v1/api-keys", json={"scopes": ["read"], "label": "l" * 201}),
         "label", 201, 200),
        (http.get(activities, params={"startTime": 0, "endTime": 60, "pageToken": "t" * 513}),
         "pageToken", 513, 512),
    ):  # fmt: skip
        assert r.status_code == 400, r.text
        found = r.json()
        assert found["detail"] == f"{field}: {length} characters; the limit is {limit}", found
        assert found["errors"][0]["field"] == field, found
    # Nothing of the refused punches was stored: the user can still clock in.
    assert _post(http, tc, "clock-in", {"userId": USER}).status_code == 200


def test_head_is_get_without_the_body(
    server: ServerProcess, http: httpx.Client, client: Client
) -> None:
    """Every GET route answers HEAD (HTTP requires it of a server): the
    status and headers of the GET, no body."""
    tc = _clock(client)
    for path in (f"/geopunch/v1/time-clocks/{tc}", "/healthz", "/geopunch/v1/time-clocks/1"):
        get, head = http.get(path), http.head(path)
        assert head.status_code == get.status_code, (path, head.status_code)
        assert head.content == b"", path
        assert head.headers["content-type"] == get.headers["content-type"]
        assert head.headers["content-length"] == get.headers["content-length"]
    # The event stream's headers, and the answer ends (a GET never does).
    events = http.head("/geopunch/v1/events", timeout=5)
    assert events.status_code == 200 and events.content == b""
    assert events.headers["content-type"].startswith("text/event-stream")
    assert http.get("/healthz").status_code == 200  # the kept-alive connection goes on
    without_key = httpx.head(f"http://{server.http_address}/geopunch/v1/time-clocks/{tc}")
    assert without_key.status_code == 401
    # A path without GET: still 405.
    assert http.head(f"/time-clock/v1/time-clocks/{tc}/clock-in").status_code == 405


def test_a_body_without_a_valid_key_is_refused_before_it_is_read(
    server: ServerProcess, http: httpx.Client
) -> None:
    """The refusal comes as soon as the head is read: the server does not
    wait for (or parse, on the event loop both APIs share) a body whose
    sender has no key. Here the body announced is never sent."""
    host, _, port = server.http_address.rpartition(":")
    for key in (b"", b"X-API-KEY: not-a-key-0123456789\r\n"):
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(
                b"POST /geopunch/v1/time-clocks HTTP/1.1\r\nHost: x\r\n"
                + key
                + b'Content-Type: application/json\r\nContent-Length: 30000000\r\n\r\n{"id"'
            )
            answer = b""
            while b"API_KEY_INVALID" not in answer:  # sock's timeout: none in 5 s fails
                chunk = sock.recv(4096)
                assert chunk, answer
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 401 "), answer
    # Two keys are refused before the body: a valid one does not let an
    # unknown one through, whichever comes first.
    for keys in (("not-a-key-0123456789", API_KEY), (API_KEY, "not-a-key-0123456789")):
        twice = httpx.post(
            f"http://{server.http_address}/geopunch/v1/time-clocks",
            json={"name": "", "timezone": "UTC"},
            headers=[("X-API-KEY", k) for k in keys],
        )
        assert twice.status_code == 400, twice.text
        assert twice.json()["detail"] == "X-API-KEY is sent more than once; send it once"
    # With a valid key the same route reads and judges the body.
    r = http.post("/geopunch/v1/time-clocks", json={"name": "", "timezone": "UTC"})
    assert r.status_code == 400 and r.json()["code"] == "INVALID_ARGUMENT", r.text
    # A request without a body is judged by its route, key or not.
    assert httpx.get(f"http://{server.http_address}/healthz").status_code == 200
    r = httpx.get(f"http://{server.http_address}/geopunch/v1/time-clocks/1")
    assert r.status_code == 401 and r.json()["code"] == "API_KEY_INVALID"


def _exchange(server: ServerProcess, *requests: bytes, pieces: int = 1) -> bytes:
    """Send ``requests`` on one connection (each cut in ``pieces`` sends),
    and read until the server closes it (the last asks it to, or is refused)."""
    host, _, port = server.http_address.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        try:
            for request in requests:
                step = -(-len(request) // pieces)
                for at in range(0, len(request), step):
                    sock.sendall(request[at : at + step])
                    time.sleep(0.01 if pieces > 1 else 0)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused part way: what it answered is still to read
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
    return answer


def test_a_request_head_is_bounded_in_url_size_and_header_count(
    server: ServerProcess, http: httpx.Client, client: Client
) -> None:
    """A URL of 64 KiB at most, a head of 128 KiB and 100 header lines are
    answered; past them, 414 or 431 with the API's error body, and the
    connection closed, before any parsing. Unbounded, a 200 MB URL or header
    value held the event loop for 5 s, and 100 MB of short headers took
    600 MB of memory and were answered, all without a key; a URL past 64 KiB
    had uvicorn's plain-text 400 saying only that the request was invalid."""
    too_large = "REQUEST_HEADER_FIELDS_TOO_LARGE"
    get = b"GET /healthz?pad=%s HTTP/1.1\r\nHost: x\r\nX-Pad: %s\r\n\r\n"
    url = b"a" * (MAX_URL_BYTES - len(b"/healthz?pad="))
    fits = get % (url, b"")
    fits = get % (url, b"p" * (MAX_HEAD_BYTES - len(fits) + 4))  # the blank line is no head
    # Two requests at the bounds on one connection (each has its own
    # budget), sent in pieces so the blank line may straddle two reads.
    closing = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    answer = _exchange(server, fits, fits, closing, pieces=7)
    assert answer.count(b"HTTP/1.1 200 ") == 3, answer[:200]
    refused_raw(_exchange(server, fits.replace(b"X-Pad: ", b"X-Pad: p")), 431, too_large)
    refused_raw(_exchange(server, get % (url + b"a", b"")), 414, "URI_TOO_LONG")
    refused_raw(_exchange(server, get % (url * 300, b"")), 414, "URI_TOO_LONG")
    refused_raw(_exchange(server, get % (b"", b"v" * (8 * MAX_HEAD_BYTES))), 431, too_large)
    lines = [b"Connection: close", *(b"X-H%d: v" % i for i in range(MAX_HEADERS - 1))]
    many = b"GET /healthz HTTP/1.1\r\n%s\r\n\r\n"
    assert _exchange(server, many % b"\r\n".join(lines)).startswith(b"HTTP/1.1 200 ")
    lines.append(b"X-One-More: v")
    refused_raw(_exchange(server, many % b"\r\n".join(lines)), 431, too_large)
    # The bound as a client meets it: 2,600 user ids of 16 digits (the
    # longest) fit in one query.
    ids = [2**53 - 1 - n for n in range(2_600)]
    tc = int(make_time_clock(client, user_ids=ids).id)
    path = f"/time-clock/v1/time-clocks/{tc}/user-statuses"
    r = http.get(path, params=[("userIds", str(n)) for n in ids])
    assert r.status_code == 200, r.text[:300]
    assert len(r.json()["data"]["statuses"]) == len(ids), r.text[:300]
    # Twice as many do not (httpx itself refuses to send such a URL).
    query = "&".join(f"userIds={n}" for n in ids * 2).encode()
    key = f"X-API-KEY: {API_KEY}".encode()
    twice = b"GET %s?%s HTTP/1.1\r\nHost: x\r\n%s\r\n\r\n" % (path.encode(), query, key)
    refused_raw(_exchange(server, twice), 414, "URI_TOO_LONG")


def _chunked(path: str, body: bytes, piece: int = 65536) -> bytes:
    """A POST with the key whose body is sent in chunks, without a length."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nX-API-KEY: {API_KEY}\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    parts = [body[at : at + piece] for at in range(0, len(body), piece)]
    return head + b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


def test_a_body_in_chunks_is_held_to_the_body_limit(server: ServerProcess, client: Client) -> None:
    """A body sent in chunks has no length to refuse it by: it is counted as
    it is read, by FastAPI's body limit for its routes and by the punch lane
    for the punches. Before, 300 MB sent so with a key were read whole (the
    server grew by 800 MB) and only then refused as malformed."""
    tc = _clock(client)
    punch = f"/time-clock/v1/time-clocks/{tc}/clock-in"
    ok = _exchange(server, _chunked(punch, json.dumps({"userId": USER}).encode(), piece=5))
    assert ok.startswith(b"HTTP/1.1 200 "), ok[:300]
    limit = 32 * 1024 * 1024  # the server's default GEOPUNCH_MAX_MESSAGE_BYTES
    past = b'{"name": "' + b"n" * limit + b'"}'
    for path in ("/geopunch/v1/time-clocks", punch):
        answer = _exchange(server, _chunked(path, past))
        refused_raw(answer, 413, "INVALID_ARGUMENT")
        assert f"at most {limit} bytes".encode() in answer


def test_what_is_not_http_is_refused_with_the_usual_error_body(server: ServerProcess) -> None:
    """A request the HTTP parser refuses (uvicorn answered it in plain
    text) has the API's error body, and the connection is closed."""
    for garbage in (
        b"GARBAGE\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nBad Header\r\n\r\n",
    ):
        answer = _exchange(server, garbage)
        refused_raw(answer, 400, "INVALID_ARGUMENT")
        assert b"not valid HTTP/1.1" in answer, answer


def test_pipelined_requests_are_answered_in_order_from_a_bounded_queue(
    server: ServerProcess,
) -> None:
    """HTTP/1.1 pipelining: requests sent back to back on one connection
    are answered in order. Their queue is bounded: uvicorn parsed every
    request of each read and read on after each answer, so a client that
    sent pipelined GETs and read the answers grew the server by 100 MB a
    second (1.2 GB in 12 s), without a key."""
    gets = [
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Request-ID: n%d\r\n\r\n" % n for n in range(3000)
    ]
    gets.append(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    answer = _exchange(server, b"".join(gets))
    ids = re.findall(rb"x-request-id: (n\d+)", answer)
    assert ids == [b"n%d" % n for n in range(3000)]
    assert answer.count(b"HTTP/1.1 200 ") == 3001

    assert server.proc is not None
    process = psutil.Process(server.proc.pid)
    before = process.memory_info().rss
    grew = [0]

    def measure() -> None:
        grew[0] = max(grew[0], process.memory_info().rss - before)

    answered = pipelined_gets(server.http_address, 3, measure)
    assert answered > 1000
    assert grew[0] < 64 * 2**20, f"the server grew by {grew[0] / 2**20:.0f} MiB"


def test_malformed_requests_without_a_key_cannot_flood_the_log(server: ServerProcess) -> None:
    """uvicorn warns once a malformed request, before any key is seen: 2,000
    such requests wrote 3,000 lines in 0.8 s. Each message now passes once a
    second, with a count of those held back."""
    before = len(server.logs())
    started = time.monotonic()
    for n in range(300):
        malformed = b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: n%d\r\n\r\n" % n
        assert _exchange(server, malformed).startswith(b"HTTP/1.1 400 ")
    seconds = time.monotonic() - started
    time.sleep(0.2)
    lines = [json.loads(x) for x in server.logs()[before:].splitlines() if x.startswith("{")]
    warned = [x for x in lines if x.get("logger") == "uvicorn.error"]
    assert 1 <= len(warned) <= seconds + 2, warned
    assert sum(x["suppressed"] for x in warned) + len(warned) <= 300


def test_a_list_past_its_bound_is_refused_before_its_items_are_read(
    http: httpx.Client, client: Client
) -> None:
    """Each list is refused by its length, with the reason and sentence the
    rules give it, before any of its items is validated (they are all
    malformed here, and not one is named): validating the items of an
    oversized list held the event loop both APIs share for seconds."""
    tc = _clock(client)
    sched = http.post("/geopunch/v1/schedulers", json={"name": "s", "timezone": "UTC"})
    assert sched.status_code == 200, sched.text
    shifts = f"/scheduler/v1/schedulers/{sched.json()['data']['id']}/shifts"
    clock, tcs = f"/time-clock/v1/time-clocks/{tc}", "/geopunch/v1/time-clocks"
    fence = {"name": "a", "location": HQ}
    shift = {"startTime": int(time.time()) + 86_400, "endTime": int(time.time()) + 90_000}
    setup = {"name": "x", "timezone": "UTC"}
    bad = 5  # no item of any list below may be a number
    cases: list[tuple[str, Any, str, str, str]] = [
        (
            f"{clock}/geofences",
            {"geofences": [bad] * 1001},
            "geofences",
            "TOO_MANY_GEOFENCES",
            "1001 geofences sent; the limit is 1000 per request",
        ),
        (
            f"{clock}/geofences",
            {"geofences": [{**fence, "jobIds": [bad] * 101}]},
            "geofences[0].jobIds",
            "TOO_MANY_JOB_IDS",
            "101 job ids; the limit is 100",
        ),
        (
            shifts,
            [bad] * 501,
            "shifts",
            "TOO_MANY_SHIFTS",
            "501 shifts sent; the limit is 500 per request",
        ),
        (
            shifts,
            [{**shift, "notes": [bad] * 101}],
            "shifts[0].notes",
            "INVALID_ARGUMENT",
            "101 entries; the limit is 100",
        ),
        (
            shifts,
            [{**shift, "assignedUserIds": ["x"] * 100_001}],
            "shifts[0].assignedUserIds",
            "INVALID_ARGUMENT",
            "100001 entries; the limit is 100000",
        ),
        (
            tcs,
            {**setup, "jobs": [bad] * 1001},
            "jobs",
            "INVALID_ARGUMENT",
            "1001 entries; the limit is 1000",
        ),
        (
            tcs,
            {**setup, "jobs": [{"id": "a", "subJobs": [bad] * 1001}]},
            "jobs",  # sub-jobs count towards the jobs' limit, as over gRPC
            "INVALID_ARGUMENT",
            "1002 entries; the limit is 1000",
        ),
        (
            tcs,
            {**setup, "userIds": ["x"] * 100_001},
            "userIds",
            "INVALID_ARGUMENT",
            "100001 entries; the limit is 100000",
        ),
        (
            tcs,
            {**setup, "manualBreakTypes": [bad] * 101},
            "manualBreakTypes",
            "INVALID_ARGUMENT",
            "101 entries; the limit is 100",
        ),
        (
            f"{tcs}/{tc}/users/{USER}/days",
            {"dates": [bad] * 367, "status": "LOCKED"},
            "dates",
            "BATCH_TOO_LARGE",
            "at most 366 dates per call",
        ),
        (
            f"{clock}/time-activities",
            {"timeActivities": [bad] * 1001},
            "timeActivities",
            "BATCH_TOO_LARGE",
            "1001 users' entries sent; the limit is 1000 per request",
        ),
        (
            f"{clock}/time-activities",
            {"timeActivities": [{"userId": USER, "shifts": [bad] * 1001}]},
            "timeActivities",
            "BATCH_TOO_LARGE",
            "1001 activities sent; the limit is 1000 per request",
        ),
        (
            # Counted across the entries, as over gRPC: each entry's own
            # bound let 500 entries of 1,000 shifts be validated (11.8 s).
            f"{clock}/time-activities",
            {
                "timeActivities": [{"userId": USER, "shifts": [bad] * 600, "manualBreaks": [bad]}]
                * 2
            },
            "timeActivities",
            "BATCH_TOO_LARGE",
            "1202 activities sent; the limit is 1000 per request",
        ),
    ]
    for path, body, field, code, said in cases:
        r = http.post(path, json=body)
        assert r.status_code == 400, (path, field, r.text[:300])
        found = r.json()
        assert found["code"] == code, (field, found)
        assert found["errors"] == [{"field": field, "description": said, "code": code}], found
    # The same bounds in the OpenAPI document, as maxItems.
    doc = http.get("/openapi.json").json()["components"]["schemas"]
    assert doc["CreateGeofencesBody"]["properties"]["geofences"]["maxItems"] == 1000
    assert doc["TimeClockIn"]["properties"]["userIds"]["maxItems"] == 100_000


def _job_chain(depth: int) -> dict[str, Any]:
    job: dict[str, Any] = {"id": f"j{depth}"}
    for level in range(depth - 1, 0, -1):
        job = {"id": f"j{level}", "subJobs": [job]}
    return job


def _job_messages(job: dict[str, Any]) -> admin_pb2.Job:
    return admin_pb2.Job(id=job["id"], sub_jobs=[_job_messages(j) for j in job.get("subJobs", [])])


def test_jobs_are_measured_as_a_tree_before_any_is_read_the_same_over_both_apis(
    http: httpx.Client, client: Client
) -> None:
    """Sub-jobs count towards the jobs' limit at every depth, and nest at most
    32 levels. Both are measured on the tree as sent, before any job is
    validated: each list's own bound let a thousand jobs of a thousand
    sub-jobs each through, a million models validated on the event loop (8 s
    of it held for a 20 MB body). Where the count stops early it says "at
    least"; a tree deeper than pydantic nests models is told the rule, not
    pydantic's words."""
    setup = {"name": "x", "timezone": "UTC"}
    wide = [{"id": f"t{i}", "subJobs": [5] * 1000} for i in range(2)]  # items unread
    for jobs, said in (
        (wide, "at least 1002 entries; the limit is 1000"),
        ([_job_chain(33)], "sub-jobs nest 33 levels deep; the limit is 32"),
        ([_job_chain(300)], "sub-jobs nest 300 levels deep; the limit is 32"),
    ):
        for path in ("/geopunch/v1/time-clocks", "/geopunch/v1/schedulers"):
            r = http.post(path, json={**setup, "jobs": jobs})
            assert r.status_code == 400, r.text[:300]
            code = "INVALID_ARGUMENT"
            assert r.json()["errors"] == [{"field": "jobs", "description": said, "code": code}]
    # The same answers over gRPC (its decoder nests at most 100 messages).
    wide_messages = [
        admin_pb2.Job(id=f"t{i}", sub_jobs=[admin_pb2.Job(id=f"s{i}.{k}") for k in range(1000)])
        for i in range(2)
    ]
    for messages, said in (
        (wide_messages, "at least 1002 entries; the limit is 1000"),
        ([_job_messages(_job_chain(33))], "sub-jobs nest 33 levels deep; the limit is 32"),
    ):
        request = admin_pb2.CreateTimeClockRequest(
            time_clock=admin_pb2.TimeClock(name="x", timezone="UTC", jobs=messages)
        )
        err, violations = expect_error(
            functools.partial(client.admin.CreateTimeClock, request, metadata=client.metadata),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_ARGUMENT",
        )
        assert violations == [("time_clock.jobs", "INVALID_ARGUMENT")]
        assert err.details() == f"time_clock.jobs: {said}"
    # 32 levels are taken, and read back whole, over both APIs.
    made = http.post("/geopunch/v1/time-clocks", json={**setup, "jobs": [_job_chain(32)]})
    assert made.status_code == 200, made.text[:300]
    job, depth = made.json()["data"]["jobs"][0], 1
    while job.get("subJobs"):
        job, depth = job["subJobs"][0], depth + 1
    assert (depth, job["id"]) == (32, "j32")
    tc = admin_pb2.TimeClock(name="x", timezone="UTC", jobs=[_job_messages(_job_chain(32))])
    got = client.admin.CreateTimeClock(
        admin_pb2.CreateTimeClockRequest(time_clock=tc), metadata=client.metadata
    )
    assert len(got.data.jobs[0].sub_jobs) == 1


def test_a_query_holds_only_what_the_call_takes(http: httpx.Client, client: Client) -> None:
    """A query parameter the document does not list for the call, or one
    value given twice, is refused with the parameter's name: before, a
    misspelled filter was dropped and the call answered for every user, and
    of two values one was taken. The key is checked first; a list parameter
    repeats; the health checks, which probes call, take any query."""
    tc = _clock(client)
    clock = f"/time-clock/v1/time-clocks/{tc}"
    listing = f"{clock}/time-activities?startTime=0&endTime=86400"
    for url, field, said in (
        (
            f"{listing}&userId={USER}",
            "userId",
            "not a query parameter of this call: did you mean userIds? It takes startTime, "
            "endTime, userIds, jobIds, pageSize, pageToken, includeTotals",
        ),
        # Named as it was sent: a caller told that startTime is unknown is misled.
        (
            f"{clock}/time-activities?start_time=0&endTime=86400&startTime=0",
            "start_time",
            "not a query parameter of this call: did you mean startTime? It takes startTime, "
            "endTime, userIds, jobIds, pageSize, pageToken, includeTotals",
        ),
        (f"{listing}&startTime=5", "startTime", "given 2 times; it takes one value"),
        (
            f"{clock}/geofences?pageSize=5",
            "pageSize",
            "not a query parameter of this call; it takes none",
        ),
    ):
        r = http.get(url)
        assert r.status_code == 400, (url, r.text[:300])
        found = r.json()["errors"]
        assert found == [{"field": field, "description": said, "code": "INVALID_ARGUMENT"}]
    assert http.get(f"{listing}&userIds={USER}&userIds={USER + 1}").status_code == 200
    # A punch with a query is left by the punch lane to its route, which
    # refuses it and records nothing.
    r = http.post(f"{clock}/clock-in?force=true", json={"userId": USER})
    assert r.status_code == 400, r.text[:300]
    assert r.json()["errors"][0]["field"] == "force"
    state = http.get(f"{clock}/user-statuses?userIds={USER}").json()["data"]["statuses"]
    assert state[0]["state"] == "IDLE", state
    keyless = httpx.get(f"{http.base_url}{listing}&userId=1")
    assert keyless.status_code == 401, keyless.text[:300]
    assert http.get("/healthz?probe=1").status_code == 200


def test_integers_in_a_url_are_plain_decimal(http: httpx.Client, client: Client) -> None:
    """An id or number in a path or query is decimal digits: pydantic's lax
    parsing took "1.0", "+1", "01", "1_0" and a full-width "\uff11" as 1, so
    that one time clock answered at many URLs, and the punch lane took
    "01" while the routes' rules did not."""
    tc = _clock(client)
    said = (
        "not an integer in decimal digits (such as 42: no plus, point, separator or leading zero)"
    )
    for spelled in ("1.0", f"{tc}.0", f"+{tc}", f"0{tc}", f"{tc}_0", "%EF%BC%91", "1e3"):
        r = http.get(f"/geopunch/v1/time-clocks/{spelled}")
        assert r.status_code == 400, (spelled, r.text[:300])
        assert r.json()["errors"] == [
            {"field": "timeClockId", "description": said, "code": "INVALID_ARGUMENT"}
        ], spelled
        punch = http.post(f"/time-clock/v1/time-clocks/{spelled}/clock-in", json={"userId": USER})
        assert punch.status_code == 400, (spelled, punch.text[:300])
    state = http.get(f"/time-clock/v1/time-clocks/{tc}/user-statuses?userIds={USER}")
    assert state.json()["data"]["statuses"][0]["state"] == "IDLE", state.text[:300]
    clock = f"/time-clock/v1/time-clocks/{tc}"
    for url, field in (
        (f"{clock}/time-activities?startTime=0&endTime=1e5", "endTime"),
        (f"{clock}/user-statuses?userIds=0{USER}", "userIds[0]"),
    ):
        r = http.get(url)
        assert r.status_code == 400, (url, r.text[:300])
        assert r.json()["errors"][0]["field"] == field, r.text[:300]
    assert http.get(f"/geopunch/v1/time-clocks/{tc}").status_code == 200


def test_booleans_in_a_query_are_true_or_false(http: httpx.Client, client: Client) -> None:
    """A boolean in a query is spelled as JSON spells it: pydantic's lax
    parsing took "1", "yes", "on", "t" and any case of them, and "no" and
    "nope" then differed only in whether the call was refused."""
    tc = _clock(client)
    sched = http.post("/geopunch/v1/schedulers", json={"name": "s", "timezone": "UTC"})
    assert sched.status_code == 200, sched.text
    shifts = f"/scheduler/v1/schedulers/{sched.json()['data']['id']}/shifts"
    start = int(time.time()) + 86_400
    shift = {"startTime": start, "endTime": start + 3600, "title": "Morning"}
    check = f"/geopunch/v1/time-clocks/{tc}/check-locations"
    points = {"points": [HQ]}
    said = {"description": "not a boolean: true or false", "code": "INVALID_ARGUMENT"}
    for spelled in ("1", "0", "yes", "no", "on", "t", "True", "FALSE", ""):
        r = http.post(check, params={"withDistance": spelled}, json=points)
        assert r.status_code == 400, (spelled, r.text[:300])
        assert r.json()["errors"] == [{"field": "withDistance", **said}], spelled
        r = http.post(shifts, params={"notifyUsers": spelled}, json=[shift])
        assert r.status_code == 400, (spelled, r.text[:300])
        assert r.json()["errors"] == [{"field": "notifyUsers", **said}], spelled
    assert http.post(check, params={"withDistance": "true"}, json=points).status_code == 200
    made = http.post(shifts, params={"notifyUsers": "false"}, json=[shift])
    assert made.status_code == 200, made.text[:300]


def test_answers_past_a_packet_are_gzipped_for_a_client_that_accepts_it(
    http: httpx.Client, client: Client
) -> None:
    """A large answer (here the OpenAPI document, 200+ KB, and a listing of a
    thousand fences) is gzipped when the client accepts it, and the same
    JSON either way; a punch's answer, under a packet, never is."""
    tc = _clock(client)
    fences = [{"name": f"f{i}", "location": HQ} for i in range(1000)]
    made = http.post(f"/time-clock/v1/time-clocks/{tc}/geofences", json={"geofences": fences})
    assert made.status_code == 200, made.text[:300]
    for path in ("/openapi.json", f"/time-clock/v1/time-clocks/{tc}/geofences"):
        plain = http.get(path, headers={"Accept-Encoding": "identity"})
        packed = http.get(path, headers={"Accept-Encoding": "gzip"})
        assert "content-encoding" not in plain.headers
        assert packed.headers["content-encoding"] == "gzip"
        assert "accept-encoding" in packed.headers["vary"].lower()
        assert packed.num_bytes_downloaded * 5 < len(plain.content), path
        if path == "/openapi.json":
            assert packed.json() == plain.json()
        else:  # each answer has its own request id
            assert packed.json()["data"] == plain.json()["data"]
    punch = http.post(
        f"/time-clock/v1/time-clocks/{tc}/clock-in",
        json={"userId": USER},
        headers={"Accept-Encoding": "gzip"},
    )
    assert punch.status_code == 200 and "content-encoding" not in punch.headers


def test_a_header_of_one_value_sent_twice_is_refused(http: httpx.Client, client: Client) -> None:
    """Which of two values counted was up to each reader: the key check took
    the first X-API-KEY, the punch lane the last Idempotency-Key, a route
    the first. A proxy adding its own beside the client's would have one
    silently ignored; now the request is refused and nothing is punched."""
    tc = _clock(client)
    url = f"{http.base_url}/time-clock/v1/time-clocks/{tc}/clock-in"
    body = json.dumps({"userId": USER})
    key = ("X-API-KEY", API_KEY)
    json_type = ("Content-Type", "application/json")
    for name, headers in (
        ("X-API-KEY", [key, ("X-API-KEY", "another"), json_type]),
        ("X-API-KEY", [("x-api-key", "another"), key, json_type]),
        ("Idempotency-Key", [key, ("Idempotency-Key", "a"), ("Idempotency-Key", "b"), json_type]),
        ("Content-Type", [key, json_type, ("Content-Type", "text/plain")]),
    ):
        r = httpx.post(url, content=body, headers=headers)
        assert r.status_code == 400, (headers, r.text[:300])
        assert r.json()["code"] == "INVALID_ARGUMENT"
        assert r.json()["detail"] == f"{name} is sent more than once; send it once"
    state = http.get(f"/time-clock/v1/time-clocks/{tc}/user-statuses?userIds={USER}")
    assert state.json()["data"]["statuses"][0]["state"] == "IDLE", state.text[:300]
    assert httpx.post(url, content=body, headers=[key, json_type]).status_code == 200


def test_a_misspelled_path_is_told_the_route_it_likely_meant(http: httpx.Client) -> None:
    """Each word of the path as the spec spells it but for case and hyphens,
    or spelled closely; the route's methods when it does not take the
    request's; and nothing guessed when no route or several are that close."""
    clocks = "/time-clock/v1/time-clocks/{timeClockId}"
    for method, path, meant in (
        ("POST", "/time-clock/v1/time-clocks/7/clockin", f"POST {clocks}/clock-in"),
        ("GET", "/time-clock/v1/timeclocks/7/user-statuses", f"GET {clocks}/user-statuses"),
        ("PUT", "/geopunch/v1/time-clock/7", "PUT /geopunch/v1/time-clocks/{timeClockId}"),
        ("DELETE", "/time-clock/v1/time-clocks/7/geofence", f"GET, POST {clocks}/geofences"),
        (
            "POST",
            "/time-clock/v1/time-clocks/7/manual-breaks/b/clockin",
            f"POST {clocks}/manual-breaks/{{manualBreakId}}/clock-in",
        ),
        ("GET", "/geopunch/v1/nothing/here", None),
        ("GET", "/" + "/".join(["time-clocks"] * 40), None),
    ):
        r = http.request(method, path)
        assert r.status_code == 404 and r.json()["code"] == "ROUTE_NOT_FOUND", (path, r.text)
        hint = f"did you mean {meant}?" if meant else "/openapi.json lists them"
        assert r.json()["detail"] == f"no route {method} {path}; {hint}", r.text


def test_a_trailing_slash_is_a_missing_route_never_a_redirect(
    http: httpx.Client, client: Client
) -> None:
    """Starlette redirected /x/ to /x with a Location built from the Host
    header: a client following it carried its X-API-KEY to whatever host
    the request named. Now it is a 404 saying why, whatever the Host."""
    tc = _clock(client)
    for method, path, route in (
        ("GET", f"/geopunch/v1/time-clocks/{tc}/", "GET /geopunch/v1/time-clocks/{timeClockId}"),
        ("GET", "/geopunch/v1/time-clocks/", "POST /geopunch/v1/time-clocks"),  # no list
        (
            "POST",
            f"/time-clock/v1/time-clocks/{tc}/clock-in/",
            "POST /time-clock/v1/time-clocks/{timeClockId}/clock-in",
        ),
    ):
        r = http.request(method, path, json={"userId": USER}, headers={"Host": "elsewhere.example"})
        assert r.status_code == 404 and "location" not in r.headers, (path, r.headers)
        assert r.json()["code"] == "ROUTE_NOT_FOUND"
        said = f"no route {method} {path}; paths end without a slash; did you mean {route}?"
        assert r.json()["detail"] == said
    state = http.get(f"/time-clock/v1/time-clocks/{tc}/user-statuses?userIds={USER}")
    assert state.json()["data"]["statuses"][0]["state"] == "IDLE", state.text[:300]


def test_a_body_naming_a_key_twice_is_refused(http: httpx.Client, client: Client) -> None:
    """Of two values for one key Python's parser kept the last, silently,
    where a proxy or another parser may keep the first: {"userId": 6,
    "userId": 5} punched user 5. Refused at any depth, over the punch lane
    and the routes, and nothing is written."""
    tc = _clock(client)
    said = "the body names {!r} twice in one object; send each field once"
    clock = f"/time-clock/v1/time-clocks/{tc}"
    for path, raw, key in (
        (f"{clock}/clock-in", f'{{"userId": 6, "userId": {USER}}}', "userId"),
        (
            f"{clock}/clock-in",
            f'{{"userId": {USER}, "locationData": {{"latitude": 1, "latitude": 2}}}}',
            "latitude",
        ),
        ("/geopunch/v1/time-clocks", '{"name": "a", "name": "b", "timezone": "UTC"}', "name"),
        (  # 1 MiB and more: left by the lane to the route, decoded on a thread
            f"{clock}/clock-in",
            f'{{"userId": 6, "pad": "{"x" * (1 << 20)}", "userId": {USER}}}',
            "userId",
        ),
        (f"{clock}/geofences", '{"geofences": [{"name": "a", "name": "b"}]}', "name"),
    ):
        r = http.post(path, content=raw, headers={"Content-Type": "application/json"})
        assert r.status_code == 400, (path, r.text[:300])
        found = r.json()
        assert found["code"] == "INVALID_ARGUMENT", found
        assert said.format(key) in str(found["detail"]), found
    state = http.get(f"{clock}/user-statuses?userIds={USER}")
    assert state.json()["data"]["statuses"][0]["state"] == "IDLE", state.text[:300]
    assert http.get(f"{clock}/geofences").json()["data"]["geofences"] == []
    # The same body with each key once is taken, large or not.
    r = http.post(f"{clock}/clock-in", content=f'{{"userId": {USER}, "pad": "{"x" * (1 << 20)}"}}')
    assert r.status_code == 200 and r.json()["data"]["shift"]["userId"] == USER, r.text[:300]
    r = http.post(f"{clock}/clock-out", content=f'{{"userId": {USER}}}')
    assert r.status_code == 200, r.text[:300]
    # Without a Content-Type, a body the lane leaves to the route is read as
    # JSON there too, and told what is wrong with it.
    r = http.post(f"{clock}/clock-in", content=b'{"userId": "five"}')
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "userId", r.text[:300]


def test_a_last_event_id_is_a_sequence_in_ascii_digits(server: ServerProcess) -> None:
    """'\u00b2' (sent as Latin-1, as header bytes are read) passes
    str.isdigit, which int() then refused: a 500 until the check read ASCII
    digits only. Each of these is a 400 naming the header's rule."""
    host, _, port = server.http_address.rpartition(":")
    for value in (b"\xb2", b"12\xb3", b"9223372036854775808", b"-1", b"1e3"):
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(
                b"GET /geopunch/v1/events HTTP/1.1\r\nHost: x\r\nX-API-KEY: "
                + API_KEY.encode()
                + b"\r\nLast-Event-ID: "
                + value
                + b"\r\nConnection: close\r\n\r\n"
            )
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 400 "), (value, answer[:200])
        assert b"Last-Event-ID must be a seq" in answer, answer


def _warnings(r: httpx.Response) -> list[str]:
    """The paths a ``Warning`` header names as unknown fields, decoded, each
    as ``path -> key`` where it names the key the caller likely meant."""
    found = []
    for value in r.headers.get_list("warning"):
        assert value.isascii() and value.isprintable(), value
        code, agent, text = value.split(" ", 2)
        assert (code, agent) == ("299", "-"), value
        said = json.loads(text)  # a quoted string, as JSON writes one
        if not said.startswith("unknown field "):
            found.append(said)
            continue
        path, _, hint = said.removeprefix("unknown field ").partition("; did you mean ")
        name = json.loads(path)
        found.append(f"{name} -> {json.loads(hint.removesuffix('?'))}" if hint else name)
    return found


def test_keys_a_body_does_not_take_are_named_or_refused(
    http: httpx.Client, client: Client, server: ServerProcess
) -> None:
    """A key a body does not take used to vanish: {"users": [5]} made a time
    clock without users, and {"isPublish": true} a draft shift, both
    answered 200. Each such key is now named in a Warning header of the
    answer (a refusal's too), over the punch lane and the routes; with
    fieldValidation=Strict the call is refused and changes nothing; with
    Ignore it is taken as it always was."""
    tc = _clock(client)
    clock = f"/time-clock/v1/time-clocks/{tc}"
    made = http.post(
        "/geopunch/v1/time-clocks",
        json={"name": "a", "timezone": "UTC", "users": [USER], "jobs": [{"id": "j", "nme": "x"}]},
    )
    assert made.status_code == 200, made.text[:300]
    assert _warnings(made) == ["users -> userIds", "jobs[0].nme -> name"]
    assert made.json()["data"]["userIds"] == []
    # The access log says so too, for whoever runs the server.
    rid = made.headers["X-Request-ID"]
    deadline = time.monotonic() + 5
    while not (
        lines := [
            e
            for e in (json.loads(x) for x in server.logs().splitlines() if x.startswith("{"))
            if e.get("request_id") == rid and e.get("msg") == "http"
        ]
    ):
        assert time.monotonic() < deadline, "no access log line"
        time.sleep(0.05)
    assert lines[0]["unknown_fields"] == ["users", "jobs[0].nme"]
    assert lines[0]["unknown_field_count"] == 2

    # The punch lane leaves such a body to its route, which punches and warns.
    punch = {"userId": USER, "userID": 6, "locationData": {"latitude": 1, "longitude": 2, "lat": 3}}
    r = http.post(f"{clock}/clock-in", json=punch)
    assert r.status_code == 200 and r.json()["data"]["shift"]["userId"] == USER, r.text[:300]
    assert _warnings(r) == ["userID -> userId", "locationData.lat"]
    r = http.post(f"{clock}/clock-out", json={"userId": USER}, params={"fieldValidation": "Warn"})
    assert r.status_code == 200 and _warnings(r) == [], r.text[:300]
    # A refusal names them too: here, the likely reason for it.
    r = http.post(f"{clock}/clock-in", json={"user_id": USER})
    assert r.status_code == 400, r.text[:300]
    assert r.json()["errors"] == [
        {
            "field": "userId",
            "description": "Field required; the body has 'user_id': send it as userId",
            "code": "INVALID_ARGUMENT",
        }
    ]
    assert _warnings(r) == ["user_id -> userId"]

    # Strict: refused, each key by its path, and nothing is done.
    r = http.post(f"{clock}/clock-in", json=punch, params={"fieldValidation": "Strict"})
    assert r.status_code == 400, r.text[:300]
    assert [e["field"] for e in r.json()["errors"]] == ["userID", "locationData.lat"]
    assert "unknown field 'userID'" in r.json()["errors"][0]["description"]
    # Each as it was sent: told that userId was unknown, its sender is misled.
    r = http.post(
        f"{clock}/clock-in",
        json={"userId": USER, "user_id": USER},
        params={"fieldValidation": "Strict"},
    )
    assert r.status_code == 400, r.text[:300]
    assert r.json()["errors"][0]["field"] == "user_id", r.text[:300]
    assert r.json()["errors"][0]["description"] == (
        "unknown field 'user_id': the body takes no such key; did you mean 'userId'? "
        "(the call asked for fieldValidation=Strict)"
    )
    assert _warnings(r) == []
    state = http.get(f"{clock}/user-statuses?userIds={USER}")
    assert state.json()["data"]["statuses"][0]["state"] == "IDLE", state.text[:300]
    sched = http.post(
        "/geopunch/v1/schedulers", json={"name": "s", "timezone": "UTC", "userIds": [USER]}
    ).json()["data"]["id"]
    start = int(time.time()) // 3600 * 3600 + 86400
    shift = {"startTime": start, "endTime": start + 3600, "title": "x", "isPublish": True}
    shifts = f"/scheduler/v1/schedulers/{sched}/shifts"
    r = http.post(shifts, json=[shift], params={"fieldValidation": "Strict"})
    assert r.status_code == 400, r.text[:300]
    assert r.json()["detail"] == {
        "shift-0": [
            "unknown field 'isPublish': the body takes no such key; did you mean "
            "'isPublished'? (the call asked for fieldValidation=Strict)"
        ]
    }
    # Ignore: taken, and said nothing of.
    r = http.post(shifts, json=[shift], params={"fieldValidation": "Ignore"})
    assert r.status_code == 200 and r.headers.get_list("warning") == [], r.text[:300]
    assert r.json()["data"]["shifts"][0]["isPublished"] is False

    # A key the header cannot hold as it is, and more keys than are shown.
    odd = 'a"b\\c\nd\x7fé'
    r = http.post(
        "/geopunch/v1/time-clocks",
        json={"name": "b", "timezone": "UTC", odd: 1, **{f"k{i}": i for i in range(12)}},
    )
    assert r.status_code == 200, r.text[:300]
    assert _warnings(r) == [odd] + [f"k{i}" for i in range(9)] + ["and 3 more unknown fields"]
    # Under a job tree as deep as one goes; a place that long is told by its end.
    deep: dict[str, Any] = {"id": "leaf", "extra": 1}
    for level in range(31):
        deep = {"id": f"j{level}", "subJobs": [deep]}
    r = http.post("/geopunch/v1/time-clocks", json={"name": "c", "timezone": "UTC", "jobs": [deep]})
    assert r.status_code == 200, r.text[:300]
    assert _warnings(r) == ["..." + ("jobs[0]" + ".subJobs[0]" * 31 + ".extra")[-200:]]

    # The parameter itself: one of three values, once, and only where a body is taken.
    for query, said in (
        ("fieldValidation=strict", "'strict' is not one of Ignore, Warn, Strict"),
        ("fieldValidation=Warn&fieldValidation=Strict", "given 2 times"),
    ):
        r = http.post(f"{clock}/clock-out?{query}", json={"userId": USER})
        assert r.status_code == 400, r.text[:300]
        assert r.json()["errors"][0]["field"] == "fieldValidation", r.text[:300]
        assert said in r.json()["errors"][0]["description"], r.text[:300]
    r = http.get(f"{clock}/geofences", params={"fieldValidation": "Strict"})
    assert r.status_code == 400 and "not a query parameter" in r.text, r.text[:300]
    # The document says so of every call with a body, and only of those.
    for path, operations in http.get("/openapi.json").json()["paths"].items():
        for method, op in operations.items():
            takes = "fieldValidation" in {p["name"] for p in op.get("parameters", ())}
            assert takes == ("requestBody" in op), (method, path)
            if takes:
                assert all("Warning" in a["headers"] for a in op["responses"].values())
    # A caller without a key is told that first.
    r = httpx.post(
        f"{http.base_url}{clock}/clock-in",
        json=punch,
        params={"fieldValidation": "Strict"},
    )
    assert r.status_code == 401, r.text[:300]


def test_pages_of_the_allowed_origins_may_call_the_api(
    tmp_path: Path, http: httpx.Client, client: Client
) -> None:
    """A kiosk's page served from another origin calls the API from the
    browser, which asks first (a preflight, without the key) and then reads
    an answer only when its headers allow that origin. Origins are opt-in:
    a server without --http-allow-origins answers no page."""
    page, stranger = "https://kiosk.example.com", "https://evil.example.net"
    srv = ServerProcess(
        db_url=f"sqlite:///{tmp_path / 'cors.db'}",
        env_extra={"GEOPUNCH_HTTP_ALLOW_ORIGINS": f"{page}, http://localhost:3000"},
    )
    srv.start(tmp_path)
    c = Client(srv.address)
    tc = _clock(c)
    clock = f"http://{srv.http_address}/time-clock/v1/time-clocks/{tc}"
    key = {"X-API-KEY": API_KEY}
    try:
        asked = {
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "x-api-key, content-type, idempotency-key",
        }
        r = httpx.options(f"{clock}/clock-in", headers={"Origin": page, **asked})
        assert r.status_code == 200, r.text[:300]
        assert r.headers["access-control-allow-origin"] == page
        assert "POST" in r.headers["access-control-allow-methods"]
        allowed = {h.strip().lower() for h in r.headers["access-control-allow-headers"].split(",")}
        assert {"x-api-key", "content-type", "idempotency-key"} <= allowed
        assert r.headers["access-control-max-age"] == "600"
        r = httpx.options(f"{clock}/clock-in", headers={"Origin": stranger, **asked})
        assert r.status_code == 400 and "access-control-allow-origin" not in r.headers

        # The call itself: its answer, and a refusal's, readable by the page.
        r = httpx.post(
            f"{clock}/clock-in",
            json={"userId": USER},
            headers={"Origin": page, "Idempotency-Key": "cors-1", **key},
        )
        assert r.status_code == 200, r.text[:300]
        assert r.headers["access-control-allow-origin"] == page
        exposed = {h.strip().lower() for h in r.headers["access-control-expose-headers"].split(",")}
        assert {"x-request-id", "retry-after", "warning"} <= exposed
        r = httpx.post(f"{clock}/clock-out", json={"userId": USER}, headers={"Origin": page})
        assert r.status_code == 401 and r.headers["access-control-allow-origin"] == page
        assert r.json()["code"] == "API_KEY_INVALID"
        # Another origin's page is answered without the header: its browser
        # keeps the answer from it.
        r = httpx.get(f"{clock}/user-statuses", headers={"Origin": stranger, **key})
        assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    finally:
        c.close()
        srv.terminate()
    # The shared server allows no origin.
    r = http.get(
        f"/time-clock/v1/time-clocks/{_clock(client)}/user-statuses", headers={"Origin": page}
    )
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
