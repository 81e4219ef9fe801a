"""The fence index: immutable snapshots of every enabled geofence, swapped atomically.

Layout
------
A :class:`FenceTable` holds fences as parallel arrays (rows sorted by clock),
their ECEF centres, and a hash of grid cells: each fence is registered in every
``CELL_M`` cube cell that its circle, widened by the largest tolerance or exit
buffer of its time clock, can reach. The cell key includes the clock, so a
point only ever meets fences of its own time clock.

A :class:`Snapshot` is a short list of tables and, per clock, the number of
the table holding its current fences (``owner``); a clock's rows in any other
table are stale. A change to a time clock's fences builds a table for that
clock alone (well under a millisecond for 1,000 fences) and publishes a new
snapshot with it appended; the changes made inside one
:meth:`Snapshots.deferred` block (a group commit's) share one table and one
snapshot. :meth:`Snapshots.compact` merges tables in the
manner of a log-structured merge: the tail of small tables folds into one,
together with each table before it that is not more than twice as large, so
every fence is rebuilt a logarithmic number of times however the fences
arrive (a bulk load through the API, clock by clock, included), and the list
stays short. Readers take ``index.snapshot`` once per call and never lock;
writers serialize on a lock and publish by replacing one reference.
"""

from __future__ import annotations

import logging
import threading
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from geopunch.domain.locations import EXIT_ACTIONS, F64, I32, I64, B, FenceRows
from geopunch.domain.models import Geofence, TimeClock
from geopunch.geo import _kernels as kernels
from geopunch.geo._frames import ecef

ACTIONS = EXIT_ACTIONS

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ClockInfo:
    """What the engine needs of a time clock, at a dense index ``idx``."""

    idx: int
    time_clock: TimeClock
    job_codes: Mapping[str, int]
    #: The clock's assigned users, sorted (int64): membership tests stay in numpy.
    user_ids: I64

    @staticmethod
    def of(idx: int, tc: TimeClock) -> ClockInfo:
        users = np.sort(np.fromiter(tc.user_ids, np.int64, len(tc.user_ids)))
        return ClockInfo(idx, tc, {job.id: i for i, job in enumerate(tc.jobs)}, users)

    @property
    def max_extra_m(self) -> float:
        """Widest margin any check adds to a radius for this clock."""
        ed = self.time_clock.exit_detection
        return max(
            self.time_clock.accuracy_tolerance_m,
            ed.buffer_high_accuracy_m,
            ed.buffer_low_accuracy_m,
            ed.buffer_unknown_accuracy_m,
        )


@dataclass(frozen=True, slots=True, eq=False, weakref_slot=True)
class FenceTable:
    """Enabled fences of some clocks, ready for the kernels. Rows are sorted by clock."""

    handle_base: int
    clocks: I32
    lats: F64
    lons: F64
    fx: F64
    fy: F64
    fz: F64
    radius: F64
    actions: npt.NDArray[np.int8]
    ids: npt.NDArray[np.bytes_]
    applies_all: B
    job_start: I64
    jobs: I32
    clock_row_start: I64
    slots: I64
    entries: F64
    entry_rows: I32
    #: The first dense clock of ``clock_row_start``: entry ``k`` is where clock
    #: ``clock_base + k`` starts. A table spans only the clocks it holds, so a
    #: small table of a publish costs nothing for the thousands of clocks
    #: before its own.
    clock_base: int = field(default=0, kw_only=True)

    @property
    def size(self) -> int:
        return int(self.clocks.size)

    @property
    def per_clock_columns(self) -> tuple[I64, F64, F64, F64, F64, B, I64, I32]:
        """The arguments of the kernels that scan all fences of one clock."""
        return (
            self.clock_row_start,
            self.fx,
            self.fy,
            self.fz,
            self.radius,
            self.applies_all,
            self.job_start,
            self.jobs,
        )

    @property
    def nbytes(self) -> int:
        return sum(int(getattr(self, name).nbytes) for name in TABLE_ARRAYS)


#: The arrays of a :class:`FenceTable`, in the order of its fields.
TABLE_ARRAYS = tuple(
    f.name for f in fields(FenceTable) if f.name not in ("handle_base", "clock_base")
)


