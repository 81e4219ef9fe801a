"""The fence engine's front door: everything outside ``geo`` imports from here.

``FenceIndex`` implements ``domain.ports.FenceEngine``: it keeps each time
clock's geofence circles in an exact, vectorized index of immutable snapshots
that it swaps on every change, so readers never wait for writers. Its
``view()`` wraps the current snapshot as a ``domain.ports.FenceView``:
batch checks, one punch location, assignment of users and exit detection,
with fences named by id (resolved lazily), never by the snapshot's internal
row handles.

``pair_codes`` and ``bucket_order`` are the engine's grouping helpers, shared
with the trail-file reader that groups rows the same way. Why circles in
Earth-centred metres and a hash grid: see docs/engine.md.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from geopunch.domain.locations import (
    F64,
    I32,
    I64,
    B,
    BatchVerdict,
    FenceRows,
    Held,
    InsideCarry,
    TrailVerdict,
)
from geopunch.domain.models import ExitAction, Geofence, Job, TimeClock
from geopunch.domain.punches import PointVerdict
from geopunch.geo import _checkpoint as checkpoint
from geopunch.geo import _kernels as kernels
from geopunch.geo._index import SavedIndex, Snapshot, Snapshots
from geopunch.geo._kernels import bucket_order, set_kernel_threads
from geopunch.geo._membership import check_one, check_points
from geopunch.geo._trails import InsideState, detect_exits, handles_of, pair_codes, unassigned

log = logging.getLogger(__name__)

__all__ = [
    "AccountFences",
    "FenceIndex",
    "SavedIndex",
    "SnapshotView",
    "bucket_order",
    "checkpoint",
    "pair_codes",
    "set_kernel_threads",
    "warm_up",
]


@dataclass(frozen=True, slots=True)
class _Ids:
    """Fence ids of result handles, read from the snapshot when asked."""

    snap: Snapshot
    handles: I64

    def __len__(self) -> int:
        return int(self.handles.size)

    def tolist(self) -> list[str]:
        return self.snap.fence_ids(self.handles)

    def fixed(self) -> npt.NDArray[np.bytes_]:
        return self.snap.fence_ids_fixed(self.handles)


@dataclass(frozen=True, slots=True)
class _Carry:
    """Trails' inside state as handles of the snapshot it was computed on."""

    snap: Snapshot
    state: InsideState

    def held(self) -> Held:
        s = self.state
        return Held(s.user_ids, s.time_clock_ids, self.snap.fence_ids(s.handles))


