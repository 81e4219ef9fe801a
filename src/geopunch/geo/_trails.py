"""Exit detection on GPS trails, vectorized across users, fences and samples.

Per (user, time clock, fence) a trail is *inside* or *outside*. Samples are
judged in timestamp order (ties keep input order). A sample enters a fence
when its geodesic distance to the centre is at most the fence size; once
inside, it leaves at the first sample farther than ``fence_size + buffer``,
where the buffer follows the sample's accuracy (time clock settings:
``high_accuracy_max_m`` and below uses ``buffer_high_accuracy_m``, up to
``low_accuracy_max_m`` uses ``buffer_low_accuracy_m``, unknown accuracy uses
``buffer_unknown_accuracy_m``); samples less accurate than
``low_accuracy_max_m`` are ignored. Between the two limits a sample changes
nothing, so GPS jitter at a boundary gives one exit, not a series.

How it is computed without a loop per sample: every usable sample gets a
*slot*, consecutive within its (user, clock) group, with one extra slot at the
front of each group for the state carried in from earlier batches. The fences
within ``fence_size + buffer`` of each sample (:func:`match_within`) are
observations ``(pair, slot, inside?)``. Sorted by pair then slot, a *run* of
consecutive slots is a stretch where the pair never went beyond the buffer;
a run that holds an inside observation is a stay, and the slot after its end,
when the group goes on, is the exit.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from geopunch.domain.locations import F64, I8, I32, I64, B, PointStatus
from geopunch.geo import _kernels as kernels
from geopunch.geo._frames import geodesic_distance
from geopunch.geo._index import USER_KEY_LIMIT, FenceTable, Snapshot
from geopunch.geo._membership import (
    INVALID_ACCURACY,
    OK,
    Matches,
    _applies,
    _as_1d,
    match_within,
    point_status,
)

#: Further per-sample status codes (after membership's OK .. INVALID_ACCURACY).
IGNORED_ACCURACY = int(PointStatus.IGNORED_ACCURACY)
SKIPPED = int(PointStatus.SKIPPED)
UNKNOWN_USER = int(PointStatus.UNKNOWN_USER)

_INT64_MAX = np.iinfo(np.int64).max


def unassigned(
    snap: Snapshot, user_ids: I64, time_clock_ids: I64, *, listed_only: bool = False
) -> B:
    """Samples of a known time clock whose user is not one of that clock's users.

    With ``listed_only``, clocks that list no users accept every user (fences
    read from a file may come without users). One binary search of
    (dense clock, user) keys in the snapshot's sorted ``user_keys``.
    """
    clocks = snap.dense_clocks(time_clock_ids)
    known = clocks >= 0
    if listed_only and known.any():
        listing = np.array([bool(c.time_clock.user_ids) for c in snap.clocks], np.bool_)
        known &= listing[np.where(known, clocks, 0)]
    if not known.any():
        return np.zeros(user_ids.size, np.bool_)
    table = snap.user_keys
    plausible = (user_ids >= 0) & (user_ids < USER_KEY_LIMIT)
    member: B = np.zeros(user_ids.size, np.bool_)
    if table.size:
        keys = (clocks.astype(np.int64) << 40) + np.where(plausible, user_ids, 0)
        at = np.minimum(np.searchsorted(table, keys), table.size - 1)
        member = (table[at] == keys) & plausible
    # Ids past the keys' 40 bits (up to 2**53 may be assigned, and older
    # clocks may hold larger ones) are searched in their clock's own sorted
    # users, a clock at a time: rare, and exact for any int64.
    wide = known & (user_ids >= USER_KEY_LIMIT)
    if wide.any():
        for dense in np.unique(clocks[wide]).tolist():
            users = snap.clocks[dense].user_ids
            if not users.size:
                continue
            these = np.flatnonzero(wide & (clocks == dense))
            at = np.minimum(np.searchsorted(users, user_ids[these]), users.size - 1)
            member[these] = users[at] == user_ids[these]
    return known & ~member


@dataclass(frozen=True, slots=True)
class InsideState:
    """Pairs that are inside: ``user_ids``, ``time_clock_ids`` (int64) and fence
    ``handles`` (int64) of the snapshot, all shape (k,)."""

    user_ids: I64
    time_clock_ids: I64
    handles: I64

    @staticmethod
    def empty() -> InsideState:
        z = np.zeros(0, np.int64)
        return InsideState(z, z, z)


@dataclass(frozen=True, slots=True)
class TrailResult:
    """Verdicts and exits of a batch of samples, in the caller's sample order.

    status : uint8, (n,)
        OK, INVALID_COORDINATES, UNKNOWN_TIME_CLOCK, UNKNOWN_JOB,
        INVALID_ACCURACY, IGNORED_ACCURACY or SKIPPED.
    inside : bool, (n,)
        Within ``fence_size`` of an enabled fence of the sample's clock (also
        for ignored and skipped samples; false when coordinates or clock are bad).
    offsets, fence_handles : int64, (n+1,) and (k,)
        CSR of those fences per sample.
    exit_samples, exit_handles : int64, (e,)
        Each exit: the sample that left, and the fence it left; ordered by
        sample (processing order), then fence handle.
    exit_actions : int8, (e,)
        The fence's exit action code (index of ``ExitAction``).
    exit_other_inside : bool, (e,)
        After the exit the user is still inside another fence of the clock
        that applies to the group's job.
    enter_samples, enter_handles : int64, (g,)
        Each entry: the first sample of a stay that was not carried in from
        an earlier batch, and the fence; ordered like the exits.
    final : InsideState
        Pairs inside after the last sample of their group (carry it into the
        next batch of a live trail).
    """

    status: npt.NDArray[np.uint8]
    inside: B
    offsets: I64
    fence_handles: I64
    exit_samples: I64
    exit_handles: I64
    exit_actions: I8
    exit_other_inside: B
    enter_samples: I64
    enter_handles: I64
    final: InsideState


def _exit_settings(snap: Snapshot, clocks: I32) -> tuple[F64, F64, F64, F64, F64]:
    """Per-sample (high_max, buffer_high, low_max, buffer_low, buffer_unknown)."""
    if not snap.clocks:
        z = np.zeros(clocks.size)
        return z, z, z, z, z
    per = snap.exit_m[:, np.where(clocks >= 0, clocks, 0)]
    return per[0], per[1], per[2], per[3], per[4]


def _handle_columns(snap: Snapshot, handles: I64, jobs: I32 | None) -> tuple[F64, I8, B]:
    """Radius, exit action and (when ``jobs`` is given) job applicability per handle."""
    radius = np.empty(handles.size, np.float64)
    actions = np.empty(handles.size, np.int8)
    applies = np.ones(handles.size, np.bool_)
    for table in snap.tables:
        rows = handles - table.handle_base
        mine = (rows >= 0) & (rows < table.size)
        if not mine.any():
            continue
        r = rows[mine].astype(np.int32)
        radius[mine] = table.radius[r]
        actions[mine] = table.actions[r]
        if jobs is not None:
            applies[mine] = _applies(table, r, jobs[mine])
    return radius, actions, applies


#: Per table, its rows ordered by fence id (built on first use, dropped with the table).
_BY_ID: weakref.WeakKeyDictionary[FenceTable, tuple[I32, npt.NDArray[np.bytes_]]] = (
    weakref.WeakKeyDictionary()
)
_BY_ID_LOCK = threading.Lock()


def _rows_by_id(table: FenceTable) -> tuple[I32, npt.NDArray[np.bytes_]]:
    with _BY_ID_LOCK:
        found = _BY_ID.get(table)
        if found is None:
            order = np.argsort(table.ids, kind="stable").astype(np.int32)
            found = _BY_ID[table] = (order, table.ids[order])
        return found


def handles_of(snap: Snapshot, time_clock_ids: I64, fence_ids: list[str]) -> I64:
    """Handles of (time clock, fence id) pairs in ``snap``; -1 where the fence is gone.

    Vectorized: a binary search in each table's rows ordered by id (built once
    per table, when first needed).
    """
    out = np.full(len(fence_ids), -1, np.int64)
    if not fence_ids:
        return out
    clocks = snap.dense_clocks(np.asarray(time_clock_ids, np.int64))
    want = np.array([f.encode() for f in fence_ids], dtype=np.bytes_)
    for t_no, table in enumerate(snap.tables):
        if table.size == 0:
            continue
        order, sorted_ids = _rows_by_id(table)
        pos = np.minimum(np.searchsorted(sorted_ids, want), table.size - 1)
        rows = order[pos]
        hit = (sorted_ids[pos] == want) & (table.clocks[rows] == clocks) & (clocks >= 0)
        if len(snap.tables) > 1:  # rows of clocks another table owns are stale
            hit &= snap.current(clocks, t_no)
        out[hit] = table.handle_base + rows[hit]
    return out


def detect_exits(
    snap: Snapshot,
    user_ids: npt.ArrayLike,
    time_clock_ids: npt.ArrayLike,
    timestamps: npt.ArrayLike,
    lats: npt.ArrayLike,
    lons: npt.ArrayLike,
    accuracy_m: npt.ArrayLike | None = None,
    *,
    job_ids: npt.ArrayLike | None = None,
    job_names: list[str] | None = None,
    skip: npt.ArrayLike | None = None,
    initial: InsideState | None = None,
) -> TrailResult:
    """Inside/outside verdicts and exit events of trail samples.

    Parameters
    ----------
    user_ids, time_clock_ids, timestamps : int64, shape (n,)
        One (user, clock) pair is one trail; timestamps in Unix seconds.
    lats, lons : float64, shape (n,)
        WGS84 degrees.
    accuracy_m : float64, shape (n,), optional
        Metres; NaN for unknown.
    job_ids, job_names : optional
        As in :func:`check_points`: the job whose applicable fences count for
        ``exit_other_inside``; a trail uses its first sample's job.
    skip : bool, shape (n,), optional
        Samples to leave out (status SKIPPED).
    initial : InsideState, optional
        Pairs inside before the first sample (a live trail's carried state).
    """
    uid = _as_1d("user_ids", user_ids, np.int64, None)
    n = uid.size
    tc = _as_1d("time_clock_ids", time_clock_ids, np.int64, n)
    ts = _as_1d("timestamps", timestamps, np.int64, n)
    lat = _as_1d("lats", lats, np.float64, n)
    lon = _as_1d("lons", lons, np.float64, n)
    acc = (
        np.full(n, np.nan)
        if accuracy_m is None
        else _as_1d("accuracy_m", accuracy_m, np.float64, n)
    )
    status, clocks, jobs = point_status(snap, lat, lon, tc, job_ids, job_names)
    status[((acc < 0) | np.isinf(acc)) & (status == OK)] = INVALID_ACCURACY
    high_max, buf_high, low_max, buf_low, buf_unknown = _exit_settings(snap, clocks)
    status[(acc > low_max) & (status == OK)] = IGNORED_ACCURACY
    if skip is not None:
        status[_as_1d("skip", skip, np.bool_, n) & (status == OK)] = SKIPPED
    buffer = np.where(np.isnan(acc), buf_unknown, np.where(acc <= high_max, buf_high, buf_low))
    usable = status == OK
    located = usable | (status == IGNORED_ACCURACY) | (status == SKIPPED)

    # Everything below runs in processing order: by (user, clock), then time.
    order = _trail_order(uid, tc, ts)
    s_uid, s_tc, s_lat, s_lon = uid[order], tc[order], lat[order], lon[order]
    m = match_within(snap, s_lat, s_lon, clocks[order], buffer[order], located[order])
    point = m.point_of_match()  # sorted sample of each match, nondecreasing
    handles, radius = _match_handles(snap, m.tables, m.rows)
    is_in = _within_radius(snap, m, point, s_lat, s_lon, radius)

    # Verdicts, in input order: the fences strictly containing each sample.
    in_point = point[is_in]
    in_counts = np.zeros(n, np.int64)
    in_counts[order] = np.bincount(in_point, minlength=n) if n else in_counts
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(in_counts, out=offsets[1:])
    by_input = np.empty(in_point.size, np.int64)
    kernels.bucket_order(order[in_point], n, by_input)

    # Slots: consecutive per group, one virtual slot in front of each group.
    new_group = np.ones(n, np.bool_)
    if n:
        new_group[1:] = (s_uid[1:] != s_uid[:-1]) | (s_tc[1:] != s_tc[:-1])
    group_of_sorted = np.cumsum(new_group) - 1
    n_groups = int(group_of_sorted[-1]) + 1 if n else 0
    s_usable = usable[order]
    usable_before = np.cumsum(s_usable) - s_usable  # usable samples before, exclusive
    slot_of_sorted = usable_before + group_of_sorted + 1
    group_start = np.flatnonzero(new_group)
    virtual_slot = usable_before[group_start] + np.arange(n_groups)
    group_usable = np.add.reduceat(s_usable, group_start) if n else np.zeros(0, np.int64)
    group_last_slot = virtual_slot + group_usable
    n_slots = int(group_last_slot[-1]) + 1 if n else 0
    sample_of_slot = np.full(n_slots, -1, np.int64)
    sample_of_slot[slot_of_sorted[s_usable]] = order[s_usable]
    group_job = jobs[order[group_start]] if n else jobs

    # Observations: matches of usable samples (already in slot order), plus the
    # carried-in state at each group's virtual slot.
    used = s_usable[point]
    obs_group = group_of_sorted[point[used]]
    obs_slot = slot_of_sorted[point[used]]
    obs_handle = handles[used]
    obs_in = is_in[used]
    in_slot_order = True
    if initial is not None and initial.handles.size:
        g = _groups_of(s_uid[group_start], s_tc[group_start], initial)
        keep = (g >= 0) & (initial.handles >= 0)
        obs_group = np.concatenate([obs_group, g[keep]])
        obs_slot = np.concatenate([obs_slot, virtual_slot[g[keep]]])
        obs_handle = np.concatenate([obs_handle, initial.handles[keep]])
        obs_in = np.concatenate([obs_in, np.ones(int(keep.sum()), np.bool_)])
        in_slot_order = not keep.any()
    # By fence, then slot. A group's slots are one contiguous range, so this
    # orders by group too; (fence, slot) pairs are unique.
    o = _fence_slot_order(obs_handle, obs_slot, n_slots, _handle_space(snap), in_slot_order)
    slot, obs_in, obs_handle, obs_group = obs_slot[o], obs_in[o], obs_handle[o], obs_group[o]
    k = slot.size
    run_start = np.ones(k, np.bool_)
    if k:
        run_start[1:] = (
            (obs_handle[1:] != obs_handle[:-1])
            | (obs_group[1:] != obs_group[:-1])
            | (slot[1:] != slot[:-1] + 1)
        )
    starts = np.flatnonzero(run_start)
    ends = np.append(starts[1:], k) - 1 if k else starts
    big = _INT64_MAX
    first_in = (
        np.minimum.reduceat(np.where(obs_in, slot, big), starts) if k else np.zeros(0, np.int64)
    )
    stay = first_in != big
    stay_group = obs_group[starts][stay]
    stay_handle = obs_handle[starts][stay]
    stay_from = first_in[stay]
    stay_to = slot[ends][stay]
    leaves = stay_to < group_last_slot[stay_group]
    exit_slot = stay_to[leaves] + 1
    exit_handle = stay_handle[leaves]

    # Still inside another applicable fence at the exit slot? The number of
    # applicable stays covering each slot, from a difference array.
    _, exit_action, _ = _handle_columns(snap, exit_handle, None)
    _, _, applies = _handle_columns(snap, stay_handle, group_job[stay_group])
    delta = np.bincount(stay_from[applies], minlength=n_slots + 1) - np.bincount(
        stay_to[applies] + 1, minlength=n_slots + 1
    )
    covering = np.cumsum(delta)
    exit_other = covering[exit_slot] > 0 if exit_slot.size else np.zeros(0, np.bool_)
    ev = np.empty(exit_slot.size, np.int64)  # by slot; same slot: by fence (stable)
    kernels.bucket_order(exit_slot, max(n_slots, 1), ev)
    # A stay that begins at its group's virtual slot was carried in; any other
    # begins with an entry.
    entered = stay_from != virtual_slot[stay_group]
    enter_slot = stay_from[entered]
    en = np.empty(enter_slot.size, np.int64)
    kernels.bucket_order(enter_slot, max(n_slots, 1), en)

    at_end = ~leaves
    final = InsideState(
        s_uid[group_start][stay_group[at_end]],
        s_tc[group_start][stay_group[at_end]],
        stay_handle[at_end],
    )
    return TrailResult(
        status=status,
        inside=in_counts > 0,
        offsets=offsets,
        fence_handles=handles[is_in][by_input],
        exit_samples=sample_of_slot[exit_slot[ev]],
        exit_handles=exit_handle[ev],
        exit_actions=exit_action[ev],
        exit_other_inside=exit_other[ev],
        enter_samples=sample_of_slot[enter_slot[en]],
        enter_handles=stay_handle[entered][en],
        final=final,
    )


def _handle_space(snap: Snapshot) -> int:
    return int(max((t.handle_base + t.size for t in snap.tables), default=1))


def _match_handles(snap: Snapshot, tables: npt.NDArray[np.int16], rows: I32) -> tuple[I64, F64]:
    """Handle and radius of each match."""
    all_tables = snap.tables
    if len(all_tables) == 1:
        t = all_tables[0]
        return t.handle_base + rows.astype(np.int64), t.radius[rows]
    handles = np.empty(rows.size, np.int64)
    radius = np.empty(rows.size, np.float64)
    for t_no, table in enumerate(all_tables):
        sel = tables == t_no
        if sel.any():
            handles[sel] = table.handle_base + rows[sel]
            radius[sel] = table.radius[rows[sel]]
    return handles, radius


def _within_radius(snap: Snapshot, m: Matches, point: I64, lats: F64, lons: F64, radius: F64) -> B:
    """Whether each match's sample (``point`` into ``lats``, ``lons``) lies within the
    fence's own radius. ``match_within`` measures to its limit, radius plus
    buffer, and has pyproj decide only near that limit; its series distance
    is good to 0.1 µm, so a match within ``UNCERTAIN_M`` of the radius
    itself is measured again by pyproj here, as check_points does at its
    limit: otherwise a sample a nanometre inside a fence could read as
    outside it."""
    over = m.dist_m - radius
    inside: B = over <= 0.0
    near = np.flatnonzero(np.abs(over, out=over) <= kernels.UNCERTAIN_M)
    if near.size == 0:
        return inside
    centre_lat, centre_lon = np.empty(near.size), np.empty(near.size)
    for t_no, table in enumerate(snap.tables):
        sel = m.tables[near] == t_no
        centre_lat[sel] = table.lats[m.rows[near[sel]]]
        centre_lon[sel] = table.lons[m.rows[near[sel]]]
    dist = m.dist_m.copy()
    at = point[near]
    dist[near] = geodesic_distance(lats[at], lons[at], centre_lat, centre_lon)
    return dist <= radius


def _fence_slot_order(
    handles: I64, slots: I64, n_slots: int, handle_space: int, in_slot_order: bool
) -> I64:
    """Order of observations by (fence handle, slot).

    Observations already in slot order need only a stable counting sort by
    handle (O(k + handles)); small or unordered sets take an argsort.
    """
    k = handles.size
    if in_slot_order and k * 8 >= handle_space:
        out = np.empty(k, np.int64)
        kernels.bucket_order(handles, handle_space, out)
        return out
    return np.argsort(handles * max(n_slots, 1) + slots).astype(np.int64)


_B_BITS = 28  # pair_codes packs (a, b) as a << 28 | b when both fit


def _packed(a: I64, b: I64) -> I64 | None:
    """``a << 28 | b`` when every a fits in 35 bits and every b in 28 (and both
    are non-negative), so that a pair is one int64; else None. One compiled pass."""
    out = np.empty(a.size, np.int64)
    fits = kernels.pack_pairs(a, b, np.int64(1) << (63 - _B_BITS), _B_BITS, out)
    return out if fits else None


def pair_codes(a: I64, b: I64) -> tuple[I64, int, I64]:
    """Number the distinct (a, b) pairs by first appearance.

    Returns ``codes`` (int64, (n,)), the number of pairs, and the index of each
    pair's first row (int64, (pairs,)). Ids that fit in 35 and 28 bits go
    through one compiled pass; others take a Python dict.
    """
    n = a.size
    codes = np.empty(n, np.int64)
    keys = _packed(a, b)
    if keys is not None:
        count = kernels.first_seen_codes(keys, codes)
        return codes, count, _first_rows(codes, count)
    seen: dict[tuple[int, int], int] = {}
    for i, pair in enumerate(zip(a.tolist(), b.tolist(), strict=True)):
        codes[i] = seen.setdefault(pair, len(seen))
    return codes, len(seen), _first_rows(codes, len(seen))


def _first_rows(codes: I64, count: int) -> I64:
    first = np.empty(count, np.int64)
    first[codes[::-1]] = np.arange(codes.size - 1, -1, -1)  # the earliest write wins
    return first


def _trail_order(uid: I64, tc: I64, ts: I64) -> I64:
    """Sample order by (user, clock) trail, then timestamp, ties in input order.

    Trails usually arrive in time order per user (a device's log, or a fleet's
    log sorted by time). Then numbering the trails by first appearance and
    bucketing the samples by that number (a stable counting sort, O(n)) is the
    whole job; a batch that is out of time order within a trail takes a stable
    sort of all samples.
    """
    n = uid.size
    if n == 0:
        return np.zeros(0, np.int64)
    codes, n_groups, _ = pair_codes(uid, tc)
    order = np.empty(n, np.int64)
    kernels.bucket_order(codes, n_groups, order)
    s_ts, s_codes = ts[order], codes[order]
    if ((s_codes[1:] == s_codes[:-1]) & (s_ts[1:] < s_ts[:-1])).any():
        t0 = int(ts.min())
        span = int(ts.max()) - t0 + 1
        if n_groups * span < 2**62:
            return np.argsort(codes * span + (ts - t0), kind="stable").astype(np.int64)
        return np.lexsort((ts, codes)).astype(np.int64)
    return order


def _groups_of(group_users: I64, group_clocks: I64, state: InsideState) -> I64:
    """Group number of each state pair in this batch, -1 when its trail has no samples.

    Each group is one distinct (user, clock) pair: a binary search of the
    packed pairs, or a dict when ids are too large to pack.
    """
    keys = _packed(group_users, group_clocks)
    want = _packed(state.user_ids, state.time_clock_ids)
    if keys is not None and want is not None:
        if not keys.size:
            return np.full(want.size, -1, np.int64)
        order = np.argsort(keys)
        sorted_keys = keys[order]
        at = np.minimum(np.searchsorted(sorted_keys, want), keys.size - 1)
        found: I64 = np.where(sorted_keys[at] == want, order[at], -1).astype(np.int64)
        return found
    groups = {
        (u, c): g
        for g, (u, c) in enumerate(zip(group_users.tolist(), group_clocks.tolist(), strict=True))
    }
    return np.fromiter(
        (
            groups.get((u, c), -1)
            for u, c in zip(state.user_ids.tolist(), state.time_clock_ids.tolist(), strict=True)
        ),
        np.int64,
        state.user_ids.size,
    )
