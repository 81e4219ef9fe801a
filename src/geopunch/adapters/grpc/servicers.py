"""Thin servicers: convert the request, call the use case, convert the result."""

from __future__ import annotations

from typing import Any

from geopunch.adapters.grpc import convert, scheduling
from geopunch.adapters.grpc.auth import account
from geopunch.domain.accounts import ApiKey, scopes_of
from geopunch.domain.errors import DomainError, ErrorCode, FieldViolation
from geopunch.domain.ports import Clock, FenceListener, TransactionRunner, UnitOfWorkFactory
from geopunch.logs import request_id_var
from geopunch.service import accounts, admin, geofences, scheduler
from geopunch.v1 import admin_pb2, admin_pb2_grpc, common_pb2, geofences_pb2, geofences_pb2_grpc


def _bad_enum(path: str, value: int) -> DomainError:
    return DomainError.from_violations(
        [FieldViolation(path, f"unknown enum value {value}", ErrorCode.INVALID_ARGUMENT)], path
    )


def _key_to_proto(key: ApiKey) -> admin_pb2.ApiKey:
    return admin_pb2.ApiKey(
        id=key.id,
        label=key.label,
        scopes=sorted(key.scopes),
        created_at=key.created_at,
        revoked_at=key.revoked_at,
    )


def _key_reply(key: ApiKey, secret: str = "") -> admin_pb2.ApiKeyResponse:
    return admin_pb2.ApiKeyResponse(
        request_id=request_id_var.get(),
        data=admin_pb2.ApiKeyResponse.Data(key=_key_to_proto(key), secret=secret),
    )


def _time_clock(msg: admin_pb2.TimeClock) -> tuple[Any, list[str]]:
    try:
        return convert.time_clock_from_proto(msg)
    except ValueError as exc:
        raise _bad_enum("time_clock.geofence_policy", msg.geofence_policy) from exc


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    def __init__(
        self,
        uows: UnitOfWorkFactory,
        clock: Clock,
        listener: FenceListener | None = None,
        commit: TransactionRunner | None = None,
    ) -> None:
        self._uows = uows
        self._clock = clock
        self._listener = listener
        self._commit = commit

    def _reply(self, tc: Any) -> admin_pb2.TimeClockResponse:
        return admin_pb2.TimeClockResponse(
            request_id=request_id_var.get(), data=convert.time_clock_to_proto(tc)
        )

    def CreateTimeClock(
        self, request: admin_pb2.CreateTimeClockRequest, context: Any
    ) -> admin_pb2.TimeClockResponse:
        tc, paths = _time_clock(request.time_clock)
        assign = not request.time_clock.HasField("id")
        return self._reply(
            admin.create_time_clock(
                self._uows,
                account(),
                tc,
                paths,
                assign_id=assign,
                listener=self._listener,
                commit=self._commit,
            )
        )

    def UpdateTimeClock(
        self, request: admin_pb2.UpdateTimeClockRequest, context: Any
    ) -> admin_pb2.TimeClockResponse:
        tc, paths = _time_clock(request.time_clock)
        return self._reply(
            admin.update_time_clock(self._uows, account(), tc, paths, self._listener, self._commit)
        )

    def GetTimeClock(
        self, request: admin_pb2.GetTimeClockRequest, context: Any
    ) -> admin_pb2.TimeClockResponse:
        return self._reply(admin.read_time_clock(self._uows, account(), request.time_clock_id))

    def SetDayStatus(
        self, request: admin_pb2.SetDayStatusRequest, context: Any
    ) -> admin_pb2.DayStatusResponse:
        status = convert.DAY_STATUS_TO_DOMAIN.get(request.status)
        if status is None:
            raise _bad_enum("status", request.status)
        days = admin.set_day_status(
            self._uows,
            account(),
            request.time_clock_id,
            request.user_id,
            list(request.dates),
            status,
        )
        return admin_pb2.DayStatusResponse(
            request_id=request_id_var.get(),
            data=admin_pb2.DayStatusResponse.Data(days=convert.day_statuses_to_proto(days)),
        )

    async def Ping(self, request: admin_pb2.PingRequest, context: Any) -> admin_pb2.PingResponse:
        # On the event loop: nothing to wait for, so no hand-off to a thread.
        return admin_pb2.PingResponse(request_id=request_id_var.get())

    def _scheduler_reply(self, s: Any) -> admin_pb2.SchedulerResponse:
        return admin_pb2.SchedulerResponse(
            request_id=request_id_var.get(), data=scheduling.scheduler_to_proto(s)
        )

    def CreateScheduler(
        self, request: admin_pb2.CreateSchedulerRequest, context: Any
    ) -> admin_pb2.SchedulerResponse:
        s, paths = scheduling.scheduler_from_proto(request.scheduler)
        assign = not request.scheduler.HasField("id")
        return self._scheduler_reply(
            scheduler.create_scheduler(self._uows, account(), s, paths, assign_id=assign)
        )

    def UpdateScheduler(
        self, request: admin_pb2.UpdateSchedulerRequest, context: Any
    ) -> admin_pb2.SchedulerResponse:
        s, paths = scheduling.scheduler_from_proto(request.scheduler)
        return self._scheduler_reply(scheduler.update_scheduler(self._uows, account(), s, paths))

    def GetScheduler(
        self, request: admin_pb2.GetSchedulerRequest, context: Any
    ) -> admin_pb2.SchedulerResponse:
        return self._scheduler_reply(
            scheduler.read_scheduler(self._uows, account(), request.scheduler_id)
        )

    def CreateApiKey(
        self, request: admin_pb2.CreateApiKeyRequest, context: Any
    ) -> admin_pb2.ApiKeyResponse:
        scopes = scopes_of(request.scopes)
        issued = accounts.create_key(self._uows, self._clock, account(), scopes, request.label)
        return _key_reply(issued.key, issued.secret)

    def ListApiKeys(
        self, request: admin_pb2.ListApiKeysRequest, context: Any
    ) -> admin_pb2.ListApiKeysResponse:
        keys = accounts.list_keys(self._uows, account())
        return admin_pb2.ListApiKeysResponse(
            request_id=request_id_var.get(),
            data=admin_pb2.ListApiKeysResponse.Data(keys=[_key_to_proto(k) for k in keys]),
        )

    def RotateApiKey(
        self, request: admin_pb2.RotateApiKeyRequest, context: Any
    ) -> admin_pb2.ApiKeyResponse:
        issued = accounts.rotate_key(self._uows, self._clock, request.key_id, account())
        return _key_reply(issued.key, issued.secret)

    def RevokeApiKey(
        self, request: admin_pb2.RevokeApiKeyRequest, context: Any
    ) -> admin_pb2.ApiKeyResponse:
        return _key_reply(accounts.revoke_key(self._uows, request.key_id, account()))

    def ListDayStatuses(
        self, request: admin_pb2.ListDayStatusesRequest, context: Any
    ) -> admin_pb2.DayStatusResponse:
        days = admin.list_day_statuses(
            self._uows, account(), request.time_clock_id, request.user_id
        )
        return admin_pb2.DayStatusResponse(
            request_id=request_id_var.get(),
            data=admin_pb2.DayStatusResponse.Data(days=convert.day_statuses_to_proto(days)),
        )


