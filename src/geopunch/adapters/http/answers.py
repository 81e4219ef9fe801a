"""Domain values as the HTTP API's JSON answers.

The spec's keys, nesting and JSON types: integers as numbers, booleans
always present, the spec's nulls present, geofence coordinates as numeric
strings (punch locations stay numbers).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from datetime import date
from typing import Any

import orjson

from geopunch.adapters.board_lines import BoardLines
from geopunch.adapters.http.bodies import Unknown
from geopunch.domain.accounts import ApiKey
from geopunch.domain.errors import DomainError, ErrorCode, FieldViolation
from geopunch.domain.events import kept_json_bytes
from geopunch.domain.locations import EXIT_ACTIONS, BatchVerdict, PointStatus
from geopunch.domain.models import (
    DayStatus,
    Geofence,
    Job,
    ManualBreakType,
    TimeClock,
    nest_jobs,
)
from geopunch.domain.punches import Activity, ActivityRow, PunchLocation, PunchPoint, PunchResult
from geopunch.domain.shifts import ScheduledShift, Scheduler
from geopunch.domain.timesheets import (
    Board,
    UserStatus,
    WindowTotals,
    activity_json,
    activity_row_json,
)
from geopunch.domain.webhooks import Attempt, Subscription

# -- punches --------------------------------------------------------------------------


def _location(loc: PunchLocation) -> dict[str, Any]:
    out: dict[str, Any] = {
        "address": loc.address,
        "latitude": loc.latitude,
        "longitude": loc.longitude,
    }
    if loc.accuracy is not None:
        out["accuracy"] = loc.accuracy
    return out


def _point(p: PunchPoint, source: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {"timestamp": p.timestamp, "timezone": p.timezone}
    if p.location is not None:
        out["locationData"] = _location(p.location)
    if p.geofence_id is not None:
        out["geofenceId"] = p.geofence_id  # the fence the punch was inside
    if source:
        out["source"] = {"type": p.source}
    return out


def shift(a: Activity) -> dict[str, Any]:
    out: dict[str, Any] = {"id": a.id, "userId": a.user_id, "start": _point(a.start)}
    if a.end is not None:
        out["end"] = _point(a.end)
    out.update(
        jobId=a.job_id,
        schedulerShiftId=a.scheduler_shift_id,
        createdAt=a.created_at,
        modifiedAt=a.modified_at,
    )
    return out


def shift_data(r: PunchResult) -> dict[str, Any]:
    return {"shift": shift(r.activity)}


def break_started(r: PunchResult) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": r.activity.id,
        "start": _point(r.activity.start, source=False),
        "isSwitchFromShift": r.closed_shift is not None,
    }
    if r.closed_shift is not None:
        out["closedShift"] = shift(r.closed_shift)
    return out


def break_ended(r: PunchResult) -> dict[str, Any]:
    assert r.activity.end is not None
    out: dict[str, Any] = {
        "id": r.activity.id,
        "end": _point(r.activity.end, source=False),
        "isResumeShift": r.resumed_shift is not None,
    }
    if r.resumed_shift is not None:
        out["resumedShift"] = shift(r.resumed_shift)
    return out


def verdict(err: DomainError | None) -> dict[str, Any]:
    """A ValidatePunch answer: what the real punch would do."""
    if err is None:
        return {"allowed": True, "code": None, "detail": None, "metadata": {}}
    return {
        "allowed": False,
        "code": err.code.value,
        "detail": err.message,
        "metadata": dict(err.metadata),
    }


# -- geofences ------------------------------------------------------------------------


def fence(f: Geofence) -> dict[str, Any]:
    return {
        "id": f.id,
        "name": f.name,
        "isEnabled": f.is_enabled,
        "fenceSize": f.fence_size_m,
        "jobIds": list(f.job_ids),
        "onGeofenceExitAction": f.exit_action.value,
        "location": {
            "address": f.address,
            "latitude": repr(f.latitude),
            "longitude": repr(f.longitude),
        },
    }


# -- set-up ---------------------------------------------------------------------------


def _jobs(jobs: tuple[Job, ...]) -> list[dict[str, Any]]:
    return nest_jobs(
        jobs, lambda j, subs: {"id": j.id, "name": j.name, "color": j.color, "subJobs": subs}
    )


def time_clock(tc: TimeClock) -> dict[str, Any]:
    ed = tc.exit_detection
    return {
        "id": tc.id,
        "name": tc.name,
        "timezone": tc.timezone,
        "jobEnforcement": tc.job_enforcement,
        "jobs": _jobs(tc.jobs),
        "userIds": sorted(tc.user_ids),
        "manualBreaksEnabled": tc.manual_breaks_enabled,
        "manualBreakTypes": [break_type(b) for b in tc.manual_break_types],
        "geofencePolicy": tc.geofence_policy.value,
        "accuracyToleranceM": tc.accuracy_tolerance_m,
        "exitDetection": {
            "highAccuracyMaxM": ed.high_accuracy_max_m,
            "bufferHighAccuracyM": ed.buffer_high_accuracy_m,
            "lowAccuracyMaxM": ed.low_accuracy_max_m,
            "bufferLowAccuracyM": ed.buffer_low_accuracy_m,
            "bufferUnknownAccuracyM": ed.buffer_unknown_accuracy_m,
        },
    }


def break_type(b: ManualBreakType, paid: bool = True) -> dict[str, Any]:
    """A break type's settings; ``paid`` adds ``isPaid`` (which the spec's
    manual-break settings answer does not have)."""
    out: dict[str, Any] = {
        "id": b.id,
        "name": b.name,
        "isMandatory": b.is_mandatory,
        "minDurationSeconds": b.min_duration_s,
    }
    if paid:
        out["isPaid"] = b.is_paid
    return out


def manual_breaks(tc: TimeClock) -> dict[str, Any]:
    return {
        "isEnabled": tc.manual_breaks_enabled,
        "manualBreaks": [break_type(b, paid=False) for b in tc.manual_break_types],
    }


def scheduler(s: Scheduler) -> dict[str, Any]:
    return {
        "id": s.id,
        "name": s.name,
        "timezone": s.timezone,
        "jobs": _jobs(s.jobs),
        "userIds": sorted(s.user_ids),
        "multiUserShifts": s.multi_user_shifts,
    }


def days(statuses: Mapping[date, DayStatus]) -> dict[str, Any]:
    return {
        "days": [{"date": d.isoformat(), "status": s.value} for d, s in sorted(statuses.items())]
    }


def api_key(key: ApiKey, secret: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": key.id,
        "label": key.label,
        "scopes": sorted(key.scopes),
        "createdAt": key.created_at,
        "revokedAt": key.revoked_at or None,
    }
    if secret is not None:
        out["secret"] = secret  # shown once, when issued
    return out


def webhook_subscription(s: Subscription, *, with_secret: bool = False) -> dict[str, Any]:
    return {
        "id": s.id,
        "url": s.url,
        "eventTypes": list(s.event_types),
        "timeClockIds": list(s.time_clock_ids),
        **({"secret": s.secret} if with_secret else {}),  # only when it was set
        "status": s.status.value,
        "deliveredThroughSeq": s.cursor,
        "failedAttempts": s.attempts,
        "failingSinceMs": s.failing_since,
        "nextAttemptAtMs": s.next_attempt_at or None,
        "createdAtMs": s.created_at,
        "modifiedAtMs": s.modified_at,
    }


def webhook_delivery(a: Attempt) -> dict[str, Any]:
    return {
        "id": a.id,
        "seq": a.seq,
        "eventId": a.event_id,
        "eventType": a.event_type,
        "attempt": a.attempt,
        "attemptedAtMs": a.attempted_at,
        "statusCode": a.status_code,
        "latencyMs": a.latency_ms,
        "error": a.error,
        "succeeded": a.succeeded,
    }


# -- scheduled shifts -----------------------------------------------------------------


def scheduled_shift(s: ScheduledShift) -> dict[str, Any]:
    location = None
    if s.location is not None:
        gps = s.location.gps
        location = {
            "isReferencedToJob": s.location.is_referenced_to_job,
            "gps": None
            if gps is None
            else {"address": gps.address, "latitude": gps.latitude, "longitude": gps.longitude},
        }
    return {
        "id": s.id,
        "title": s.title,
        "color": s.color,
        "assignedUserIds": list(s.assigned_user_ids),
        "startTime": s.start_time,
        "endTime": s.end_time,
        "timezone": s.timezone,
        "isOpenShift": bool(s.is_open_shift),
        "isPublished": bool(s.is_published),
        "isRequireAdminApproval": s.is_require_admin_approval,
        "jobId": s.job_id,
        "locationData": location,
        "createdBy": s.created_by,
        "creationTime": s.created_at,
        "updateTime": s.updated_at,
        "openSpots": s.open_spots,
        "notes": [{"html": n} for n in s.notes],
        "statuses": list(s.statuses),
        "breaks": [
            {
                "name": b.name,
                "type": b.type,
                "startTime": b.start_minute,
                "duration": b.duration_min,
                # geopunch's additions: the break's resolved Unix seconds.
                "startTimestamp": b.start_ts,
                "endTimestamp": b.end_ts,
            }
            for b in s.breaks
        ],
        "shiftDetails": {
            "shiftLayers": [{"id": x.id, "value": {"id": x.value_id}} for x in s.shift_layers],
            "shiftSource": s.shift_source,
        },
        "customFields": [{"id": c.id, "value": c.value} for c in s.custom_fields],
    }


# -- locations and events -------------------------------------------------------------


def check_results(v: BatchVerdict) -> list[dict[str, Any]]:
    """Per point: its status, whether inside and allowed, and its matches."""
    ids = v.ids.tolist()
    offsets = v.offsets.tolist()
    fences, applicable, actions = v.fences.tolist(), v.applicable.tolist(), v.actions.tolist()
    out = []
    for i, status in enumerate(v.status.tolist()):
        matches = [
            {
                "fenceId": ids[fences[k]],
                "applicable": bool(applicable[k]),
                "onGeofenceExitAction": EXIT_ACTIONS[actions[k]].value,
            }
            for k in range(offsets[i], offsets[i + 1])
        ]
        point: dict[str, Any] = {
            "status": PointStatus(status).name,
            "inside": bool(v.inside[i]),
            "allowed": bool(v.allowed[i]),
            "matches": matches,
        }
        if v.distance_m is not None and v.nearest is not None:
            d = float(v.distance_m[i])
            near = int(v.nearest[i])
            point["distanceMeters"] = None if math.isnan(d) else d
            point["nearestFenceId"] = None if near < 0 else ids[near]
        out.append(point)
    return out


# -- errors ---------------------------------------------------------------------------

_SHIFT_PATH = re.compile(r"^shifts\[(\d+)\]")
_SNAKE = re.compile(r"_([a-z0-9])")


#: Roots the rules name that an HTTP body does not have: its body is the
#: time clock or scheduler itself, not a request that wraps it.
_ROOTS = ("time_clock.", "scheduler.")


def camel_path(path: str) -> str:
    """A violation's path in the body's own spelling: ``shifts[0].end_time`` ->
    ``shifts[0].endTime``, ``time_clock.user_ids[0]`` -> ``userIds[0]``."""
    for root in _ROOTS:
        if path.startswith(root):
            path = path[len(root) :]
    return _SNAKE.sub(lambda m: m.group(1).upper(), path)


def _shown(v: FieldViolation) -> str:
    return v.field if v.as_sent else camel_path(v.field)


#: Where FastAPI says a parameter came from: the first part of its ``loc``.
_SOURCES = frozenset({"body", "query", "path", "header", "cookie"})


def loc_path(loc: Sequence[str | int], root: str = "") -> str:
    """A refused parameter's place in the rules' spelling: ``("body",
    "timeActivities", 0, "userId")`` -> ``timeActivities[0].userId``, as the
    domain's own problems name it; ``root`` names a body that is a list
    (``shifts``: ``("body", 1, "title")`` -> ``shifts[1].title``)."""
    parts = list(loc[1:] if loc and loc[0] in _SOURCES else loc)
    if not parts:
        return root
    out = root if isinstance(parts[0], int) else ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def validation_problem(
    error: Mapping[str, Any], root: str = "", unknown: Sequence[Unknown] = ()
) -> FieldViolation:
    """A parameter pydantic refused, as the rules name a problem. Its sentence
    says too little to act on for a body that is not JSON or not an object,
    and its place for unreadable JSON is a character offset, not a field. A
    bound checked in a body's types (``bodies.at_most``) carries the rules'
    reason as its error type. A required key the body has under another
    spelling (``unknown``, from ``bodies.unknown_fields``) is named. Its
    place is the parameter's own name, as the caller must spell it."""
    kind, loc = error.get("type"), tuple(error.get("loc", ()))
    if kind == "json_invalid":
        why = (error.get("ctx") or {}).get("error", "")
        at = f" (at character {loc[1]})" if len(loc) > 1 else ""
        said = f"the body is not valid JSON: {why}{at}" if why else f"the body is not JSON{at}"
        return FieldViolation("", said, ErrorCode.INVALID_ARGUMENT)
    if kind == "model_attributes_type" and loc == ("body",):
        said = "the body must be a JSON object, sent as Content-Type: application/json"
        return FieldViolation("", said, ErrorCode.INVALID_ARGUMENT)
    given, limit = error.get("input"), (error.get("ctx") or {}).get("max_length")
    if kind == "too_long" and isinstance(given, str) and limit is not None:
        # pydantic counts a bounded string's length as "items ... after
        # validation" when the bound follows a validator of the type.
        said = f"{len(given)} characters; the limit is {limit}"
        return FieldViolation(loc_path(loc, root), said, ErrorCode.INVALID_ARGUMENT, as_sent=True)
    said = str(error.get("msg", "invalid"))[:200]
    if kind == "missing" and loc[:1] == ("body",):
        here = loc[1:]
        sent = [u.at[-1] for u in unknown if u.at[:-1] == here[:-1] and u.meant == here[-1]]
        if sent:
            said = f"{said}; the body has {str(sent[0])[:64]!r}: send it as {here[-1]}"
    reason = _REASONS.get(str(kind), ErrorCode.INVALID_ARGUMENT)
    return FieldViolation(loc_path(loc, root), said, reason, as_sent=True)


