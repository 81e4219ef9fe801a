"""One channel to a geopunch server, its stubs, and typed helpers."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from geopunch_client.v1 import (
    admin_pb2_grpc,
    common_pb2,
    geofences_pb2_grpc,
    location_pb2,
    location_pb2_grpc,
    scheduler_pb2_grpc,
    timeclock_pb2,
    timeclock_pb2_grpc,
    webhooks_pb2_grpc,
)

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

#: Status codes after which the same call may succeed later: the server is
#: away, busy or restarting. Anything else is the server's answer.
RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)

#: The request type of each punch, by the name the queue stores.
PUNCH_REQUESTS: dict[str, type[Any]] = {
    "clock_in": timeclock_pb2.ClockInRequest,
    "clock_out": timeclock_pb2.ClockOutRequest,
    "start_break": timeclock_pb2.StartManualBreakRequest,
    "end_break": timeclock_pb2.EndManualBreakRequest,
}


def new_idempotency_key() -> str:
    return uuid.uuid4().hex


def location(
    latitude: float, longitude: float, accuracy: float | None = None, address: str = ""
) -> common_pb2.Location:
    loc = common_pb2.Location(address=address, latitude=latitude, longitude=longitude)
    if accuracy is not None:
        loc.accuracy = accuracy
    return loc


@dataclass(frozen=True)
class CheckResult:
    """``CheckLocations`` answers as numpy arrays, one row per point."""

    status: npt.NDArray[np.uint8]
    inside: npt.NDArray[np.bool_]
    allowed: npt.NDArray[np.bool_]
    #: Matches of point i are ``match_offsets[i]:match_offsets[i + 1]``.
    match_offsets: npt.NDArray[np.int64]
    #: Per match: the fence id (bytes, NUL-padded) and whether it applies to the job.
    match_fence_ids: npt.NDArray[np.bytes_]
    match_applicable: npt.NDArray[np.bool_]
    #: Signed metres to the nearest applicable boundary (with ``with_distance``).
    distances: npt.NDArray[np.float64] | None


class GeopunchClient:
    """A connection to one server with the caller's API key on every call.

    The generated stubs are attributes (``admin``, ``geofences``,
    ``locations``, ``timeclock``, ``scheduler``, ``webhooks``); call them
    through :meth:`call`, which adds the key. The punch helpers give every
    punch an idempotency key and retry it with the same key while the
    server is unreachable, so a retry never punches twice.
    """

    def __init__(
        self,
        address: str,
        api_key: str,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        timeout: float = 30.0,
        retries: int = 3,
    ) -> None:
        options = [("grpc.max_receive_message_length", 256 * 1024 * 1024)]
        if credentials is None:
            self.channel = grpc.insecure_channel(address, options=options)
        else:
            self.channel = grpc.secure_channel(address, credentials, options=options)
        self.metadata = (("x-api-key", api_key),)
        self.timeout = timeout
        self.retries = retries
        self.admin = admin_pb2_grpc.AdminServiceStub(self.channel)
        self.geofences = geofences_pb2_grpc.GeofenceServiceStub(self.channel)
        self.locations = location_pb2_grpc.LocationServiceStub(self.channel)
        self.timeclock = timeclock_pb2_grpc.TimeClockServiceStub(self.channel)
        self.scheduler = scheduler_pb2_grpc.SchedulerServiceStub(self.channel)
        self.webhooks = webhooks_pb2_grpc.WebhookServiceStub(self.channel)

    def __enter__(self) -> GeopunchClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def call(self, method: Any, request: Any, *, retry: bool = False) -> Any:
        """``method(request)`` with the key; with ``retry``, again after a
        retryable failure (only for calls that are safe to repeat)."""
        attempt = 0
        while True:
            try:
                return method(request, metadata=self.metadata, timeout=self.timeout)
            except grpc.RpcError as err:
                attempt += 1
                if not retry or err.code() not in RETRYABLE or attempt > self.retries:
                    raise
                time.sleep(min(0.2 * 2**attempt, 5.0))

    # --- punches ------------------------------------------------------------------
    def punch(self, kind: str, request: Any) -> Any:
        """Send a punch request of ``kind`` (a key of ``PUNCH_REQUESTS``); it
        gets an idempotency key when it has none, and is retried with it."""
        if not request.idempotency_key:
            request.idempotency_key = new_idempotency_key()
        method = {
            "clock_in": self.timeclock.ClockIn,
            "clock_out": self.timeclock.ClockOut,
            "start_break": self.timeclock.StartManualBreak,
            "end_break": self.timeclock.EndManualBreak,
        }[kind]
        return self.call(method, request, retry=True)

    def clock_in(
        self, time_clock_id: int, user_id: int, *, job_id: str = "", **fields: Any
    ) -> timeclock_pb2.ShiftResponse:
        req = timeclock_pb2.ClockInRequest(
            time_clock_id=time_clock_id, user_id=user_id, job_id=job_id, **fields
        )
        answer: timeclock_pb2.ShiftResponse = self.punch("clock_in", req)
        return answer

    def clock_out(self, time_clock_id: int, user_id: int, **fields: Any) -> Any:
        req = timeclock_pb2.ClockOutRequest(time_clock_id=time_clock_id, user_id=user_id, **fields)
        return self.punch("clock_out", req)

    def start_break(
        self, time_clock_id: int, user_id: int, manual_break_id: str, **fields: Any
    ) -> Any:
        req = timeclock_pb2.StartManualBreakRequest(
            time_clock_id=time_clock_id, user_id=user_id, manual_break_id=manual_break_id, **fields
        )
        return self.punch("start_break", req)

    def end_break(self, time_clock_id: int, user_id: int, **fields: Any) -> Any:
        req = timeclock_pb2.EndManualBreakRequest(
            time_clock_id=time_clock_id, user_id=user_id, **fields
        )
        return self.punch("end_break", req)

    # --- locations ----------------------------------------------------------------
    def check_locations(
        self,
        latitudes: Any,
        longitudes: Any,
        time_clock_ids: Any = None,
        *,
        time_clock_id: int = 0,
        job_id: str = "",
        with_distance: bool = False,
    ) -> CheckResult:
        """``CheckLocations`` with numpy columns in and out (needs numpy:
        ``pip install geopunch-client[numpy]``)."""
        try:
            import numpy as np
        except ImportError as err:  # pragma: no cover - depends on the install
            hint = "check_locations needs numpy: pip install 'geopunch-client[numpy]'"
            raise ImportError(hint) from err
        raw = location_pb2.RawPoints(
            latitudes_f64=np.ascontiguousarray(latitudes, "<f8").tobytes(),
            longitudes_f64=np.ascontiguousarray(longitudes, "<f8").tobytes(),
        )
        if time_clock_ids is not None:
            raw.time_clock_ids_i64 = np.ascontiguousarray(time_clock_ids, "<i8").tobytes()
        req = location_pb2.CheckLocationsRequest(
            time_clock_id=time_clock_id,
            raw=raw,
            job_id=job_id,
            with_distance=with_distance,
            fixed_width_fence_ids=True,
        )
        d = self.call(self.locations.CheckLocations, req, retry=True).data
        offsets = np.frombuffer(d.match_offsets_i64, "<i8")
        fences = np.frombuffer(d.match_fences_i32, "<i4")
        ids = np.frombuffer(d.fence_ids_fixed, f"S{max(d.fence_id_width, 1)}")
        return CheckResult(
            status=np.frombuffer(d.status_u8, np.uint8),
            inside=np.frombuffer(d.inside_u8, np.uint8).astype(bool),
            allowed=np.frombuffer(d.allowed_u8, np.uint8).astype(bool),
            match_offsets=offsets,
            match_fence_ids=ids[fences] if fences.size else np.empty(0, "S1"),
            match_applicable=np.frombuffer(d.match_applicable_u8, np.uint8).astype(bool),
            distances=np.frombuffer(d.distances_f64, "<f8") if with_distance else None,
        )

    # --- events -------------------------------------------------------------------
    def watch_events(
        self,
        cursor_file: str | os.PathLike[str] | None = None,
        *,
        after_seq: int = 0,
        types: Sequence[str] = (),
        time_clock_ids: Iterable[int] = (),
        reconnect_delay: float = 0.5,
        max_delay: float = 10.0,
    ) -> Iterator[location_pb2.Event]:
        """Events from the cursor on, for ever: reconnects (with backoff) when
        the stream breaks, resuming after the last event handed out.

        With ``cursor_file`` the cursor survives restarts: it is read at the
        start and written (atomically) once the caller asks for the next
        event, so an event is handed out again only if the caller died while
        handling it (at least once). Stop by leaving the loop.
        """
        path = Path(cursor_file) if cursor_file is not None else None
        cursor = after_seq
        if path is not None and path.exists():
            cursor = int(path.read_text().strip() or 0)
        delay = reconnect_delay
        while True:
            request = location_pb2.WatchEventsRequest(
                after_seq=cursor, types=list(types), time_clock_ids=list(time_clock_ids)
            )
            stream = self.locations.WatchEvents(request, metadata=self.metadata)
            try:
                for event in stream:
                    delay = reconnect_delay
                    yield event
                    cursor = event.seq
                    if path is not None:
                        tmp = path.with_name(path.name + ".tmp")
                        tmp.write_text(str(cursor))
                        os.replace(tmp, path)
            except grpc.RpcError as err:
                if err.code() not in RETRYABLE:
                    raise
            finally:
                stream.cancel()  # type: ignore[no-untyped-call]
            time.sleep(delay)
            delay = min(delay * 2, max_delay)