@dataclass(frozen=True, slots=True)
class FenceColumns:
    """Fences as columns, the input of :func:`build_table`.

    ``job_start``/``jobs`` are CSR: the job codes (already widened with their
    sub-jobs) of row ``i`` are ``jobs[job_start[i]:job_start[i+1]]``.
    """

    clocks: I32
    lats: F64
    lons: F64
    radius: F64
    actions: npt.NDArray[np.int8]
    ids: npt.NDArray[np.bytes_]
    applies_all: B
    job_start: I64
    jobs: I32

    @staticmethod
    def from_rows(rows: FenceRows, clocks: Mapping[int, ClockInfo]) -> FenceColumns:
        """Columns of stored fence rows, whole-array work but for the few
        fences that name jobs (their sub-jobs are widened here)."""
        n = len(rows)
        known = np.fromiter(clocks, np.int64, len(clocks))
        dense = np.fromiter((c.idx for c in clocks.values()), np.int32, len(clocks))
        order = np.argsort(known)
        at = np.searchsorted(known[order], rows.time_clock_ids)
        at[at >= known.size] = 0
        if n and (known.size == 0 or (known[order][at] != rows.time_clock_ids).any()):
            raise KeyError("a fence of a time clock the index is not given")
        clock_col = dense[order][at] if n else np.zeros(0, np.int32)
        counts = np.zeros(n, dtype=np.int64)
        job_codes: list[int] = []
        widened: dict[tuple[int, tuple[str, ...]], list[int]] = {}
        for row in sorted(rows.job_ids):
            job_ids = rows.job_ids[row]
            info = clocks[int(rows.time_clock_ids[row])]
            key = (info.idx, job_ids)
            codes = widened.get(key)
            if codes is None:
                tree = info.time_clock.with_descendants(job_ids)
                codes = widened[key] = sorted(info.job_codes[j] for j in tree)
            counts[row] = len(codes)
            job_codes.extend(codes)
        job_start = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(counts, out=job_start[1:])
        return FenceColumns(
            clocks=clock_col.astype(np.int32, copy=False),
            lats=np.asarray(rows.latitudes, dtype=np.float64),
            lons=np.asarray(rows.longitudes, dtype=np.float64),
            radius=np.asarray(rows.sizes_m, dtype=np.float64),
            actions=np.asarray(rows.exit_actions, dtype=np.int8),
            ids=rows.ids if n else np.zeros(0, "S1"),
            applies_all=counts == 0,
            job_start=job_start,
            jobs=np.asarray(job_codes, dtype=np.int32),
        )

    def take(self, rows: I64) -> FenceColumns:
        starts, ends = self.job_start[rows], self.job_start[rows + 1]
        lengths = ends - starts
        job_start = np.zeros(rows.size + 1, dtype=np.int64)
        np.cumsum(lengths, out=job_start[1:])
        flat = np.repeat(starts - job_start[:-1], lengths) + np.arange(job_start[-1])
        return FenceColumns(
            self.clocks[rows],
            self.lats[rows],
            self.lons[rows],
            self.radius[rows],
            self.actions[rows],
            self.ids[rows],
            self.applies_all[rows],
            job_start,
            self.jobs[flat],
        )

    @staticmethod
    def concat(parts: Sequence[FenceColumns]) -> FenceColumns:
        job_start = [np.zeros(1, dtype=np.int64)]
        base = 0
        for p in parts:
            job_start.append(p.job_start[1:] + base)
            base += int(p.job_start[-1])
        return FenceColumns(
            *(
                np.concatenate([getattr(p, name) for p in parts])
                for name in ("clocks", "lats", "lons", "radius", "actions", "ids", "applies_all")
            ),
            job_start=np.concatenate(job_start),
            jobs=np.concatenate([p.jobs for p in parts]),
        )  # type: ignore[misc]


def columns_of(table: FenceTable, rows: I64 | None = None) -> FenceColumns:
    cols = FenceColumns(
        table.clocks,
        table.lats,
        table.lons,
        table.radius,
        table.actions,
        table.ids,
        table.applies_all,
        table.job_start,
        table.jobs,
    )
    return cols if rows is None else cols.take(rows)


def build_table(cols: FenceColumns, extra_m: F64, handle_base: int) -> FenceTable:
    """Index fences; ``extra_m`` (shape (n_clocks,)) widens each clock's fences in the grid."""
    if cols.clocks.size and (np.diff(cols.clocks) < 0).any():
        cols = cols.take(np.argsort(cols.clocks, kind="stable").astype(np.int64))
    m = cols.clocks.size
    fx, fy, fz = ecef(cols.lats, cols.lons)
    reach = cols.radius + (extra_m[cols.clocks] if m else 0.0)
    # The kernels' one compiled signature: C-ordered, writable arrays (columns
    # given by a caller may be views or read-only).
    clocks = np.require(cols.clocks, np.int32, ["C", "W"])
    radius = np.require(cols.radius, np.float64, ["C", "W"])
    keys, rows = kernels.cell_entries(clocks, fx, fy, fz, reach)
    # Stable (timsort) rather than the default quicksort: the keys come in
    # runs (ascending clocks, and each fence's cells in key order), which
    # timsort merges, much faster here (bench/README.md); a cell's rows stay
    # in row order.
    by_key = np.argsort(keys, kind="stable")
    slots, entries, rows = kernels.cell_table(keys, rows, by_key, fx, fy, fz, radius)
    del keys, by_key
    # Row starts of the clocks from the table's first to its last, and the end.
    first, last = (int(cols.clocks[0]), int(cols.clocks[-1])) if m else (0, -1)
    clock_row_start = np.searchsorted(cols.clocks, np.arange(first, last + 2)).astype(np.int64)
    return FenceTable(
        handle_base=handle_base,
        clocks=cols.clocks,
        lats=cols.lats,
        lons=cols.lons,
        fx=fx,
        fy=fy,
        fz=fz,
        radius=cols.radius,
        actions=cols.actions,
        ids=cols.ids,
        applies_all=cols.applies_all,
        job_start=cols.job_start,
        jobs=cols.jobs,
        clock_row_start=clock_row_start,
        slots=slots,
        entries=entries,
        entry_rows=rows,
        clock_base=first,
    )


