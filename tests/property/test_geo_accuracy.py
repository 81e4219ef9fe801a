"""Fence membership against pyproj.Geod.inv, near boundaries, everywhere on Earth."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pyproj import Geod

from geopunch.domain.locations import F64, I32, I64
from geopunch.domain.models import ExitAction, Geofence, Job, TimeClock
from geopunch.geo._frames import geodesic_distance
from geopunch.geo._membership import check_points
from geopunch.geo.engine import FenceIndex
from tests.reference_engine import ReferenceEngine

GEOD = Geod(ellps="WGS84")
TOLERANCE_M = 1e-3


def clock(i: int, tolerance: float = 0.0) -> TimeClock:
    return TimeClock(
        id=i, name="c", timezone="UTC", jobs=(Job("a"), Job("b")), accuracy_tolerance_m=tolerance
    )


def fence(
    fid: str, tc: int, lat: float, lon: float, r: int, jobs: tuple[str, ...] = ()
) -> Geofence:
    return Geofence(fid, tc, "n", True, r, jobs, ExitAction.NO_ACTION, "addr", lat, lon)


latitudes = st.one_of(
    st.floats(-90, 90),
    st.floats(89.9, 90),
    st.floats(-90, -89.9),
    st.floats(-0.01, 0.01),
)
longitudes = st.one_of(st.floats(-180, 180), st.floats(179.99, 180), st.floats(-180, -179.99))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lat=latitudes,
    lon=longitudes,
    radius=st.integers(75, 1524),
    azimuths=st.lists(st.floats(-180, 180), min_size=1, max_size=16),
    offsets=st.lists(st.floats(-0.05, 0.05) | st.floats(-3000, 3000), min_size=16, max_size=16),
)
def test_membership_agrees_with_geod_near_the_boundary(
    lat: float, lon: float, radius: int, azimuths: list[float], offsets: list[float]
) -> None:
    index = FenceIndex()
    snap = index.load([clock(1)], [fence("f", 1, lat, lon, radius)])
    az = np.resize(np.asarray(azimuths), 16)
    dist = np.clip(radius + np.asarray(offsets), 0, None)
    plon, plat, _ = GEOD.fwd(np.full(16, lon), np.full(16, lat), az, dist)
    result = check_points(snap, plat, plon, 1)
    truth = geodesic_distance(plat, plon, lat, lon)
    clear = np.abs(truth - radius) > TOLERANCE_M
    expected = truth <= radius
    assert (result.inside[clear] == expected[clear]).all(), (
        truth[clear][result.inside[clear] != expected[clear]] - radius
    )


def _distance(lat: float, lon: float, f: Geofence) -> float:
    return float(geodesic_distance(lat, lon, f.latitude, f.longitude))


@st.composite
def fleets(draw: st.DrawFn) -> tuple[list[TimeClock], list[Geofence]]:
    """1-4 time clocks anywhere on Earth, each with up to 12 fences within 4 km
    of its centre (a quarter of them for job "a" only)."""
    clocks = [
        clock(i + 1, draw(st.sampled_from([0.0, 20.0]))) for i in range(draw(st.integers(1, 4)))
    ]
    fences = []
    for tc in clocks:
        clat, clon = draw(latitudes), draw(longitudes)
        for j in range(draw(st.integers(0, 12))):
            flon, flat, _ = GEOD.fwd(
                clon, clat, draw(st.floats(-180, 180)), draw(st.floats(0, 4000))
            )
            jobs = ("a",) if j % 4 == 0 else ()
            fences.append(
                fence(f"{tc.id}-{j}", tc.id, flat, flon, draw(st.integers(75, 1524)), jobs)
            )
    assume(fences)
    return clocks, fences


# Built once: a strategy made inside the loop below (a union above all)
# worked out its properties again at every draw, most of this test's time.
_BEARINGS = st.floats(-180, 180)
_DISTANCES = st.floats(0, 2000) | st.floats(0, 4000)
_ACCURACIES = st.none() | st.floats(0, 50)
_JOBS = st.integers(-1, 1)


@st.composite
def probes(draw: st.DrawFn, fences: list[Geofence]) -> tuple[F64, F64, I64, F64, I32]:
    """Points near the fences (up to 4 km from a centre), with accuracies and jobs."""
    n = draw(st.integers(1, 40))
    which = st.integers(0, len(fences) - 1)
    base = [fences[draw(which)] for _ in range(n)]
    plon, plat, _ = GEOD.fwd(
        [f.longitude for f in base],
        [f.latitude for f in base],
        [draw(_BEARINGS) for _ in range(n)],
        [draw(_DISTANCES) for _ in range(n)],
    )
    acc = [draw(_ACCURACIES) for _ in range(n)]
    return (
        np.asarray(plat, np.float64),
        np.asarray(plon, np.float64),
        np.array([f.time_clock_id for f in base], np.int64),
        np.array([np.nan if a is None else a for a in acc], np.float64),
        np.array([draw(_JOBS) for _ in range(n)], np.int32),
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), fleet=fleets())
def test_random_fleets_match_the_reference_engine(
    data: st.DataObject, fleet: tuple[list[TimeClock], list[Geofence]]
) -> None:
    """The index answers CheckLocations as the brute-force reference does, but
    where a point lies within a millimetre of a limit (both are then right)."""
    clocks, fences = fleet
    plat, plon, tcs, acc, jobs = data.draw(probes(fences))
    engine = FenceIndex()
    engine.load(clocks, fences)
    reference = ReferenceEngine()
    reference.load(1, clocks, fences)
    args = (plat, plon, tcs, jobs, ["a", "b"], acc)
    got = engine.view().check(*args, with_distance=True)
    want = reference.view(1).check(*args, with_distance=True)
    assert got.status.tolist() == want.status.tolist()
    got_ids, want_ids = got.ids.tolist(), want.ids.tolist()
    tolerance = {tc.id: tc.accuracy_tolerance_m for tc in clocks}
    for i in range(plat.size):
        extra = 0.0 if np.isnan(acc[i]) else min(acc[i], tolerance[int(tcs[i])])
        mine = [f for f in fences if f.time_clock_id == tcs[i]]
        unsure = {
            f.id
            for f in mine
            if abs(
                geodesic_distance(plat[i], plon[i], f.latitude, f.longitude)
                - f.fence_size_m
                - extra
            )
            <= TOLERANCE_M
        }
        lo, hi = got.offsets[i], got.offsets[i + 1]
        matched = {got_ids[k] for k in got.fences[lo:hi]}
        expected = {want_ids[k] for k in want.fences[want.offsets[i] : want.offsets[i + 1]]}
        assert matched - unsure == expected - unsure, i
        if not unsure:
            assert got.allowed[i] == want.allowed[i], i
        assert got.distance_m is not None and want.distance_m is not None
        if np.isnan(want.distance_m[i]):
            assert np.isnan(got.distance_m[i])
        else:
            d = want.distance_m[i]
            assert abs(got.distance_m[i] - d) < 0.01 * max(1.0, abs(d)), i
