"""Random trails: live batches through the store give the exits of one batch evaluation."""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyproj import Geod
from sqlalchemy import text

from geopunch.adapters.db.store import SqlUnitOfWorkFactory, make_engine, migrate
from geopunch.domain.accounts import DEFAULT_ACCOUNT as A
from geopunch.domain.models import ExitAction, Geofence, Job, TimeClock
from geopunch.geo.engine import AccountFences
from geopunch.service.punches import run_alone
from geopunch.service.trails import TrailBatch, evaluate_trails, report_locations
from tests.helpers import AccountStore, SetClock

GEOD = Geod(ellps="WGS84")
CENTRE = (51.5072, -0.1276)


def at(dist: float, az: float) -> tuple[float, float]:
    lon, lat, _ = GEOD.fwd(CENTRE[1], CENTRE[0], az, dist)
    return lat, lon


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[AccountStore, AccountFences]]:
    path: Path = tmp_path_factory.mktemp("live") / "store.db"
    engine = make_engine(f"sqlite:///{path}")
    migrate(engine)
    uows = AccountStore(engine)
    clocks = [
        TimeClock(id=c, name="c", timezone="UTC", jobs=(Job("a"),), user_ids=frozenset(USERS))
        for c in (1, 2)
    ]
    fences = [
        Geofence(
            f"f{c}{k}",
            c,
            "n",
            True,
            80 + 40 * k,
            (),
            ExitAction.NO_ACTION,
            "x",
            *at(120 * k, 60 * k),
        )
        for c in (1, 2)
        for k in range(3)
    ]
    with uows() as uow:
        for tc in clocks:
            uow.time_clocks.add(tc)
        uow.geofences.add_many(fences)
        uow.commit()
    index = AccountFences()
    index.load(A, clocks, fences)
    yield uows, index
    engine.dispose()


USERS = (10, 11, 12)


@st.composite
def trails(draw: st.DrawFn) -> tuple[TrailBatch, list[int]]:
    n = draw(st.integers(1, 60))
    users = [draw(st.sampled_from(USERS)) for _ in range(n)]
    clocks = [draw(st.sampled_from([1, 2])) for _ in range(n)]
    ts = sorted(draw(st.integers(0, 10_000)) for _ in range(n))
    pts = [at(draw(st.floats(0, 500)), draw(st.floats(0, 360))) for _ in range(n)]
    acc = [draw(st.sampled_from([math.nan, 5.0, 80.0, 350.0])) for _ in range(n)]
    cuts = sorted(set(draw(st.lists(st.integers(1, max(n - 1, 1)), max_size=4))))
    batch = TrailBatch(
        user_ids=np.array(users, np.int64),
        time_clock_ids=np.array(clocks, np.int64),
        timestamps=np.array(ts, np.int64) + 1_800_000_000,
        lats=np.array([p[0] for p in pts]),
        lons=np.array([p[1] for p in pts]),
        accuracy_m=np.array(acc),
    )
    return batch, [c for c in cuts if 0 < c < n]


def _part(b: TrailBatch, lo: int, hi: int) -> TrailBatch:
    assert b.accuracy_m is not None
    sl = slice(lo, hi)
    return TrailBatch(
        b.user_ids[sl],
        b.time_clock_ids[sl],
        b.timestamps[sl],
        b.lats[sl],
        b.lons[sl],
        b.accuracy_m[sl],
    )


@settings(max_examples=60, deadline=None)
@given(case=trails())
def test_live_batches_find_the_exits_of_one_evaluation(
    world: tuple[SqlUnitOfWorkFactory, AccountFences], case: tuple[TrailBatch, list[int]]
) -> None:
    uows, index = world
    batch, cuts = case
    with uows.engine.begin() as conn:  # every example starts with no live state
        conn.execute(text("DELETE FROM live_trails"))
    expected = evaluate_trails(index, A, batch, SetClock().t)
    want = {
        (int(s), f)
        for s, f in zip(expected.exits.samples.tolist(), expected.exits.fence_ids, strict=True)
    }
    got: set[tuple[int, str]] = set()
    bounds = [0, *cuts, batch.size]
    for lo, hi in itertools.pairwise(bounds):
        out = asyncio.run(
            report_locations(run_alone(uows), index, SetClock(), A, _part(batch, lo, hi))
        )
        assert not (out.result.status == 6).any()  # in time order: nothing is stale
        got |= {
            (lo + int(s), f)
            for s, f in zip(out.exits.samples.tolist(), out.exits.fence_ids, strict=True)
        }
        assert out.result.inside.tolist() == expected.result.inside[lo:hi].tolist()
    assert got == want
