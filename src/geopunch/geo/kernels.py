"""Compiled per-point loops of the fence engine (numba).

Why numba: a membership test is a chain of small steps per point (ECEF
transform, cell key, hash probe, a few candidate distances). As whole-array
numpy passes each step costs a memory round trip and a temporary; fused in one
compiled loop the chain stays in registers and runs on every core. numba is
the maintained way to get that from Python source without a C extension.

All functions take plain arrays so that the same code serves a batch of
millions of points and a single punch.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from geopunch.geo.frames import MEAN_RADIUS_M, WGS84_A, WGS84_E2

_INV_24R2 = 1.0 / (24.0 * MEAN_RADIUS_M * MEAN_RADIUS_M)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)

#: Half-width of the band around a threshold inside which the series distance
#: is not trusted and pyproj.Geod.inv decides (the series is within 1e-7 m).
UNCERTAIN_M = 1e-4

# Cell grid over ECEF: cube cells of CELL_M, 12 bits per axis, clock above them.
CELL_M = 4000.0
CELL_OFFSET_M = 6_400_000.0 + CELL_M
AXIS_BITS = 12
MAX_CLOCKS = 1 << (63 - 3 * AXIS_BITS)


@numba.njit(cache=True, inline="always")
def ecef_point(lat: float, lon: float) -> tuple[float, float, float]:
    phi = math.radians(lat)
    lam = math.radians(lon)
    sp = math.sin(phi)
    n = WGS84_A / math.sqrt(1.0 - WGS84_E2 * sp * sp)
    rc = n * math.cos(phi)
    return rc * math.cos(lam), rc * math.sin(lam), n * (1.0 - WGS84_E2) * sp


@numba.njit(cache=True, inline="always")
def cell_key(clock: int, x: float, y: float, z: float) -> int:
    inv = 1.0 / CELL_M
    ix = np.int64((x + CELL_OFFSET_M) * inv)
    iy = np.int64((y + CELL_OFFSET_M) * inv)
    iz = np.int64((z + CELL_OFFSET_M) * inv)
    return (np.int64(clock) << 36) | (ix << 24) | (iy << 12) | iz


@numba.njit(cache=True, inline="always")
def probe(table_keys: np.ndarray, table_values: np.ndarray, bits: int, key: int) -> int:
    mask = (np.int64(1) << bits) - 1
    slot = np.int64((np.uint64(key) * _GOLDEN) >> np.uint64(64 - bits))
    while True:
        found = table_keys[slot]
        if found == key:
            return table_values[slot]
        if found == -1:
            return -1
        slot = (slot + 1) & mask


@numba.njit(cache=True, inline="always")
def short_geodesic(c2: float) -> float:
    return math.sqrt(c2) * (1.0 + c2 * _INV_24R2)


@numba.njit(cache=True, inline="always")
def applies(row: int, job: int, applies_all: np.ndarray, job_start: np.ndarray, jobs: np.ndarray) -> bool:
    if job < 0 or applies_all[row]:
        return True
    for k in range(job_start[row], job_start[row + 1]):
        if jobs[k] == job:
            return True
    return False


@numba.njit(cache=True, parallel=True)
def count_matches(
    lats, lons, clocks, extras, active,
    table_keys, table_values, bits, cell_start, cell_rows,
    fx, fy, fz, radius,
    px, py, pz, counts,
):  # type: ignore[no-untyped-def]
    """Pass 1: ECEF of each active point and how many fences may contain it."""
    for i in numba.prange(lats.shape[0]):
        counts[i] = 0
        if not active[i]:
            continue
        x, y, z = ecef_point(lats[i], lons[i])
        px[i] = x
        py[i] = y
        pz[i] = z
        u = probe(table_keys, table_values, bits, cell_key(clocks[i], x, y, z))
        if u < 0:
            continue
        n = 0
        for k in range(cell_start[u], cell_start[u + 1]):
            r = cell_rows[k]
            dx = x - fx[r]
            dy = y - fy[r]
            dz = z - fz[r]
            if short_geodesic(dx * dx + dy * dy + dz * dz) <= radius[r] + extras[i] + UNCERTAIN_M:
                n += 1
        counts[i] = n


@numba.njit(cache=True, parallel=True)
def fill_matches(
    clocks, extras, active, offsets,
    table_keys, table_values, bits, cell_start, cell_rows,
    fx, fy, fz, radius,
    px, py, pz, out_rows, out_dist, out_uncertain,
):  # type: ignore[no-untyped-def]
    """Pass 2: write each point's candidate rows, distances and uncertain flags."""
    for i in numba.prange(clocks.shape[0]):
        if not active[i] or offsets[i] == offsets[i + 1]:
            continue
        x = px[i]
        y = py[i]
        z = pz[i]
        u = probe(table_keys, table_values, bits, cell_key(clocks[i], x, y, z))
        o = offsets[i]
        for k in range(cell_start[u], cell_start[u + 1]):
            r = cell_rows[k]
            dx = x - fx[r]
            dy = y - fy[r]
            dz = z - fz[r]
            s = short_geodesic(dx * dx + dy * dy + dz * dz)
            limit = radius[r] + extras[i]
            if s <= limit + UNCERTAIN_M:
                out_rows[o] = r
                out_dist[o] = s
                out_uncertain[o] = s > limit - UNCERTAIN_M
                o += 1


