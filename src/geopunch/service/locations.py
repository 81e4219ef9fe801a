"""Location use cases: batch geofence checks against the in-memory fence index."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from geopunch.domain.errors import DomainError, ErrorCode, FieldViolation
from geopunch.domain.locations import BatchVerdict, PointStatus
from geopunch.domain.ports import FenceEngine, FenceView
from geopunch.domain.rules import long_id_violations

#: Largest batch of CheckLocations, in points.
MAX_BATCH_POINTS = 1_000_000
#: Distinct jobs one batch may name (``job_ids``, indexed by ``job_indexes``).
MAX_BATCH_JOBS = 10_000


@dataclass(frozen=True, slots=True)
class LocationBatch:
    """A CheckLocations command. Arrays are 1-d with one entry per point.

    ``time_clock_ids`` is None when every point belongs to ``time_clock_id``;
    ``accuracies_m`` None means all unknown; ``job_indexes`` None means every
    point has ``job_id`` (or no job when that is empty).
    """

    time_clock_id: int
    lats: npt.NDArray[np.float64]
    lons: npt.NDArray[np.float64]
    time_clock_ids: npt.NDArray[np.int64] | None
    accuracies_m: npt.NDArray[np.float64] | None
    job_ids: tuple[str, ...]
    job_indexes: npt.NDArray[np.int32] | None
    job_id: str
    with_distance: bool


def _check_shapes(batch: LocationBatch, prefix: str) -> int:
    n = batch.lats.size
    problems: list[FieldViolation] = []
    if n > MAX_BATCH_POINTS:
        raise DomainError(
            ErrorCode.BATCH_TOO_LARGE,
            f"{n} points sent; the limit is {MAX_BATCH_POINTS} per call: split the batch",
            {"limitPoints": str(MAX_BATCH_POINTS)},
        )
    if len(batch.job_ids) > MAX_BATCH_JOBS:
        raise DomainError(
            ErrorCode.BATCH_TOO_LARGE,
            f"{len(batch.job_ids)} job ids sent; the limit is {MAX_BATCH_JOBS} per call",
            {"limitJobs": str(MAX_BATCH_JOBS)},
        )
    problems += long_id_violations(batch.job_ids, f"{prefix}.job_ids")
    for name, arr in (
        ("longitudes", batch.lons),
        ("time_clock_ids", batch.time_clock_ids),
        ("accuracies", batch.accuracies_m),
        ("job_indexes", batch.job_indexes),
    ):
        if arr is not None and arr.size != n:
            problems.append(
                FieldViolation(
                    f"{prefix}.{name}",
                    f"has {arr.size} values for {n} latitudes",
                    ErrorCode.INVALID_ARGUMENT,
                )
            )
    if batch.job_indexes is not None and batch.job_indexes.size == n and n:
        lo, hi = int(batch.job_indexes.min()), int(batch.job_indexes.max())
        if lo < -1 or hi >= len(batch.job_ids):
            problems.append(
                FieldViolation(
                    f"{prefix}.job_indexes",
                    f"indexes must be -1 or below {len(batch.job_ids)} (the number of job_ids)",
                    ErrorCode.INVALID_ARGUMENT,
                )
            )
    if batch.time_clock_ids is None and batch.time_clock_id == 0:
        problems.append(
            FieldViolation(
                "time_clock_id",
                "give time_clock_id or one time clock id per point",
                ErrorCode.INVALID_ARGUMENT,
            )
        )
    if batch.time_clock_ids is not None and batch.time_clock_id != 0:
        problems.append(
            FieldViolation(
                "time_clock_id",
                "give time_clock_id or per-point time clock ids, not both",
                ErrorCode.INVALID_ARGUMENT,
            )
        )
    if problems:
        raise DomainError.from_violations(problems, "the batch")
    return n


def check_locations(
    fences: FenceEngine, account: int, batch: LocationBatch, prefix: str = "points"
) -> BatchVerdict:
    """Check a batch on the current view of ``account``'s fences."""
    n = _check_shapes(batch, prefix)
    if batch.time_clock_ids is None:
        view = fences.view_knowing(account, (batch.time_clock_id,))
        verdict = _check(view, batch, n)
    else:
        verdict = _check(fences.view(account), batch, n)
        unknown = verdict.status == PointStatus.UNKNOWN_TIME_CLOCK
        if unknown.any():  # per-point clocks this process may not know yet
            named = np.unique(batch.time_clock_ids[unknown]).tolist()
            verdict = _check(fences.view_knowing(account, named), batch, n)
    return verdict


def _check(view: FenceView, batch: LocationBatch, n: int) -> BatchVerdict:
    job_names = list(batch.job_ids)
    tc = None
    if batch.time_clock_ids is None:
        tc = view.time_clock(batch.time_clock_id)
        if tc is None:
            raise DomainError(
                ErrorCode.TIME_CLOCK_NOT_FOUND,
                f"time clock {batch.time_clock_id} does not exist",
                {"timeClockId": str(batch.time_clock_id)},
            )
        clocks: npt.NDArray[np.int64] | int = batch.time_clock_id
    else:
        clocks = batch.time_clock_ids
    job_indexes = batch.job_indexes
    if batch.job_id:
        if tc is not None and not any(job.id == batch.job_id for job in tc.jobs):
            raise DomainError(
                ErrorCode.JOB_NOT_FOUND,
                f"job {batch.job_id!r} is not a job of time clock {batch.time_clock_id}",
                {"jobId": batch.job_id},
            )
        job_names.append(batch.job_id)
        default = len(job_names) - 1
        job_indexes = (
            np.full(n, default, np.int32)
            if job_indexes is None
            else np.where(job_indexes < 0, default, job_indexes).astype(np.int32)
        )
    return view.check(
        batch.lats,
        batch.lons,
        clocks,
        job_indexes,
        job_names,
        batch.accuracies_m,
        with_distance=batch.with_distance,
    )
