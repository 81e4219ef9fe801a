"""Seeded fleet workload: time clocks in cities at every latitude, fences, GPS points.

Cities span the Arctic to the Antarctic, the equator and both sides of the
antimeridian (Suva and a site at 179.99 E). Each time clock sits in one city
with its fences scattered within ``spread_m`` of the centre; half the points
fall within a few metres of a fence boundary, the rest anywhere in the city.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from pyproj import Geod

from geopunch.domain.models import ExitAction, Geofence, Job, TimeClock

CITIES: list[tuple[str, float, float]] = [
    ("Longyearbyen", 78.2232, 15.6267),
    ("Alert", 82.5018, -62.3481),
    ("McMurdo", -77.8419, 166.6863),
    ("Amundsen-Scott", -89.99, 0.0),
    ("Reykjavik", 64.1466, -21.9426),
    ("Oslo", 59.9139, 10.7522),
    ("London", 51.5072, -0.1276),
    ("New York", 40.7128, -74.0060),
    ("Chicago", 41.8781, -87.6298),
    ("Houston", 29.7604, -95.3698),
    ("Mexico City", 19.4326, -99.1332),
    ("Quito", -0.1807, -78.4678),
    ("Singapore", 1.3521, 103.8198),
    ("Nairobi", -1.2921, 36.8219),
    ("Sao Paulo", -23.5558, -46.6396),
    ("Cape Town", -33.9249, 18.4241),
    ("Sydney", -33.8688, 151.2093),
    ("Tokyo", 35.6762, 139.6503),
    ("Anchorage", 61.2181, -149.9003),
    ("Suva", -18.1416, 178.4419),
    ("Antimeridian", -16.5, 179.99),
    ("Ushuaia", -54.8019, -68.3030),
]

GEOD = Geod(ellps="WGS84")


@dataclass(frozen=True)
class Fleet:
    time_clocks: list[TimeClock]
    fences: list[Geofence]
    # fence columns, for baselines (same order as ``fences``)
    fence_clock: npt.NDArray[np.int64]
    fence_lat: npt.NDArray[np.float64]
    fence_lon: npt.NDArray[np.float64]
    fence_radius: npt.NDArray[np.float64]
    # points
    point_clock: npt.NDArray[np.int64]
    point_lat: npt.NDArray[np.float64]
    point_lon: npt.NDArray[np.float64]


def make_fleet(
    clocks: int, fences_per_clock: int, points: int, seed: int = 0, spread_m: float = 15_000.0
) -> Fleet:
    rng = np.random.default_rng(seed)
    city = rng.integers(0, len(CITIES), clocks)
    clat = np.array([CITIES[c][1] for c in city])
    clon = np.array([CITIES[c][2] for c in city])
    m = clocks * fences_per_clock
    owner = np.repeat(np.arange(clocks), fences_per_clock)
    flon, flat, _ = GEOD.fwd(
        clon[owner], clat[owner], rng.uniform(-180, 180, m), spread_m * np.sqrt(rng.random(m))
    )
    radius = rng.integers(75, 1525, m).astype(np.float64)
    jobs = (Job("job-a"), Job("job-b"), Job("job-a1", parent_id="job-a"))
    time_clocks = [
        TimeClock(id=i + 1, name=f"clock {i + 1}", timezone="UTC", jobs=jobs) for i in range(clocks)
    ]
    actions = list(ExitAction)
    fences = [
        Geofence(
            id=f"fence-{k:032x}",
            time_clock_id=int(owner[k]) + 1,
            name=f"site {k}",
            is_enabled=True,
            fence_size_m=int(radius[k]),
            job_ids=("job-a",) if k % 5 == 0 else (),
            exit_action=actions[k % 3],
            address="somewhere",
            latitude=float(flat[k]),
            longitude=float(flon[k]),
        )
        for k in range(m)
    ]
    # points: half near a boundary of a fence of their clock, half anywhere in the city
    pick = rng.integers(0, m, points)
    near = rng.random(points) < 0.5
    dist = np.where(
        near,
        np.clip(radius[pick] + rng.normal(0, 5, points), 0, None),
        rng.uniform(0, spread_m, points),
    )
    base_lat = np.where(near, flat[pick], clat[owner[pick]])
    base_lon = np.where(near, flon[pick], clon[owner[pick]])
    plon, plat, _ = GEOD.fwd(base_lon, base_lat, rng.uniform(-180, 180, points), dist)
    return Fleet(
        time_clocks=time_clocks,
        fences=fences,
        fence_clock=owner.astype(np.int64) + 1,
        fence_lat=np.asarray(flat),
        fence_lon=np.asarray(flon),
        fence_radius=radius,
        point_clock=owner[pick].astype(np.int64) + 1,
        point_lat=np.asarray(plat),
        point_lon=np.asarray(plon),
    )
