"""A second, deliberately plain implementation of the fence-engine port.

It answers every ``FenceView`` question the obvious way: candidate fences
from a shapely ``STRtree`` of conservative longitude/latitude boxes, then the
exact WGS84 geodesic (``pyproj.Geod.inv``) to each candidate's centre, and
exit detection as a loop over each trail's samples in time order. It is slow
and has no cleverness to get wrong, which makes it the oracle for the real
engine's property tests; being small and quick to build, it also serves use
case tests that need some engine.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import shapely
from pyproj import Geod

from geopunch.domain.locations import (
    EXIT_ACTIONS,
    F64,
    I32,
    I64,
    B,
    BatchVerdict,
    FenceRows,
    Held,
    InsideCarry,
    PointStatus,
    TrailVerdict,
)
from geopunch.domain.models import Geofence, TimeClock
from geopunch.domain.punches import PointVerdict

GEOD = Geod(ellps="WGS84")
#: Metres per degree of latitude, at least; of longitude at the equator, at least.
_LAT_DEG_M = 110_574.0
_LON_DEG_M = 111_319.0


@dataclass(frozen=True, slots=True)
class ListIds:
    ids: list[str]

    def __len__(self) -> int:
        return len(self.ids)

    def tolist(self) -> list[str]:
        return list(self.ids)

    def fixed(self) -> npt.NDArray[np.bytes_]:
        return np.array([i.encode() for i in self.ids], dtype=np.bytes_)


@dataclass(frozen=True, slots=True)
class HeldCarry:
    state: Held

    def held(self) -> Held:
        return self.state


def _reach_m(tc: TimeClock) -> float:
    """The widest margin any question adds to a radius of this clock."""
    ed = tc.exit_detection
    return max(
        tc.accuracy_tolerance_m,
        ed.buffer_high_accuracy_m,
        ed.buffer_low_accuracy_m,
        ed.buffer_unknown_accuracy_m,
    )


def _boxes(f: Geofence, reach_m: float) -> list[shapely.Polygon]:
    """Lon/lat boxes that surely hold every point within ``radius + reach`` of
    the centre: widened near the poles, split across the antimeridian."""
    d = (f.fence_size_m + reach_m) * 1.01 + 1.0
    dlat = d / _LAT_DEG_M
    lo_lat, hi_lat = f.latitude - dlat, f.latitude + dlat
    if hi_lat >= 89.0 or lo_lat <= -89.0:
        return [shapely.box(-180, max(lo_lat, -90), 180, min(hi_lat, 90))]
    dlon = d / (_LON_DEG_M * math.cos(math.radians(max(abs(lo_lat), abs(hi_lat)))))
    if dlon >= 180:
        return [shapely.box(-180, lo_lat, 180, hi_lat)]
    west, east = f.longitude - dlon, f.longitude + dlon
    out = [shapely.box(max(west, -180), lo_lat, min(east, 180), hi_lat)]
    if west < -180:
        out.append(shapely.box(west + 360, lo_lat, 180, hi_lat))
    if east > 180:
        out.append(shapely.box(-180, lo_lat, east - 360, hi_lat))
    return out


def distance_m(lat: float, lon: float, f: Geofence) -> float:
    return float(GEOD.inv(f.longitude, f.latitude, lon, lat)[2])


class ReferenceView:
    def __init__(self, clocks: dict[int, TimeClock], fences: dict[int, list[Geofence]]) -> None:
        self._clocks = clocks
        self._fences = fences
        self._all = [f for tc_id in sorted(fences) for f in fences[tc_id]]
        boxes: list[shapely.Polygon] = []
        self._owner: list[int] = []
        for k, f in enumerate(self._all):
            for b in _boxes(f, _reach_m(clocks[f.time_clock_id])):
                boxes.append(b)
                self._owner.append(k)
        self._tree = shapely.STRtree(boxes)

    # -- helpers ---------------------------------------------------------

    def _near(self, lat: float, lon: float, tc_id: int) -> list[tuple[Geofence, float]]:
        """Fences of the clock whose boxes hold the point, with their distance."""
        hits = self._tree.query(shapely.Point(lon, lat), predicate="intersects")
        seen = sorted({self._owner[int(h)] for h in hits})
        near = [self._all[k] for k in seen if self._all[k].time_clock_id == tc_id]
        return [(f, distance_m(lat, lon, f)) for f in near]

    def _applies(self, tc: TimeClock, f: Geofence, job: str | None) -> bool:
        return job is None or not f.job_ids or job in tc.with_descendants(f.job_ids)

    def _nearest(
        self, lat: float, lon: float, tc: TimeClock, job: str | None
    ) -> tuple[float, Geofence] | None:
        best = [
            (distance_m(lat, lon, f) - f.fence_size_m, f)
            for f in self._fences.get(tc.id, [])
            if self._applies(tc, f, job)
        ]
        return min(best, key=lambda x: x[0]) if best else None

    def _status(
        self, lat: float, lon: float, tc_id: int, job: str | None, acc: float | None
    ) -> PointStatus:
        if not (math.isfinite(lat) and math.isfinite(lon) and abs(lat) <= 90 and abs(lon) <= 180):
            return PointStatus.INVALID_COORDINATES
        tc = self._clocks.get(tc_id)
        if tc is None:
            return PointStatus.UNKNOWN_TIME_CLOCK
        if job is not None and all(j.id != job for j in tc.jobs):
            return PointStatus.UNKNOWN_JOB
        if acc is not None and (acc < 0 or math.isinf(acc)):
            return PointStatus.INVALID_ACCURACY
        return PointStatus.OK

    # -- FenceView -------------------------------------------------------

    def time_clock(self, time_clock_id: int) -> TimeClock | None:
        return self._clocks.get(time_clock_id)

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
        n = len(lats)
        tcs = np.broadcast_to(np.asarray(time_clock_ids, np.int64), (n,))
        status = np.zeros(n, np.uint8)
        inside = np.zeros(n, np.bool_)
        allowed = np.zeros(n, np.bool_)
        offsets = [0]
        table: dict[tuple[int, str], int] = {}
        fences: list[int] = []
        applicable: list[bool] = []
        actions: list[int] = []
        distance = np.full(n, np.nan)
        nearest = np.full(n, -1, np.int32)
        for i in range(n):
            lat, lon, tc_id = float(lats[i]), float(lons[i]), int(tcs[i])
            code = -1 if job_indexes is None else int(job_indexes[i])
            job = job_names[code] if code >= 0 else None
            acc = None if accuracy_m is None or np.isnan(accuracy_m[i]) else float(accuracy_m[i])
            status[i] = self._status(lat, lon, tc_id, job, acc)
            if status[i] == PointStatus.OK:
                tc = self._clocks[tc_id]
                extra = 0.0 if acc is None else min(acc, tc.accuracy_tolerance_m)
                for f, d in sorted(self._near(lat, lon, tc_id), key=lambda x: x[0].id):
                    if d <= f.fence_size_m + extra:
                        ok = self._applies(tc, f, job)
                        fences.append(table.setdefault((tc_id, f.id), len(table)))
                        applicable.append(ok)
                        actions.append(EXIT_ACTIONS.index(f.exit_action))
                        inside[i] = True
                        allowed[i] |= ok
                if with_distance:
                    best = self._nearest(lat, lon, tc, job)
                    if best is not None:
                        distance[i] = best[0]
                        nearest[i] = table.setdefault((tc_id, best[1].id), len(table))
            offsets.append(len(fences))
        return BatchVerdict(
            status=status,
            inside=inside,
            allowed=allowed,
            offsets=np.array(offsets, np.int64),
            fences=np.array(fences, np.int32),
            applicable=np.array(applicable, np.bool_),
            actions=np.array(actions, np.int8),
            ids=ListIds([fid for _, fid in table]),
            distance_m=distance if with_distance else None,
            nearest=nearest if with_distance else None,
        )

    def judge(
        self,
        time_clock_id: int,
        lat: float,
        lon: float,
        job_id: str | None = None,
        accuracy_m: float | None = None,
    ) -> PointVerdict:
        acc = None if accuracy_m is None or math.isnan(accuracy_m) else accuracy_m
        status = self._status(lat, lon, time_clock_id, job_id, acc)
        if status != PointStatus.OK:
            return PointVerdict(int(status), False, False, None, -1, None, None, ())
        tc = self._clocks[time_clock_id]
        extra = 0.0 if acc is None else min(acc, tc.accuracy_tolerance_m)
        matched = sorted(
            (d - f.fence_size_m, f.id, f)
            for f, d in self._near(lat, lon, time_clock_id)
            if d <= f.fence_size_m + extra
        )
        mine = [m for m in matched if self._applies(tc, m[2], job_id)]
        best = self._nearest(lat, lon, tc, job_id)
        deepest = mine[0][2] if mine else None
        return PointVerdict(
            status=int(PointStatus.OK),
            inside=bool(matched),
            allowed=bool(mine),
            fence_id=deepest.id if deepest else None,
            exit_action=EXIT_ACTIONS.index(deepest.exit_action) if deepest else -1,
            distance_m=None if best is None else best[0],
            nearest_fence_id=None if best is None else best[1].id,
            matched_fence_ids=tuple(fid for _, fid, _ in matched),
        )

    def unassigned(self, user_ids: I64, time_clock_ids: I64, *, listed_only: bool = False) -> B:
        out = np.zeros(len(user_ids), np.bool_)
        for i, (u, c) in enumerate(zip(user_ids.tolist(), time_clock_ids.tolist(), strict=True)):
            tc = self._clocks.get(c)
            if tc is not None and (tc.user_ids or not listed_only):
                out[i] = u not in tc.user_ids
        return out

    def carry(self, held: Held) -> HeldCarry:
        return HeldCarry(held)

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
        n = len(user_ids)
        status = np.zeros(n, np.uint8)
        buffer = np.zeros(n)
        jobs: list[str | None] = []
        for i in range(n):
            code = -1 if job_indexes is None else int(job_indexes[i])
            job = job_names[code] if code >= 0 else None
            jobs.append(job)
            acc = None if accuracy_m is None or np.isnan(accuracy_m[i]) else float(accuracy_m[i])
            s = self._status(float(lats[i]), float(lons[i]), int(time_clock_ids[i]), job, acc)
            if s == PointStatus.OK:
                ed = self._clocks[int(time_clock_ids[i])].exit_detection
                if acc is None:
                    buffer[i] = ed.buffer_unknown_accuracy_m
                elif acc <= ed.high_accuracy_max_m:
                    buffer[i] = ed.buffer_high_accuracy_m
                else:
                    buffer[i] = ed.buffer_low_accuracy_m
                if acc is not None and acc > ed.low_accuracy_max_m:
                    s = PointStatus.IGNORED_ACCURACY
                elif skip is not None and skip[i]:
                    s = PointStatus.SKIPPED
            status[i] = s
        located = [
            s in (PointStatus.OK, PointStatus.IGNORED_ACCURACY, PointStatus.SKIPPED)
            for s in status.tolist()
        ]
        # Per sample: the fences it is within (radius) and within reach (radius + buffer).
        inside_of: list[set[str]] = []
        reach_of: list[set[str]] = []
        for i in range(n):
            near = (
                self._near(float(lats[i]), float(lons[i]), int(time_clock_ids[i]))
                if located[i]
                else []
            )
            inside_of.append({f.id for f, d in near if d <= f.fence_size_m})
            reach_of.append({f.id for f, d in near if d <= f.fence_size_m + buffer[i]})

        held: dict[tuple[int, int], set[str]] = {}
        if initial is not None:
            start = initial if isinstance(initial, Held) else initial.held()
            for u, c, fid in zip(
                start.user_ids.tolist(), start.time_clock_ids.tolist(), start.fence_ids, strict=True
            ):
                if any(f.id == fid for f in self._fences.get(c, [])):
                    held.setdefault((u, c), set()).add(fid)
        order = sorted(
            range(n), key=lambda i: (int(user_ids[i]), int(time_clock_ids[i]), int(timestamps[i]))
        )
        exits: list[tuple[int, str, bool]] = []
        entries: list[tuple[int, str]] = []
        final: dict[tuple[int, int], set[str]] = {}
        group_job: dict[tuple[int, int], str | None] = {}
        for i in order:
            pair = (int(user_ids[i]), int(time_clock_ids[i]))
            group_job.setdefault(pair, jobs[i])
            state = final.setdefault(pair, set(held.get(pair, ())))
            if status[i] != PointStatus.OK:
                continue
            left = sorted(state - reach_of[i])
            entries.extend((i, fid) for fid in sorted(inside_of[i] - state))
            state &= reach_of[i]
            state |= inside_of[i]
            tc = self._clocks[pair[1]]
            by_id = {f.id: f for f in self._fences.get(pair[1], [])}
            other = any(self._applies(tc, by_id[f], group_job[pair]) for f in state)
            exits.extend((i, fid, other) for fid in left)
        action = {
            (f.time_clock_id, f.id): EXIT_ACTIONS.index(f.exit_action)
            for fs in self._fences.values()
            for f in fs
        }
        inside_ids = [sorted(s) for s in inside_of]
        final_rows = [(u, c, fid) for (u, c), s in final.items() for fid in sorted(s)]
        return TrailVerdict(
            status=status,
            inside=np.array([bool(s) for s in inside_ids], np.bool_),
            offsets=np.concatenate([[0], np.cumsum([len(s) for s in inside_ids])]).astype(np.int64),
            fence_ids=ListIds([fid for s in inside_ids for fid in s]),
            exit_samples=np.array([i for i, _, _ in exits], np.int64),
            exit_fence_ids=ListIds([fid for _, fid, _ in exits]),
            exit_actions=np.array(
                [action[(int(time_clock_ids[i]), fid)] for i, fid, _ in exits], np.int8
            ),
            exit_other_inside=np.array([o for _, _, o in exits], np.bool_),
            enter_samples=np.array([i for i, _ in entries], np.int64),
            enter_fence_ids=ListIds([fid for _, fid in entries]),
            final=HeldCarry(
                Held(
                    np.array([u for u, _, _ in final_rows], np.int64),
                    np.array([c for _, c, _ in final_rows], np.int64),
                    [fid for _, _, fid in final_rows],
                )
            ),
        )


class _ReferenceIndex:
    """One account's clocks and fences over plain dicts."""

    def __init__(self) -> None:
        self.clocks: dict[int, TimeClock] = {}
        self.fences: dict[int, list[Geofence]] = {}

    def load(self, time_clocks: Sequence[TimeClock], fences: Sequence[Geofence]) -> None:
        self.clocks = {tc.id: tc for tc in time_clocks}
        self.fences = {tc.id: [] for tc in time_clocks}
        for f in fences:
            if f.is_enabled:
                self.fences[f.time_clock_id].append(f)

    def time_clock_changed(self, tc: TimeClock, fences: Sequence[Geofence]) -> None:
        self.clocks = {**self.clocks, tc.id: tc}
        self.fences = {**self.fences, tc.id: [f for f in fences if f.is_enabled]}

    def fences_changed(
        self, tc: TimeClock, added: Sequence[Geofence], removed: Sequence[str]
    ) -> None:
        gone = set(removed)
        kept = [f for f in self.fences.get(tc.id, []) if f.id not in gone]
        self.time_clock_changed(tc, [*kept, *added])

    def view(self) -> ReferenceView:
        return ReferenceView(self.clocks, self.fences)


