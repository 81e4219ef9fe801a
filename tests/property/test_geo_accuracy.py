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


def _fleet_case(seed: int) -> None:
    """One random fleet: the index answers as a brute-force exact reference does."""
    rng = np.random.default_rng(seed)
    n_clocks = int(rng.integers(1, 5))
    clocks = [clock(i + 1, float(rng.choice([0.0, 20.0]))) for i in range(n_clocks)]
    fences = []
    for tc in clocks:
        clat, clon = rng.uniform(-90, 90), rng.uniform(-180, 180)
        for j in range(int(rng.integers(0, 12))):
            flon, flat, _ = GEOD.fwd(clon, clat, rng.uniform(-180, 180), rng.uniform(0, 4000))
            jobs = ("a",) if j % 4 == 0 else ()
            fences.append(
                fence(f"{tc.id}-{j}", tc.id, flat, flon, int(rng.integers(75, 1525)), jobs)
            )
    if not fences:
        return
    snap = FenceIndex().load(clocks, fences)
    n = 40
    pick = rng.integers(0, len(fences), n)
    base = [fences[i] for i in pick]
    plon, plat, _ = GEOD.fwd(
        [f.longitude for f in base],
        [f.latitude for f in base],
        rng.uniform(-180, 180, n),
        np.where(rng.random(n) < 0.5, rng.uniform(0, 2000, n), rng.normal(1000, 600, n).clip(0)),
    )
    tcs = np.array([f.time_clock_id for f in base])
    acc = np.where(rng.random(n) < 0.5, rng.uniform(0, 50, n), np.nan)
    jobs = rng.integers(-1, 2, n).astype(np.int32)
    result = check_points(snap, plat, plon, tcs, jobs, ["a", "b"], acc, with_distance=True)
    ids = snap.fence_ids(result.fence_handles)
    # the reference: every point against every fence, exact geodesics
    f_lat = np.array([f.latitude for f in fences])
    f_lon = np.array([f.longitude for f in fences])
    f_r = np.array([f.fence_size_m for f in fences], dtype=float)
    f_tc = np.array([f.time_clock_id for f in fences])
    d = geodesic_distance(
        np.repeat(plat, len(fences)),
        np.repeat(plon, len(fences)),
        np.tile(f_lat, n),
        np.tile(f_lon, n),
    ).reshape(n, len(fences))
    tol = np.array([clocks[int(t) - 1].accuracy_tolerance_m for t in tcs])
    extra = np.where(np.isnan(acc), 0.0, np.minimum(np.nan_to_num(acc), tol))
    limit = f_r[None, :] + extra[:, None]
    mine = f_tc[None, :] == tcs[:, None]
    inside = mine & (d <= limit)
    unsure = mine & (np.abs(d - limit) <= TOLERANCE_M)
    job_names = np.array(["a", "b"])
    for i in range(n):
        got = set(ids[result.offsets[i] : result.offsets[i + 1]])
        want = {fences[j].id for j in np.flatnonzero(inside[i])}
        skip = {fences[j].id for j in np.flatnonzero(unsure[i])}
        assert want - skip == got - skip, (seed, i)
        job = job_names[jobs[i]] if jobs[i] >= 0 else None
        applicable = np.array([job is None or not f.job_ids or job in f.job_ids for f in fences])
        applicable &= mine[i]
        if not (unsure[i] & applicable).any():
            assert result.allowed[i] == bool((inside[i] & applicable).any()), (seed, i)
        signed = (d[i] - f_r)[applicable]
        assert result.distance_m is not None
        if signed.size:
            assert abs(result.distance_m[i] - signed.min()) < 0.01 * max(1.0, abs(signed.min()))
        else:
            assert np.isnan(result.distance_m[i])


def test_thousands_of_random_fleets_match_brute_force() -> None:
    for seed in range(2000):
        _fleet_case(seed)


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_random_fleets_match_brute_force(seed: int) -> None:
    _fleet_case(seed)
