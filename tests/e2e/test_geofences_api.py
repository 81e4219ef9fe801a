"""GeofenceService end to end through a real server process."""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from geopunch.v1 import admin_pb2, geofences_pb2
from tests.conftest import Client, make_time_clock
from tests.helpers import expect_error

SINGLE = {
    "geofences": [
        {
            "name": "Client Site A",
            "location": {
                "address": "789 Business Park, Chicago, IL 60601",
                "latitude": "41.8781",
                "longitude": "-87.6298",
            },
            "fenceSize": 200,
            "onGeofenceExitAction": "sendNotification",
        }
    ]
}
WITH_JOB = {
    "geofences": [
        {
            "name": "Construction Site",
            "location": {
                "address": "100 Build Ave, Houston, TX 77001",
                "latitude": "29.7604",
                "longitude": "-95.3698",
            },
            "fenceSize": 500,
            "jobIds": ["job-construction-001"],
            "onGeofenceExitAction": "autoClockOut",
        }
    ]
}
# What the spec's bulk JavaScript client sends for its two sites.
BULK = {
    "geofences": [
        {
            "name": site["name"],
            "location": {
                "address": site["address"],
                "latitude": str(site["lat"]),
                "longitude": str(site["lng"]),
            },
            "fenceSize": site["radius"],
            "jobIds": [],
            "onGeofenceExitAction": "sendNotification",
        }
        for site in (
            {
                "name": "Site A",
                "address": "123 A St",
                "lat": 40.7128,
                "lng": -74.0060,
                "radius": 200,
            },
            {
                "name": "Site B",
                "address": "456 B Ave",
                "lat": 40.7145,
                "lng": -74.0055,
                "radius": 150,
            },
        )
    ]
}
LISTED: dict[str, Any] = {
    "geofences": [
        {
            "name": "Main Office",
            "isEnabled": True,
            "fenceSize": 150,
            "jobIds": ["job-123", "job-456"],
            "onGeofenceExitAction": "sendNotification",
            "location": {
                "address": "123 Main St, New York, NY 10001",
                "latitude": "40.7128",
                "longitude": "-74.0060",
            },
        },
        {
            "name": "Warehouse",
            "isEnabled": True,
            "fenceSize": 300,
            "jobIds": [],
            "onGeofenceExitAction": "autoClockOut",
            "location": {
                "address": "456 Industrial Blvd, Brooklyn, NY 11201",
                "latitude": "40.6892",
                "longitude": "-73.9857",
            },
        },
    ]
}


def create(client: Client, tc_id: int, body: dict[str, Any]) -> dict[str, Any]:
    req = json_format.ParseDict(
        {**body, "timeClockId": tc_id}, geofences_pb2.CreateGeofencesRequest()
    )
    return json_format.MessageToDict(client(client.geofences.CreateGeofences, req))


def fence(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "F",
        "location": {"address": "1 Road", "latitude": "10", "longitude": "20"},
    }
    base.update(overrides)
    return base


@pytest.mark.parametrize(
    "body", [SINGLE, WITH_JOB, BULK, LISTED], ids=["single", "job", "bulk", "listed"]
)
def test_every_spec_create_body_succeeds_with_the_spec_shape(
    client: Client, body: dict[str, Any]
) -> None:
    tc = make_time_clock(client)
    out = create(client, tc.id, body)
    assert set(out) == {"requestId", "data"}
    assert len(out["requestId"]) == 36
    created = out["data"]["geofences"]
    assert [g["name"] for g in created] == [g["name"] for g in body["geofences"]]
    assert all(set(g) == {"fenceId", "name"} and g["fenceId"].startswith("fence-") for g in created)


def test_list_returns_the_spec_shape_and_defaults(client: Client) -> None:
    tc = make_time_clock(client)
    create(client, tc.id, LISTED)
    create(client, tc.id, {"geofences": [fence(name="Defaults")]})
    resp = client(
        client.geofences.ListGeofences, geofences_pb2.ListGeofencesRequest(time_clock_id=tc.id)
    )
    out = json_format.MessageToDict(resp, always_print_fields_with_no_presence=True)
    fences = out["data"]["geofences"]
    assert [f["name"] for f in fences] == ["Main Office", "Warehouse", "Defaults"]
    for got, sent in zip(fences, LISTED["geofences"], strict=False):
        assert set(got) == {
            "id",
            "name",
            "isEnabled",
            "fenceSize",
            "jobIds",
            "onGeofenceExitAction",
            "location",
        }
        assert got["jobIds"] == sent["jobIds"]
        assert got["fenceSize"] == sent["fenceSize"]
        assert got["onGeofenceExitAction"] == sent["onGeofenceExitAction"]
        assert got["location"]["address"] == sent["location"]["address"]
        assert got["location"]["latitude"] == pytest.approx(float(sent["location"]["latitude"]))
        assert got["location"]["longitude"] == pytest.approx(float(sent["location"]["longitude"]))
    defaults = fences[2]
    assert defaults["isEnabled"] is True
    assert defaults["fenceSize"] == 150
    assert defaults["onGeofenceExitAction"] == "noAction"


