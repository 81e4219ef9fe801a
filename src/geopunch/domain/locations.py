"""What the fence engine says of points and trail samples."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol

import numpy as np
import numpy.typing as npt

from geopunch.domain.models import ExitAction, Geofence


class PointStatus(IntEnum):
    """Why a point or trail sample was judged, or could not be; one code space
    for CheckLocations points, EvaluateTrails/ReportLocations samples and the
    rows of ``geopunch trails`` (their answers carry these numbers)."""

    OK = 0
    INVALID_COORDINATES = 1  # not finite, or outside [-90, 90] x [-180, 180]
    UNKNOWN_TIME_CLOCK = 2  # the point's time clock does not exist
    UNKNOWN_JOB = 3  # the point's job is not a job of its time clock
    INVALID_ACCURACY = 4  # negative or infinite
    IGNORED_ACCURACY = 5  # less accurate than the clock's low_accuracy_max_m
    SKIPPED = 6  # left out by the caller: a stale live sample (STALE in answers)
    OUT_OF_ORDER = 7  # trail files: older than an earlier row of its trail
    DUPLICATE = 8  # trail files: at the same second as an earlier row of its trail
    MISSING_VALUE = 9  # trail files: an empty required cell
    UNKNOWN_USER = 10  # the user is not assigned to the sample's time clock
    INVALID_TIMESTAMP = 11  # live and historical samples: before 2000, or in the future


#: Samples before 2000-01-01 (Unix seconds) are no GPS fix anyone can act on.
EARLIEST_SAMPLE = 946_684_800
#: How far ahead of the server's clock a sample may be (device clocks drift).
DEFAULT_MAX_SKEW_S = 300


#: A stale live sample: older than the user's last accepted one.
STALE = PointStatus.SKIPPED


#: Exit actions as the engine numbers them in result arrays (int8 codes).
EXIT_ACTIONS: tuple[ExitAction, ...] = tuple(ExitAction)
#: Each action's code, by the action or its stored name (a StrEnum is both).
EXIT_ACTION_CODES: dict[str, int] = {a: i for i, a in enumerate(EXIT_ACTIONS)}

U8 = npt.NDArray[np.uint8]
I8 = npt.NDArray[np.int8]
I32 = npt.NDArray[np.int32]
I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
B = npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class FenceRows:
    """Enabled geofences as columns, as the store reads them for a full index
    build: a million fences become a few arrays, not a million objects.

    Row i is fence ``ids[i]`` (UTF-8, ``S<w>``) of time clock
    ``time_clock_ids[i]``; ``exit_actions`` are codes of ``EXIT_ACTIONS``.
    Few fences name jobs, so their job ids are kept by row in ``job_ids``;
    a row not in it applies to every job.
    """

    time_clock_ids: I64
    ids: npt.NDArray[np.bytes_]
    latitudes: F64
    longitudes: F64
    sizes_m: F64
    exit_actions: I8
    job_ids: Mapping[int, tuple[str, ...]]

    def __len__(self) -> int:
        return int(self.time_clock_ids.size)

    @staticmethod
    def of(fences: Iterable[Geofence]) -> FenceRows:
        """The enabled ones of ``fences``, in their order."""
        on = [f for f in fences if f.is_enabled]
        ids = [f.id.encode() for f in on]
        return FenceRows(
            time_clock_ids=np.fromiter((f.time_clock_id for f in on), np.int64, len(on)),
            ids=np.array(ids, dtype=np.bytes_) if ids else np.zeros(0, "S1"),
            latitudes=np.fromiter((f.latitude for f in on), np.float64, len(on)),
            longitudes=np.fromiter((f.longitude for f in on), np.float64, len(on)),
            sizes_m=np.fromiter((f.fence_size_m for f in on), np.float64, len(on)),
            exit_actions=np.fromiter(
                (EXIT_ACTION_CODES[f.exit_action] for f in on), np.int8, len(on)
            ),
            job_ids={i: f.job_ids for i, f in enumerate(on) if f.job_ids},
        )


class FenceIds(Protocol):
    """A column of fence ids, resolved only when read: an answer can name
    millions of matches, and most callers want them in one form only."""

    def __len__(self) -> int: ...

    def tolist(self) -> list[str]: ...

    def fixed(self) -> npt.NDArray[np.bytes_]:
        """As one fixed-width bytes array (``S<w>``, NUL-padded UTF-8)."""
        ...


@dataclass(frozen=True, slots=True)
class BatchVerdict:
    """The engine's answer for n points (a CheckLocations batch).

    ``status`` (n,) is ``PointStatus``; ``inside`` means within some enabled
    fence of the point's time clock, ``allowed`` within one that applies to
    the point's job. Matches are CSR over points: point i's are
    ``offsets[i]:offsets[i + 1]`` of ``fences`` (indexes into ``ids``, the
    distinct fences of the answer), ``applicable`` and ``actions`` (codes of
    ``EXIT_ACTIONS``). With distances: ``distance_m`` (n,) is the signed
    distance to the boundary of the nearest applicable fence (NaN for none)
    and ``nearest`` (n,) indexes ``ids`` (-1 for none).
    """

    status: U8
    inside: B
    allowed: B
    offsets: I64
    fences: I32
    applicable: B
    actions: I8
    ids: FenceIds
    distance_m: F64 | None = None
    nearest: I32 | None = None


@dataclass(frozen=True, slots=True)
class Held:
    """Fences that trails are inside: entry k is (user, time clock, fence id)."""

    user_ids: I64
    time_clock_ids: I64
    fence_ids: list[str]


class InsideCarry(Protocol):
    """Where trails stand after a batch, to carry into the next batch judged on
    the same view (cheaper than ids); ``held()`` spells it out."""

    def held(self) -> Held: ...


@dataclass(frozen=True, slots=True)
class TrailVerdict:
    """The engine's answer for n trail samples, in the caller's order.

    ``status`` (n,) is ``PointStatus``; ``inside`` (n,) means within
    ``fence_size`` of an enabled fence of the sample's clock; those fences are
    ``fence_ids[offsets[i]:offsets[i + 1]]``. Exits (e,) are ordered by the
    time they happen: the sample that left, the fence it left, that fence's
    action code (``EXIT_ACTIONS``) and whether the user is still inside
    another fence that applies to the trail's job. Entries (g,), ordered the
    same way, are the first sample of each stay not carried in by
    ``initial`` and its fence. ``final`` is where each trail stands after its
    last sample.
    """

    status: U8
    inside: B
    offsets: I64
    fence_ids: FenceIds
    exit_samples: I64
    exit_fence_ids: FenceIds
    exit_actions: I8
    exit_other_inside: B
    enter_samples: I64
    enter_fence_ids: FenceIds
    final: InsideCarry


def untimely(timestamps: npt.NDArray[np.int64], now: float, max_skew_s: float) -> B:
    """Samples whose time no trail may take: before 2000, or later than
    ``now + max_skew_s``. They are refused one by one (INVALID_TIMESTAMP) and
    change nothing; otherwise one sample stamped far in the future would move
    the trail past every later sample and close a shift at that time."""
    out: B = (timestamps < EARLIEST_SAMPLE) | (timestamps > now + max_skew_s)
    return out
