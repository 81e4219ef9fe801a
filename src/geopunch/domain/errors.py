"""Error reasons, their status mapping, and the one exception the domain raises."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple


class ErrorCode(StrEnum):
    """Machine-readable reasons, sent as ``google.rpc.ErrorInfo.reason``."""

    # clocking
    INVALID_TIMESTAMP_FUTURE = "INVALID_TIMESTAMP_FUTURE"
    INVALID_TIMESTAMP_TOO_OLD = "INVALID_TIMESTAMP_TOO_OLD"
    INVALID_TIMESTAMP_BEFORE_CLOCK_IN = "INVALID_TIMESTAMP_BEFORE_CLOCK_IN"
    HAS_LOCKED_DAYS = "HAS_LOCKED_DAYS"
    USER_NOT_ASSIGNED = "USER_NOT_ASSIGNED"
    ALREADY_CLOCKED_IN = "ALREADY_CLOCKED_IN"
    NO_OPEN_SHIFT = "NO_OPEN_SHIFT"
    JOB_REQUIRED = "JOB_REQUIRED"
    JOB_NOT_FOUND = "JOB_NOT_FOUND"
    OPEN_BREAK = "OPEN_BREAK"
    OUTSIDE_GEOFENCE = "OUTSIDE_GEOFENCE"
    LOCATION_REQUIRED = "LOCATION_REQUIRED"
    OVERLAPS_COMPLETED_ACTIVITY = "OVERLAPS_COMPLETED_ACTIVITY"
    INVALID_TIMEZONE = "INVALID_TIMEZONE"
    INVALID_LOCATION = "INVALID_LOCATION"
    SCHEDULER_SHIFT_NOT_FOUND = "SCHEDULER_SHIFT_NOT_FOUND"
    TIME_CLOCK_NOT_FOUND = "TIME_CLOCK_NOT_FOUND"
    # time activities
    TIME_ACTIVITY_NOT_FOUND = "TIME_ACTIVITY_NOT_FOUND"
    TIME_ACTIVITY_OPEN = "TIME_ACTIVITY_OPEN"
    STALE_MODIFIED_AT = "STALE_MODIFIED_AT"
    # breaks
    MANUAL_BREAKS_DISABLED = "MANUAL_BREAKS_DISABLED"
    MANUAL_BREAK_NOT_FOUND = "MANUAL_BREAK_NOT_FOUND"
    ALREADY_ON_BREAK = "ALREADY_ON_BREAK"
    NO_OPEN_BREAK = "NO_OPEN_BREAK"
    MANDATORY_BREAK_TOO_SHORT = "MANDATORY_BREAK_TOO_SHORT"
    INVALID_TIMESTAMP_BEFORE_START = "INVALID_TIMESTAMP_BEFORE_START"
    # geofences
    GEOFENCE_NOT_FOUND = "GEOFENCE_NOT_FOUND"
    INVALID_COORDINATES = "INVALID_COORDINATES"
    INVALID_FENCE_SIZE = "INVALID_FENCE_SIZE"
    INVALID_NAME = "INVALID_NAME"
    TOO_MANY_JOB_IDS = "TOO_MANY_JOB_IDS"
    TOO_MANY_GEOFENCES = "TOO_MANY_GEOFENCES"
    JOBS_NOT_IN_TIME_CLOCK = "JOBS_NOT_IN_TIME_CLOCK"
    JOB_IDS_REQUIRED = "JOB_IDS_REQUIRED"
    INVALID_EXIT_ACTION = "INVALID_EXIT_ACTION"
    # shifts
    TITLE_OR_JOB_REQUIRED = "TITLE_OR_JOB_REQUIRED"
    SHIFT_TOO_LONG = "SHIFT_TOO_LONG"
    INVALID_TIME_RANGE = "INVALID_TIME_RANGE"
    BREAKS_EXCEED_SHIFT = "BREAKS_EXCEED_SHIFT"
    TIMESTAMP_NOT_SECONDS = "TIMESTAMP_NOT_SECONDS"
    OPEN_SPOTS_NOT_OPEN_SHIFT = "OPEN_SPOTS_NOT_OPEN_SHIFT"
    OPEN_SPOTS_LIMIT = "OPEN_SPOTS_LIMIT"
    ASSIGNED_USERS_NOT_FOUND = "ASSIGNED_USERS_NOT_FOUND"
    PUBLISHED_SHIFT_NEEDS_USER = "PUBLISHED_SHIFT_NEEDS_USER"
    OPEN_SHIFT_HAS_USERS = "OPEN_SHIFT_HAS_USERS"
    FEATURE_REQUIRED = "FEATURE_REQUIRED"
    JOB_NOT_IN_SCHEDULER = "JOB_NOT_IN_SCHEDULER"
    TOO_MANY_SHIFTS = "TOO_MANY_SHIFTS"
    SCHEDULER_NOT_FOUND = "SCHEDULER_NOT_FOUND"
    # common
    BATCH_TOO_LARGE = "BATCH_TOO_LARGE"
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    IDEMPOTENCY_KEY_REUSED = "IDEMPOTENCY_KEY_REUSED"
    # names for what the spec leaves unnamed
    TIME_CLOCK_ALREADY_EXISTS = "TIME_CLOCK_ALREADY_EXISTS"
    SCHEDULER_ALREADY_EXISTS = "SCHEDULER_ALREADY_EXISTS"
    JOB_IN_USE = "JOB_IN_USE"
    API_KEY_INVALID = "API_KEY_INVALID"
    SCOPE_REQUIRED = "SCOPE_REQUIRED"
    ACCOUNT_NOT_FOUND = "ACCOUNT_NOT_FOUND"
    ACCOUNT_ALREADY_EXISTS = "ACCOUNT_ALREADY_EXISTS"
    API_KEY_NOT_FOUND = "API_KEY_NOT_FOUND"
    TOO_MANY_STREAMS = "TOO_MANY_STREAMS"
    EVENTS_PURGED = "EVENTS_PURGED"
    WEBHOOK_SUBSCRIPTION_NOT_FOUND = "WEBHOOK_SUBSCRIPTION_NOT_FOUND"
    WEBHOOK_URL_NOT_ALLOWED = "WEBHOOK_URL_NOT_ALLOWED"
    TOO_MANY_WEBHOOK_SUBSCRIPTIONS = "TOO_MANY_WEBHOOK_SUBSCRIPTIONS"
    CONCURRENT_MODIFICATION = "CONCURRENT_MODIFICATION"
    UNAVAILABLE = "UNAVAILABLE"
    INTERNAL = "INTERNAL"
    # A path (or a gRPC method) the API does not have; HTTP alone: a method
    # the path does not take.
    ROUTE_NOT_FOUND = "ROUTE_NOT_FOUND"
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
    # HTTP alone: a request head past its bounds, refused before it is parsed
    # (gRPC bounds its metadata itself).
    URI_TOO_LONG = "URI_TOO_LONG"
    REQUEST_HEADER_FIELDS_TOO_LARGE = "REQUEST_HEADER_FIELDS_TOO_LARGE"
    # HTTP alone: a request not received whole in time (a gRPC call that
    # sends no message in time is ended with INVALID_ARGUMENT).
    REQUEST_TIMEOUT = "REQUEST_TIMEOUT"


class StatusMapping(NamedTuple):
    """Transport-neutral status of a reason: gRPC code name and HTTP status."""

    grpc_code: str
    http_status: int


_BAD = StatusMapping("INVALID_ARGUMENT", 400)
_PRECONDITION = StatusMapping("FAILED_PRECONDITION", 400)
_NOT_FOUND = StatusMapping("NOT_FOUND", 404)
#: Something the body names does not exist: NOT_FOUND over gRPC, but 400 over
#: HTTP, as the spec's tables have it (404 is kept for a missing resource of
#: the path, such as a geofence or time clock).
_NAMED_NOT_FOUND = StatusMapping("NOT_FOUND", 400)

#: Every ErrorCode mapped to its gRPC status code name and the spec's HTTP status.
#: The spec answers every rule violation with 400, so a state that forbids a
#: call is FAILED_PRECONDITION over gRPC but still 400 over HTTP. This one
#: table serves both APIs; where the spec's tables give a status, it is here.
STATUS: dict[ErrorCode, StatusMapping] = {
    ErrorCode.INVALID_TIMESTAMP_FUTURE: _BAD,
    ErrorCode.INVALID_TIMESTAMP_TOO_OLD: _BAD,
    ErrorCode.INVALID_TIMESTAMP_BEFORE_CLOCK_IN: _BAD,
    ErrorCode.HAS_LOCKED_DAYS: StatusMapping("FAILED_PRECONDITION", 409),
    ErrorCode.USER_NOT_ASSIGNED: _PRECONDITION,
    ErrorCode.ALREADY_CLOCKED_IN: _PRECONDITION,
    ErrorCode.NO_OPEN_SHIFT: _PRECONDITION,
    ErrorCode.JOB_REQUIRED: _BAD,
    ErrorCode.JOB_NOT_FOUND: _NAMED_NOT_FOUND,
    ErrorCode.OPEN_BREAK: _PRECONDITION,
    ErrorCode.OUTSIDE_GEOFENCE: _PRECONDITION,
    ErrorCode.LOCATION_REQUIRED: _BAD,
    ErrorCode.OVERLAPS_COMPLETED_ACTIVITY: _PRECONDITION,
    ErrorCode.INVALID_TIMEZONE: _BAD,
    ErrorCode.INVALID_LOCATION: _BAD,
    ErrorCode.SCHEDULER_SHIFT_NOT_FOUND: _NAMED_NOT_FOUND,
    ErrorCode.TIME_CLOCK_NOT_FOUND: _NOT_FOUND,
    ErrorCode.TIME_ACTIVITY_NOT_FOUND: _NOT_FOUND,
    ErrorCode.TIME_ACTIVITY_OPEN: _PRECONDITION,
    # The caller read an older version: read again and retry (409 over HTTP).
    ErrorCode.STALE_MODIFIED_AT: StatusMapping("ABORTED", 409),
    ErrorCode.MANUAL_BREAKS_DISABLED: _PRECONDITION,
    ErrorCode.MANUAL_BREAK_NOT_FOUND: _NAMED_NOT_FOUND,
    ErrorCode.ALREADY_ON_BREAK: _PRECONDITION,
    ErrorCode.NO_OPEN_BREAK: _PRECONDITION,
    ErrorCode.MANDATORY_BREAK_TOO_SHORT: _PRECONDITION,
    ErrorCode.INVALID_TIMESTAMP_BEFORE_START: _BAD,
    ErrorCode.GEOFENCE_NOT_FOUND: _NOT_FOUND,
    ErrorCode.INVALID_COORDINATES: _BAD,
    ErrorCode.INVALID_FENCE_SIZE: _BAD,
    ErrorCode.INVALID_NAME: _BAD,
    ErrorCode.TOO_MANY_JOB_IDS: _BAD,
    ErrorCode.TOO_MANY_GEOFENCES: _BAD,
    ErrorCode.JOBS_NOT_IN_TIME_CLOCK: _BAD,
    ErrorCode.JOB_IDS_REQUIRED: _BAD,
    ErrorCode.INVALID_EXIT_ACTION: _BAD,
    ErrorCode.TITLE_OR_JOB_REQUIRED: _BAD,
    ErrorCode.SHIFT_TOO_LONG: _BAD,
    ErrorCode.INVALID_TIME_RANGE: _BAD,
    ErrorCode.BREAKS_EXCEED_SHIFT: _BAD,
    ErrorCode.TIMESTAMP_NOT_SECONDS: _BAD,
    ErrorCode.OPEN_SPOTS_NOT_OPEN_SHIFT: _BAD,
    ErrorCode.OPEN_SPOTS_LIMIT: _BAD,
    ErrorCode.ASSIGNED_USERS_NOT_FOUND: _BAD,
    ErrorCode.PUBLISHED_SHIFT_NEEDS_USER: _BAD,
    ErrorCode.OPEN_SHIFT_HAS_USERS: _BAD,
    ErrorCode.FEATURE_REQUIRED: _PRECONDITION,
    ErrorCode.JOB_NOT_IN_SCHEDULER: _BAD,
    ErrorCode.TOO_MANY_SHIFTS: _BAD,
    ErrorCode.SCHEDULER_NOT_FOUND: _NOT_FOUND,
    ErrorCode.BATCH_TOO_LARGE: _BAD,
    ErrorCode.INVALID_ARGUMENT: _BAD,
    ErrorCode.IDEMPOTENCY_KEY_REUSED: _BAD,
    ErrorCode.TIME_CLOCK_ALREADY_EXISTS: StatusMapping("ALREADY_EXISTS", 409),
    ErrorCode.SCHEDULER_ALREADY_EXISTS: StatusMapping("ALREADY_EXISTS", 409),
    ErrorCode.JOB_IN_USE: _PRECONDITION,
    ErrorCode.API_KEY_INVALID: StatusMapping("UNAUTHENTICATED", 401),
    ErrorCode.SCOPE_REQUIRED: StatusMapping("PERMISSION_DENIED", 403),
    ErrorCode.ACCOUNT_NOT_FOUND: _NOT_FOUND,
    ErrorCode.ACCOUNT_ALREADY_EXISTS: StatusMapping("ALREADY_EXISTS", 409),
    ErrorCode.API_KEY_NOT_FOUND: _NOT_FOUND,
    ErrorCode.TOO_MANY_STREAMS: StatusMapping("RESOURCE_EXHAUSTED", 429),
    # A cursor from before the retained log: the events after it are gone.
    ErrorCode.EVENTS_PURGED: StatusMapping("OUT_OF_RANGE", 410),
    ErrorCode.WEBHOOK_SUBSCRIPTION_NOT_FOUND: _NOT_FOUND,
    ErrorCode.WEBHOOK_URL_NOT_ALLOWED: _BAD,
    ErrorCode.TOO_MANY_WEBHOOK_SUBSCRIPTIONS: StatusMapping("FAILED_PRECONDITION", 409),
    ErrorCode.CONCURRENT_MODIFICATION: StatusMapping("ABORTED", 409),
    ErrorCode.UNAVAILABLE: StatusMapping("UNAVAILABLE", 503),
    ErrorCode.INTERNAL: StatusMapping("INTERNAL", 500),
    ErrorCode.ROUTE_NOT_FOUND: StatusMapping("UNIMPLEMENTED", 404),
    ErrorCode.METHOD_NOT_ALLOWED: StatusMapping("UNIMPLEMENTED", 405),
    ErrorCode.URI_TOO_LONG: StatusMapping("INVALID_ARGUMENT", 414),
    ErrorCode.REQUEST_HEADER_FIELDS_TOO_LARGE: StatusMapping("INVALID_ARGUMENT", 431),
    ErrorCode.REQUEST_TIMEOUT: StatusMapping("INVALID_ARGUMENT", 408),
}


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One invalid field: a path such as ``geofences[7].fence_size``, in the
    rules' spelling, which each API writes in its own; or, ``as_sent``, a
    name exactly as the caller wrote it (an HTTP query parameter or body
    key the call does not take), which no API may respell: told that
    ``userId`` was unknown, a caller who sent ``user_id`` is misled."""

    field: str
    description: str
    reason: ErrorCode
    as_sent: bool = False


