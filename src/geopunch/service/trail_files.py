"""Historical trail files, chunk by chunk: per-row verdicts and exit events.

A trail is the rows of one (user, time clock) pair, judged in file order; their
timestamps must not go back. A row older than its trail's latest row is
OUT_OF_ORDER and a row with the same time as that one is DUPLICATE; both are
reported and left out, as are rows with missing values, bad coordinates,
unknown time clocks or users, and rows less accurate than the clock allows.
State (the fences each trail is inside, its latest time) carries from one
chunk to the next, so a file of any length streams through in bounded memory.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, fields

import numpy as np
import numpy.typing as npt

from geopunch.domain.locations import F64, I64, B, Held, InsideCarry, PointStatus
from geopunch.domain.ports import FenceView
from geopunch.geo.engine import bucket_order, pair_codes
from geopunch.service.trails import exit_action_names, would_do

OK = int(PointStatus.OK)
UNKNOWN_USER = int(PointStatus.UNKNOWN_USER)
OUT_OF_ORDER = int(PointStatus.OUT_OF_ORDER)
DUPLICATE = int(PointStatus.DUPLICATE)
MISSING_VALUE = int(PointStatus.MISSING_VALUE)

#: Row status names, as written to the verdict files and the summary (a trail
#: file's rows never get SKIPPED).
STATUS_NAMES = {int(s): s.name for s in PointStatus if s is not PointStatus.SKIPPED}

REQUIRED_COLUMNS = ("user_id", "time_clock_id", "timestamp", "latitude", "longitude")
OPTIONAL_COLUMNS = ("accuracy",)


@dataclass(frozen=True, slots=True)
class Chunk:
    """Rows of a trail file: ``row`` is the row number in the input (0-based);
    ``missing`` marks rows with a null user, clock or timestamp."""

    row: I64
    user_id: I64
    time_clock_id: I64
    timestamp: I64
    latitude: F64
    longitude: F64
    accuracy: F64
    missing: B

    @property
    def size(self) -> int:
        return int(self.row.size)

    def take(self, rows: slice | I64) -> Chunk:
        """The chosen rows (a slice, or positions in this chunk)."""
        return Chunk(*(getattr(self, f.name)[rows] for f in fields(Chunk)))

    @staticmethod
    def concat(chunks: Sequence[Chunk]) -> Chunk:
        return Chunk(*(np.concatenate([getattr(c, f.name) for c in chunks]) for f in fields(Chunk)))

    def sorted_within_trails(self) -> Chunk:
        """Each trail's rows in time order (stable: equal times keep their
        order), trails one after another."""
        return self.take(np.lexsort((self.row, self.timestamp, self.time_clock_id, self.user_id)))


@dataclass(frozen=True, slots=True)
class Verdicts:
    """Per row: status code, inside any fence, and the fences containing it as
    CSR: row i's are ``fence_ids[fence_offsets[i]:fence_offsets[i + 1]]``."""

    row: I64
    user_id: I64
    time_clock_id: I64
    timestamp: I64
    #: The row's own position and accuracy (NaN when it had none), so the
    #: verdicts need no join with the input.
    latitude: F64
    longitude: F64
    accuracy: F64
    status: npt.NDArray[np.uint8]
    inside: B
    fence_offsets: I64
    fence_ids: list[str]


@dataclass(frozen=True, slots=True)
class Exits:
    row: I64
    user_id: I64
    time_clock_id: I64
    timestamp: I64
    fence_id: list[str]
    action: list[str]
    other_fence_inside: B
    outcome: list[str]
    #: When the stay that this exit ends began (the timestamp of its first
    #: sample inside), and the seconds from then to the exit.
    entered_at: I64
    seconds_inside: I64


@dataclass
class Summary:
    rows: int = 0
    status: Counter[str] = field(default_factory=Counter)
    exits: Counter[str] = field(default_factory=Counter)

    def add(self, other: Summary) -> None:
        self.rows += other.rows
        self.status.update(other.status)
        self.exits.update(other.exits)


