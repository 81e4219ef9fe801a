"""Batch and single-point geofence membership on an index snapshot."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from geopunch.domain.locations import F64, I8, I32, I64, B, PointStatus
from geopunch.domain.punches import PointVerdict
from geopunch.geo import _kernels as kernels
from geopunch.geo._frames import geodesic_distance, geodesic_distance_one
from geopunch.geo._index import ACTIONS, FenceTable, Snapshot

#: Per-point status codes of a batch (uint8).
# Plain ints of the statuses, as the compiled kernels compare them.
OK = int(PointStatus.OK)
INVALID_COORDINATES = int(PointStatus.INVALID_COORDINATES)
UNKNOWN_TIME_CLOCK = int(PointStatus.UNKNOWN_TIME_CLOCK)
UNKNOWN_JOB = int(PointStatus.UNKNOWN_JOB)
INVALID_ACCURACY = int(PointStatus.INVALID_ACCURACY)


@dataclass(frozen=True, slots=True)
class Matches:
    """Fences within a per-point limit, as CSR over points.

    ``offsets`` (int64, (n+1,)); for match ``k``: ``tables[k]`` (int16) indexes
    ``snapshot.tables``, ``rows[k]`` (int32) is the row there, ``dist_m[k]``
    (float64) the geodesic distance from the point to the centre.
    """

    offsets: I64
    tables: npt.NDArray[np.int16]
    rows: I32
    dist_m: F64

    def point_of_match(self) -> I64:
        return np.repeat(np.arange(self.offsets.size - 1), np.diff(self.offsets))


def _table_mask(snap: Snapshot, table_no: int, table: FenceTable, clocks: I32, valid: B) -> B:
    first = table.clock_base
    covered: B = valid & (clocks >= first) & (clocks < first + table.clock_row_start.size - 1)
    if len(snap.tables) > 1:
        covered &= snap.current(clocks, table_no)
    return covered


def _tables_with_points(
    snap: Snapshot, clocks: I32, valid: B
) -> Iterator[tuple[int, FenceTable, B]]:
    """Each non-empty table with the mask of the points it answers for, when any."""
    for t_no, table in enumerate(snap.tables):
        if table.size == 0:
            continue
        active = _table_mask(snap, t_no, table, clocks, valid)
        if active.any():
            yield t_no, table, active


def match_within(
    snap: Snapshot, lats: F64, lons: F64, clocks: I32, extra_m: F64, valid: B
) -> Matches:
    """Fences of each point's clock whose centre is within ``radius + extra_m[i]``.

    Parameters
    ----------
    lats, lons : float64, shape (n,)
        Degrees; only rows with ``valid`` set are read.
    clocks : int32, shape (n,)
        Dense clock indexes (:meth:`Snapshot.dense_clocks`).
    extra_m : float64, shape (n,)
        Metres added to every fence radius for this point (tolerance or buffer);
        at most ``kernels.CELL_M / 2 - 1524``.
    valid : bool, shape (n,)
    """
    n = lats.size
    per_table: list[tuple[int, I64, I32, F64, B]] = []
    px = np.empty(n, np.float64)
    py = np.empty(n, np.float64)
    pz = np.empty(n, np.float64)
    spans = np.empty(n, np.int64)
    counts = np.empty(n, np.int64)
    first_rows = np.empty(n, np.int32)
    first_dist = np.empty(n, np.float64)
    total_counts = np.zeros(n, np.int64)
    for t_no, table, active in _tables_with_points(snap, clocks, valid):
        kernels.count_matches(
            lats,
            lons,
            clocks,
            extra_m,
            active,
            table.slots,
            table.entries,
            table.entry_rows,
            px,
            py,
            pz,
            spans,
            counts,
            first_rows,
            first_dist,
        )
        offsets = np.zeros(n + 1, np.int64)
        np.cumsum(counts, out=offsets[1:])
        k = int(offsets[-1])
        rows = np.empty(k, np.int32)
        dist = np.empty(k, np.float64)
        single = np.flatnonzero(counts == 1)
        rows[offsets[single]] = first_rows[single]
        dist[offsets[single]] = first_dist[single]
        uncertain = np.empty(k, np.bool_)
        kernels.fill_matches(
            extra_m,
            offsets,
            table.entries,
            table.entry_rows,
            px,
            py,
            pz,
            spans,
            rows,
            dist,
            uncertain,
        )
        if single.size:
            limit = table.radius[first_rows[single]] + extra_m[single]
            uncertain[offsets[single]] = first_dist[single] > limit - kernels.UNCERTAIN_M
        if uncertain.any():
            # Within 0.1 mm of the limit: let pyproj's exact geodesic decide.
            u = np.flatnonzero(uncertain)
            pts = np.searchsorted(offsets, u, side="right") - 1
            exact = geodesic_distance(
                lats[pts], lons[pts], table.lats[rows[u]], table.lons[rows[u]]
            )
            dist[u] = exact
            inside = exact <= table.radius[rows[u]] + extra_m[pts]
            if not inside.all():
                keep = np.ones(k, bool)
                keep[u[~inside]] = False
                counts = np.diff(offsets)
                np.subtract.at(counts, pts[~inside], 1)
                offsets = np.zeros(n + 1, np.int64)
                np.cumsum(counts, out=offsets[1:])
                rows, dist = rows[keep], dist[keep]
        total_counts += np.diff(offsets)
        per_table.append((t_no, offsets, rows, dist, active))
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(total_counts, out=offsets[1:])
    if len(per_table) <= 1:
        if not per_table:
            return Matches(offsets, np.zeros(0, np.int16), np.zeros(0, np.int32), np.zeros(0))
        t_no, _, rows, dist, _ = per_table[0]
        return Matches(offsets, np.full(rows.size, t_no, np.int16), rows, dist)
    # Points meet exactly one table (base or their clock's override): interleave by point.
    point = np.concatenate([np.repeat(np.arange(n), np.diff(o)) for _, o, *_ in per_table])
    order = np.argsort(point, kind="stable")
    tables = np.concatenate([np.full(r.size, t, np.int16) for t, _, r, _, _ in per_table])
    rows = np.concatenate([r for _, _, r, _, _ in per_table])
    dist = np.concatenate([d for _, _, _, d, _ in per_table])
    return Matches(offsets, tables[order], rows[order], dist[order])


@dataclass(frozen=True, slots=True)
class CheckResult:
    """Answers of :func:`check_points` for n points.

    Attributes
    ----------
    status : uint8, (n,)
        ``OK`` or why the point could not be judged (``INVALID_COORDINATES``,
        ``UNKNOWN_TIME_CLOCK``, ``UNKNOWN_JOB``, ``INVALID_ACCURACY``).
    inside : bool, (n,)
        Inside at least one enabled fence of its time clock.
    allowed : bool, (n,)
        Inside an enabled fence that applies to the point's job (any job when none).
    offsets : int64, (n+1,)
        CSR over the matches of each point.
    fence_handles : int64, (k,)
        Matched fences; :meth:`Snapshot.fence_ids` turns them into ids.
    applicable : bool, (k,)
        Whether the matched fence applies to the point's job.
    actions : int8, (k,)
        Exit action of the matched fence, an index into ``index.ACTIONS``.
    distance_m : float64, (n,) or None
        Signed geodesic distance to the boundary of the nearest applicable
        fence (negative inside); NaN when the clock has none. Only when asked.
    nearest_handles : int64, (n,) or None
        The fence that ``distance_m`` refers to, -1 when none.
    """

    status: npt.NDArray[np.uint8]
    inside: B
    allowed: B
    offsets: I64
    fence_handles: I64
    applicable: B
    actions: I8
    distance_m: F64 | None
    nearest_handles: I64 | None


def _as_1d(name: str, value: npt.ArrayLike, dtype: type, n: int | None) -> npt.NDArray[Any]:
    arr: npt.NDArray[Any] = np.asarray(value, dtype=dtype)
    if arr.ndim == 0 and n is not None:
        arr = np.full(n, arr, dtype=dtype)
    arr = np.ascontiguousarray(arr)
    if arr.ndim != 1 or (n is not None and arr.size != n):
        raise ValueError(f"{name} must have shape ({'n' if n is None else n},), got {arr.shape}")
    return arr


def check_points(
    snap: Snapshot,
    lats: npt.ArrayLike,
    lons: npt.ArrayLike,
    time_clock_ids: npt.ArrayLike,
    job_ids: npt.ArrayLike | None = None,
    job_names: list[str] | None = None,
    accuracy_m: npt.ArrayLike | None = None,
    with_distance: bool = False,
) -> CheckResult:
    """Which enabled fences contain each point, and is it allowed for its job.

    Parameters
    ----------
    lats, lons : float64, shape (n,)
        WGS84 degrees. Non-finite or out-of-range rows get ``INVALID_COORDINATES``.
    time_clock_ids : int64, shape (n,) or scalar
        The time clock of each point (a scalar for the whole batch).
    job_ids : int32, shape (n,) or scalar, optional
        Index into ``job_names`` of each point's job, -1 for none.
    job_names : list of str, optional
        Job (or sub-job) ids the ``job_ids`` indexes refer to.
    accuracy_m : float64, shape (n,), optional
        Horizontal accuracy; NaN for unknown. A point counts as inside when the
        distance is at most ``fence_size + min(accuracy, tolerance)`` with the
        time clock's ``accuracy_tolerance_m``.
    with_distance : bool
        Also compute ``distance_m`` and ``nearest_handles``.
    """
    lat = _as_1d("lats", lats, np.float64, None)
    n = lat.size
    lon = _as_1d("lons", lons, np.float64, n)
    status, clocks, jobs = point_status(snap, lat, lon, time_clock_ids, job_ids, job_names)
    extra = np.zeros(n, np.float64)
    if accuracy_m is not None:
        acc = _as_1d("accuracy_m", accuracy_m, np.float64, n)
        status[((acc < 0) | np.isinf(acc)) & (status == OK)] = INVALID_ACCURACY
        tol = snap.tolerance_m[np.where(clocks >= 0, clocks, 0)] if snap.clocks else extra
        extra = np.where(np.isnan(acc) | (acc < 0), 0.0, np.minimum(acc, tol))
    valid = status == OK
    m = match_within(snap, lat, lon, clocks, extra, valid)
    tables = snap.tables
    handles = np.empty(m.rows.size, np.int64)
    actions = np.empty(m.rows.size, np.int8)
    applicable = np.empty(m.rows.size, np.bool_)
    any_job = bool((jobs >= 0).any())
    point = m.point_of_match() if any_job else None
    for t_no, table in enumerate(tables):
        sel: slice | B = m.tables == t_no if len(tables) > 1 else slice(None)
        rows = m.rows[sel]
        if rows.size == 0:
            continue
        handles[sel] = table.handle_base + rows
        actions[sel] = table.actions[rows]
        applicable[sel] = _applies(table, rows, jobs[point[sel]]) if point is not None else True
    inside = m.offsets[1:] > m.offsets[:-1]
    if point is None:
        allowed = inside
    else:
        allowed = np.bincount(point[applicable], minlength=n) > 0 if n else inside
    distance = nearest = None
    if with_distance:
        distance, nearest = nearest_boundary(snap, lat, lon, clocks, jobs, valid)
    return CheckResult(
        status, inside, allowed, m.offsets, handles, applicable, actions, distance, nearest
    )


def point_status(
    snap: Snapshot,
    lat: F64,
    lon: F64,
    time_clock_ids: npt.ArrayLike,
    job_ids: npt.ArrayLike | None,
    job_names: list[str] | None,
) -> tuple[npt.NDArray[np.uint8], I32, I32]:
    """Per-point status (coordinates, time clock, job), dense clocks and job codes.

    ``job_ids`` (int32, -1 for none) index ``job_names``; a job that is not one
    of the point's clock sets UNKNOWN_JOB.
    """
    n = lat.size
    tc_ids = _as_1d("time_clock_ids", time_clock_ids, np.int64, n)
    status = np.zeros(n, np.uint8)
    bad = ~(np.isfinite(lat) & np.isfinite(lon) & (np.abs(lat) <= 90) & (np.abs(lon) <= 180))
    status[bad] = INVALID_COORDINATES
    clocks = snap.dense_clocks(tc_ids)
    status[(clocks < 0) & (status == OK)] = UNKNOWN_TIME_CLOCK
    jobs = np.full(n, -1, np.int32)
    if job_ids is not None:
        raw = _as_1d("job_ids", job_ids, np.int32, n)
        names = job_names or []
        if ((raw < -1) | (raw >= len(names))).any():
            raise ValueError("job_ids must be -1 or an index into job_names")
        jobs = _job_codes(snap, clocks, raw, names, status)
    return status, clocks, jobs


def _job_codes(
    snap: Snapshot, clocks: I32, raw: I32, names: list[str], status: npt.NDArray[np.uint8]
) -> I32:
    """Per-point job codes of each point's clock; unknown jobs set UNKNOWN_JOB."""
    out = np.full(raw.size, -1, np.int32)
    has = (raw >= 0) & (status == OK)
    if not has.any():
        return out
    pairs = np.unique(np.stack([clocks[has], raw[has]]), axis=1)
    codes = np.array(
        [snap.clocks[c].job_codes.get(names[j], -1) for c, j in pairs.T.tolist()], dtype=np.int32
    )
    pair_key = pairs[0].astype(np.int64) << 32 | pairs[1].astype(np.int64)
    idx = np.searchsorted(pair_key, clocks[has].astype(np.int64) << 32 | raw[has].astype(np.int64))
    out[has] = codes[idx]
    unknown = np.flatnonzero(has)[out[has] < 0]
    status[unknown] = UNKNOWN_JOB
    return out


