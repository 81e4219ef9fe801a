"""The event log: what happened, appended in the transaction that made it happen."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

#: A JSON value as the JSON mapping gives it (dict, list, str, float, bool, None).
Json = object


class EventType(StrEnum):
    SHIFT_PUBLISHED = "shiftPublished"
    GEOFENCE_EXIT = "geofenceExit"
    EXIT_NOTIFICATION = "exitNotification"
    AUTO_CLOCK_OUT = "autoClockOut"


@dataclass(frozen=True, slots=True)
class Event:
    """An entry of the append-only event log; ``seq`` is assigned by the store."""

    type: str
    occurred_at: int
    payload: dict[str, Json] = field(default_factory=dict)
    user_id: int | None = None
    time_clock_id: int | None = None
    scheduler_id: int | None = None
    seq: int = 0


@dataclass(frozen=True, slots=True)
class LiveTrail:
    """Stored state of one live trail (user, time clock): the last accepted
    sample's time and the ids of the fences it is inside."""

    last_ts: int
    inside: tuple[str, ...] = ()
