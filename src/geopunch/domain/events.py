"""The event log: what happened, appended in the transaction that made it happen."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import orjson

from geopunch.domain.errors import DomainError, ErrorCode
from geopunch.domain.ids import ordered_hexes

#: A JSON value as the JSON mapping gives it (dict, list, str, float, bool, None).
Json = object


class EventType(StrEnum):
    CLOCK_IN = "clockIn"
    CLOCK_OUT = "clockOut"
    BREAK_STARTED = "breakStarted"
    BREAK_ENDED = "breakEnded"
    SHIFT_RESUMED = "shiftResumed"
    GEOFENCE_ENTER = "geofenceEnter"
    SHIFT_PUBLISHED = "shiftPublished"
    GEOFENCE_EXIT = "geofenceExit"
    EXIT_NOTIFICATION = "exitNotification"
    AUTO_CLOCK_OUT = "autoClockOut"
    TIME_ACTIVITY_CREATED = "timeActivityCreated"
    TIME_ACTIVITY_UPDATED = "timeActivityUpdated"
    TIME_ACTIVITY_DELETED = "timeActivityDeleted"
    WEBHOOK_FAILING = "webhookSubscriptionFailing"


#: Time clocks one event stream may name (a stream for more takes them all).
MAX_WATCHED_TIME_CLOCKS = 1000


def check_watch_filter(types: Sequence[str], time_clock_ids: Sequence[int]) -> None:
    """An event stream's filter: known types, a bounded list of time clocks."""
    known = {t.value for t in EventType}
    unknown = sorted(set(types) - known)
    if unknown:
        shown = ", ".join(repr(t[:32]) for t in unknown[:5])
        raise DomainError(
            ErrorCode.INVALID_ARGUMENT,
            f"unknown event types {shown}{' ...' if len(unknown) > 5 else ''}; "
            f"known: {sorted(known)}",
        )
    if len(time_clock_ids) > MAX_WATCHED_TIME_CLOCKS:
        raise DomainError(
            ErrorCode.BATCH_TOO_LARGE,
            f"{len(time_clock_ids)} time clocks named; the limit is {MAX_WATCHED_TIME_CLOCKS} "
            "(name none to receive every time clock's events)",
        )


def new_event_ids(n: int) -> list[str]:
    """Ids for ``n`` events, drawn at once (see :func:`ordered_hexes`): unique
    across stores, so that a receiver of several deployments' webhooks (or
    one JetStream stream) never confuses two."""
    return [f"evt_{h}" for h in ordered_hexes(n)]


@dataclass(frozen=True, slots=True)
class Event:
    """An entry of the append-only event log; ``seq`` is assigned by the
    store, and so are ``id`` and ``account_id`` when left empty."""

    type: str
    occurred_at: int
    payload: dict[str, Json] = field(default_factory=dict)
    user_id: int | None = None
    time_clock_id: int | None = None
    scheduler_id: int | None = None
    seq: int = 0
    id: str = ""
    account_id: int | None = None
    #: When the store appended it (Unix seconds; 0 before it is).
    recorded_at: int = 0


#: How every JSON geopunch writes is encoded (stored payloads, webhook and
#: JetStream bodies, HTTP answers): integer keys as strings, as the standard
#: library's encoder wrote them, and numpy numbers (the fence kernels'
#: distances) as plain numbers. NaN and infinities become null.
JSON_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY


def json_bytes(value: object) -> bytes:
    """Compact UTF-8 JSON, encoded in C by orjson: 5-10x the standard
    library's encoder on event payloads (bench/README.md, json_columns)."""
    return orjson.dumps(value, option=JSON_OPTIONS)


def kept_json_bytes(value: object) -> bytes:
    """``json_bytes`` for bytes kept past the call (caches, pages held for
    later): orjson's bytes keep a buffer of at least 4 KB whatever their
    length, and the right-sized copy costs about 0.2 us."""
    return bytes(memoryview(json_bytes(value)))


def event_json(e: Event) -> dict[str, Json]:
    """An event as every JSON consumer gets it (server-sent events, webhook
    bodies, JetStream messages): WatchEvents' JSON mapping, numbers as numbers."""
    return {
        "seq": e.seq,
        "id": e.id,
        "type": e.type,
        "occurredAt": e.occurred_at,
        "accountId": e.account_id,
        "timeClockId": e.time_clock_id,
        "schedulerId": e.scheduler_id,
        "userId": e.user_id,
        "payload": e.payload,
    }


@dataclass(frozen=True, slots=True)
class LiveTrail:
    """Stored state of one live trail (user, time clock): the last accepted
    sample's time and the ids of the fences it is inside."""

    last_ts: int
    inside: tuple[str, ...] = ()