def _applies(table: FenceTable, rows: I32, jobs: I32) -> B:
    """Whether each matched fence (table ``rows``) applies to the point's job code."""
    out = np.empty(rows.size, np.bool_)
    kernels.applies_many(
        np.ascontiguousarray(rows),
        np.ascontiguousarray(jobs),
        table.applies_all,
        table.job_start,
        table.jobs,
        out,
    )
    return out


def nearest_boundary(
    snap: Snapshot, lats: F64, lons: F64, clocks: I32, jobs: I32, valid: B
) -> tuple[F64, I64]:
    """Signed exact distance to the nearest applicable fence boundary, and that fence."""
    n = lats.size
    best = np.full(n, np.inf)
    best_handle = np.full(n, -1, np.int64)
    best_lat = np.zeros(n)
    best_lon = np.zeros(n)
    best_r = np.zeros(n)
    rows = np.empty(n, np.int64)
    approx = np.empty(n, np.float64)
    for _, table, active in _tables_with_points(snap, clocks, valid):
        kernels.nearest_boundary(
            lats,
            lons,
            clocks - table.clock_base if table.clock_base else clocks,
            jobs,
            active,
            *table.per_clock_columns,
            rows,
            approx,
        )
        better = active & (rows >= 0) & (approx < best)
        r = rows[better]
        best[better] = approx[better]
        best_handle[better] = table.handle_base + r
        best_lat[better] = table.lats[r]
        best_lon[better] = table.lons[r]
        best_r[better] = table.radius[r]
    out = np.full(n, np.nan)
    found = np.flatnonzero(best_handle >= 0)
    out[found] = (
        geodesic_distance(lats[found], lons[found], best_lat[found], best_lon[found])
        - best_r[found]
    )
    return out, best_handle


