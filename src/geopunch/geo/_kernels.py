# mypy: allow-untyped-defs
"""Compiled per-point loops of the fence engine (numba).

Why numba: a membership test is a chain of small steps per point (ECEF
transform, cell key, hash probe, a few candidate distances). As whole-array
numpy passes each step costs a memory round trip and a temporary; fused in one
compiled loop the chain stays in registers and runs on every core. numba is
the maintained way to get that from Python source without a C extension.

All functions take plain arrays so that the same code serves a batch of
millions of points and a single punch, and release the GIL so that
concurrent RPCs overlap.
"""

from __future__ import annotations

import math
import threading
import types
from typing import Any

import numba
import numpy as np
import numpy.typing as npt

from geopunch.geo._frames import MEAN_RADIUS_M, WGS84_A, WGS84_E2

Arr = npt.NDArray[Any]

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

#: Below this many items a trivial per-item loop runs on the calling thread: a
#: parallel region's start-up and join cost more than the work, and in a busy
#: server the calling thread waits for pool threads that other calls occupy.
SERIAL_BELOW = 16_384

#: Threads a parallel kernel may use (``set_kernel_threads``); numba's pool
#: size until set.
_POOL: int = int(numba.config.NUMBA_NUM_THREADS)  # type: ignore[attr-defined]
_threads = _POOL
_mine = threading.local()


def set_kernel_threads(n: int) -> int:
    """Let every parallel kernel from now on use at most ``n`` threads (at
    least 1, at most numba's pool); return the number set. A server sets it
    from the cores it may use, divided among its ``--processes``: each process
    spreading its kernels over every core would make them wait on each other."""
    global _threads
    _threads = max(1, min(int(n), _POOL))
    return _threads


def kernel_threads() -> int:
    return _threads


class _Twin:
    """One loop compiled twice from the same source: with numba's parallel
    ``prange``, and as a plain loop on the calling thread (where ``prange`` is
    ``range``). ``run(n, ...)`` picks by the number of items ``n``: below
    ``SERIAL_BELOW`` a parallel region's start-up and join cost more than the
    work, and on a busy machine the caller would wait for pool threads that
    other calls or programs occupy."""

    def __init__(self, fn: Any) -> None:
        self.parallel = numba.njit(cache=True, parallel=True, nogil=True)(fn)
        # A function object of its own, named apart: numba's cache files are
        # named after the function, and the two compilations must not share one.
        serial = types.FunctionType(fn.__code__, fn.__globals__, f"{fn.__name__}_serial")
        serial.__qualname__ = f"{fn.__qualname__}_serial"
        serial.__doc__ = fn.__doc__
        self.serial = numba.njit(cache=True, nogil=True)(serial)

    def run(self, n: int, *args: Any) -> Any:
        if n < SERIAL_BELOW:
            return self.serial(*args)
        # numba's thread count is a per-thread setting; the server's threads
        # take the process's the first time they run a parallel kernel.
        if getattr(_mine, "threads", None) != _threads:
            numba.set_num_threads(_threads)
            _mine.threads = _threads
        return self.parallel(*args)


@numba.njit(cache=True, inline="always")
def ecef_point(lat: float, lon: float) -> tuple[float, float, float]:
    phi = math.radians(lat)
    lam = math.radians(lon)
    sp = math.sin(phi)
    n = WGS84_A / math.sqrt(1.0 - WGS84_E2 * sp * sp)
    rc = n * math.cos(phi)
    return rc * math.cos(lam), rc * math.sin(lam), n * (1.0 - WGS84_E2) * sp


@numba.njit(cache=True, inline="always")
def cell_key(clock, x, y, z):  # -> int64
    inv = 1.0 / CELL_M
    ix = np.int64((x + CELL_OFFSET_M) * inv)
    iy = np.int64((y + CELL_OFFSET_M) * inv)
    iz = np.int64((z + CELL_OFFSET_M) * inv)
    return (np.int64(clock) << 36) | (ix << 24) | (iy << 12) | iz