_REASONS = {code.value: code for code in ErrorCode}

#: ``Warning`` headers of one answer at most; the last says how many more.
_WARNINGS_SHOWN = 10
#: Characters of a place a ``Warning`` header gives at most (its end).
_PATH_SHOWN = 200


def unknown_field_paths(unknown: Sequence[Unknown], root: str = "") -> list[str]:
    """Where a body has keys it does not take, as the rules name places
    (``root`` as for ``loc_path``); a key is cut at 64 characters."""
    return [
        loc_path(("body", *(p[:64] if isinstance(p, str) else p for p in u.at)), root)
        for u in unknown
    ]


def unknown_field_warnings(unknown: Sequence[Unknown], root: str = "") -> list[str]:
    """``Warning`` header values for keys a body does not take, in the form
    RFC 9111 gives (code 299, "miscellaneous persistent warning") and
    Kubernetes sends for the same case, each with the key it likely stands
    for. The path is written as a JSON string in ASCII, so a key holding
    quotes, line breaks or any character cannot break the header."""
    paths = unknown_field_paths(unknown[:_WARNINGS_SHOWN], root)
    shown = [
        f"unknown field {_ascii(_tail(path))}"
        + (f"; did you mean {_ascii(u.meant)}?" if u.meant else "")
        for u, path in zip(unknown, paths, strict=False)
    ]
    if len(unknown) > _WARNINGS_SHOWN:
        shown.append(f"and {len(unknown) - _WARNINGS_SHOWN} more unknown fields")
    return ['299 - "' + text.replace("\\", "\\\\").replace('"', '\\"') + '"' for text in shown]