def test_get_and_delete(client: Client) -> None:
    tc = make_time_clock(client)
    fence_id = create(client, tc.id, SINGLE)["data"]["geofences"][0]["fenceId"]
    got = client(
        client.geofences.GetGeofence,
        geofences_pb2.GetGeofenceRequest(time_clock_id=tc.id, fence_id=fence_id),
    ).data.geofence
    assert (got.id, got.name, got.fence_size) == (fence_id, "Client Site A", 200)
    assert (got.location.latitude, got.location.longitude) == (41.8781, -87.6298)
    deleted = client(
        client.geofences.DeleteGeofence,
        geofences_pb2.DeleteGeofenceRequest(time_clock_id=tc.id, fence_id=fence_id),
    )
    assert json_format.MessageToDict(deleted)["data"] == {}
    for method, req in (
        (client.geofences.GetGeofence, geofences_pb2.GetGeofenceRequest),
        (client.geofences.DeleteGeofence, geofences_pb2.DeleteGeofenceRequest),
    ):
        expect_error(
            partial(client, method, req(time_clock_id=tc.id, fence_id=fence_id)),
            grpc.StatusCode.NOT_FOUND,
            "GEOFENCE_NOT_FOUND",
        )


def test_a_fence_of_another_time_clock_is_not_found(client: Client) -> None:
    a, b = make_time_clock(client), make_time_clock(client)
    fence_id = create(client, a.id, SINGLE)["data"]["geofences"][0]["fenceId"]
    expect_error(
        lambda: client(
            client.geofences.DeleteGeofence,
            geofences_pb2.DeleteGeofenceRequest(time_clock_id=b.id, fence_id=fence_id),
        ),
        grpc.StatusCode.NOT_FOUND,
        "GEOFENCE_NOT_FOUND",
    )
    still = client(
        client.geofences.GetGeofence,
        geofences_pb2.GetGeofenceRequest(time_clock_id=a.id, fence_id=fence_id),
    )
    assert still.data.geofence.id == fence_id


@pytest.mark.parametrize(
    "method,request_type",
    [
        ("ListGeofences", geofences_pb2.ListGeofencesRequest),
        ("CreateGeofences", geofences_pb2.CreateGeofencesRequest),
    ],
)
def test_unknown_time_clock_is_not_found(client: Client, method: str, request_type: Any) -> None:
    req = request_type(time_clock_id=999_999_999)
    if method == "CreateGeofences":
        req = json_format.ParseDict({**SINGLE, "timeClockId": 999_999_999}, request_type())
    expect_error(
        lambda: client(getattr(client.geofences, method), req),
        grpc.StatusCode.NOT_FOUND,
        "TIME_CLOCK_NOT_FOUND",
    )


BAD_CASES: list[tuple[str, dict[str, Any], str, str]] = [
    ("empty name", fence(name=""), "INVALID_NAME", "geofences[1].name"),
    ("blank name", fence(name="   "), "INVALID_NAME", "geofences[1].name"),
    ("too small", fence(fenceSize=74), "INVALID_FENCE_SIZE", "geofences[1].fence_size"),
    ("too big", fence(fenceSize=1525), "INVALID_FENCE_SIZE", "geofences[1].fence_size"),
    ("negative", fence(fenceSize=-150), "INVALID_FENCE_SIZE", "geofences[1].fence_size"),
    (
        "no address",
        fence(location={"latitude": "1", "longitude": "2"}),
        "INVALID_LOCATION",
        "geofences[1].location.address",
    ),
    (
        "no latitude",
        fence(location={"address": "x", "longitude": "2"}),
        "INVALID_COORDINATES",
        "geofences[1].location.latitude",
    ),
    (
        "lat 91",
        fence(location={"address": "x", "latitude": "91", "longitude": "2"}),
        "INVALID_COORDINATES",
        "geofences[1].location.latitude",
    ),
    (
        "lon -180.5",
        fence(location={"address": "x", "latitude": 1, "longitude": -180.5}),
        "INVALID_COORDINATES",
        "geofences[1].location.longitude",
    ),
    (
        "NaN",
        fence(location={"address": "x", "latitude": "NaN", "longitude": "2"}),
        "INVALID_COORDINATES",
        "geofences[1].location.latitude",
    ),
    (
        "Infinity",
        fence(location={"address": "x", "latitude": "1", "longitude": "-Infinity"}),
        "INVALID_COORDINATES",
        "geofences[1].location.longitude",
    ),
    (
        "unknown job",
        fence(jobIds=["job-invalid"]),
        "JOBS_NOT_IN_TIME_CLOCK",
        "geofences[1].job_ids",
    ),
    (
        "duplicate job",
        fence(jobIds=["job-123", "job-123"]),
        "INVALID_ARGUMENT",
        "geofences[1].job_ids",
    ),
    (
        "101 jobs",
        fence(jobIds=[f"job-{i}" for i in range(101)]),
        "TOO_MANY_JOB_IDS",
        "geofences[1].job_ids",
    ),
    (
        "bad action",
        fence(onGeofenceExitAction="explode"),
        "INVALID_EXIT_ACTION",
        "geofences[1].on_geofence_exit_action",
    ),
]