@numba.njit(cache=True, inline="always")
def home_slot(key, size):  # -> int64
    """The slot where a lookup of ``key`` starts in a table of ``size``
    slots: Fibonacci hashing, the top 32 bits scaled to ``[0, size)``."""
    mixed = np.uint64(key) * _GOLDEN
    return np.int64(((mixed >> np.uint64(32)) * np.uint64(size)) >> np.uint64(32))


@numba.njit(cache=True, inline="always")
def short_geodesic(c2: float) -> float:
    return math.sqrt(c2) * (1.0 + c2 * _INV_24R2)


@numba.njit(cache=True, inline="always")
def chord2_bound(geodesic_m):
    """A squared chord at least as long as the chord of ``geodesic_m`` metres.

    Inverts :func:`short_geodesic` to first order (error below 1e-12 m under
    2 km) and adds a micrometre, so no chord whose geodesic is within the
    limit is ever rejected.
    """
    c = geodesic_m * (1.0 - geodesic_m * geodesic_m * _INV_24R2) + 1e-6
    return c * c


@numba.njit(cache=True, inline="always")
def applies(row, job, applies_all, job_start, jobs):  # -> bool
    if job < 0 or applies_all[row]:
        return True
    for k in range(job_start[row], job_start[row + 1]):  # noqa: SIM110 - compiled loop
        if jobs[k] == job:
            return True
    return False


def _applies_many(rows, jobs, applies_all, job_start, job_codes, out):
    for k in numba.prange(rows.shape[0]):
        out[k] = applies(rows[k], jobs[k], applies_all, job_start, job_codes)


_APPLIES_MANY = _Twin(_applies_many)


def applies_many(
    rows: Arr, jobs: Arr, applies_all: Arr, job_start: Arr, job_codes: Arr, out: Arr
) -> None:
    """:func:`applies` for many (fence row, job code) pairs."""
    _APPLIES_MANY.run(rows.shape[0], rows, jobs, applies_all, job_start, job_codes, out)


@numba.njit(cache=True, inline="always")
def _resolve_clock(key, sorted_ids, sorted_idx, direct):
    if 0 <= key < direct.shape[0]:
        return direct[key]
    n = sorted_ids.shape[0]
    lo = 0
    hi = n
    while lo < hi:
        mid = (lo + hi) >> 1
        if sorted_ids[mid] < key:
            lo = mid + 1
        else:
            hi = mid
    return sorted_idx[lo] if lo < n and sorted_ids[lo] == key else -1


def _resolve_clocks(time_clock_ids, sorted_ids, sorted_idx, direct, out):
    for i in numba.prange(time_clock_ids.shape[0]):
        out[i] = _resolve_clock(time_clock_ids[i], sorted_ids, sorted_idx, direct)


_RESOLVE_CLOCKS = _Twin(_resolve_clocks)


def resolve_clocks(
    time_clock_ids: Arr, sorted_ids: Arr, sorted_idx: Arr, direct: Arr, out: Arr
) -> None:
    """Dense clock index of each time clock id; -1 when unknown.

    ``direct`` maps small ids straight to their index (one load); larger ids
    take a binary search in ``sorted_ids``.
    """
    _RESOLVE_CLOCKS.run(
        time_clock_ids.shape[0], time_clock_ids, sorted_ids, sorted_idx, direct, out
    )


def count_matches(
    lats: Arr,
    lons: Arr,
    clocks: Arr,
    extras: Arr,
    active: Arr,
    slots: Arr,
    entries: Arr,
    entry_rows: Arr,
    px: Arr,
    py: Arr,
    pz: Arr,
    spans: Arr,
    counts: Arr,
    first_rows: Arr,
    first_dist: Arr,
) -> None:
    """Pass 1: for each active point its ECEF position, its cell's entry span
    (``lo << 32 | hi``, 0 for none) and how many fences may contain it. Keeps
    the first candidate of each point, since most meet at most one fence.

    Three compiled loops, called one after the other: the first is pure
    arithmetic, the second and third each make one independent memory access
    per point (hash slot, then the cell's entries), so the processor overlaps
    many cache misses. They are separate functions on purpose: inside one
    function numba fuses adjacent parallel loops, which measured twice slower.
    """
    n = lats.shape[0]
    home = np.empty(n, np.int64)
    _LOCATE.run(n, lats, lons, clocks, active, slots.shape[0], px, py, pz, counts, home)
    _PROBE_ALL.run(n, slots, counts, home, spans)
    _COUNT_CANDIDATES.run(
        n, px, py, pz, spans, extras, entries, entry_rows, counts, first_rows, first_dist
    )