def unknown_field_refusal(unknown: Sequence[Unknown], root: str = "") -> DomainError:
    """The refusal of a body with keys it does not take, for a call that
    asked for it; each sentence names its key, since a scheduler's detail
    lists a shift's problems by sentence alone."""
    problems = [
        FieldViolation(
            path,
            f"unknown field {str(u.at[-1])[:64]!r}: the body takes no such key"
            + (f"; did you mean {u.meant!r}?" if u.meant else "")
            + " (the call asked for fieldValidation=Strict)",
            ErrorCode.INVALID_ARGUMENT,
            as_sent=True,
        )
        for u, path in zip(unknown, unknown_field_paths(unknown, root), strict=True)
    ]
    return DomainError.from_violations(problems, "the body")


def _tail(path: str) -> str:
    """A long path's end, where its key is: ten of them must fit in the
    headers a client reads (Node's parser takes 16 KiB in all)."""
    return path if len(path) <= _PATH_SHOWN else "..." + path[-_PATH_SHOWN:]


def _ascii(text: str) -> str:
    # json.dumps leaves DEL as it is, which a header may not hold.
    return json.dumps(text).replace("\x7f", "\\u007f")


def error_detail(
    err: DomainError, route: str, status: int
) -> str | list[str] | dict[str, list[str]]:
    """``detail`` in the spec's form for the route: problems of shifts keyed by
    ``shift-N``, problems of a geofence batch as a list of strings, else a
    string."""
    batch_of_fences = route.endswith("/geofences") and status == 400
    if not err.violations:
        return [err.message] if batch_of_fences else err.message
    if route.startswith("/scheduler/"):
        by_shift: dict[str, list[str]] = {}
        for v in err.violations:
            m = _SHIFT_PATH.match(v.field)
            key = f"shift-{m.group(1)}" if m else "request"
            by_shift.setdefault(key, []).append(v.description)
        return by_shift
    said = [f"{_shown(v)}: {v.description}" if v.field else v.description for v in err.violations]
    if batch_of_fences:
        return said
    if len(said) == 1:
        return said[0]
    return f"{len(said)} problems; first: {said[0]}"


