"""LocationService.CheckLocations end to end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from pyproj import Geod

from geopunch.v1 import admin_pb2, geofences_pb2, location_pb2
from tests.conftest import Client, ServerProcess, make_time_clock
from tests.helpers import expect_error

GEOD = Geod(ellps="WGS84")


def add_fence(client: Client, tc_id: int, lat: float, lon: float, size: int, **kw: object) -> str:
    req = geofences_pb2.CreateGeofencesRequest(time_clock_id=tc_id)
    g = req.geofences.add(name=str(kw.pop("name", "f")), fence_size=size, **kw)
    g.location.address = "addr"
    g.location.latitude = lat
    g.location.longitude = lon
    return str(client(client.geofences.CreateGeofences, req).data.geofences[0].fence_id)


def at(lat: float, lon: float, dist: float, az: float = 45.0) -> tuple[float, float]:
    lon2, lat2, _ = GEOD.fwd(lon, lat, az, dist)
    return lat2, lon2


def decode(data: location_pb2.CheckResults) -> dict[str, Any]:
    n = data.count
    out: dict[str, Any] = {
        "status": np.frombuffer(data.status_u8, np.uint8),
        "inside": np.frombuffer(data.inside_u8, np.uint8).astype(bool),
        "allowed": np.frombuffer(data.allowed_u8, np.uint8).astype(bool),
        "offsets": np.frombuffer(data.match_offsets_i64, "<i8"),
        "fences": np.frombuffer(data.match_fences_i32, "<i4"),
        "applicable": np.frombuffer(data.match_applicable_u8, np.uint8).astype(bool),
        "actions": np.frombuffer(data.match_actions_i8, np.int8),
    }
    offsets = out["offsets"]
    fences = out["fences"]
    if data.fence_id_width:
        assert not data.fence_ids
        fixed = np.frombuffer(data.fence_ids_fixed, f"S{data.fence_id_width}")
        names = [x.decode() for x in fixed.tolist()]
    else:
        names = list(data.fence_ids)
    out["names"] = names
    out["ids"] = [sorted(names[j] for j in fences[offsets[i] : offsets[i + 1]]) for i in range(n)]
    if data.distances_f64:
        out["distance"] = np.frombuffer(data.distances_f64, "<f8")
        nearest = np.frombuffer(data.nearest_fences_i32, "<i4")
        out["nearest"] = [names[j] if j >= 0 else None for j in nearest]
    return out


def raw_request(
    tc_id: int, lats: list[float], lons: list[float], **kw: object
) -> location_pb2.CheckLocationsRequest:
    req = location_pb2.CheckLocationsRequest(time_clock_id=tc_id, **kw)  # type: ignore[arg-type]
    req.raw.latitudes_f64 = np.asarray(lats, "<f8").tobytes()
    req.raw.longitudes_f64 = np.asarray(lons, "<f8").tobytes()
    return req


def test_packed_and_raw_give_the_same_answers(client: Client) -> None:
    tc = make_time_clock(client)
    home = add_fence(client, tc.id, 40.7128, -74.0060, 150, on_geofence_exit_action="autoClockOut")
    add_fence(client, tc.id, 40.7345, -74.0055, 200, job_ids=["job-123"])
    pts = [at(40.7128, -74.0060, d) for d in (0, 149.99, 150.01, 5000)]
    lats, lons = [p[0] for p in pts], [p[1] for p in pts]
    packed = location_pb2.CheckLocationsRequest(
        time_clock_id=tc.id, packed=location_pb2.PackedPoints(latitudes=lats, longitudes=lons)
    )
    a = decode(client(client.locations.CheckLocations, packed).data)
    b = decode(client(client.locations.CheckLocations, raw_request(tc.id, lats, lons)).data)
    for key in ("status", "inside", "allowed", "offsets", "applicable", "actions"):
        assert np.array_equal(a[key], b[key]), key
    assert a["ids"] == b["ids"]
    assert list(a["inside"]) == [True, True, False, False]
    assert home in a["ids"][0] and home in a["ids"][1]
    assert list(a["status"]) == [0, 0, 0, 0]


def test_fixed_width_fence_ids_give_the_same_answers(client: Client) -> None:
    tc = make_time_clock(client)
    fences = [add_fence(client, tc.id, 40.7128, -74.0060 + k * 1e-3, 150 + k) for k in range(5)]
    pts = [at(40.7128, -74.0060 + k * 5e-4, d) for k in range(10) for d in (0, 140, 400)]
    lats, lons = [p[0] for p in pts], [p[1] for p in pts]
    plain = decode(
        client(
            client.locations.CheckLocations,
            raw_request(tc.id, lats, lons, with_distance=True),
        ).data
    )
    fixed = decode(
        client(
            client.locations.CheckLocations,
            raw_request(tc.id, lats, lons, with_distance=True, fixed_width_fence_ids=True),
        ).data
    )
    assert fixed["names"] == plain["names"] and set(plain["names"]) <= set(fences)
    assert fixed["ids"] == plain["ids"] and any(plain["ids"])
    assert fixed["nearest"] == plain["nearest"]
    empty = client(
        client.locations.CheckLocations,
        raw_request(tc.id, [0.0], [0.0], fixed_width_fence_ids=True),
    ).data
    assert empty.fence_ids_fixed == b"" and decode(empty)["ids"] == [[]]


def test_jobs_sub_jobs_distance_and_actions(client: Client) -> None:
    tc = make_time_clock(client)
    site = add_fence(
        client,
        tc.id,
        29.7604,
        -95.3698,
        500,
        job_ids=["job-construction-001"],
        on_geofence_exit_action="autoClockOut",
    )
    lat, lon = at(29.7604, -95.3698, 300)
    far_lat, far_lon = at(29.7604, -95.3698, 1500)
    req = raw_request(
        tc.id,
        [lat, lat, lat, far_lat],
        [lon, lon, lon, far_lon],
        job_ids=["job-construction-001-a", "job-123"],
        with_distance=True,
    )
    req.raw.job_indexes_i32 = np.asarray([0, 1, -1, 0], "<i4").tobytes()
    out = decode(client(client.locations.CheckLocations, req).data)
    assert list(out["inside"]) == [True, True, True, False]
    assert list(out["allowed"]) == [True, False, True, False]
    assert list(out["applicable"]) == [True, False, True]
    assert list(out["actions"]) == [2, 2, 2]
    dist = out["distance"]
    assert dist[0] == pytest.approx(-200, abs=1e-6)
    assert np.isnan(dist[1])  # job-123 has no applicable fence
    assert dist[3] == pytest.approx(1000, abs=1e-6)
    assert out["nearest"] == [site, None, site, site]


def test_accuracy_tolerance(client: Client) -> None:
    tc = make_time_clock(client, accuracy_tolerance_m=20.0)
    add_fence(client, tc.id, 10.0, 10.0, 100)
    lat, lon = at(10.0, 10.0, 110)
    req = raw_request(tc.id, [lat] * 4, [lon] * 4)
    req.raw.accuracies_f64 = np.asarray([np.nan, 5.0, 15.0, 500.0], "<f8").tobytes()
    out = decode(client(client.locations.CheckLocations, req).data)
    assert list(out["inside"]) == [False, False, True, True]


def test_mixed_fleet_and_per_point_errors(client: Client) -> None:
    a, b = make_time_clock(client), make_time_clock(client)
    fa = add_fence(client, a.id, -33.8688, 151.2093, 300)
    fb = add_fence(client, b.id, -33.8688, 151.2093, 300)
    req = location_pb2.CheckLocationsRequest(
        packed=location_pb2.PackedPoints(
            latitudes=[-33.8688, -33.8688, float("nan"), 91.0, -33.8688, -33.8688],
            longitudes=[151.2093] * 6,
            time_clock_ids=[a.id, b.id, a.id, a.id, 987654321, a.id],
            accuracies=[0, 0, 0, 0, 0, -1],
        )
    )
    out = decode(client(client.locations.CheckLocations, req).data)
    assert list(out["status"]) == [0, 0, 1, 1, 2, 4]
    assert out["ids"] == [[fa], [fb], [], [], [], []]


def test_a_change_is_seen_by_the_next_check(client: Client) -> None:
    tc = make_time_clock(client)
    req = raw_request(tc.id, [51.5007], [-0.1246])
    assert not decode(client(client.locations.CheckLocations, req).data)["inside"][0]
    fid = add_fence(client, tc.id, 51.5007, -0.1246, 100)
    assert decode(client(client.locations.CheckLocations, req).data)["ids"] == [[fid]]
    client(
        client.geofences.DeleteGeofence,
        geofences_pb2.DeleteGeofenceRequest(time_clock_id=tc.id, fence_id=fid),
    )
    assert decode(client(client.locations.CheckLocations, req).data)["ids"] == [[]]
    disabled = add_fence(client, tc.id, 51.5007, -0.1246, 100, is_enabled=False)
    assert disabled
    assert decode(client(client.locations.CheckLocations, req).data)["ids"] == [[]]


def test_time_clock_update_reaches_the_index(client: Client) -> None:
    tc = make_time_clock(client)
    add_fence(client, tc.id, 0.0, 0.0, 100)
    lat, lon = at(0.0, 0.0, 110)
    req = raw_request(tc.id, [lat], [lon])
    req.raw.accuracies_f64 = np.asarray([30.0], "<f8").tobytes()
    assert not decode(client(client.locations.CheckLocations, req).data)["inside"][0]
    tc.accuracy_tolerance_m = 25
    client(client.admin.UpdateTimeClock, admin_pb2.UpdateTimeClockRequest(time_clock=tc))
    assert decode(client(client.locations.CheckLocations, req).data)["inside"][0]


def test_request_errors(client: Client) -> None:
    tc = make_time_clock(client)
    expect_error(
        lambda: client(client.locations.CheckLocations, raw_request(987654321, [1], [1])),
        grpc.StatusCode.NOT_FOUND,
        "TIME_CLOCK_NOT_FOUND",
    )
    expect_error(
        lambda: client(client.locations.CheckLocations, raw_request(tc.id, [1, 2], [1])),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )
    bad = raw_request(tc.id, [1], [1])
    bad.raw.latitudes_f64 = b"1234567"
    expect_error(
        lambda: client(client.locations.CheckLocations, bad),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )
    expect_error(
        lambda: client(
            client.locations.CheckLocations, raw_request(tc.id, [1], [1], job_id="nope")
        ),
        grpc.StatusCode.NOT_FOUND,
        "JOB_NOT_FOUND",
    )
    expect_error(
        lambda: client(client.locations.CheckLocations, raw_request(0, [1], [1])),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )
    big = raw_request(tc.id, np.zeros(1_000_001).tolist(), np.zeros(1_000_001).tolist())
    expect_error(
        lambda: client(client.locations.CheckLocations, big),
        grpc.StatusCode.INVALID_ARGUMENT,
        "BATCH_TOO_LARGE",
    )
    empty = decode(client(client.locations.CheckLocations, raw_request(tc.id, [], [])).data)
    assert list(empty["offsets"]) == [0]


def test_index_is_rebuilt_from_the_store_after_restart(tmp_path: Path) -> None:
    srv = ServerProcess(db_url=f"sqlite:///{tmp_path / 'idx.db'}")
    srv.start(tmp_path)
    c = Client(srv.address)
    tc = make_time_clock(c)
    fid = add_fence(c, tc.id, 78.2232, 15.6267, 1000)  # Longyearbyen
    c.close()
    srv.kill()
    srv.start(tmp_path)
    c = Client(srv.address)
    try:
        out = decode(c(c.locations.CheckLocations, raw_request(tc.id, [78.2232], [15.6267])).data)
        assert out["ids"] == [[fid]]
    finally:
        c.close()
        srv.terminate()