def _locate(lats, lons, clocks, active, size, px, py, pz, keys, home):
    """ECEF position, cell key and home slot of each active point (-1: inactive)."""
    for i in numba.prange(lats.shape[0]):
        if not active[i]:
            home[i] = -1
            continue
        x, y, z = ecef_point(lats[i], lons[i])
        px[i] = x
        py[i] = y
        pz[i] = z
        key = cell_key(clocks[i], x, y, z)
        keys[i] = key
        home[i] = home_slot(key, size)


_LOCATE = _Twin(_locate)


def _probe_all(slots, keys, home, spans):
    """Entry span of each point's cell; home slots first, without branches."""
    size = slots.shape[0]
    for i in numba.prange(keys.shape[0]):
        s = max(home[i], 0)
        hit = (slots[s, 0] == keys[i]) & (home[i] >= 0)
        spans[i] = slots[s, 1] * hit
    for i in numba.prange(keys.shape[0]):
        if spans[i] != 0 or home[i] < 0:
            continue
        s = home[i]
        key = keys[i]
        found = slots[s, 0]
        while found != key and found != -1:
            s = s + 1 if s + 1 < size else 0
            found = slots[s, 0]
        spans[i] = slots[s, 1] if found == key else 0


_PROBE_ALL = _Twin(_probe_all)


def _count_candidates(
    px, py, pz, spans, extras, entries, entry_rows, counts, first_rows, first_dist
):
    for i in numba.prange(px.shape[0]):
        packed = spans[i]
        c = 0
        if packed != 0:
            x = px[i]
            y = py[i]
            z = pz[i]
            extra = extras[i] + UNCERTAIN_M
            for k in range(packed >> 32, packed & 0xFFFFFFFF):
                dx = x - entries[k, 0]
                dy = y - entries[k, 1]
                dz = z - entries[k, 2]
                c2 = dx * dx + dy * dy + dz * dz
                limit = entries[k, 3] + extra
                # Cheap reject on the squared chord (no square root for the
                # candidates that are clearly outside), then the same test
                # as pass 2 so that both count the same candidates.
                if c2 > chord2_bound(limit):
                    continue
                d = short_geodesic(c2)
                if d <= limit:
                    if c == 0:
                        first_rows[i] = entry_rows[k]
                        first_dist[i] = d
                    c += 1
        counts[i] = c


_COUNT_CANDIDATES = _Twin(_count_candidates)


def _fill_matches(
    extras,
    offsets,
    entries,
    entry_rows,
    px,
    py,
    pz,
    spans,
    out_rows,
    out_dist,
    out_uncertain,
):
    """Pass 2: write the candidate rows, distances and uncertain flags of every
    point with two or more candidates (pass 1 kept the single ones)."""
    for i in numba.prange(offsets.shape[0] - 1):
        o = offsets[i]
        if offsets[i + 1] - o < 2:
            continue
        x = px[i]
        y = py[i]
        z = pz[i]
        packed = spans[i]
        for k in range(packed >> 32, packed & 0xFFFFFFFF):
            dx = x - entries[k, 0]
            dy = y - entries[k, 1]
            dz = z - entries[k, 2]
            s = short_geodesic(dx * dx + dy * dy + dz * dz)
            limit = entries[k, 3] + extras[i]
            if s <= limit + UNCERTAIN_M:
                out_rows[o] = entry_rows[k]
                out_dist[o] = s
                out_uncertain[o] = s > limit - UNCERTAIN_M
                o += 1


_FILL_MATCHES = _Twin(_fill_matches)