class ReferenceEngine:
    """``FenceEngine`` over plain dicts, one set per account; every
    ``view(account)`` builds its tree anew."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._accounts: dict[int, _ReferenceIndex] = {}

    @contextmanager
    def write_lock(self) -> Iterator[None]:
        with self._lock:
            yield

    def _of(self, account: int) -> _ReferenceIndex:
        return self._accounts.setdefault(account, _ReferenceIndex())

    def load(
        self, account: int, time_clocks: Sequence[TimeClock], fences: Sequence[Geofence]
    ) -> None:
        with self._lock:
            self._of(account).load(time_clocks, fences)

    def time_clock_changed(
        self, account: int, tc: TimeClock, fences: Sequence[Geofence], seq: int = 0
    ) -> None:
        with self._lock:
            self._of(account).time_clock_changed(tc, fences)

    def fences_changed(
        self,
        account: int,
        tc: TimeClock,
        added: Sequence[Geofence],
        removed: Sequence[str],
        seq: int = 0,
    ) -> None:
        with self._lock:
            self._of(account).fences_changed(tc, added, removed)

    def time_clocks_read_again(
        self, account: int, time_clocks: Sequence[TimeClock], fences: FenceRows
    ) -> None:
        held = _geofences(fences)
        with self._lock:
            index = self._of(account)
            for tc in time_clocks:
                index.time_clock_changed(tc, [f for f in held if f.time_clock_id == tc.id])

    def totals(self) -> tuple[int, int]:
        with self._lock:
            indexes = list(self._accounts.values())
        return (
            sum(len(i.clocks) for i in indexes),
            sum(len(fs) for i in indexes for fs in i.fences.values()),
        )

    def reported(self, seq: int) -> bool:
        return False  # the follower reads every change again: the simple, safe way

    def view(self, account: int) -> ReferenceView:
        with self._lock:
            return self._of(account).view()

    def view_knowing(self, account: int, time_clock_ids: Iterable[int]) -> ReferenceView:
        return self.view(account)


def _geofences(rows: FenceRows) -> list[Geofence]:
    """The fences of index columns, as objects (names and addresses are not in
    the columns, and no answer of the reference reads them)."""
    return [
        Geofence(
            id=rows.ids[i].decode(),
            time_clock_id=int(rows.time_clock_ids[i]),
            name="",
            is_enabled=True,
            fence_size_m=int(rows.sizes_m[i]),
            job_ids=rows.job_ids.get(i, ()),
            exit_action=EXIT_ACTIONS[int(rows.exit_actions[i])],
            address="",
            latitude=float(rows.latitudes[i]),
            longitude=float(rows.longitudes[i]),
        )
        for i in range(len(rows))
    ]
