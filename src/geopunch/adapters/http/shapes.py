"""The HTTP API's answers as the OpenAPI document describes them.

Documentation only: the routes build their answers in `answers` and send
them ready-encoded, never through these models (FastAPI's validation and
encoding of a returned value cost more than the rest of a punch's HTTP
handling). Each model lists its answer's keys exactly, with no others
allowed, so that a client generated from the document reads every field,
and the tests that check every answer against the document notice an
answer and its description drifting apart.

A field that is left out rather than null when it has no value is typed
``X | SkipJsonSchema[None] = None``: optional, and a value when present.
"""

# No ``from __future__ import annotations``: pydantic reads the annotations at run time.
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict
from pydantic.json_schema import SkipJsonSchema

from geopunch.domain.errors import ErrorCode
from geopunch.domain.models import DayStatus, ExitAction, GeofencePolicy
from geopunch.domain.timesheets import UserState
from geopunch.domain.webhooks import SubscriptionStatus


class Shape(BaseModel):
    model_config = ConfigDict(extra="forbid")


T = TypeVar("T")


class Answer(Shape, Generic[T]):
    """Every answer of a call that succeeded: its request id and its data."""

    requestId: str
    data: T


# -- punches --------------------------------------------------------------------------


class PunchLocationOut(Shape):
    address: str
    latitude: float | None
    longitude: float | None
    accuracy: float | SkipJsonSchema[None] = None


class SourceOut(Shape):
    type: str | None


class PunchPointOut(Shape):
    """A start or an end as a punch answers it. `geofenceId` names the
    fence the punch was inside; a break's own ends carry no `source`."""

    timestamp: int
    timezone: str
    locationData: PunchLocationOut | SkipJsonSchema[None] = None
    geofenceId: str | SkipJsonSchema[None] = None
    source: SourceOut | SkipJsonSchema[None] = None


class ShiftOut(Shape):
    """A shift; `end` is left out while it is open."""

    id: str
    userId: int
    start: PunchPointOut
    end: PunchPointOut | SkipJsonSchema[None] = None
    jobId: str | None
    schedulerShiftId: str | None
    createdAt: int
    modifiedAt: int


class ShiftData(Shape):
    shift: ShiftOut


class BreakStartedOut(Shape):
    """`closedShift` is the shift the break closed, when it did."""

    id: str
    start: PunchPointOut
    isSwitchFromShift: bool
    closedShift: ShiftOut | SkipJsonSchema[None] = None


class BreakEndedOut(Shape):
    """`resumedShift` is the shift the break's end opened, when it did."""

    id: str
    end: PunchPointOut
    isResumeShift: bool
    resumedShift: ShiftOut | SkipJsonSchema[None] = None


class BreakTypeOut(Shape):
    id: str
    name: str
    isMandatory: bool
    minDurationSeconds: int


class PaidBreakTypeOut(BreakTypeOut):
    isPaid: bool


class ManualBreaksOut(Shape):
    isEnabled: bool
    manualBreaks: list[BreakTypeOut]


class VerdictOut(Shape):
    """What the punch would answer: allowed, or the reason it would be refused."""

    allowed: bool
    code: ErrorCode | None
    detail: str | None
    metadata: dict[str, str]


# -- geofences ------------------------------------------------------------------------


class FenceLocationOut(Shape):
    """Coordinates as numeric strings, as the spec's geofences carry them."""

    address: str
    latitude: str
    longitude: str


class FenceOut(Shape):
    id: str
    name: str
    isEnabled: bool
    fenceSize: int
    jobIds: list[str]
    onGeofenceExitAction: ExitAction
    location: FenceLocationOut


class FencesOut(Shape):
    geofences: list[FenceOut]


class OneFenceOut(Shape):
    geofence: FenceOut


class FenceMadeOut(Shape):
    fenceId: str
    name: str


class FencesMadeOut(Shape):
    geofences: list[FenceMadeOut]


class Nothing(Shape):
    """An empty object."""


# -- set-up ---------------------------------------------------------------------------


class JobOut(Shape):
    id: str
    name: str
    color: str
    subJobs: list["JobOut"]


class ExitDetectionOut(Shape):
    highAccuracyMaxM: float
    bufferHighAccuracyM: float
    lowAccuracyMaxM: float
    bufferLowAccuracyM: float
    bufferUnknownAccuracyM: float


class TimeClockOut(Shape):
    id: int
    name: str
    timezone: str
    jobEnforcement: bool
    jobs: list[JobOut]
    userIds: list[int]
    manualBreaksEnabled: bool
    manualBreakTypes: list[PaidBreakTypeOut]
    geofencePolicy: GeofencePolicy
    accuracyToleranceM: float
    exitDetection: ExitDetectionOut


class SchedulerOut(Shape):
    id: int
    name: str
    timezone: str
    jobs: list[JobOut]
    userIds: list[int]
    multiUserShifts: bool


class DayOut(Shape):
    date: str
    status: DayStatus


class DaysOut(Shape):
    days: list[DayOut]


class ApiKeyOut(Shape):
    """`secret` only in the answer that issued the key."""

    id: str
    label: str
    scopes: list[str]
    createdAt: int
    revokedAt: int | None
    secret: str | SkipJsonSchema[None] = None


