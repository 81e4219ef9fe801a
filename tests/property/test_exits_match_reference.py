"""Exit detection on random trails agrees with the sample-by-sample reference engine."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pyproj import Geod

from geopunch.domain.locations import Held, TrailVerdict
from geopunch.domain.models import ExitAction, ExitDetectionSettings, Geofence, Job, TimeClock
from geopunch.geo.engine import FenceIndex
from tests.reference_engine import ReferenceEngine

GEOD = Geod(ellps="WGS84")
SETTINGS = ExitDetectionSettings()
CLOCKS = [
    TimeClock(
        id=c,
        name="c",
        timezone="UTC",
        jobs=(Job("a"), Job("a1", parent_id="a"), Job("b")),
        exit_detection=SETTINGS,
    )
    for c in (1, 2)
]
ACTIONS = list(ExitAction)


@st.composite
def worlds(draw: st.DrawFn) -> tuple[float, float, list[Geofence]]:
    lat, lon = draw(st.floats(-85, 85)), draw(st.floats(-180, 180))
    fences = []
    for c in (1, 2):
        for k in range(draw(st.integers(1, 4))):
            flon, flat, _ = GEOD.fwd(lon, lat, draw(st.floats(-180, 180)), draw(st.floats(0, 600)))
            jobs = draw(st.sampled_from([(), ("a",), ("b",)]))
            fences.append(
                Geofence(
                    f"f{c}{k}",
                    c,
                    "n",
                    True,
                    draw(st.integers(75, 400)),
                    jobs,
                    draw(st.sampled_from(ACTIONS)),
                    "x",
                    flat,
                    flon,
                )
            )
    return lat, lon, fences


def _margins(lat: float, lon: float, fences: list[Geofence], clock: int) -> list[float]:
    """Distance from the point to every limit a sample can be judged against."""
    out = []
    for f in fences:
        if f.time_clock_id != clock:
            continue
        d = GEOD.inv(f.longitude, f.latitude, lon, lat)[2]
        for extra in (
            0.0,
            SETTINGS.buffer_high_accuracy_m,
            SETTINGS.buffer_low_accuracy_m,
            SETTINGS.buffer_unknown_accuracy_m,
        ):
            out.append(abs(d - f.fence_size_m - extra))
    return out


def _exits(r: TrailVerdict) -> list[tuple[int, str, int, bool]]:
    return sorted(
        zip(
            r.exit_samples.tolist(),
            r.exit_fence_ids.tolist(),
            r.exit_actions.tolist(),
            r.exit_other_inside.tolist(),
            strict=True,
        )
    )


def _entries(r: TrailVerdict) -> list[tuple[int, str]]:
    return sorted(zip(r.enter_samples.tolist(), r.enter_fence_ids.tolist(), strict=True))


def _held(h: Held) -> set[tuple[int, int, str]]:
    return set(zip(h.user_ids.tolist(), h.time_clock_ids.tolist(), h.fence_ids, strict=True))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(world=worlds(), data=st.data())
def test_exits_and_entries_match_the_reference_engine(
    world: tuple[float, float, list[Geofence]], data: st.DataObject
) -> None:
    lat, lon, fences = world
    n = data.draw(st.integers(1, 30))
    users = np.array(data.draw(st.lists(st.integers(1, 3), min_size=n, max_size=n)), np.int64)
    clocks = np.array(data.draw(st.lists(st.sampled_from([1, 2, 3]), min_size=n, max_size=n)))
    stamps = np.array(data.draw(st.lists(st.integers(0, 20), min_size=n, max_size=n)), np.int64)
    plon, plat, _ = GEOD.fwd(
        np.full(n, lon),
        np.full(n, lat),
        data.draw(st.lists(st.floats(-180, 180), min_size=n, max_size=n)),
        data.draw(st.lists(st.floats(0, 1200), min_size=n, max_size=n)),
    )
    plat, plon = np.asarray(plat), np.asarray(plon)
    acc = np.array(
        data.draw(
            st.lists(
                st.none() | st.sampled_from([3.0, 10.0, 60.0, 300.0, 500.0]), min_size=n, max_size=n
            )
        ),
        dtype=float,
    )
    jobs = np.array(data.draw(st.lists(st.integers(-1, 2), min_size=n, max_size=n)), np.int32)
    skip = np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)), np.bool_)
    for i in range(n):
        assume(min(_margins(plat[i], plon[i], fences, int(clocks[i])) or [1.0]) > 1e-3)
    clocks = clocks.astype(np.int64)
    held = [
        (u, c, f.id) for u in (1, 2) for c in (1, 2) for f in fences[:2] if f.time_clock_id == c
    ]
    initial = Held(
        np.array([u for u, _, _ in held], np.int64),
        np.array([c for _, c, _ in held], np.int64),
        [f for _, _, f in held],
    )
    engine, reference = FenceIndex(), ReferenceEngine()
    engine.load(CLOCKS, fences)
    reference.load(1, CLOCKS, fences)
    args = (users, clocks, stamps, plat, plon, acc)
    kw = {"job_indexes": jobs, "job_names": ["a", "a1", "b"], "skip": skip, "initial": initial}
    got = engine.view().detect_exits(*args, **kw)  # type: ignore[arg-type]
    want = reference.view(1).detect_exits(*args, **kw)  # type: ignore[arg-type]
    assert got.status.tolist() == want.status.tolist()
    assert got.inside.tolist() == want.inside.tolist()
    got_ids, want_ids = got.fence_ids.tolist(), want.fence_ids.tolist()
    for i in range(n):
        assert sorted(got_ids[got.offsets[i] : got.offsets[i + 1]]) == sorted(
            want_ids[want.offsets[i] : want.offsets[i + 1]]
        )
    assert _exits(got) == _exits(want)
    assert _entries(got) == _entries(want)
    assert _held(got.final.held()) == _held(want.final.held())
