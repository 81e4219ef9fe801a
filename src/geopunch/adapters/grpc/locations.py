"""LocationService: columns in, columns out, as little-endian arrays."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import numpy.typing as npt

from geopunch import metrics
from geopunch.adapters.grpc.auth import account
from geopunch.adapters.wakeup import Wakeup
from geopunch.domain.errors import DomainError, ErrorCode, FieldViolation, StoreUnavailable
from geopunch.domain.events import Event, check_watch_filter
from geopunch.domain.locations import DEFAULT_MAX_SKEW_S, EXIT_ACTIONS, STALE, PointStatus
from geopunch.domain.ports import AsyncTransactionRunner, Clock, FenceEngine, UnitOfWorkFactory
from geopunch.logs import request_id_var
from geopunch.service import trails
from geopunch.service.events import EVENT_PAGE, IDLE_RECHECK_S, events_after
from geopunch.service.locations import LocationBatch, check_locations
from geopunch.service.trails import TrailBatch, TrailOutcome
from geopunch.v1 import location_pb2, location_pb2_grpc

if TYPE_CHECKING:
    from prometheus_client import Counter

_EXIT_ACTIONS = [a.value for a in EXIT_ACTIONS]

#: Sample statuses by name, as metrics label them (STALE for a skipped live sample).
_STATUS_NAMES = {int(s): ("STALE" if s is PointStatus.SKIPPED else s.name) for s in PointStatus}


def _raw(
    field: str, data: bytes, dtype: str, where: str = "raw", what: str = "the points"
) -> npt.NDArray[Any] | None:
    """A raw little-endian column as a (read-only) array; None when empty."""
    if not data:
        return None
    width = np.dtype(dtype).itemsize
    if len(data) % width:
        raise DomainError.from_violations(
            [
                FieldViolation(
                    f"{where}.{field}",
                    f"{len(data)} bytes is not a whole number of {width}-byte values",
                    ErrorCode.INVALID_ARGUMENT,
                )
            ],
            what,
        )
    return np.frombuffer(data, dtype=dtype)


def batch_from_proto(req: location_pb2.CheckLocationsRequest) -> tuple[LocationBatch, str]:
    kind = req.WhichOneof("points")
    if kind == "raw":
        raw = req.raw
        lats = _raw("latitudes_f64", raw.latitudes_f64, "<f8")
        lons = _raw("longitudes_f64", raw.longitudes_f64, "<f8")
        tcs = _raw("time_clock_ids_i64", raw.time_clock_ids_i64, "<i8")
        acc = _raw("accuracies_f64", raw.accuracies_f64, "<f8")
        jobs = _raw("job_indexes_i32", raw.job_indexes_i32, "<i4")
    else:
        packed = req.packed
        lats = np.array(packed.latitudes, dtype=np.float64)
        lons = np.array(packed.longitudes, dtype=np.float64)
        tcs = np.array(packed.time_clock_ids, dtype=np.int64) if packed.time_clock_ids else None
        acc = np.array(packed.accuracies, dtype=np.float64) if packed.accuracies else None
        jobs = np.array(packed.job_indexes, dtype=np.int32) if packed.job_indexes else None
    empty = np.zeros(0, np.float64)
    batch = LocationBatch(
        time_clock_id=req.time_clock_id,
        lats=empty if lats is None else lats.astype(np.float64, copy=False),
        lons=empty if lons is None else lons.astype(np.float64, copy=False),
        time_clock_ids=None if tcs is None else tcs.astype(np.int64, copy=False),
        accuracies_m=None if acc is None else acc.astype(np.float64, copy=False),
        job_ids=tuple(req.job_ids),
        job_indexes=None if jobs is None else jobs.astype(np.int32, copy=False),
        job_id=req.job_id,
        with_distance=req.with_distance,
    )
    return batch, kind or "packed"


#: TrailSamples' numeric columns: repeated field, raw field, little-endian dtype.
_TRAIL_COLUMNS = (
    ("user_ids", "user_ids_i64", "<i8"),
    ("time_clock_ids", "time_clock_ids_i64", "<i8"),
    ("timestamps", "timestamps_i64", "<i8"),
    ("latitudes", "latitudes_f64", "<f8"),
    ("longitudes", "longitudes_f64", "<f8"),
    ("accuracies", "accuracies_f64", "<f8"),
)
_OPTIONAL_TRAIL_COLUMNS = frozenset({"time_clock_ids", "accuracies"})


def _trail_columns(samples: location_pb2.TrailSamples) -> list[npt.NDArray[Any] | None]:
    """The numeric columns in ``_TRAIL_COLUMNS`` order, from the raw bytes or the
    repeated fields; an absent optional column is None, an absent required one
    empty (the batch's length check then names it)."""
    raw = samples.raw if samples.HasField("raw") else None
    if raw is not None:
        both = [name for name, _, _ in _TRAIL_COLUMNS if len(getattr(samples, name))]
        if both:
            raise DomainError.from_violations(
                [
                    FieldViolation(
                        f"samples.{name}",
                        "must be empty when samples.raw is set",
                        ErrorCode.INVALID_ARGUMENT,
                    )
                    for name in both
                ],
                "the samples",
            )
    out: list[npt.NDArray[Any] | None] = []
    for name, raw_name, dtype in _TRAIL_COLUMNS:
        if raw is not None:
            column = _raw(raw_name, getattr(raw, raw_name), dtype, "samples.raw", "the samples")
        else:
            values = getattr(samples, name)
            column = np.array(values, dtype) if len(values) else None
        if column is None and name not in _OPTIONAL_TRAIL_COLUMNS:
            column = np.zeros(0, dtype)
        out.append(column)
    return out


def trail_batch_from_proto(samples: location_pb2.TrailSamples) -> TrailBatch:
    users, clock_col, stamps, lats, lons, accuracies = _trail_columns(samples)
    assert users is not None and stamps is not None and lats is not None and lons is not None
    tcs = (
        clock_col if clock_col is not None else np.full(users.size, samples.time_clock_id, np.int64)
    )
    job_indexes = None
    names: tuple[str, ...] = ()
    if samples.job_ids:
        names_sorted = sorted({j for j in samples.job_ids if j})
        code = {name: i for i, name in enumerate(names_sorted)}
        job_indexes = np.fromiter((code.get(j, -1) for j in samples.job_ids), np.int32)
        names = tuple(names_sorted)
    return TrailBatch(
        user_ids=users,
        time_clock_ids=tcs,
        timestamps=stamps,
        lats=lats,
        lons=lons,
        accuracy_m=accuracies,
        job_indexes=job_indexes,
        job_names=names,
    )


def fill_trail_results(
    data: location_pb2.TrailResults, batch: TrailBatch, out: TrailOutcome
) -> None:
    """Write the verdicts and exits into ``data``, a field of the response:
    filled in place, since a message passed to a constructor is copied whole."""
    r, ex = out.result, out.exits
    data.SetInParent()
    data.count = batch.size
    data.status.extend(r.status.tolist())
    data.inside.extend(r.inside.tolist())
    data.match_offsets.extend(r.offsets.tolist())
    data.fence_ids.extend(out.fence_ids)
    samples = ex.samples.tolist()
    users = batch.user_ids[ex.samples].tolist()
    clocks = batch.time_clock_ids[ex.samples].tolist()
    stamps = batch.timestamps[ex.samples].tolist()
    for k, sample in enumerate(samples):
        data.exits.add(
            sample=sample,
            user_id=users[k],
            time_clock_id=clocks[k],
            timestamp=stamps[k],
            fence_id=ex.fence_ids[k],
            action=ex.actions[k],
            other_fence_inside=bool(ex.other_inside[k]),
            outcome=ex.outcomes[k],
            shift_id=ex.shift_ids[k],
        )


def event_to_proto(e: Event) -> location_pb2.Event:
    msg = location_pb2.Event(
        seq=e.seq, type=e.type, occurred_at=e.occurred_at, id=e.id, account_id=e.account_id or 0
    )
    if e.time_clock_id is not None:
        msg.time_clock_id = e.time_clock_id
    if e.scheduler_id is not None:
        msg.scheduler_id = e.scheduler_id
    if e.user_id is not None:
        msg.user_id = e.user_id
    msg.payload.update(cast(Any, e.payload))
    return msg


def _count_statuses(counter: Counter, status: npt.NDArray[np.uint8]) -> None:
    codes, counts = np.unique(status, return_counts=True)
    for code, count in zip(codes.tolist(), counts.tolist(), strict=True):
        counter.labels(_STATUS_NAMES.get(code, str(code))).inc(count)


class LocationServicer(location_pb2_grpc.LocationServiceServicer):
    def __init__(
        self,
        fences: FenceEngine,
        uows: UnitOfWorkFactory | None = None,
        clock: Clock | None = None,
        submit: AsyncTransactionRunner | None = None,
        wakeup: Wakeup | None = None,
        stopping: threading.Event | None = None,
        max_skew_s: float = DEFAULT_MAX_SKEW_S,
    ) -> None:
        self._fences = fences
        self._max_skew_s = max_skew_s
        self._uows = uows
        self._clock = clock
        self._submit = submit
        self._wakeup = wakeup or Wakeup()
        self._stopping = stopping or threading.Event()

    def EvaluateTrails(
        self, request: location_pb2.EvaluateTrailsRequest, context: Any
    ) -> location_pb2.EvaluateTrailsResponse:
        batch = trail_batch_from_proto(request.samples)
        assert self._clock is not None
        out = trails.evaluate_trails(
            self._fences, account(), batch, self._clock.now(), self._max_skew_s
        )
        _count_statuses(metrics.TRAIL_SAMPLES, out.result.status)
        response = location_pb2.EvaluateTrailsResponse(request_id=request_id_var.get())
        fill_trail_results(response.data, batch, out)
        return response

    async def ReportLocations(
        self, request: location_pb2.ReportLocationsRequest, context: Any
    ) -> location_pb2.ReportLocationsResponse:
        """On the event loop: the batch is judged and written by the group
        committer's writer thread, and the answer is built here."""
        assert self._submit is not None and self._clock is not None
        batch = trail_batch_from_proto(request.samples)
        out = await trails.report_locations(
            self._submit, self._fences, self._clock, account(), batch, self._max_skew_s
        )
        status = out.result.status
        _count_statuses(metrics.LIVE_SAMPLES, status)
        ok, ignored = PointStatus.OK, PointStatus.IGNORED_ACCURACY
        rejected = int(np.count_nonzero((status != ok) & (status != STALE) & (status != ignored)))
        response = location_pb2.ReportLocationsResponse(
            request_id=request_id_var.get(),
            data=location_pb2.ReportLocationsResponse.Data(
                accepted=int(np.count_nonzero(status == ok)),
                stale=int(np.count_nonzero(status == STALE)),
                ignored=int(np.count_nonzero(status == ignored)),
                rejected=rejected,
            ),
        )
        fill_trail_results(response.data.results, batch, out)
        return response

    async def WatchEvents(
        self, request: location_pb2.WatchEventsRequest, context: Any
    ) -> AsyncIterator[location_pb2.Event]:
        """On the event loop; each page is read on a thread of the loop's executor.
        A stream the client cancels ends at its next ``await``."""
        assert self._uows is not None
        check_watch_filter(request.types, request.time_clock_ids)
        cursor = request.after_seq
        types, clocks = list(request.types), list(request.time_clock_ids)
        uows, acct = self._uows, account()
        loop = asyncio.get_running_loop()
        while not self._stopping.is_set():
            seen = self._wakeup.version
            try:
                page = await loop.run_in_executor(
                    None, events_after, uows, acct, cursor, types, clocks
                )
            except StoreUnavailable as exc:  # where to resume, as when the server stops
                raise exc.refusal({"afterSeq": str(cursor)}) from exc
            for e in page:
                yield event_to_proto(e)
                cursor = e.seq
            if len(page) < EVENT_PAGE:
                await self._wakeup.wait(seen, IDLE_RECHECK_S)
        # Not OK: the stream did not end, this server did. UNAVAILABLE is the
        # status clients retry on; they resume from the cursor they kept.
        raise DomainError(
            ErrorCode.UNAVAILABLE,
            f"the server is stopping; reconnect and resume after seq {cursor}",
            {"afterSeq": str(cursor)},
        )

    def CheckLocations(
        self, request: location_pb2.CheckLocationsRequest, context: Any
    ) -> location_pb2.CheckLocationsResponse:
        batch, kind = batch_from_proto(request)
        v = check_locations(self._fences, account(), batch, prefix=kind)
        # Filled in place: a message passed to a constructor is copied whole.
        response = location_pb2.CheckLocationsResponse(request_id=request_id_var.get())
        data = response.data
        data.count = int(v.status.size)
        data.status_u8 = v.status.tobytes()
        data.inside_u8 = v.inside.astype(np.uint8).tobytes()
        data.allowed_u8 = v.allowed.astype(np.uint8).tobytes()
        data.match_offsets_i64 = v.offsets.astype("<i8").tobytes()
        data.match_fences_i32 = v.fences.astype("<i4").tobytes()
        data.match_applicable_u8 = v.applicable.astype(np.uint8).tobytes()
        data.match_actions_i8 = v.actions.astype(np.int8).tobytes()
        data.exit_actions.extend(_EXIT_ACTIONS)
        if request.fixed_width_fence_ids:
            ids = v.ids.fixed()
            data.fence_ids_fixed = ids.tobytes()
            data.fence_id_width = ids.dtype.itemsize
        else:
            data.fence_ids.extend(v.ids.tolist())
        if v.distance_m is not None and v.nearest is not None:
            data.distances_f64 = v.distance_m.astype("<f8").tobytes()
            data.nearest_fences_i32 = v.nearest.astype("<i4").tobytes()
        return response
