"""Everything over HTTP alone: set-up under /geopunch/v1, the spec's scheduler
shifts and manual-break settings, punch validation, location checks, the event
stream as Server-Sent Events, keys, and the OpenAPI document. No gRPC call
prepares anything here."""

from __future__ import annotations

import functools
import json
import socket
import time
from datetime import UTC, datetime
from typing import Any

import grpc
import httpx

from geopunch.v1 import admin_pb2
from tests.conftest import Client, ServerProcess, next_time_clock_id
from tests.helpers import expect_error

USER, OTHER = 5550001, 5550002
DEPOT = {"address": "1 Dock Road", "latitude": 55.9761, "longitude": -3.1698}


def ok(r: httpx.Response) -> Any:
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"requestId", "data"} and r.headers["X-Request-ID"] == body["requestId"]
    return body["data"]


def refused(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert (r.status_code, r.json().get("code")) == (status, code), r.text
    body: dict[str, Any] = r.json()
    assert body["requestId"] == r.headers["X-Request-ID"]
    return body


def new_clock(http: httpx.Client, **fields: Any) -> dict[str, Any]:
    body = {
        "name": "Depot",
        "timezone": "UTC",
        "jobs": [{"id": "crew", "name": "Crew", "subJobs": [{"id": "crew-night"}]}],
        "userIds": [USER, OTHER],
        "manualBreaksEnabled": True,
        "manualBreakTypes": [{"id": "lunch", "name": "Lunch", "minDurationSeconds": 0}],
        **fields,
    }
    made: dict[str, Any] = ok(http.post("/geopunch/v1/time-clocks", json=body))
    return made


def test_a_time_clock_is_set_up_read_and_replaced(http: httpx.Client) -> None:
    tc = new_clock(http, geofencePolicy="REQUIRE_LOCATION")
    assert isinstance(tc["id"], int) and tc["id"] > 0
    assert tc["jobs"] == [
        {
            "id": "crew",
            "name": "Crew",
            "color": "",
            "subJobs": [{"id": "crew-night", "name": "", "color": "", "subJobs": []}],
        }
    ]
    assert tc["userIds"] == [USER, OTHER] and tc["geofencePolicy"] == "REQUIRE_LOCATION"
    assert tc["exitDetection"]["bufferHighAccuracyM"] == 50.0
    assert ok(http.get(f"/geopunch/v1/time-clocks/{tc['id']}")) == tc
    changed = ok(
        http.put(
            f"/geopunch/v1/time-clocks/{tc['id']}",
            json={"name": "Depot 2", "timezone": "Europe/London", "userIds": [USER]},
        )
    )
    assert (changed["name"], changed["userIds"], changed["jobs"]) == ("Depot 2", [USER], [])
    # A replacement may repeat the path's id in its body, and no other id.
    again = {"name": "Depot 3", "timezone": "Europe/London", "id": tc["id"]}
    assert ok(http.put(f"/geopunch/v1/time-clocks/{tc['id']}", json=again))["name"] == "Depot 3"
    for path, other in ((f"/geopunch/v1/time-clocks/{tc['id']}", 0),
                        (f"/geopunch/v1/time-clocks/{tc['id']}", tc["id"] + 1),
                        (f"/geopunch/v1/schedulers/{_scheduler(http)}", 0)):  # fmt: skip
        wrong = refused(http.put(path, json={**again, "id": other}), 400, "INVALID_ARGUMENT")
        assert wrong["errors"][0]["field"] == "id" and "is not the path's" in wrong["detail"]
    assert ok(http.get(f"/geopunch/v1/time-clocks/{tc['id']}"))["name"] == "Depot 3"
    settings = ok(http.get(f"/time-clock/v1/time-clocks/{tc['id']}/manual-breaks"))
    assert settings == {"isEnabled": False, "manualBreaks": []}
    # The rules answer with paths in the body's own spelling.
    bad = refused(
        http.post(
            "/geopunch/v1/time-clocks",
            json={"name": "x", "timezone": "Mars/Base", "jobs": [{"id": " "}]},
        ),
        400,
        "INVALID_TIMEZONE",
    )
    assert {e["field"] for e in bad["errors"]} == {"timezone", "jobs[0].id"}, bad
    refused(
        http.post("/geopunch/v1/time-clocks", json={"geofencePolicy": "ON"}),
        400,
        "INVALID_ARGUMENT",
    )
    missing = next_time_clock_id()
    refused(http.get(f"/geopunch/v1/time-clocks/{missing}"), 404, "TIME_CLOCK_NOT_FOUND")
    refused(
        http.get(f"/time-clock/v1/time-clocks/{missing}/manual-breaks"), 404, "TIME_CLOCK_NOT_FOUND"
    )


def test_locked_days_over_http(http: httpx.Client) -> None:
    tc = new_clock(http)["id"]
    today = datetime.now(UTC).date().isoformat()
    days = f"/geopunch/v1/time-clocks/{tc}/users/{USER}/days"
    assert ok(http.post(days, json={"dates": [today], "status": "LOCKED"})) == {
        "days": [{"date": today, "status": "LOCKED"}]
    }
    assert ok(http.get(days))["days"] == [{"date": today, "status": "LOCKED"}]
    punch = f"/time-clock/v1/time-clocks/{tc}/clock-in"
    refused(http.post(punch, json={"userId": USER}), 409, "HAS_LOCKED_DAYS")
    assert ok(http.post(days, json={"dates": [today], "status": "OPEN"})) == {"days": []}
    ok(http.post(punch, json={"userId": USER}))
    refused(
        http.post(days, json={"dates": ["2026-02-30"], "status": "LOCKED"}), 400, "INVALID_ARGUMENT"
    )


def test_fences_validation_and_location_checks(http: httpx.Client) -> None:
    tc = new_clock(http, geofencePolicy="REQUIRE_INSIDE")["id"]
    fences = ok(
        http.post(
            f"/time-clock/v1/time-clocks/{tc}/geofences",
            json={
                "geofences": [
                    {
                        "name": "Depot",
                        "location": {
                            "address": "1 Dock Road",
                            "latitude": "55.9761",
                            "longitude": "-3.1698",
                        },
                        "fenceSize": 150,
                    }
                ]
            },
        )
    )["geofences"]
    fence_id = fences[0]["fenceId"]
    validate = f"/geopunch/v1/time-clocks/{tc}/validate-punch"
    far = {**DEPOT, "latitude": 55.99}
    assert ok(
        http.post(validate, json={"kind": "clockIn", "userId": USER, "locationData": DEPOT})
    ) == {
        "allowed": True,
        "code": None,
        "detail": None,
        "metadata": {},
    }
    verdict = ok(http.post(validate, json={"kind": "clockIn", "userId": USER, "locationData": far}))
    assert (verdict["allowed"], verdict["code"]) == (False, "OUTSIDE_GEOFENCE")
    assert verdict["metadata"]["fenceId"] == fence_id
    # Validation stores nothing: the same user may still clock in, and the
    # answer names the fence the punch was inside.
    shift = ok(
        http.post(
            f"/time-clock/v1/time-clocks/{tc}/clock-in",
            json={"userId": USER, "locationData": DEPOT},
        )
    )["shift"]
    assert shift["start"]["geofenceId"] == fence_id
    verdict = ok(
        http.post(validate, json={"kind": "clockIn", "userId": USER, "locationData": DEPOT})
    )
    assert verdict["code"] == "ALREADY_CLOCKED_IN"
    refused(http.post(validate, json={"kind": "nap", "userId": USER}), 400, "INVALID_ARGUMENT")

    check = f"/geopunch/v1/time-clocks/{tc}/check-locations"
    points = [DEPOT, far, {"latitude": 91, "longitude": 0}]
    results = ok(http.post(check, params={"withDistance": "true"}, json={"points": points}))[
        "results"
    ]
    assert [p["status"] for p in results] == ["OK", "OK", "INVALID_COORDINATES"]
    assert [(p["inside"], p["allowed"]) for p in results] == [
        (True, True),
        (False, False),
        (False, False),
    ]
    assert results[0]["matches"] == [
        {"fenceId": fence_id, "applicable": True, "onGeofenceExitAction": "noAction"}
    ]
    assert results[0]["distanceMeters"] < 0 < results[1]["distanceMeters"]
    assert results[1]["nearestFenceId"] == fence_id and results[2]["distanceMeters"] is None
    refused(http.post(check, json={"points": []}), 400, "INVALID_ARGUMENT")
    refused(
        http.post(
            f"/geopunch/v1/time-clocks/{next_time_clock_id()}/check-locations",
            json={"points": points},
        ),
        404,
        "TIME_CLOCK_NOT_FOUND",
    )


def _scheduler(http: httpx.Client) -> int:
    s = ok(
        http.post(
            "/geopunch/v1/schedulers",
            json={
                "name": "Docks",
                "timezone": "America/New_York",
                "userIds": [USER, OTHER],
                "jobs": [{"id": "crew", "name": "Crew", "color": "#112233"}],
            },
        )
    )
    assert ok(http.get(f"/geopunch/v1/schedulers/{s['id']}")) == s
    return int(s["id"])


def test_shifts_at_the_specs_path(http: httpx.Client) -> None:
    sid = _scheduler(http)
    url = f"/scheduler/v1/schedulers/{sid}/shifts"
    start = int(time.time()) // 3600 * 3600 + 86400
    made = ok(
        http.post(
            url,
            params={"notifyUsers": "true"},
            json=[
                {
                    "startTime": start,
                    "endTime": start + 8 * 3600,
                    "title": "Early",
                    "isPublished": True,
                    "assignedUserIds": [USER],
                }
            ],
        )
    )["shifts"]
    shift = made[0]
    # Every key the spec's answer shows, with its nulls and JSON types.
    assert shift["isRequireAdminApproval"] is None and shift["jobId"] is None
    assert shift["locationData"] is None and shift["openSpots"] is None
    assert shift["createdBy"] is None and isinstance(shift["creationTime"], int)
    assert shift["shiftDetails"] == {"shiftLayers": [], "shiftSource": None}
    assert (shift["isOpenShift"], shift["isPublished"]) == (False, True)
    assert shift["timezone"] == "America/New_York" and shift["color"] == "#4B7AC5"
    assert (shift["notes"], shift["statuses"], shift["breaks"], shift["customFields"]) == (
        [],
        [],
        [],
        [],
    )
    listed = ok(http.get(url, params={"startTime": start, "endTime": start + 86400}))["shifts"]
    assert [s["id"] for s in listed] == [shift["id"]]
    # Problems of shifts are keyed by the shift they belong to.
    body = refused(
        http.post(
            url,
            json=[
                {
                    "startTime": start,
                    "endTime": start + 3600,
                    "title": "ok",
                    "assignedUserIds": [OTHER],
                },
                {"startTime": start, "endTime": start + 3600, "assignedUserIds": [99999999]},
            ],
        ),
        400,
        "TITLE_OR_JOB_REQUIRED",
    )
    assert set(body["detail"]) == {"shift-1"} and len(body["detail"]["shift-1"]) == 2, body
    assert {e["field"] for e in body["errors"]} == {"shifts[1].title", "shifts[1].assignedUserIds"}
    refused(http.post(url, json={"startTime": start}), 400, "INVALID_ARGUMENT")
    refused(
        http.post(
            f"/scheduler/v1/schedulers/{sid + 10**9}/shifts",
            json=[{"startTime": start, "endTime": start + 60, "title": "x"}],
        ),
        404,
        "SCHEDULER_NOT_FOUND",
    )


def test_events_stream_as_sse_and_resume(http: httpx.Client) -> None:
    sid = _scheduler(http)
    start = int(time.time()) // 3600 * 3600 + 2 * 86400
    shifts = [
        {
            "startTime": start + i * 3600,
            "endTime": start + (i + 1) * 3600,
            "title": f"s{i}",
            "isPublished": True,
            "assignedUserIds": [USER],
        }
        for i in range(3)
    ]
    url = f"/scheduler/v1/schedulers/{sid}/shifts"
    ok(http.post(url, params={"notifyUsers": "false"}, json=shifts[:1]))  # no events
    made = ok(http.post(url, json=shifts[1:]))["shifts"]
    params = {"types": "shiftPublished"}
    ids = {s["id"] for s in made}
    mine: list[dict[str, Any]] = []
    seen_unnotified = False
    with http.stream("GET", "/geopunch/v1/events", params=params, timeout=30) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        # Never gzipped (httpx accepts gzip): each event must leave at once.
        assert "content-encoding" not in r.headers
        for event in _iter_events(r):
            if event["schedulerId"] != sid:
                continue
            seen_unnotified |= event["payload"]["shiftId"] not in ids
            mine.append(event)
            if len(mine) == 2:
                break
    assert not seen_unnotified, "notifyUsers=false still told the users"
    assert {e["payload"]["shiftId"] for e in mine} == ids
    assert [e["userId"] for e in mine] == [USER, USER] and mine[0]["seq"] < mine[1]["seq"]
    # A reconnecting client resumes after the last id it saw.
    with http.stream(
        "GET",
        "/geopunch/v1/events",
        params=params,
        headers={"Last-Event-ID": str(mine[0]["seq"])},
        timeout=30,
    ) as r:
        assert next(_iter_events(r))["seq"] == mine[1]["seq"]
    # A live event arrives on an open stream without polling.
    with http.stream(
        "GET", "/geopunch/v1/events", params={**params, "after": mine[1]["seq"]}, timeout=30
    ) as r:
        lines = r.iter_lines()
        assert next(lines).startswith(":")  # the stream is open
        ok(
            http.post(
                url,
                json=[{**shifts[0], "startTime": start + 5 * 3600, "endTime": start + 6 * 3600}],
            )
        )
        event = next(_iter_events(r, lines))
        assert event["type"] == "shiftPublished" and event["seq"] > mine[1]["seq"]
    refused(
        http.get("/geopunch/v1/events", headers={"Last-Event-ID": "x"}), 400, "INVALID_ARGUMENT"
    )
    refused(http.get("/geopunch/v1/events", params={"types": "nope"}), 400, "INVALID_ARGUMENT")


def _iter_events(r: httpx.Response, lines: Any = None) -> Any:
    fields: dict[str, str] = {}
    for line in lines if lines is not None else r.iter_lines():
        if line.startswith(":"):
            continue
        if not line:
            if fields:
                event = json.loads(fields["data"])
                assert fields["id"] == str(event["seq"]) and fields["event"] == event["type"]
                yield event
                fields = {}
            continue
        name, _, value = line.partition(": ")
        fields[name] = value


def test_keys_over_http(http: httpx.Client, server: ServerProcess) -> None:
    issued = ok(http.post("/geopunch/v1/api-keys", json={"scopes": ["read"], "label": "wallboard"}))
    assert issued["scopes"] == ["read"] and issued["secret"].startswith("gpk_")
    assert issued["revokedAt"] is None
    listed = ok(http.get("/geopunch/v1/api-keys"))["keys"]
    assert issued["id"] in {k["id"] for k in listed} and all("secret" not in k for k in listed)
    base = f"http://{server.http_address}"
    reader = {"X-API-KEY": issued["secret"]}
    tc = new_clock(http)["id"]
    deadline = time.monotonic() + 15
    while (
        r := httpx.get(f"{base}/time-clock/v1/time-clocks/{tc}/geofences", headers=reader)
    ).status_code == 401:
        assert time.monotonic() < deadline, "a new key was never accepted"
        time.sleep(0.2)
    assert r.status_code == 200
    refused(
        httpx.post(
            f"{base}/time-clock/v1/time-clocks/{tc}/clock-in", json={"userId": USER}, headers=reader
        ),
        403,
        "SCOPE_REQUIRED",
    )
    rotated = ok(http.post(f"/geopunch/v1/api-keys/{issued['id']}/rotate"))
    assert rotated["id"] != issued["id"] and rotated["scopes"] == ["read"]
    revoked = ok(http.delete(f"/geopunch/v1/api-keys/{rotated['id']}"))
    assert isinstance(revoked["revokedAt"], int)
    refused(http.delete("/geopunch/v1/api-keys/nope"), 404, "API_KEY_NOT_FOUND")


def test_a_keys_scopes_are_each_one_name_over_both_apis(http: httpx.Client, client: Client) -> None:
    """Each scope is a name the document lists, at least one: the lists were
    joined with commas and read as the CLI's text, so "read,punch" made a
    key of two scopes, " read " and "" passed, and an empty list was told
    about a comma-separated list it never sent."""
    known = "one of read, punch, admin"
    for scopes, problems in (
        ([], [("scopes", "at least one scope: read, punch, admin")]),
        (["read,punch"], [("scopes[0]", f"'read,punch' is not a scope; {known}")]),
        ([" read "], [("scopes[0]", f"' read ' is not a scope; {known}")]),
        (["admin", ""], [("scopes[1]", f"'' is not a scope; {known}")]),
    ):
        body = refused(
            http.post("/geopunch/v1/api-keys", json={"scopes": scopes}), 400, "INVALID_ARGUMENT"
        )
        assert [(e["field"], e["description"]) for e in body["errors"]] == problems, body
        _, violations = expect_error(
            functools.partial(
                client.admin.CreateApiKey,
                admin_pb2.CreateApiKeyRequest(scopes=scopes),
                metadata=client.metadata,
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_ARGUMENT",
        )
        assert [field for field, _ in violations] == [field for field, _ in problems]
    doc = http.get("/openapi.json").json()["paths"]["/geopunch/v1/api-keys"]["post"]
    ref = doc["requestBody"]["content"]["application/json"]["schema"]["$ref"].rpartition("/")[2]
    schema = http.get("/openapi.json").json()["components"]["schemas"][ref]["properties"]["scopes"]
    assert (schema["minItems"], schema["maxItems"]) == (1, 3), schema
    assert ok(http.post("/geopunch/v1/api-keys", json={"scopes": ["read", "read"]}))["scopes"] == [
        "read"
    ]


def test_the_openapi_document_and_docs_page(http: httpx.Client) -> None:
    doc = http.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.1")
    paths = doc["paths"]
    for path in (
        "/time-clock/v1/time-clocks/{timeClockId}/clock-in",
        "/time-clock/v1/time-clocks/{timeClockId}/clock-out",
        "/time-clock/v1/time-clocks/{timeClockId}/manual-breaks/{manualBreakId}/clock-in",
        "/time-clock/v1/time-clocks/{timeClockId}/manual-breaks/clock-out",
        "/time-clock/v1/time-clocks/{timeClockId}/manual-breaks",
        "/time-clock/v1/time-clocks/{timeClockId}/geofences",
        "/time-clock/v1/time-clocks/{timeClockId}/geofences/{fenceId}",
        "/scheduler/v1/schedulers/{schedulerId}/shifts",
    ):
        assert path in paths, path
    clock_in = paths["/time-clock/v1/time-clocks/{timeClockId}/clock-in"]["post"]
    examples = clock_in["requestBody"]["content"]["application/json"]["examples"]
    assert {"live", "offline"} <= set(examples)
    assert "Idempotency-Key" in {p["name"] for p in clock_in["parameters"]}
    assert "notifyUsers" in {
        p["name"]
        for p in paths["/scheduler/v1/schedulers/{schedulerId}/shifts"]["post"]["parameters"]
    }
    # Every answer is described: a JSON shape for each success (the event
    # stream excepted), and no 422, which geopunch never answers (a body or
    # parameter the framework refuses is a 400 with the usual error body).
    for path, operations in paths.items():
        for method, op in operations.items():
            assert "422" not in op["responses"], (method, path)
            done = {k: v for k, v in op["responses"].items() if k.startswith("2")}
            assert len(done) == 1, (method, path, done)
            ((status, described),) = done.items()
            # Each refusal is the JSON error body, the event stream's too:
            # it is refused before any event is sent. (A server not ready
            # says so in the readiness probe's own answer.)
            for code, answer in op["responses"].items():
                if code[0] in "45" and (path, code) != ("/readyz", "503"):
                    (kind,) = answer["content"]
                    ref = answer["content"][kind]["schema"]["$ref"]
                    assert (kind, ref) == (
                        "application/json",
                        "#/components/schemas/ErrorBody",
                    ), (method, path, code)
            if status == "204" or path == "/geopunch/v1/events":
                continue
            schema = described["content"]["application/json"]["schema"]
            assert schema.get("$ref"), (method, path, schema)
    schemas = doc["components"]["schemas"]
    assert set(schemas["ErrorBody"]["required"]) == {"detail", "code", "requestId"}
    assert schemas["ErrorBody"]["properties"]["errors"]["anyOf"][0]["items"] == {
        "$ref": "#/components/schemas/FieldProblem"
    }
    assert "FieldProblem" in schemas
    refused = httpx.get(f"{http.base_url}/geopunch/v1/events")
    assert refused.status_code == 401
    assert refused.headers["content-type"] == "application/json", refused.headers
    assert not {"HTTPValidationError", "ValidationError"} & set(doc["components"]["schemas"])
    _check_links(doc)
    page = http.get("/docs")
    assert page.status_code == 200 and "openapi.json" in page.text


def _check_links(doc: dict[str, Any]) -> None:
    """Each link of a created resource's answer names an operation of the
    document, parameters that operation takes, and values the answer's
    documented shape has (``$response.body#/data/id``) or the request's path
    has (``$request.path.timeClockId``)."""
    schemas = doc["components"]["schemas"]
    by_id = {op["operationId"]: op for ops in doc["paths"].values() for op in ops.values()}

    def resolve(schema: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in schema:
            schema = schemas[schema["$ref"].rsplit("/", 1)[-1]]
        return schema

    linked = 0
    for path, operations in doc["paths"].items():
        for op in operations.values():
            answer = op["responses"].get("200", {})
            for name, link in answer.get("links", {}).items():
                target = by_id[link["operationId"]]
                taken = {p["name"] for p in target.get("parameters", [])}
                for parameter, source in link["parameters"].items():
                    assert parameter in taken, (name, parameter)
                    if source.startswith("$request.path."):
                        assert f"{{{source.removeprefix('$request.path.')}}}" in path
                        continue
                    pointer = source.removeprefix("$response.body#/").split("/")
                    shape = resolve(answer["content"]["application/json"]["schema"])
                    for step in pointer:
                        shape = resolve(
                            shape["items"] if step.isdigit() else shape["properties"][step]
                        )
                    assert shape.get("type") in ("string", "integer"), (name, source, shape)
                linked += 1
    assert linked >= 25, linked


def test_an_oversized_body_is_refused_before_it_is_read(server: ServerProcess) -> None:
    host, _, port = server.http_address.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /time-clock/v1/time-clocks/1/clock-in HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: 73400320\r\n\r\n{"
        )
        raw = b""
        while b'"requestId"' not in raw and (chunk := sock.recv(65536)):
            raw += chunk
    head = raw.decode()
    assert head.startswith("HTTP/1.1 413"), head
    assert '"code":"INVALID_ARGUMENT"' in head
