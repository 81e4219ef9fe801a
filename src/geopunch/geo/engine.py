"""The fence engine's front door: everything outside ``geo`` imports from here.

The engine keeps each time clock's geofence circles in an exact, vectorized
index (``FenceIndex``) that swaps immutable snapshots, so readers never wait
for writers. On a snapshot it checks batches of points (``check_points``),
judges one punch location (``check_one``) and detects fence exits on trails
(``detect_exits``). Statuses are ``domain.locations.PointStatus``; exit
actions are numbered as ``ACTIONS``.

Why circles in Earth-centred metres and a hash grid: see docs/engine.md.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from geopunch.domain.models import ExitAction, Geofence, Job, TimeClock
from geopunch.geo import kernels
from geopunch.geo.index import ACTIONS, FenceIndex, Snapshot
from geopunch.geo.kernels import bucket_order
from geopunch.geo.membership import CheckResult, check_one, check_points
from geopunch.geo.trails import (
    InsideState,
    TrailResult,
    detect_exits,
    handles_of,
    pair_codes,
    unassigned,
)

__all__ = [
    "ACTIONS",
    "CheckResult",
    "FenceIndex",
    "InsideState",
    "Snapshot",
    "TrailResult",
    "bucket_order",
    "check_one",
    "check_points",
    "detect_exits",
    "handles_of",
    "pair_codes",
    "unassigned",
    "warm_up",
]


def warm_up() -> None:
    """Compile every kernel now, on a tiny private index, so that no real call pays for it.

    numba compiles on first use (and caches to disk); without this, the first
    check after a fresh install would take seconds.
    """
    tc = TimeClock(id=1, name="warm-up", timezone="UTC", jobs=(Job("a"),), accuracy_tolerance_m=5.0)

    def fence(fid: str) -> Geofence:
        return Geofence(fid, 1, "warm-up", True, 100, ("a",), ExitAction.NO_ACTION, "", 0.0, 0.0)

    index = FenceIndex()
    index.load([tc], [fence("w1")])
    index.fences_changed(tc, [fence("w2")], [])  # an override table: the multi-table path
    snap = index.snapshot
    small = kernels.SERIAL_BELOW
    try:
        for kernels.SERIAL_BELOW in (0, small):  # the parallel twins, then the serial ones
            for frozen in (False, True):  # raw request columns arrive read-only
                check_points(
                    snap,
                    _column([0.0, 0.0005, 1.0], np.float64, frozen),
                    _column([0.0, 0.0, 1.0], np.float64, frozen),
                    _column([1, 1, 2], np.int64, frozen),
                    _column([0, -1, 0], np.int32, frozen),
                    ["a"],
                    _column([3.0, np.nan, 1.0], np.float64, frozen),
                    with_distance=True,
                )
            check_one(snap, 0.0, 0.0, 1, "a", 3.0)
            for ts in ([1, 2, 3], [3, 2, 1]):  # time-ordered and shuffled paths
                detect_exits(snap, [7, 7, 7], [1, 1, 1], ts, [0.0, 0.0, 1.0], [0.0, 0.0, 1.0])
        for frozen in (False, True):  # live samples' raw columns arrive read-only
            pair_codes(_column([7, 7], np.int64, frozen), _column([1, 1], np.int64, frozen))
    finally:
        kernels.SERIAL_BELOW = small


def _column(values: list[float], dtype: type[np.generic], frozen: bool) -> npt.NDArray[Any]:
    out = np.array(values, dtype)
    out.flags.writeable = not frozen
    return out