class ApiKeysOut(Shape):
    keys: list[ApiKeyOut]


class WebhookOut(Shape):
    """`secret` only in the answers that set it. Times are Unix milliseconds."""

    id: str
    url: str
    eventTypes: list[str]
    timeClockIds: list[int]
    secret: str | SkipJsonSchema[None] = None
    status: SubscriptionStatus
    deliveredThroughSeq: int
    failedAttempts: int
    failingSinceMs: int | None
    nextAttemptAtMs: int | None
    createdAtMs: int
    modifiedAtMs: int


class WebhooksOut(Shape):
    subscriptions: list[WebhookOut]


class DeliveryOut(Shape):
    id: int
    seq: int
    eventId: str
    eventType: str
    attempt: int
    attemptedAtMs: int
    statusCode: int | None
    latencyMs: float
    error: str | None
    succeeded: bool


class DeliveriesOut(Shape):
    deliveries: list[DeliveryOut]
    nextPageToken: str | None


# -- scheduled shifts -----------------------------------------------------------------


class ShiftGpsOut(Shape):
    address: str
    latitude: float | None
    longitude: float | None


class ShiftLocationOut(Shape):
    isReferencedToJob: bool
    gps: ShiftGpsOut | None


class NoteOut(Shape):
    html: str


class ShiftBreakOut(Shape):
    """`startTime` and `duration` in minutes as sent; the timestamps are
    the break's resolved Unix seconds."""

    name: str
    type: str
    startTime: int
    duration: int
    startTimestamp: int
    endTimestamp: int


class LayerValueOut(Shape):
    id: str


class ShiftLayerOut(Shape):
    id: str
    value: LayerValueOut


class ShiftDetailsOut(Shape):
    shiftLayers: list[ShiftLayerOut]
    shiftSource: str | None


class CustomFieldOut(Shape):
    id: str
    value: Any


class ScheduledShiftOut(Shape):
    id: str
    title: str | None
    color: str | None
    assignedUserIds: list[int]
    startTime: int
    endTime: int
    timezone: str | None
    isOpenShift: bool
    isPublished: bool
    isRequireAdminApproval: bool | None
    jobId: str | None
    locationData: ShiftLocationOut | None
    createdBy: int | None
    creationTime: int
    updateTime: int
    openSpots: int | None
    notes: list[NoteOut]
    statuses: list[dict[str, Any]]
    breaks: list[ShiftBreakOut]
    shiftDetails: ShiftDetailsOut
    customFields: list[CustomFieldOut]


class ScheduledShiftsOut(Shape):
    shifts: list[ScheduledShiftOut]


# -- time activities and statuses ------------------------------------------------------


class ActivityLocationOut(Shape):
    address: str
    latitude: float | None
    longitude: float | None
    accuracy: float | None


class ActivityPointOut(Shape):
    timestamp: int
    timezone: str | None
    locationData: ActivityLocationOut | None
    source: SourceOut
    geofenceId: str | None


class TimeActivityOut(Shape):
    """A shift or a manual break; `end` is null while it is open."""

    id: str
    kind: Literal["shift", "manualBreak"]
    timeClockId: int
    userId: int
    start: ActivityPointOut
    end: ActivityPointOut | None
    isOpen: bool
    jobId: str | None
    manualBreakId: str | None
    schedulerShiftId: str | None
    isSwitchFromShift: bool
    notes: str | None
    createdAt: int
    modifiedAt: int


class TimeActivitiesOut(Shape):
    timeActivities: list[TimeActivityOut]


class OneTimeActivityOut(Shape):
    timeActivity: TimeActivityOut


class DayTotalsOut(Shape):
    date: str
    workedSeconds: int
    paidBreakSeconds: int
    unpaidBreakSeconds: int


class UserTotalsOut(Shape):
    userId: int
    workedSeconds: int
    paidBreakSeconds: int
    unpaidBreakSeconds: int
    days: list[DayTotalsOut]


class TimeActivityPageOut(Shape):
    """`nextPageToken` is null on the last page; `totals` is there on
    the first page of a call that asked for them."""

    timeActivities: list[TimeActivityOut]
    nextPageToken: str | None
    totals: list[UserTotalsOut] | None


class UserStatusOut(Shape):
    """`endableAt`: when a mandatory break may end (null when any time will do)."""

    userId: int
    state: UserState
    activity: TimeActivityOut | None
    manualBreak: PaidBreakTypeOut | None
    endableAt: int | None


class UserStatusesOut(Shape):
    statuses: list[UserStatusOut]


# -- location checks and health --------------------------------------------------------


class FenceMatchOut(Shape):
    fenceId: str
    applicable: bool
    onGeofenceExitAction: ExitAction


class PointResultOut(Shape):
    """The distance and nearest fence are there when asked for (null when
    the time clock has no fence)."""

    status: str
    inside: bool
    allowed: bool
    matches: list[FenceMatchOut]
    distanceMeters: float | None = None
    nearestFenceId: str | None = None


class PointResultsOut(Shape):
    results: list[PointResultOut]


class HealthOut(Shape):
    status: str