__all__ = [
    "ACTIONS",
    "INVALID_ACCURACY",
    "INVALID_COORDINATES",
    "OK",
    "UNKNOWN_JOB",
    "UNKNOWN_TIME_CLOCK",
    "CheckResult",
    "Matches",
    "check_points",
    "kernels",
    "match_within",
    "nearest_boundary",
]


#: A punch point can lie in at most this many fences of one clock (more are ignored).
_MAX_SCAN = 4096


def check_one(
    snap: Snapshot,
    lat: float,
    lon: float,
    time_clock_id: int,
    job_id: str | None = None,
    accuracy_m: float | None = None,
) -> PointVerdict:
    """:func:`check_points` for one point, in microseconds.

    Uses the same compiled helpers, thresholds and exact-geodesic tie-break as
    the batch path, but scans the clock's fences directly instead of building
    arrays for a batch of one.
    """
    import math

    if not (math.isfinite(lat) and math.isfinite(lon) and abs(lat) <= 90 and abs(lon) <= 180):
        return PointVerdict(INVALID_COORDINATES, False, False, None, -1, None, None, ())
    idx = snap.clock_index(time_clock_id)
    if idx is None:
        return PointVerdict(UNKNOWN_TIME_CLOCK, False, False, None, -1, None, None, ())
    info = snap.clocks[idx]
    job = -1
    if job_id is not None:
        job = info.job_codes.get(job_id, -1)
        if job < 0:
            return PointVerdict(UNKNOWN_JOB, False, False, None, -1, None, None, ())
    extra = 0.0
    if accuracy_m is not None and not math.isnan(accuracy_m):
        if accuracy_m < 0 or math.isinf(accuracy_m):
            return PointVerdict(INVALID_ACCURACY, False, False, None, -1, None, None, ())
        extra = min(accuracy_m, info.time_clock.accuracy_tolerance_m)
    table = snap.tables[int(snap.owner[idx])]
    rows = np.empty(_MAX_SCAN, np.int64)
    dists = np.empty(_MAX_SCAN, np.float64)
    flags = np.empty(_MAX_SCAN, np.int8)
    count, best_row, _ = kernels.scan_clock(
        float(lat),
        float(lon),
        idx - table.clock_base,
        extra,
        job,
        *table.per_clock_columns,
        rows,
        dists,
        flags,
    )
    matched: list[tuple[float, int, bool]] = []  # (signed distance, row, applies)
    for k in range(count):
        r = int(rows[k])
        d = float(dists[k])
        if flags[k] & 2:  # within 0.1 mm of the limit: the exact geodesic decides
            d = geodesic_distance_one(lat, lon, float(table.lats[r]), float(table.lons[r]))
            if d > table.radius[r] + extra:
                continue
        matched.append((d - float(table.radius[r]), r, bool(flags[k] & 1)))
    matched.sort()
    allowed = [m for m in matched if m[2]]
    distance = nearest = None
    if best_row >= 0:
        nearest_row = allowed[0][1] if allowed else int(best_row)
        nearest = bytes(table.ids[nearest_row]).decode()
        exact = geodesic_distance_one(
            lat, lon, float(table.lats[nearest_row]), float(table.lons[nearest_row])
        )
        distance = exact - float(table.radius[nearest_row])
    fence_row = allowed[0][1] if allowed else None
    return PointVerdict(
        status=OK,
        inside=bool(matched),
        allowed=bool(allowed),
        fence_id=bytes(table.ids[fence_row]).decode() if fence_row is not None else None,
        exit_action=int(table.actions[fence_row]) if fence_row is not None else -1,
        distance_m=distance,
        nearest_fence_id=nearest,
        matched_fence_ids=tuple(bytes(table.ids[r]).decode() for _, r, _ in matched),
    )