def fill_matches(extras: Arr, offsets: Arr, *columns: Arr) -> None:
    """Pass 2 (see ``_fill_matches`` for the arguments)."""
    _FILL_MATCHES.run(offsets.shape[0] - 1, extras, offsets, *columns)


def _nearest_boundary(
    lats,
    lons,
    clocks,
    jobs_of_points,
    active,
    clock_row_start,
    fx,
    fy,
    fz,
    radius,
    applies_all,
    job_start,
    jobs,
    best_rows,
    best_approx,
):
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


_NEAREST_BOUNDARY = _Twin(_nearest_boundary)


def nearest_boundary(lats: Arr, *columns: Arr) -> None:
    """For each active point, the applicable fence whose boundary is nearest
    (see ``_nearest_boundary`` for the arguments)."""
    _NEAREST_BOUNDARY.run(lats.shape[0], lats, *columns)


@numba.njit(cache=True, nogil=True)
def scan_clock(
    lat,
    lon,
    clock,
    extra,
    job,
    clock_row_start,
    fx,
    fy,
    fz,
    radius,
    applies_all,
    job_start,
    jobs,
    out_rows,
    out_dist,
    out_flags,
):
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
    if clock < 0 or clock + 1 >= clock_row_start.shape[0]:
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


@numba.njit(cache=True)
def pack_pairs(a, b, a_limit, b_bits, out):  # -> whether every pair fitted
    """``out[i] = a[i] << b_bits | b[i]`` while ``0 <= a[i] < a_limit`` and
    ``0 <= b[i] < 2**b_bits``; False at the first pair that does not fit."""
    b_limit = np.int64(1) << b_bits
    for i in range(a.shape[0]):
        x = a[i]
        y = b[i]
        if x < 0 or x >= a_limit or y < 0 or y >= b_limit:
            return False
        out[i] = (x << b_bits) | y
    return True


@numba.njit(cache=True)
def first_seen_codes(keys, out):  # -> number of distinct keys
    """Number each distinct int64 key by first appearance; ``out[i]`` is the code of ``keys[i]``.

    Open addressing with linear probing, the table kept at most half full and
    sized by the distinct keys rather than by all of them (a million samples of
    ten thousand trails stay in cache): several times faster than a typed dict.
    """
    size = 2 * min(keys.shape[0], 4096) + 1
    slot_key = np.empty(size, np.int64)
    slot_code = np.full(size, -1, np.int64)
    count = 0
    for i in range(keys.shape[0]):
        k = keys[i]
        s = _probe(slot_key, slot_code, k)
        if slot_code[s] < 0:
            if 2 * (count + 1) > size:  # grow, then find the key's slot again
                size = 2 * size + 1
                old_key, old_code = slot_key, slot_code
                slot_key = np.empty(size, np.int64)
                slot_code = np.full(size, -1, np.int64)
                for j in range(old_code.shape[0]):
                    if old_code[j] >= 0:
                        t = _probe(slot_key, slot_code, old_key[j])
                        slot_key[t] = old_key[j]
                        slot_code[t] = old_code[j]
                s = _probe(slot_key, slot_code, k)
            slot_key[s] = k
            slot_code[s] = count
            count += 1
        out[i] = slot_code[s]
    return count


@numba.njit(cache=True, inline="always")
def _probe(slot_key, slot_code, k):  # -> slot holding k, or the empty slot where it goes
    size = slot_key.shape[0]
    s = home_slot(k, size)
    while slot_code[s] >= 0 and slot_key[s] != k:
        s += 1
        if s == size:
            s = 0
    return s


@numba.njit(cache=True)
def bucket_order(codes, n_codes, out):
    """Stable counting sort: indexes of ``codes`` (0..n_codes-1) grouped by code, in input order."""
    start = np.zeros(n_codes + 1, np.int64)
    for i in range(codes.shape[0]):
        start[codes[i] + 1] += 1
    for c in range(n_codes):
        start[c + 1] += start[c]
    for i in range(codes.shape[0]):
        c = codes[i]
        out[start[c]] = i
        start[c] += 1