class GeofenceServicer(geofences_pb2_grpc.GeofenceServiceServicer):
    def __init__(
        self,
        uows: UnitOfWorkFactory,
        listener: FenceListener | None = None,
        commit: TransactionRunner | None = None,
    ) -> None:
        self._uows = uows
        self._listener = listener
        self._commit = commit

    def ListGeofences(
        self, request: geofences_pb2.ListGeofencesRequest, context: Any
    ) -> geofences_pb2.ListGeofencesResponse:
        fences = geofences.list_geofences(self._uows, account(), request.time_clock_id)
        return geofences_pb2.ListGeofencesResponse(
            request_id=request_id_var.get(),
            data=geofences_pb2.ListGeofencesResponse.Data(
                geofences=[convert.geofence_to_proto(f) for f in fences]
            ),
        )

    def CreateGeofences(
        self, request: geofences_pb2.CreateGeofencesRequest, context: Any
    ) -> geofences_pb2.CreateGeofencesResponse:
        drafts = [convert.geofence_draft_from_proto(g) for g in request.geofences]
        created = geofences.create_geofences(
            self._uows, account(), request.time_clock_id, drafts, self._listener, self._commit
        )
        response = geofences_pb2.CreateGeofencesResponse(request_id=request_id_var.get())
        add = response.data.geofences.add  # in place: 2.4x building messages, then copying them
        for f in created:
            add(fence_id=f.id, name=f.name)
        return response

    def GetGeofence(
        self, request: geofences_pb2.GetGeofenceRequest, context: Any
    ) -> geofences_pb2.GetGeofenceResponse:
        fence = geofences.get_geofence(
            self._uows, account(), request.time_clock_id, request.fence_id
        )
        return geofences_pb2.GetGeofenceResponse(
            request_id=request_id_var.get(),
            data=geofences_pb2.GetGeofenceResponse.Data(geofence=convert.geofence_to_proto(fence)),
        )

    def DeleteGeofence(
        self, request: geofences_pb2.DeleteGeofenceRequest, context: Any
    ) -> geofences_pb2.DeleteGeofenceResponse:
        geofences.delete_geofence(
            self._uows,
            account(),
            request.time_clock_id,
            request.fence_id,
            self._listener,
            self._commit,
        )
        return geofences_pb2.DeleteGeofenceResponse(
            request_id=request_id_var.get(), data=common_pb2.EmptyData()
        )