@dataclass(slots=True)
class DomainError(Exception):
    """A rule of the API rejected the call.

    ``metadata`` values are strings with units in their keys
    (``distanceMeters``, ``limitHours``), as ``ErrorInfo.metadata`` needs.
    """

    code: ErrorCode
    message: str
    metadata: dict[str, str] = field(default_factory=dict)
    violations: tuple[FieldViolation, ...] = ()

    def __post_init__(self) -> None:
        Exception.__init__(self, self.message)

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    @classmethod
    def unexpected(cls, request_id: str) -> DomainError:
        """What a caller is told of an unexpected error, over either
        transport: the request id to quote, never the exception's text."""
        return cls(
            ErrorCode.INTERNAL,
            f"internal error; the server log has it under request id {request_id}",
            {"requestId": request_id},
        )

    @classmethod
    def from_violations(cls, violations: list[FieldViolation], what: str) -> DomainError:
        """One error for many field problems; its reason is the first one's."""
        first = violations[0]
        if len(violations) == 1:
            message = f"{first.field}: {first.description}"
        else:
            message = (
                f"{len(violations)} problems in {what}; first: {first.field}: {first.description}"
            )
        return cls(first.reason, message, {}, tuple(violations))


class ConcurrentChange(Exception):
    """Another transaction changed the same state first; the use case is retried."""


#: Seconds an UNAVAILABLE answer tells its caller to wait before trying
#: again (HTTP's Retry-After, gRPC's RetryInfo): the server starting, or
#: the store away for a moment.
RETRY_AFTER_S = 1


class Unavailable(Exception):
    """A service geopunch relies on cannot do the work now, though nothing
    is wrong with the work: expected in operation, retried, and logged
    without a stack (the stack would be the driver's, never a defect's)."""


class StoreUnavailable(Unavailable):
    """The store cannot do the work now (unreachable, restarting, timed out,
    locked by another transaction, full), though nothing is wrong with the
    call: answered UNAVAILABLE, for the caller to retry. Its work was rolled
    back, unless the connection was lost during the commit itself, whose
    outcome no one can tell: a retry with the same idempotency key answers
    what was stored, if anything was."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message

    def refusal(self, metadata: dict[str, str] | None = None) -> DomainError:
        """What either API answers for it."""
        return DomainError(ErrorCode.UNAVAILABLE, self.message, metadata or {})


class BrokerUnavailable(Unavailable):
    """The event broker (the JetStream sink's NATS) did not take a message:
    it cannot be reached, did not acknowledge in time, or refused it. The
    event stays in the log, and the sink publishes it again."""