def violations(err: DomainError) -> list[dict[str, str]]:
    return [
        {"field": _shown(v), "description": v.description, "code": v.reason.value}
        for v in err.violations
    ]


# -- time activities and statuses ------------------------------------------------------


def time_activity(a: Activity) -> dict[str, Any]:
    """A shift or break: the same JSON its events carry (nulls included)."""
    return activity_json(a)


def time_activity_rows(rows: list[ActivityRow]) -> orjson.Fragment:
    """``time_activity`` of each listed row, without the rows' objects, as a
    JSON array for the answer to embed. Encoded without ``json_bytes``'
    options: the dicts have string keys alone, and the check for other keys
    doubled the encoding of a 10,000-row page (bench/README.md, HTTP list)."""
    return orjson.Fragment(orjson.dumps(list(map(activity_row_json, rows))))


def window_totals(t: WindowTotals) -> list[dict[str, Any]]:
    """Each user's totals and days, from the columns."""
    dates = [d.isoformat() for d in t.days]
    day, worked, paid, unpaid = t.day_columns()
    return [
        {
            "userId": user_id,
            "workedSeconds": w,
            "paidBreakSeconds": p,
            "unpaidBreakSeconds": u,
            "days": [
                {
                    "date": dates[day[i]],
                    "workedSeconds": worked[i],
                    "paidBreakSeconds": paid[i],
                    "unpaidBreakSeconds": unpaid[i],
                }
                for i in cells
            ],
        }
        for user_id, w, p, u, cells in t.by_user()
    ]


def _status_line(s: UserStatus) -> bytes:
    return kept_json_bytes(user_status(s))


_LINES = BoardLines("http", _status_line)


def user_statuses(board: Board) -> orjson.Fragment:
    """A board's statuses as a JSON array joined from its kept lines (see
    adapters/board_lines.py), for the answer to embed as it is: the same
    bytes as the array encoded whole, since the encoding is compact."""
    return orjson.Fragment(b"[%s]" % b",".join(_LINES.lines(board)))


def user_status(s: UserStatus) -> dict[str, Any]:
    bt = s.break_type
    return {
        "userId": s.user_id,
        "state": s.state.value,
        "activity": None if s.activity is None else activity_row_json(s.activity),
        "manualBreak": None if bt is None else break_type(bt),
        "endableAt": s.endable_at,
    }