@numba.njit(cache=True, inline="always")
def _cell_span(c, r):  # -> (first cell, last cell) on one axis
    inv = 1.0 / CELL_M
    lo = np.int64(math.floor((c - r + CELL_OFFSET_M) * inv))
    hi = np.int64(math.floor((c + r + CELL_OFFSET_M) * inv))
    return lo, hi


@numba.njit(cache=True, nogil=True)
def cell_entries(clocks, fx, fy, fz, reach):  # -> (keys int64, rows int32)
    """Every (cell key, fence row) pair: each fence (centre ``fx, fy, fz``,
    dense clock ``clocks[i]``) in every grid cell that its circle widened to
    ``reach[i]`` may touch, fence by fence, a fence's cells in key order.

    One compiled pass to count and one to fill, without the GIL: a build in
    the background (a compaction during a bulk load) leaves the interpreter
    to the calls, and a start-up's build makes no whole-array temporaries.
    """
    n = clocks.shape[0]
    total = 0
    for i in range(n):
        lx, hx = _cell_span(fx[i], reach[i])
        ly, hy = _cell_span(fy[i], reach[i])
        lz, hz = _cell_span(fz[i], reach[i])
        total += (hx - lx + 1) * (hy - ly + 1) * (hz - lz + 1)
    keys = np.empty(total, np.int64)
    rows = np.empty(total, np.int32)
    k = 0
    for i in range(n):
        lx, hx = _cell_span(fx[i], reach[i])
        ly, hy = _cell_span(fy[i], reach[i])
        lz, hz = _cell_span(fz[i], reach[i])
        clock = np.int64(clocks[i]) << 36
        for ix in range(lx, hx + 1):
            for iy in range(ly, hy + 1):
                for iz in range(lz, hz + 1):
                    keys[k] = clock | (ix << 24) | (iy << 12) | iz
                    rows[k] = i
                    k += 1
    return keys, rows


#: Largest share of a cell table's slots in use: a lookup of an absent key
#: probes about (1 + 1 / (1 - load)**2) / 2 slots, about 6 at 0.7, mostly
#: in one cache line.
MAX_LOAD = 0.7


@numba.njit(cache=True, nogil=True)
def cell_table(keys, rows, order, fx, fy, fz, radius):  # -> (slots, entries, entry_rows)
    """The cell table of the pairs of ``cell_entries``, ``order`` sorting
    them by key (ties in row order).

    ``entries[k]`` is the centre and radius of fence ``entry_rows[k]``, the
    k-th pair in key order: a cell's candidates are side by side, one cache
    line each. ``slots`` is an open-addressing table (linear probing from
    ``home_slot``, at most ``MAX_LOAD`` full) of rows ``(key, lo << 32 | hi)``,
    a cell's entries being ``lo:hi``; a free slot is ``(-1, 0)``.

    One compiled pass without the GIL: a build in the background (a
    compaction during a bulk load) would otherwise wait for the interpreter
    between every whole-array step, for the interpreter's switch interval
    each time it is busy with calls.
    """
    m = order.shape[0]
    entry_rows = np.empty(m, np.int32)
    entries = np.empty((m, 4), np.float64)
    distinct = 0
    for k in range(m):
        j = order[k]
        r = rows[j]
        entry_rows[k] = r
        entries[k, 0] = fx[r]
        entries[k, 1] = fy[r]
        entries[k, 2] = fz[r]
        entries[k, 3] = radius[r]
        if k == 0 or keys[j] != keys[order[k - 1]]:
            distinct += 1
    size = max(16, int(distinct / MAX_LOAD) + 1)
    slots = np.empty((size, 2), np.int64)
    slots[:, 0] = -1
    slots[:, 1] = 0
    k = 0
    while k < m:
        key = keys[order[k]]
        end = k + 1
        while end < m and keys[order[end]] == key:
            end += 1
        s = home_slot(key, size)
        while slots[s, 0] != -1:
            s = s + 1 if s + 1 < size else 0
        slots[s, 0] = key
        slots[s, 1] = (np.int64(k) << 32) | end
        k = end
    return slots, entries, entry_rows