@numba.njit(cache=True, parallel=True)
def nearest_boundary(
    lats, lons, clocks, jobs_of_points, active,
    clock_row_start, fx, fy, fz, radius, applies_all, job_start, jobs,
    best_rows, best_approx,
):  # type: ignore[no-untyped-def]
    """For each active point, the applicable fence of its clock whose boundary is nearest.

    Distances here are on the mean sphere (good to about 0.5 %); the caller
    refines the chosen pair exactly. ``best_rows`` is -1 where the clock has no
    applicable fence.
    """
    two_r = 2.0 * MEAN_RADIUS_M
    for i in numba.prange(lats.shape[0]):
        best_rows[i] = -1
        best_approx[i] = np.inf
        if not active[i]:
            continue
        c = clocks[i]
        x, y, z = ecef_point(lats[i], lons[i])
        for r in range(clock_row_start[c], clock_row_start[c + 1]):
            if not applies(r, jobs_of_points[i], applies_all, job_start, jobs):
                continue
            dx = x - fx[r]
            dy = y - fy[r]
            dz = z - fz[r]
            chord = math.sqrt(dx * dx + dy * dy + dz * dz)
            d = two_r * math.asin(min(chord / two_r, 1.0)) - radius[r]
            if d < best_approx[i]:
                best_approx[i] = d
                best_rows[i] = r


@numba.njit(cache=True)
def scan_clock(
    lat, lon, clock, extra, job,
    clock_row_start, fx, fy, fz, radius, applies_all, job_start, jobs,
    out_rows, out_dist, out_flags,
):  # type: ignore[no-untyped-def]
    """Single-point scan of every fence of one clock (the punch path).

    Writes the rows within ``radius + extra (+ UNCERTAIN_M)`` to ``out_rows``
    with flags (bit 0: applies to ``job``; bit 1: inside the uncertain band) and
    returns ``(count, nearest applicable row, its approximate signed distance)``.
    """
    x, y, z = ecef_point(lat, lon)
    two_r = 2.0 * MEAN_RADIUS_M
    count = 0
    best_row = -1
    best = np.inf
    if clock + 1 >= clock_row_start.shape[0]:
        return count, best_row, best
    for r in range(clock_row_start[clock], clock_row_start[clock + 1]):
        dx = x - fx[r]
        dy = y - fy[r]
        dz = z - fz[r]
        c2 = dx * dx + dy * dy + dz * dz
        ok_job = applies(r, job, applies_all, job_start, jobs)
        if c2 < 4.0e6 * 4.0:
            s = short_geodesic(c2)
        else:
            s = two_r * math.asin(min(math.sqrt(c2) / two_r, 1.0))
        limit = radius[r] + extra
        if s <= limit + UNCERTAIN_M and count < out_rows.shape[0]:
            out_rows[count] = r
            out_dist[count] = s
            out_flags[count] = (1 if ok_job else 0) | (2 if s > limit - UNCERTAIN_M else 0)
            count += 1
        if ok_job and s - radius[r] < best:
            best = s - radius[r]
            best_row = r
    return count, best_row, best