@dataclass(frozen=True, slots=True)
class SnapshotView:
    """A ``FenceView`` of one snapshot."""

    snapshot: Snapshot

    def time_clock(self, time_clock_id: int) -> TimeClock | None:
        idx = self.snapshot.clock_index(time_clock_id)
        return None if idx is None else self.snapshot.clocks[idx].time_clock

    def check(
        self,
        lats: F64,
        lons: F64,
        time_clock_ids: I64 | int,
        job_indexes: I32 | None = None,
        job_names: Sequence[str] = (),
        accuracy_m: F64 | None = None,
        *,
        with_distance: bool = False,
    ) -> BatchVerdict:
        r = check_points(
            self.snapshot,
            lats,
            lons,
            time_clock_ids,
            job_indexes,
            list(job_names),
            accuracy_m,
            with_distance=with_distance,
        )
        # One table of the distinct fences the answer names: callers send
        # each id once however many points matched it.
        handles, extra = r.fence_handles, r.nearest_handles
        pool = handles if extra is None else np.concatenate([handles, extra[extra >= 0]])
        distinct, found = np.unique(pool, return_inverse=True)
        inverse: I32 = found.astype(np.int32)
        nearest = None
        if extra is not None:
            nearest = np.full(extra.size, -1, np.int32)
            nearest[extra >= 0] = inverse[handles.size :]
        return BatchVerdict(
            status=r.status,
            inside=r.inside,
            allowed=r.allowed,
            offsets=r.offsets,
            fences=inverse[: handles.size],
            applicable=r.applicable,
            actions=r.actions,
            ids=_Ids(self.snapshot, distinct),
            distance_m=r.distance_m,
            nearest=nearest,
        )

    def judge(
        self,
        time_clock_id: int,
        lat: float,
        lon: float,
        job_id: str | None = None,
        accuracy_m: float | None = None,
    ) -> PointVerdict:
        return check_one(self.snapshot, lat, lon, time_clock_id, job_id, accuracy_m)

    def unassigned(self, user_ids: I64, time_clock_ids: I64, *, listed_only: bool = False) -> B:
        return unassigned(self.snapshot, user_ids, time_clock_ids, listed_only=listed_only)

    def carry(self, held: Held) -> _Carry:
        snap = self.snapshot
        handles = handles_of(snap, held.time_clock_ids, held.fence_ids)
        return _Carry(snap, InsideState(held.user_ids, held.time_clock_ids, handles))

    def detect_exits(
        self,
        user_ids: I64,
        time_clock_ids: I64,
        timestamps: I64,
        lats: F64,
        lons: F64,
        accuracy_m: F64 | None = None,
        *,
        job_indexes: I32 | None = None,
        job_names: Sequence[str] = (),
        skip: B | None = None,
        initial: Held | InsideCarry | None = None,
    ) -> TrailVerdict:
        snap = self.snapshot
        start: InsideState | None = None
        if initial is not None:
            if not (isinstance(initial, _Carry) and initial.snap is snap):
                initial = self.carry(initial if isinstance(initial, Held) else initial.held())
            start = initial.state
        r = detect_exits(
            snap,
            user_ids,
            time_clock_ids,
            timestamps,
            lats,
            lons,
            accuracy_m,
            job_ids=job_indexes,
            job_names=list(job_names),
            skip=skip,
            initial=start,
        )
        return TrailVerdict(
            status=r.status,
            inside=r.inside,
            offsets=r.offsets,
            fence_ids=_Ids(snap, r.fence_handles),
            exit_samples=r.exit_samples,
            exit_fence_ids=_Ids(snap, r.exit_handles),
            exit_actions=r.exit_actions,
            exit_other_inside=r.exit_other_inside,
            enter_samples=r.enter_samples,
            enter_fence_ids=_Ids(snap, r.enter_handles),
            final=_Carry(snap, r.final),
        )


class FenceIndex(Snapshots):
    """The fence index of one account."""

    def view(self) -> SnapshotView:
        return SnapshotView(self.snapshot)


_EMPTY = FenceIndex()


