"""Fence membership against pyproj.Geod.inv, near boundaries, everywhere on Earth."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyproj import Geod

from geopunch.domain.models import ExitAction, Geofence, Job, TimeClock
from geopunch.geo.frames import geodesic_distance
from geopunch.geo.index import FenceIndex
from geopunch.geo.membership import check_points

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


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_random_fleets_match_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_clocks = int(rng.integers(1, 6))
    clocks = [clock(i + 1, float(rng.choice([0, 20]))) for i in range(n_clocks)]
    fences = []
    for tc in clocks:
        clat, clon = rng.uniform(-90, 90), rng.uniform(-180, 180)
        for j in range(int(rng.integers(0, 30))):
            flon, flat, _ = GEOD.fwd(clon, clat, rng.uniform(-180, 180), rng.uniform(0, 4000))
            jobs = ("a",) if j % 4 == 0 else ()
            fences.append(
                fence(f"{tc.id}-{j}", tc.id, flat, flon, int(rng.integers(75, 1525)), jobs)
            )
    if not fences:
        return
    snap = FenceIndex().load(clocks, fences)
    n = 200
    pick = rng.integers(0, len(fences), n)
    base = [fences[i] for i in pick]
    plon, plat, _ = GEOD.fwd(
        [f.longitude for f in base],
        [f.latitude for f in base],
        rng.uniform(-180, 180, n),
        rng.uniform(0, 2000, n),
    )
    tcs = np.array([f.time_clock_id for f in base])
    acc = np.where(rng.random(n) < 0.5, rng.uniform(0, 50, n), np.nan)
    jobs = rng.integers(-1, 2, n).astype(np.int32)
    result = check_points(snap, plat, plon, tcs, jobs, ["a", "b"], acc, with_distance=True)
    ids = snap.fence_ids(result.fence_handles)
    for i in range(n):
        tol = clocks[int(tcs[i]) - 1].accuracy_tolerance_m
        extra = 0.0 if np.isnan(acc[i]) else min(acc[i], tol)
        mine = [f for f in fences if f.time_clock_id == tcs[i]]
        d = geodesic_distance(
            plat[i], plon[i], [f.latitude for f in mine], [f.longitude for f in mine]
        )
        limit = np.array([f.fence_size_m for f in mine]) + extra
        clear = np.abs(d - limit) > TOLERANCE_M
        want = {f.id for f, inside in zip(mine, d <= limit, strict=True) if inside}
        got = set(ids[result.offsets[i] : result.offsets[i + 1]])
        unsure = {f.id for f, c in zip(mine, clear, strict=True) if not c}
        assert want - unsure == got - unsure
        job = ["a", "b"][jobs[i]] if jobs[i] >= 0 else None
        applicable = [job is None or not f.job_ids or job in f.job_ids for f in mine]
        allowed = any(a and w for a, w in zip(applicable, d <= limit, strict=True))
        if not (np.abs(d - limit)[applicable] <= TOLERANCE_M).any():
            assert result.allowed[i] == allowed
        signed = (d - np.array([f.fence_size_m for f in mine]))[applicable]
        if signed.size:
            assert result.distance_m is not None
            assert abs(result.distance_m[i] - signed.min()) < 0.01 * max(1.0, abs(signed.min()))
        else:
            assert result.distance_m is not None and np.isnan(result.distance_m[i])