def jobs_fingerprint(tc: TimeClock) -> int:
    """A digest of a clock's jobs (ids, order, sub-jobs): the job codes of a
    saved table are valid while it is unchanged."""
    return zlib.crc32("\x1f".join(f"{j.id}\x1e{j.parent_id or ''}" for j in tc.jobs).encode())


@dataclass(frozen=True, slots=True)
class SavedIndex:
    """One account's index as a checkpoint keeps it: a single table of every
    current fence, and per dense clock its id and what the table was built
    with (its grid margin, its jobs' digest)."""

    clock_ids: I64
    extra_m: F64
    job_digests: I64
    table: FenceTable
    #: The version of the snapshot it was taken from.
    version: int = 0


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One consistent version of every clock and enabled fence."""

    version: int
    clocks: tuple[ClockInfo, ...]
    #: Time clock ids, sorted, and the dense index of each (``clock_index``).
    sorted_clock_ids: I64
    sorted_clock_idx: I32
    direct_clock_idx: I32
    tolerance_m: F64
    extra_m: F64
    #: (5, n_clocks): each clock's exit-detection settings, rows in the order of
    #: ``EXIT_SETTINGS``.
    exit_m: F64
    tables: tuple[FenceTable, ...]
    #: Per clock (int16): the number of the table holding its current fences.
    owner: npt.NDArray[np.int16]
    #: Stale rows over all tables (rows of clocks owned by another table).
    dead: int
    #: Every (clock, assigned user) pair as ``dense clock << 40 | user id``,
    #: sorted: one ``searchsorted`` tells whether samples' users are assigned.
    user_keys: I64

    @property
    def base(self) -> FenceTable:
        return self.tables[0]

    @property
    def rows(self) -> int:
        """Rows over all tables, stale ones included."""
        return sum(t.size for t in self.tables)

    @property
    def fence_count(self) -> int:
        return self.rows - self.dead

    def clock_rows(self, idx: int) -> tuple[int, int]:
        """The span of rows holding dense clock ``idx``'s current fences in the
        table that owns it; (0, 0) when that table holds none of them."""
        table = self.tables[int(self.owner[idx])]
        k = idx - table.clock_base
        starts = table.clock_row_start
        return (int(starts[k]), int(starts[k + 1])) if 0 <= k < starts.size - 1 else (0, 0)

    def live_rows(self, t_no: int) -> I64:
        """Rows of table ``t_no`` that are current (their clock's owner is it)."""
        table = self.tables[t_no]
        if len(self.tables) == 1:
            return np.arange(table.size, dtype=np.int64)
        return np.flatnonzero(self.owner[table.clocks] == t_no).astype(np.int64)

    def current(self, clocks: I32, t_no: int) -> B:
        """Whether table ``t_no`` holds the current fences of each dense clock
        (int32, -1 for none: False)."""
        known = (clocks >= 0) & (clocks < self.owner.size)
        mine: B = known & (self.owner[np.where(known, clocks, 0)] == t_no)
        return mine

    def clock_index(self, time_clock_id: int) -> int | None:
        """The dense index of a time clock id; None when it is not held.

        Answered from the arrays the kernels resolve ids with: a dict beside
        them would have to be copied whole at every publish that adds a
        clock, which made a long bulk load slow down as it went."""
        direct = self.direct_clock_idx
        if 0 <= time_clock_id < direct.size:
            idx = int(direct[time_clock_id])
            return idx if idx >= 0 else None
        if 0 <= time_clock_id < _DIRECT_IDS or not _INT64_MIN <= time_clock_id <= _INT64_MAX:
            return None  # the direct table covers every small id held
        ids = self.sorted_clock_ids
        at = int(np.searchsorted(ids, time_clock_id))
        if at < ids.size and ids[at] == time_clock_id:
            return int(self.sorted_clock_idx[at])
        return None

    def dense_clocks(self, time_clock_ids: npt.ArrayLike) -> I32:
        """Dense clock indexes of time clock ids (int64, shape (n,)); -1 when unknown."""
        ids = np.ascontiguousarray(time_clock_ids, dtype=np.int64)
        out = np.empty(ids.shape, dtype=np.int32)
        kernels.resolve_clocks(
            ids, self.sorted_clock_ids, self.sorted_clock_idx, self.direct_clock_idx, out
        )
        return out

    def fence_ids(self, handles: I64) -> list[str]:
        """Fence ids of result handles (int64, shape (k,))."""
        raw = self.fence_ids_fixed(handles)
        if not raw.size:
            return []
        # One decode of the joined ids instead of one per id (ids hold no NUL).
        return b"\0".join(raw.tolist()).decode().split("\0")

    def fence_ids_fixed(self, handles: I64) -> npt.NDArray[np.bytes_]:
        """Fence ids of result handles as one fixed-width bytes array (``S<w>``,
        NUL-padded UTF-8, shape (k,)): no Python string per id."""
        handles = np.asarray(handles, dtype=np.int64)
        raw = np.empty(handles.size, dtype="S1")
        found = 0
        for table in self.tables:
            rows = handles - table.handle_base
            mine = (rows >= 0) & (rows < table.size)
            if mine.any():
                if table.ids.dtype.itemsize > raw.dtype.itemsize:
                    raw = raw.astype(table.ids.dtype)
                raw[mine] = table.ids[rows[mine]]
                found += int(np.count_nonzero(mine))
        if found != handles.size:
            raise KeyError("a handle is not in this snapshot")
        return raw


#: Rows of ``Snapshot.exit_m``: fields of ExitDetectionSettings.
EXIT_SETTINGS = (
    "high_accuracy_max_m",
    "buffer_high_accuracy_m",
    "low_accuracy_max_m",
    "buffer_low_accuracy_m",
    "buffer_unknown_accuracy_m",
)


def _clock_arrays(clocks: Sequence[ClockInfo]) -> tuple[I64, I32, F64, F64, F64]:
    ids = np.fromiter((c.time_clock.id for c in clocks), np.int64, len(clocks))
    order = np.argsort(ids)
    tol = np.fromiter((c.time_clock.accuracy_tolerance_m for c in clocks), np.float64, len(clocks))
    extra = np.fromiter((c.max_extra_m for c in clocks), np.float64, len(clocks))
    exit_m = np.array(
        [[getattr(c.time_clock.exit_detection, name) for c in clocks] for name in EXIT_SETTINGS],
        dtype=np.float64,
    ).reshape(len(EXIT_SETTINGS), len(clocks))
    return ids[order], order.astype(np.int32), tol, extra, exit_m


#: Time clock ids below this resolve through a flat table (at most 16 MiB).
_DIRECT_IDS = 1 << 22
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1


def _direct_table(sorted_ids: I64, sorted_idx: I32) -> I32:
    small = sorted_ids[(sorted_ids >= 0) & (sorted_ids < _DIRECT_IDS)]
    if small.size == 0:
        return np.full(0, -1, np.int32)
    table = np.full(int(small.max()) + 1, -1, np.int32)
    table[small] = sorted_idx[np.searchsorted(sorted_ids, small)]
    return table


_ClockArrays = tuple[I64, I32, I32, F64, F64, F64, I64]


def _all_clock_arrays(clocks: Sequence[ClockInfo]) -> _ClockArrays:
    sorted_ids, sorted_idx, tol, extra, exit_m = _clock_arrays(clocks)
    direct = _direct_table(sorted_ids, sorted_idx)
    return sorted_ids, sorted_idx, direct, tol, extra, exit_m, _user_keys(clocks)


@dataclass
class _Tails:
    """Spare room past the end of the per-clock arrays, so that adding a time
    clock does not copy the arrays of every clock already held.

    Each snapshot reads a prefix of a buffer (along its last axis). A buffer
    is lengthened in place only from its longest prefix handed out so far,
    so nothing is ever written where a published snapshot reads; any other
    prefix (a publish that failed, an older snapshot) is copied into a new
    buffer instead. Only the writer, under the snapshots' lock, calls this.
    """

    _held: dict[str, tuple[npt.NDArray[Any], int]] = field(default_factory=dict)

    def extend(self, name: str, view: npt.NDArray[Any], length: int) -> npt.NDArray[Any]:
        """``view`` lengthened to ``length``; what lies past its old end is
        uninitialised, for the caller to fill before publishing."""
        n = view.shape[-1]
        held = self._held.get(name)
        if held is not None:
            buf, end = held
            if view.base is buf and n == end and length <= buf.shape[-1]:
                self._held[name] = (buf, length)
                return buf[..., :length]
        # Doubling keeps the copies to a constant share of the appends.
        buf = np.empty((*view.shape[:-1], max(2 * length, 64)), view.dtype)
        buf[..., :n] = view
        self._held[name] = (buf, length)
        return buf[..., :length]


def _set_per_clock(
    tails: _Tails, name: str, view: npt.NDArray[Any], n: int, at: I64, values: npt.ArrayLike
) -> npt.NDArray[Any]:
    """``view`` over ``n`` clocks with ``values`` at dense indexes ``at``."""
    held = view.shape[-1]
    if at.size and at[0] < held:  # a held clock changed: readers keep the old values
        out = np.empty((*view.shape[:-1], n), view.dtype)
        out[..., :held] = view
    else:
        out = tails.extend(name, view, n)
    out[..., at] = values
    return out


def _clock_arrays_with(
    prev: Snapshot, clocks: tuple[ClockInfo, ...], changed: Sequence[int], tails: _Tails
) -> _ClockArrays:
    """``prev``'s per-clock arrays with the clocks at ``changed`` (ascending)
    changed, or (past ``prev``'s clocks) added.

    Rebuilding them from every clock made each new time clock cost time in
    proportion to the clocks already held, so a bulk load slowed as it went.
    Added clocks are appended into the spare room of ``tails`` (no copy of
    what is held); a changed held clock costs one copy of each array, in C.
    """
    n_prev, n = len(prev.clocks), len(clocks)
    at = np.asarray(changed, dtype=np.int64)
    infos = [clocks[i] for i in changed]
    keys = prev.user_keys
    if at.size and at[0] < n_prev:
        # Each changed clock's run of user keys replaced by its new one.
        bounds = np.searchsorted(keys, np.stack([at << 40, (at + 1) << 40]).ravel("F"))
        parts, taken = [], 0
        for info, lo, hi in zip(infos, bounds[::2], bounds[1::2], strict=True):
            parts += [keys[taken:lo], _keys_of(info)]
            taken = int(hi)
        user_keys = np.concatenate([*parts, keys[taken:]])
    else:  # only added clocks: their keys sort after every held one
        tail = _user_keys(infos)
        user_keys = tails.extend("user_keys", keys, keys.size + tail.size)
        user_keys[keys.size :] = tail
    tol = _set_per_clock(
        tails, "tolerance_m", prev.tolerance_m, n, at,
        [i.time_clock.accuracy_tolerance_m for i in infos],
    )  # fmt: skip
    extra = _set_per_clock(tails, "extra_m", prev.extra_m, n, at, [i.max_extra_m for i in infos])
    exit_m = _set_per_clock(
        tails, "exit_m", prev.exit_m, n, at,
        np.asarray(
            [[getattr(i.time_clock.exit_detection, name) for name in EXIT_SETTINGS] for i in infos],
            np.float64,
        ).T.reshape(len(EXIT_SETTINGS), len(infos)),
    )  # fmt: skip
    sorted_ids, sorted_idx = prev.sorted_clock_ids, prev.sorted_clock_idx
    direct = prev.direct_clock_idx
    if n > n_prev:  # the added clocks are the tail, in ``changed`` order
        ids = np.fromiter((c.time_clock.id for c in clocks[n_prev:]), np.int64, n - n_prev)
        order = np.argsort(ids, kind="stable")
        ids, dense = ids[order], (np.arange(n_prev, n, dtype=np.int64))[order]
        if not sorted_ids.size or ids[0] > sorted_ids[-1]:  # ids that grow: appended
            held = sorted_ids.size
            sorted_ids = tails.extend("sorted_ids", sorted_ids, held + ids.size)
            sorted_idx = tails.extend("sorted_idx", sorted_idx, held + ids.size)
            sorted_ids[held:], sorted_idx[held:] = ids, dense
        else:
            where = np.searchsorted(sorted_ids, ids)
            sorted_ids = np.insert(sorted_ids, where, ids)
            sorted_idx = np.insert(sorted_idx, where, dense).astype(np.int32)
        small = (ids >= 0) & (ids < _DIRECT_IDS)
        if small.any():
            top = int(ids[small].max()) + 1
            if int(ids[small].min()) >= direct.size:  # past the table's end: lengthened
                held = direct.size
                direct = tails.extend("direct", direct, top)
                direct[held:] = -1
            else:  # a slot readers can see: a copy
                direct = np.concatenate([direct, np.full(max(top - direct.size, 0), -1, np.int32)])
            direct[ids[small]] = dense[small]
    return sorted_ids, sorted_idx, direct, tol, extra, exit_m, user_keys


def _make_snapshot(
    version: int,
    clocks: tuple[ClockInfo, ...],
    tables: tuple[FenceTable, ...],
    owner: npt.NDArray[np.int16],
    dead: int,
    prev: Snapshot | None = None,
    changed: Sequence[int] = (),
    tails: _Tails | None = None,
) -> Snapshot:
    """A snapshot; per-clock arrays are reused from ``prev`` when the clocks did
    not change, and updated from it when only the clocks at ``changed`` did."""
    arrays: _ClockArrays
    if prev is not None and prev.clocks is clocks:
        arrays = (
            prev.sorted_clock_ids,
            prev.sorted_clock_idx,
            prev.direct_clock_idx,
            prev.tolerance_m,
            prev.extra_m,
            prev.exit_m,
            prev.user_keys,
        )
    elif prev is not None and changed:
        arrays = _clock_arrays_with(prev, clocks, changed, tails or _Tails())
    else:
        arrays = _all_clock_arrays(clocks)
    sorted_ids, sorted_idx, direct, tol, extra, exit_m, user_keys = arrays
    return Snapshot(
        version=version,
        clocks=clocks,
        sorted_clock_ids=sorted_ids,
        sorted_clock_idx=sorted_idx,
        direct_clock_idx=direct,
        tolerance_m=tol,
        extra_m=extra,
        exit_m=exit_m,
        tables=tables,
        owner=owner,
        dead=dead,
        user_keys=user_keys,
    )


#: Assigned user ids must be below this to be looked up by ``Snapshot.user_keys``.
USER_KEY_LIMIT = 1 << 40


def _keys_of(c: ClockInfo) -> I64:
    """The clock's (clock, assigned user) keys of ``Snapshot.user_keys``, sorted."""
    return (np.int64(c.idx) << 40) + c.user_ids[(c.user_ids >= 0) & (c.user_ids < USER_KEY_LIMIT)]


def _user_keys(clocks: Sequence[ClockInfo]) -> I64:
    """Clocks are in dense order and their users sorted: the keys come out sorted."""
    parts = [_keys_of(c) for c in clocks if c.user_ids.size]
    return np.concatenate(parts) if parts else np.empty(0, np.int64)


#: Tables of at most this many live rows merge with the tail whatever their
#: neighbours' sizes, so the clock-by-clock tables of a load fold at once.
_SMALL_TABLE = 4096
#: Past this many tables (``Snapshot.owner`` is int16) a writer compacts itself.
_MAX_TABLES = 30_000


@dataclass
class Snapshots:
    """Holds the current snapshot and builds the next one on every change;
    ``snapshot`` is safe to read from any thread."""

    compact_after_clocks: int = 32
    compact_after_fences: int = 100_000
    _snapshot: Snapshot = field(init=False)
    _lock: threading.RLock = field(init=False, default_factory=threading.RLock)
    _next_handle: int = field(init=False, default=0)
    _compacting: bool = field(init=False, default=False)
    #: Changes of the open ``deferred`` block by dense clock index (None: no
    #: block is open), and the ids of the clocks it adds.
    _pending: dict[int, tuple[ClockInfo, FenceColumns]] | None = field(init=False, default=None)
    _pending_ids: dict[int, int] = field(init=False, default_factory=dict)
    _tails: _Tails = field(init=False, default_factory=_Tails)

    def __post_init__(self) -> None:
        self.load([], [])

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    @contextmanager
    def write_lock(self) -> Iterator[None]:
        """Held across a store commit and the matching update, so updates apply in commit order."""
        with self._lock:
            yield

    def _reserve(self, count: int) -> int:
        base = self._next_handle
        self._next_handle += max(count, 1)
        return base

    def load(
        self, time_clocks: Iterable[TimeClock], fences: FenceRows | Iterable[Geofence]
    ) -> Snapshot:
        """Replace everything with a full build (start-up)."""
        rows = fences if isinstance(fences, FenceRows) else FenceRows.of(fences)
        with self._lock:
            clocks = tuple(ClockInfo.of(i, tc) for i, tc in enumerate(time_clocks))
            cols = FenceColumns.from_rows(rows, {c.time_clock.id: c for c in clocks})
            base = build_table(cols, _clock_arrays(clocks)[3], self._reserve(cols.clocks.size))
            return self._replace_all(clocks, base)

    def _replace_all(self, clocks: tuple[ClockInfo, ...], table: FenceTable) -> Snapshot:
        """Publish ``table`` as the only one, holding ``clocks`` (under the lock)."""
        if self._pending is not None:  # what a block held is in the store just read
            self._pending.clear()
            self._pending_ids.clear()
        old = getattr(self, "_snapshot", None)
        owner = np.zeros(len(clocks), np.int16)
        version = old.version + 1 if old else 1
        self._snapshot = _make_snapshot(version, clocks, (table,), owner, 0)
        return self._snapshot

    def saved(self) -> SavedIndex | None:
        """The current snapshot as one table (compacted first when it is not);
        None when writers kept adding tables while it compacted."""
        for _ in range(3):
            snap = self._snapshot
            if len(snap.tables) == 1 and not snap.dead:
                jobs = [jobs_fingerprint(c.time_clock) for c in snap.clocks]
                return SavedIndex(
                    np.fromiter((c.time_clock.id for c in snap.clocks), np.int64, len(snap.clocks)),
                    snap.extra_m,
                    np.asarray(jobs, dtype=np.int64),
                    snap.base,
                    snap.version,
                )
            self.compact(everything=True)
        return None

    def restore(
        self, time_clocks: Sequence[TimeClock], saved: SavedIndex
    ) -> list[TimeClock] | None:
        """Replace everything with a saved table (start-up). ``time_clocks``
        are the account's clocks now; the ones the table does not hold as
        they are now (new, or changed since it was saved) are returned, for
        the caller to report with their fences. None when a saved clock is
        gone: the table cannot be used."""
        by_id = {tc.id: tc for tc in time_clocks}
        saved_ids = saved.clock_ids.tolist()
        if any(i not in by_id for i in saved_ids):
            return None
        held = set(saved_ids)
        order = [by_id[i] for i in saved_ids] + [tc for tc in time_clocks if tc.id not in held]
        clocks = tuple(ClockInfo.of(i, tc) for i, tc in enumerate(order))
        digests = saved.job_digests.tolist()
        changed = [
            c.time_clock
            for c, extra, digest in zip(clocks, saved.extra_m.tolist(), digests, strict=False)
            if c.max_extra_m != extra or jobs_fingerprint(c.time_clock) != digest
        ]
        stale = changed + [c.time_clock for c in clocks[len(saved_ids) :]]
        with self._lock:
            table = saved.table
            self._next_handle = max(self._next_handle, table.handle_base + max(table.size, 1))
            self._replace_all(clocks, table)
        return stale

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """Hold the write lock; the changes reported inside are published
        together when the outermost ``deferred`` ends: one snapshot and one
        table for all of them (the changes of a group commit), instead of one
        per change. Readers see none of them until then."""
        with self._lock:
            if self._pending is not None:  # nested: the outer one publishes
                yield
                return
            self._pending, self._pending_ids = {}, {}
            try:
                yield
            finally:
                pending, self._pending, self._pending_ids = self._pending, None, {}
                if pending:
                    self._publish(pending)
        if pending:
            self._maybe_compact()

    def _publish(self, pending: Mapping[int, tuple[ClockInfo, FenceColumns]]) -> None:
        """One snapshot in which each clock of ``pending`` (by dense index)
        has the settings and fences given, in a table of their own."""
        snap = self._snapshot
        if len(snap.tables) >= _MAX_TABLES:  # compactions fell far behind: catch up here
            snap = self.compact()
        changed = sorted(pending)
        held = snap.owner.size
        # Clocks whose settings are new: added ones, and held ones reported
        # with another ``ClockInfo``. A change of fences alone keeps its
        # clock's info object, and then the clock list and every per-clock
        # array carry over from ``snap`` untouched (most publishes of a bulk
        # load change fences only).
        settled = [idx for idx in changed if idx >= held or pending[idx][0] is not snap.clocks[idx]]
        clocks = snap.clocks
        if settled:
            grown = list(snap.clocks)
            for idx in settled:
                if idx < held:
                    grown[idx] = pending[idx][0]
                else:  # new clocks take the next indexes, in order
                    grown.append(pending[idx][0])
            clocks = tuple(grown)
        owner = np.zeros(len(clocks), np.int16)
        owner[:held] = snap.owner
        # A new clock without fences needs no table: every table was built
        # before it existed, so none covers it, and owner 0 (the default)
        # answers "no fences". A bulk load creates each clock this way before
        # its fences arrive.
        tabled = [idx for idx in changed if idx < held or pending[idx][1].clocks.size]
        dead = snap.dead
        for idx in tabled:
            if idx < held:  # its rows in the table that owned it go stale
                lo, hi = snap.clock_rows(idx)
                dead += hi - lo
            owner[idx] = len(snap.tables)
        # The clocks' settings first: their table is built with their margins.
        staged = _make_snapshot(
            snap.version + 1, clocks, snap.tables, owner, dead, snap, settled, self._tails
        )
        if not tabled:
            self._snapshot = staged
            return
        cols = FenceColumns.concat([pending[idx][1] for idx in tabled])
        table = build_table(cols, staged.extra_m, self._reserve(cols.clocks.size))
        self._snapshot = replace(staged, tables=(*snap.tables, table))

    def _index_of(self, snap: Snapshot, time_clock_id: int) -> int | None:
        """The dense index of a clock held or added in the open batch."""
        idx = snap.clock_index(time_clock_id)
        return self._pending_ids.get(time_clock_id) if idx is None else idx

    def time_clock_changed(self, tc: TimeClock, fences: Sequence[Geofence]) -> None:
        """A time clock was created or changed; ``fences`` are all of its geofences."""
        self.time_clocks_read_again([tc], FenceRows.of(fences))

    def time_clocks_read_again(self, time_clocks: Sequence[TimeClock], rows: FenceRows) -> None:
        """Time clocks created or changed, with all their enabled fences as
        columns (rows of each clock together, in their order), published as
        one change."""
        with self.deferred():
            assert self._pending is not None
            snap = self._snapshot
            infos: dict[int, ClockInfo] = {}
            for tc in time_clocks:
                idx = self._index_of(snap, tc.id)
                if idx is None:
                    idx = len(snap.clocks) + len(self._pending_ids)
                    if idx >= kernels.MAX_CLOCKS:
                        raise RuntimeError("too many time clocks for the cell key layout")
                    self._pending_ids[tc.id] = idx
                infos[tc.id] = ClockInfo.of(idx, tc)
            cols = FenceColumns.from_rows(rows, infos)
            # Each clock's rows apart: a clock's fences are one contiguous run.
            spans: dict[int, tuple[int, int]] = {}
            ids = rows.time_clock_ids
            if ids.size:
                starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
                bounds = np.r_[starts, ids.size].tolist()
                for k, tc_id in enumerate(ids[starts].tolist()):
                    if tc_id in spans:
                        raise ValueError("the rows of a time clock are not together")
                    spans[tc_id] = (bounds[k], bounds[k + 1])
            for tc_id, info in infos.items():
                lo, hi = spans.get(tc_id, (0, 0))
                part = cols if len(infos) == 1 else cols.take(np.arange(lo, hi, dtype=np.int64))
                self._pending[info.idx] = (info, part)

    def fences_changed(
        self, tc: TimeClock, added: Sequence[Geofence], removed: Sequence[str]
    ) -> None:
        """Fences of ``tc`` were created (``added``) or deleted (ids in ``removed``)."""
        with self.deferred():
            assert self._pending is not None
            snap = self._snapshot
            idx = self._index_of(snap, tc.id)
            if idx is None:
                self.time_clock_changed(tc, added)
                return
            staged = self._pending.get(idx)
            if staged is not None:
                info, cols = staged
            else:
                info = snap.clocks[idx]
                lo, hi = snap.clock_rows(idx)
                cols = columns_of(
                    snap.tables[int(snap.owner[idx])], np.arange(lo, hi, dtype=np.int64)
                )
            if removed:
                gone = {r.encode() for r in removed}
                keep = [i for i, raw in enumerate(cols.ids) if bytes(raw) not in gone]
                cols = cols.take(np.asarray(keep, dtype=np.int64))
            if added:
                cols = FenceColumns.concat(
                    [cols, FenceColumns.from_rows(FenceRows.of(added), {tc.id: info})]
                )
            self._pending[idx] = (info, cols)

    def _maybe_compact(self) -> None:
        snap = self._snapshot
        if self._compacting or not (
            len(snap.tables) - 1 > self.compact_after_clocks or self._too_stale(snap)
        ):
            return
        self._compacting = True
        threading.Thread(
            target=self._compact_in_background, name="fence-compact", daemon=True
        ).start()

    def _too_stale(self, snap: Snapshot) -> bool:
        """Stale rows cost memory and scan time: merge everything past this."""
        return snap.dead > self.compact_after_fences and snap.dead * 4 > snap.rows

    def _compact_in_background(self) -> None:
        try:
            self.compact(everything=self._too_stale(self._snapshot))
        except Exception:  # pragma: no cover - the next change tries again
            log.exception("fence index compaction failed")

    def compact(self, everything: bool = True) -> Snapshot:
        """Merge tables without blocking readers or writers; all of them into
        one with ``everything``, else the tail of small ones (see the module's
        docstring).

        The merged table is built from a snapshot outside the lock; tables that
        writers appended meanwhile stay after it, and the clocks they own keep
        them.
        """
        try:
            # Only the reservation and the swap hold the lock: the publishes
            # of every commit wait for it, and copying the merged rows out of
            # a million-fence index took 14-230 ms (page faults of the fresh
            # arrays included). A snapshot and its tables never change.
            start = self._snapshot
            tables = start.tables
            if len(tables) == 1 and not start.dead:
                return start
            # Live rows of the tables walked back from the tail only: the
            # large early tables are looked at just to stop the walk.
            live = {len(tables) - 1: start.live_rows(len(tables) - 1)}
            first = len(tables) - 1
            merged = live[first].size
            while first > 0:
                live[first - 1] = start.live_rows(first - 1)
                if not (
                    everything
                    or first == len(tables) - 1  # at least two: a merge must shorten the list
                    or live[first - 1].size <= 2 * max(merged, _SMALL_TABLE)
                ):
                    break
                first -= 1
                merged += live[first].size
            cols = FenceColumns.concat(
                [columns_of(tables[t], live[t]) for t in range(first, len(tables))]
            )
            gone = sum(tables[t].size - live[t].size for t in range(first, len(tables)))
            with self._lock:
                handle = self._reserve(cols.clocks.size)
            table = build_table(cols, start.extra_m, handle)
            with self._lock:
                now = self._snapshot
                k = len(tables)
                if now.tables[:k] != tables:  # reloaded meanwhile: this merge is moot
                    return now
                o = now.owner.astype(np.int32)
                owner = np.where(o < first, o, np.where(o < k, first, o - (k - 1 - first)))
                self._snapshot = _make_snapshot(
                    now.version + 1,
                    now.clocks,
                    (*tables[:first], table, *now.tables[k:]),
                    owner.astype(np.int16),
                    now.dead - gone,
                    now,
                )
                return self._snapshot
        finally:
            self._compacting = False