class AccountFences:
    """The process's fence engine (``domain.ports.FenceEngine``): one
    ``FenceIndex`` per account, so that a view cannot reach another
    account's time clocks whatever ids a caller sends, and ids need no
    translation on the way in or out.

    One lock orders every account's changes: use cases hold it across their
    commit and the matching update, and the change feed is in commit order.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._indexes: dict[int, FenceIndex] = {}
        #: Catches the index up with the store (the server sets its follower's
        #: catch-up); called when a call names a time clock the index lacks.
        self.on_miss: Callable[[], None] | None = None
        #: Seqs of feed changes this process's writers reported after their
        #: commit: the follower skips them instead of reading every change
        #: this process made a second time (a third of a bulk load's time).
        #: Added only once the update went through, so a failed one is read
        #: again from the store.
        self._reported: set[int] = set()
        #: The open ``batched`` block: the indexes it defers, the accounts they
        #: belong to, and the seqs to count as reported once it publishes.
        self._batch: contextlib.ExitStack | None = None
        self._batch_accounts: set[int] = set()
        self._batch_seqs: list[int] = []

    @contextmanager
    def write_lock(self) -> Iterator[None]:
        with self._lock:
            yield

    @contextmanager
    def batched(self) -> Iterator[None]:
        """``write_lock``, and the changes reported inside it published
        together at its end, one snapshot per account touched (see
        ``Snapshots.deferred``): the group committer holds it across a batch's
        commit and the updates of all its pieces, so that a bulk load builds
        one table per batch rather than one per call."""
        with self._lock:
            if self._batch is not None:
                yield
                return
            self._batch = contextlib.ExitStack()
            seqs: list[int] = []
            self._batch_seqs = seqs
            self._batch_accounts = set()
            try:
                yield
            finally:
                stack, self._batch = self._batch, None
                try:
                    stack.close()
                except Exception:  # committed all the same; the index follower repairs it
                    log.exception("publishing a batch of index changes failed")
                else:
                    self._reported.update(seqs)

    def _changing(self, account: int) -> FenceIndex:
        """The account's index, inside the open batch if there is one."""
        index = self._index(account)
        if self._batch is not None and account not in self._batch_accounts:
            self._batch.enter_context(index.deferred())
            self._batch_accounts.add(account)
        return index

    def _applied(self, seq: int) -> None:
        """The change ``seq`` (0: none) is in the index, or will be when the batch publishes."""
        if seq:
            (self._batch_seqs.append if self._batch is not None else self._reported.add)(seq)

    def _index(self, account: int) -> FenceIndex:
        index = self._indexes.get(account)
        if index is None:
            with self._lock:
                index = self._indexes.setdefault(account, FenceIndex())
        return index

    def view(self, account: int) -> SnapshotView:
        index = self._indexes.get(account)
        return SnapshotView((_EMPTY if index is None else index).snapshot)

    def view_knowing(self, account: int, time_clock_ids: Iterable[int]) -> SnapshotView:
        view = self.view(account)
        if self.on_miss is not None and any(view.time_clock(t) is None for t in time_clock_ids):
            self.on_miss()
            view = self.view(account)
        return view

    def load(
        self,
        account: int,
        time_clocks: Iterable[TimeClock],
        fences: FenceRows | Iterable[Geofence],
    ) -> Snapshot:
        """Replace one account's clocks and fences with a full build (start-up)."""
        return self._index(account).load(time_clocks, fences)

    def time_clock_changed(
        self, account: int, tc: TimeClock, fences: Sequence[Geofence], seq: int = 0
    ) -> None:
        with self._lock:
            self._changing(account).time_clock_changed(tc, fences)
            self._applied(seq)

    def fences_changed(
        self,
        account: int,
        tc: TimeClock,
        added: Sequence[Geofence],
        removed: Sequence[str],
        seq: int = 0,
    ) -> None:
        with self._lock:
            self._changing(account).fences_changed(tc, added, removed)
            self._applied(seq)

    def time_clocks_read_again(
        self, account: int, time_clocks: Sequence[TimeClock], fences: FenceRows
    ) -> None:
        with self._lock:
            self._changing(account).time_clocks_read_again(time_clocks, fences)

    def saved(self) -> dict[int, SavedIndex] | None:
        """Every account's index as one table each, for a checkpoint (see
        ``Snapshots.saved``); None when one could not be compacted."""
        parts = {}
        for account, index in list(self._indexes.items()):
            part = index.saved()
            if part is None:
                return None
            parts[account] = part
        return parts

    def restore(
        self, account: int, time_clocks: Sequence[TimeClock], saved: SavedIndex
    ) -> list[TimeClock] | None:
        """Replace one account's index with a saved one (start-up); the clocks
        to report again with their fences, or None when it cannot be used
        (see ``Snapshots.restore``)."""
        return self._index(account).restore(time_clocks, saved)

    def reported(self, seq: int) -> bool:
        try:
            self._reported.remove(seq)
        except KeyError:
            return False
        return True

    def versions(self) -> dict[int, int]:
        """Each account's snapshot version: it moves with every change."""
        return {a: index.snapshot.version for a, index in list(self._indexes.items())}

    def totals(self) -> tuple[int, int]:
        """Time clocks and fences held, over every account."""
        snaps = [index.snapshot for index in list(self._indexes.values())]
        return sum(len(s.clocks) for s in snaps), sum(s.fence_count for s in snaps)


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
