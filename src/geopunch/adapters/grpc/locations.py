"""LocationService: columns in, columns out, as little-endian arrays."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from geopunch.domain.errors import DomainError, ErrorCode, FieldViolation
from geopunch.geo.index import ACTIONS, FenceIndex
from geopunch.logs import request_id_var
from geopunch.service.locations import LocationBatch, check_locations
from geopunch.v1 import location_pb2, location_pb2_grpc

_EXIT_ACTIONS = [a.value for a in ACTIONS]


def _raw(field: str, data: bytes, dtype: str) -> npt.NDArray[Any] | None:
    if not data:
        return None
    width = np.dtype(dtype).itemsize
    if len(data) % width:
        raise DomainError.from_violations(
            [
                FieldViolation(
                    f"raw.{field}",
                    f"{len(data)} bytes is not a whole number of {width}-byte values",
                    ErrorCode.INVALID_ARGUMENT,
                )
            ],
            "the points",
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


class LocationServicer(location_pb2_grpc.LocationServiceServicer):
    def __init__(self, index: FenceIndex) -> None:
        self._index = index

    def CheckLocations(
        self, request: location_pb2.CheckLocationsRequest, context: Any
    ) -> location_pb2.CheckLocationsResponse:
        batch, kind = batch_from_proto(request)
        snap, result = check_locations(self._index, batch, prefix=kind)
        handles = result.fence_handles
        extra = result.nearest_handles if result.nearest_handles is not None else None
        pool = handles if extra is None else np.concatenate([handles, extra[extra >= 0]])
        unique, inverse = np.unique(pool, return_inverse=True)
        data = location_pb2.CheckResults(
            count=int(result.status.size),
            status_u8=result.status.tobytes(),
            inside_u8=result.inside.astype(np.uint8).tobytes(),
            allowed_u8=result.allowed.astype(np.uint8).tobytes(),
            match_offsets_i64=result.offsets.astype("<i8").tobytes(),
            match_fences_i32=inverse[: handles.size].astype("<i4").tobytes(),
            match_applicable_u8=result.applicable.astype(np.uint8).tobytes(),
            match_actions_i8=result.actions.astype(np.int8).tobytes(),
            fence_ids=snap.fence_ids(unique),
            exit_actions=_EXIT_ACTIONS,
        )
        if result.distance_m is not None and extra is not None:
            nearest = np.full(extra.size, -1, "<i4")
            nearest[extra >= 0] = inverse[handles.size :]
            data.distances_f64 = result.distance_m.astype("<f8").tobytes()
            data.nearest_fences_i32 = nearest.tobytes()
        return location_pb2.CheckLocationsResponse(request_id=request_id_var.get(), data=data)