@pytest.mark.parametrize("case", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_each_invalid_fence_is_rejected_and_nothing_is_written(
    client: Client, case: tuple[str, dict[str, Any], str, str]
) -> None:
    _, bad, reason, path = case
    tc = make_time_clock(client)
    body = {"geofences": [fence(name="good one"), bad]}
    err, violations = expect_error(
        lambda: create(client, tc.id, body), grpc.StatusCode.INVALID_ARGUMENT, reason
    )
    assert (path, reason) in violations
    assert path in (err.details() or "")
    listed = client(
        client.geofences.ListGeofences, geofences_pb2.ListGeofencesRequest(time_clock_id=tc.id)
    )
    assert list(listed.data.geofences) == []


def test_every_invalid_fence_is_named(client: Client) -> None:
    tc = make_time_clock(client)
    body = {"geofences": [fence(), fence(fenceSize=10), fence(), fence(name="", fenceSize=5000)]}
    _, violations = expect_error(
        lambda: create(client, tc.id, body), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FENCE_SIZE"
    )
    assert set(violations) == {
        ("geofences[1].fence_size", "INVALID_FENCE_SIZE"),
        ("geofences[3].name", "INVALID_NAME"),
        ("geofences[3].fence_size", "INVALID_FENCE_SIZE"),
    }


def test_job_ids_required_when_the_time_clock_enforces_jobs(client: Client) -> None:
    tc = make_time_clock(client, job_enforcement=True)
    expect_error(
        lambda: create(client, tc.id, SINGLE), grpc.StatusCode.INVALID_ARGUMENT, "JOB_IDS_REQUIRED"
    )
    out = create(client, tc.id, WITH_JOB)
    assert len(out["data"]["geofences"]) == 1


def test_sub_jobs_are_jobs_of_the_time_clock(client: Client) -> None:
    tc = make_time_clock(client)
    out = create(client, tc.id, {"geofences": [fence(jobIds=["job-construction-001-a"])]})
    assert len(out["data"]["geofences"]) == 1


def test_count_limits(client: Client) -> None:
    tc = make_time_clock(client)
    expect_error(
        lambda: create(client, tc.id, {"geofences": []}),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )
    expect_error(
        lambda: create(client, tc.id, {"geofences": [fence()] * 1001}),
        grpc.StatusCode.INVALID_ARGUMENT,
        "TOO_MANY_GEOFENCES",
    )
    out = create(client, tc.id, {"geofences": [fence(name=f"f{i}") for i in range(1000)]})
    assert len(out["data"]["geofences"]) == 1000
    assert len({g["fenceId"] for g in out["data"]["geofences"]}) == 1000


def test_huge_messages_are_refused_cleanly(client: Client) -> None:
    tc = make_time_clock(client)
    # 10 MB in one name: under the transport cap, so the rules answer.
    expect_error(
        lambda: create(client, tc.id, {"geofences": [fence(name="x" * 10_000_000)]}),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_NAME",
    )
    # 40 MB: over the server's 32 MiB receive cap.
    req = geofences_pb2.CreateGeofencesRequest(time_clock_id=tc.id)
    req.geofences.add(name="y" * 40_000_000)
    with pytest.raises(grpc.RpcError) as exc:
        client(client.geofences.CreateGeofences, req)
    assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    listed = client(
        client.geofences.ListGeofences, geofences_pb2.ListGeofencesRequest(time_clock_id=tc.id)
    )
    assert list(listed.data.geofences) == []


def test_numbers_and_numeric_strings_parse_the_same() -> None:
    as_text = json_format.ParseDict(SINGLE, geofences_pb2.CreateGeofencesRequest())
    as_numbers = json_format.ParseDict(
        {
            "geofences": [
                {
                    **SINGLE["geofences"][0],
                    "location": {
                        "address": "789 Business Park, Chicago, IL 60601",
                        "latitude": 41.8781,
                        "longitude": -87.6298,
                    },
                }
            ]
        },
        geofences_pb2.CreateGeofencesRequest(),
    )
    assert as_text == as_numbers
    nan = json_format.ParseDict(
        {"geofences": [fence(location={"address": "a", "latitude": "NaN", "longitude": "1"})]},
        geofences_pb2.CreateGeofencesRequest(),
    )
    assert math.isnan(nan.geofences[0].location.latitude)


def test_job_named_by_a_fence_cannot_be_removed(client: Client) -> None:
    tc = make_time_clock(client)
    create(client, tc.id, WITH_JOB)
    changed = admin_pb2.TimeClock()
    changed.CopyFrom(tc)
    del changed.jobs[2]
    expect_error(
        lambda: client(
            client.admin.UpdateTimeClock, admin_pb2.UpdateTimeClockRequest(time_clock=changed)
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "JOB_IN_USE",
    )