class TrailStream:
    """Evaluates consecutive chunks of one trail file against one view of the fences.

    A time clock that lists users accepts only those; one that lists none
    (fences from a file often come without users) accepts any.
    """

    def __init__(self, view: FenceView) -> None:
        self._view = view
        self._state: Held | InsideCarry | None = None
        self._latest: dict[tuple[int, int], int] = {}
        #: (user, time clock, fence id) -> when the stay there began.
        self._entered: dict[tuple[int, int, str], int] = {}
        self.summary = Summary()

    def process(self, c: Chunk) -> tuple[Verdicts, Exits]:
        n = c.size
        status = np.zeros(n, np.uint8)
        status[c.missing] = MISSING_VALUE
        strangers = self._view.unassigned(c.user_id, c.time_clock_id, listed_only=True)
        status[strangers & (status == OK)] = UNKNOWN_USER
        order_status = self._order_check(c, status == OK)
        status[(order_status != OK) & (status == OK)] = order_status[
            (order_status != OK) & (status == OK)
        ]
        r = self._view.detect_exits(
            c.user_id,
            c.time_clock_id,
            c.timestamp,
            c.latitude,
            c.longitude,
            c.accuracy,
            skip=status != OK,
            initial=self._state,
        )
        self._state = r.final
        status = np.where(status != OK, status, r.status).astype(np.uint8)
        self._remember_latest(c, status == OK)
        exit_rows = r.exit_samples
        actions = exit_action_names(r)
        others = r.exit_other_inside
        exit_ids = r.exit_fence_ids.tolist()
        entered_at = self._stays(
            c, r.enter_samples, r.enter_fence_ids.tolist(), exit_rows, exit_ids
        )
        exits = Exits(
            row=c.row[exit_rows],
            user_id=c.user_id[exit_rows],
            time_clock_id=c.time_clock_id[exit_rows],
            timestamp=c.timestamp[exit_rows],
            fence_id=exit_ids,
            action=actions,
            other_fence_inside=others,
            outcome=[would_do(a, o) for a, o in zip(actions, others.tolist(), strict=True)],
            entered_at=entered_at,
            seconds_inside=np.where(entered_at >= 0, c.timestamp[exit_rows] - entered_at, -1),
        )
        inside = r.inside & ~c.missing
        verdicts = Verdicts(
            c.row,
            c.user_id,
            c.time_clock_id,
            c.timestamp,
            c.latitude,
            c.longitude,
            c.accuracy,
            status,
            inside,
            r.offsets,
            r.fence_ids.tolist(),
        )
        self.summary.rows += n
        codes, counts = np.unique(status, return_counts=True)
        for code, count in zip(codes.tolist(), counts.tolist(), strict=True):
            self.summary.status[STATUS_NAMES[code]] += count
        self.summary.exits.update(actions)
        return verdicts, exits

    def _stays(
        self,
        c: Chunk,
        enter_rows: I64,
        enter_ids: list[str],
        exit_rows: I64,
        exit_ids: list[str],
    ) -> I64:
        """When each exit's stay began (-1 if unknown): entries and exits of a
        trail come in its time order, and a stay may span chunks."""
        events = [(int(i), 0, k) for k, i in enumerate(enter_rows.tolist())]
        events += [(int(i), 1, k) for k, i in enumerate(exit_rows.tolist())]
        events.sort()  # by row within the chunk: time order within each trail
        out = np.full(len(exit_ids), -1, np.int64)
        users, clocks, ts = c.user_id, c.time_clock_id, c.timestamp
        for i, kind, k in events:
            key = (int(users[i]), int(clocks[i]), enter_ids[k] if kind == 0 else exit_ids[k])
            if kind == 0:
                self._entered[key] = int(ts[i])
            else:
                out[k] = self._entered.pop(key, -1)
        return out

    def _order_check(self, c: Chunk, usable: B) -> npt.NDArray[np.uint8]:
        """OUT_OF_ORDER / DUPLICATE per row, against the trail's latest earlier row."""
        out = np.zeros(c.size, np.uint8)
        idx = np.flatnonzero(usable)
        if not idx.size:
            return out
        users, clocks = c.user_id[idx], c.time_clock_id[idx]
        group, n_trails, first = pair_codes(users, clocks)
        order = np.empty(idx.size, np.int64)
        bucket_order(group, n_trails, order)  # by trail, file order within
        g, ts = group[order], c.timestamp[idx][order]
        never = np.iinfo(np.int64).min
        before = np.array(
            [
                self._latest.get(k, never)
                for k in zip(users[first].tolist(), clocks[first].tolist(), strict=True)
            ],
            np.int64,
        )
        # Latest time so far within each trail: a running max that restarts per
        # trail (each trail's keys sit above all earlier trails' keys).
        lo = int(ts.min())
        span = int(ts.max()) - lo + 1
        run = np.maximum.accumulate((ts - lo) + g * span) - g * span + lo
        first_row = np.ones(idx.size, np.bool_)
        first_row[1:] = g[1:] != g[:-1]
        prev = before[g].copy()
        rest = np.flatnonzero(~first_row)
        prev[rest] = np.maximum(run[rest - 1], prev[rest])
        verdict = np.where(ts < prev, OUT_OF_ORDER, np.where(ts == prev, DUPLICATE, OK))
        out[idx[order]] = verdict
        return out

    def _remember_latest(self, c: Chunk, accepted: B) -> None:
        """Each trail's latest accepted time, for the next chunk's order check."""
        if not accepted.any():
            return
        users, clocks = c.user_id[accepted], c.time_clock_id[accepted]
        codes, n_trails, first = pair_codes(users, clocks)
        latest = np.full(n_trails, np.iinfo(np.int64).min, np.int64)
        np.maximum.at(latest, codes, c.timestamp[accepted])
        for u, k, t in zip(
            users[first].tolist(), clocks[first].tolist(), latest.tolist(), strict=True
        ):
            if t > self._latest.get((u, k), -(2**63)):
                self._latest[(u, k)] = t
