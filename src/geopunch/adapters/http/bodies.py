"""Request bodies of the HTTP API and their conversion to domain values.

Keys are the spec's camelCase. Known keys are type-checked strictly (a
string is not a user id, a number is not a name). Keys a body does not take
are ignored, as JSON API clients expect (a location object with an address
sent as a point, a record sent back as it was read), but never silently:
``unknown_fields`` finds them, and the app names them in the answer's
``Warning`` headers, or refuses the call if it asked for that.

No rule lives here: ranges, sizes and references are the domain's to check,
with the same paths over both APIs. Two kinds of bound are applied in the
types, with the domain's own definitions: the bounds every text and JSON
value shares (``domain.bounds``), and each list's length (``at_most``, the
rules' limit, reason and sentence), so that an oversized list is refused
before its items are validated.
"""

# No ``from __future__ import annotations``: pydantic reads the annotations at run time.
import functools
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import UnionType
from typing import Annotated, Any, Literal, NamedTuple, Union, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    StrictBool,
    StrictFloat,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError

from geopunch.adapters.spelling import meant
from geopunch.domain.bounds import json_value_problem, text_problem
from geopunch.domain.errors import DomainError, ErrorCode, FieldViolation
from geopunch.domain.models import (
    ExitDetectionSettings,
    GeofenceDraft,
    GeofencePolicy,
    ManualBreakType,
    TimeClock,
    flatten_jobs,
    measure_tree,
)
from geopunch.domain.punches import PunchLocation
from geopunch.domain.rules import (
    MAX_ACCURACY_TOLERANCE_M,
    MAX_BREAK_TYPES,
    MAX_DATES_PER_CALL,
    MAX_ENTITY_ID,
    MAX_GEOFENCES_PER_REQUEST,
    MAX_ID_LENGTH,
    MAX_JOB_DEPTH,
    MAX_JOB_IDS_PER_FENCE,
    MAX_JOBS,
    MAX_NAME_LENGTH,
    MAX_USERS,
    check_geofence_count,
    check_sizes,
    past_limit,
)
from geopunch.domain.shifts import (
    MAX_ITEMS,
    CustomField,
    ScheduledShift,
    Scheduler,
    ShiftBreak,
    ShiftLayer,
    ShiftLocation,
)
from geopunch.domain.timesheets import (
    MAX_ACTIVITIES_PER_REQUEST,
    BreakDraft,
    Correction,
    PointDraft,
    ShiftDraft,
    UserActivities,
    check_activity_batch,
)
from geopunch.domain.webhooks import SubscriptionChange


def _integral(value: Any) -> Any:
    """JSON has one number type: 9170357.0 is the integer 9170357 (as JSON
    Schema counts it), while strings and booleans stay refused."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


#: An integer as JSON means it: a number without a fraction, never a string.
#: The bounds come before the validator that turns 5.0 into 5, so that they
#: are the integer's own and the OpenAPI document states them as ``minimum``
#: and ``maximum`` (after it they showed as unknown ``ge``/``le`` keys, and a
#: list of plain integers had none: 10**30 reached the store as a 500).
Int64 = Annotated[int, Strict(), Field(ge=-(2**63), le=2**63 - 1), BeforeValidator(_integral)]
#: Counts, sizes and minutes: int32, as over gRPC.
Int32 = Annotated[int, Strict(), Field(ge=-(2**31), le=2**31 - 1), BeforeValidator(_integral)]
#: A bound added to one of these from outside (``Annotated[Int64, Field(ge=1)]``
#: or a field's ``Field(ge=1)``) is checked but left out of the document, so
#: a narrower range is a type of its own.
Seconds32 = Annotated[int, Strict(), Field(ge=0, le=2**31 - 1), BeforeValidator(_integral)]
Seq = Annotated[int, Strict(), Field(ge=1, le=2**63 - 1), BeforeValidator(_integral)]
#: An id a caller chooses for a time clock, a scheduler or a user: parsed as
#: any int64, so that one out of range gets the rules' own sentence, and
#: documented with the range the rules take.
EntityId = Annotated[
    Int64, WithJsonSchema({"type": "integer", "minimum": 1, "maximum": MAX_ENTITY_ID})
]
#: Coordinates, accuracies and distances. Integers are taken as floats; one
#: too large for a float (10**400) is refused here, not by ``float()`` later.
Number = StrictFloat


def _text(value: str) -> str:
    problem = text_problem(value)
    if problem:
        raise PydanticCustomError("text", problem)
    return value


def _json_value(value: Any) -> Any:
    problem = json_value_problem(value)
    if problem:
        raise PydanticCustomError("json_value", problem)
    return value


@contextmanager
def _as_validation_error() -> Iterator[None]:
    """A rule's refusal inside a validator, as pydantic's error with the
    rule's reason and sentence (``answers`` turns it back into the rule's)."""
    try:
        yield
    except DomainError as exc:
        first = exc.violations[0]
        raise PydanticCustomError(first.reason.value, first.description) from None


def at_most(
    limit: int,
    reason: ErrorCode = ErrorCode.INVALID_ARGUMENT,
    says: str = "",
    refuse: Callable[[int], None] | None = None,
) -> tuple[Any, Any]:
    """A list's bound, as the rules state it (their reason and sentence),
    checked before its items are validated: pydantic validates every item
    first, on the event loop both APIs share, and 900,000 jobs took 8.5 s.
    ``refuse`` is the rules' own check of a batch's count, where they have
    one; else ``reason`` and ``says`` word it (the rules' ``past_limit`` by
    default). The ``Field`` states the bound in the OpenAPI document as
    ``maxItems``."""

    def check(value: Any) -> Any:
        if isinstance(value, list) and len(value) > limit:
            if refuse is not None:
                with _as_validation_error():
                    refuse(len(value))
            said = (
                says.format(count=len(value), limit=limit)
                if says
                else past_limit(len(value), limit)
            )
            raise PydanticCustomError(reason.value, said)
        return value

    return Field(max_length=limit), BeforeValidator(check)


def _raw_sub_jobs(node: Any) -> list[Any] | tuple[()]:
    """A job's sub-jobs as sent, before validation: anything but a list of
    them counts as none (pydantic refuses it afterwards)."""
    kids = node.get("subJobs") if isinstance(node, dict) else None
    return kids if isinstance(kids, list) else ()


def _job_tree_within_limit(value: Any) -> Any:
    """The jobs with their sub-jobs at every depth within the rules' limits
    of count and depth (their sentences), measured on the JSON as sent:
    each level's own bound (``at_most``) would let a thousand jobs of a
    thousand sub-jobs each through to be validated, a million models (13 s,
    8 s of it with the event loop held, on a 20 MB body), and pydantic
    refuses a deep tree with its own words."""
    if isinstance(value, list):
        with _as_validation_error():
            check_sizes("", "the jobs", measure_tree(value, _raw_sub_jobs, MAX_JOBS), 0)
    return value


#: Every text of a body, path or query: a string (never a number), held to
#: the bounds both APIs share (``domain.bounds``: no NUL, no lone surrogate).
Text = Annotated[str, Strict(), AfterValidator(_text)]
#: An IANA time zone's name. "timezone" is no format JSON Schema defines:
#: clients may ignore it, and a schema-driven generator (the fuzz tests)
#: may be told how to make one.
Zone = Annotated[
    Text, Field(json_schema_extra={"format": "timezone", "examples": ["America/New_York"]})
]
#: A name the rules require (of a time clock, a scheduler, a break type, a
#: geofence), documented as they judge it: some non-blank character, and
#: at most MAX_NAME_LENGTH of them.
Name = Annotated[
    Text,
    WithJsonSchema(
        {"type": "string", "minLength": 1, "maxLength": MAX_NAME_LENGTH, "pattern": r"\S"}
    ),
]


#: The id of a job or break type a caller defines, documented as the rules
#: judge it: some characters, none of them blank at either end, at most
#: MAX_ID_LENGTH (and unique within the time clock, which JSON Schema cannot say).
DefinedId = Annotated[
    Text,
    WithJsonSchema(
        {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_ID_LENGTH,
            "pattern": r"^\S([\s\S]*\S)?$",
        }
    ),
]


#: A time clock's accuracy tolerance and a break type's minimum duration,
#: documented with the ranges the rules take.
Tolerance = Annotated[
    Number,
    WithJsonSchema({"type": "number", "minimum": 0, "maximum": MAX_ACCURACY_TOLERANCE_M}),
]
BreakMinimum = Annotated[
    Seconds32, WithJsonSchema({"type": "integer", "minimum": 0, "maximum": 24 * 3600})
]


def _required(*names: str) -> ConfigDict:
    """A body whose ``names`` the document lists as required, though their
    types have defaults: the rules refuse a body without them, in their own
    words and with the same path over both APIs."""

    def document(schema: dict[str, Any]) -> None:
        schema["required"] = sorted({*schema.get("required", []), *names})
        for name in names:
            schema["properties"][name].pop("default", None)

    return ConfigDict(json_schema_extra=document)


#: JSON the service keeps unread (a shift's statuses and custom fields):
#: finite, at most 16 levels deep and 16 KiB encoded, as over gRPC.
JsonValue = Annotated[Any, AfterValidator(_json_value)]
JsonObject = Annotated[dict[str, Any], AfterValidator(_json_value)]
#: Points one HTTP location check may carry; larger batches belong on gRPC.
MAX_HTTP_POINTS = 10_000


class Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class DuplicateKey(ValueError):
    """A JSON object of a body names one key twice."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateKey(key)
            seen.add(key)
    return found


def decode_json(raw: bytes) -> Any:
    """A body's JSON, as ``json.loads`` reads it, but refusing an object that
    names a key twice (``DuplicateKey``): of the two values Python's parser
    keeps the last, and a proxy or another parser may keep the first, so
    the body would say two things. The hook adds about 2.5 us to a punch's
    body and 1.8 ms to one of 1,000 time activities (bench/README.md)."""
    return json.loads(raw, object_pairs_hook=_unique_keys)


def duplicate_key_refusal(exc: DuplicateKey) -> DomainError:
    said = f"the body names {exc.key[:64]!r} twice in one object; send each field once"
    return DomainError.from_violations(
        [FieldViolation("", said, ErrorCode.INVALID_ARGUMENT)], "the body"
    )


#: Where a decoded body has a key: its path from the body's root.
Location = tuple[str | int, ...]


class Unknown(NamedTuple):
    """A key a body does not take: where it is, and the key taken in its
    place that it likely stands for (``spelling.meant``), if one."""

    at: Location
    meant: str | None


def unknown_fields(data: Any, kind: Any, limit: int = 100) -> list[Unknown]:
    """The first ``limit`` keys of the decoded body ``data`` that its type
    ``kind`` (a body model, or a list of one) does not take, where they are,
    in the body's order. Bodies ignore such keys (``Body``); this is what a
    caller is told of them (http.md, "Keys a body does not take"). It runs
    before the body is validated, on whatever was sent, so it goes no deeper
    (its recursion included) and no wider than a body may."""
    found: list[Unknown] = []

    # A place is a (parent, key) pair, spelled out only for a find.
    def walk(at: Any, value: Any, kind: Any, depth: int) -> None:
        if depth > _WALK_DEPTH:  # deeper than any body goes: refused as it is read
            return
        if isinstance(kind, _ListOf):
            if isinstance(value, list) and len(value) <= _WALK_ITEMS:
                for i, item in enumerate(value):
                    if isinstance(item, (dict, list)) and len(found) < limit:
                        walk((at, i), item, kind.item, depth + 1)
        elif isinstance(value, dict):
            takes = _keys_taken(kind)
            for key, item in value.items():
                inner = takes.get(key, _UNKNOWN)
                if len(found) == limit:
                    return
                if inner is _UNKNOWN:
                    found.append(Unknown(_spelled((at, key)), meant(key, takes)))
                elif inner is not None and isinstance(item, (dict, list)):
                    walk((at, key), item, inner, depth + 1)

    root = _walked(_bare(kind))
    if root is not None:
        walk(None, data, root, 0)
    return found


@dataclass(frozen=True, slots=True)
class _ListOf:
    item: Any


def _spelled(at: Any) -> Location:
    keys = []
    while at is not None:
        at, key = at
        keys.append(key)
    return tuple(reversed(keys))


#: What ``_keys_taken`` gives for a key the body does not take.
_UNKNOWN = object()
#: A longer list is longer than any body takes, and refused as it is read.
_WALK_ITEMS = MAX_HTTP_POINTS
#: Keys and indexes deep; a job tree, the deepest a body goes, takes
#: two a level (``subJobs``, its index).
_WALK_DEPTH = 2 * MAX_JOB_DEPTH + 8


def _bare(kind: Any) -> Any:
    """``kind`` without ``Annotated`` and an optional ``None``; a union of
    several types is not walked (no body has one of models)."""
    while True:
        origin = get_origin(kind)
        if origin is Annotated:
            kind = get_args(kind)[0]
        elif origin is Union or origin is UnionType:
            options = [a for a in get_args(kind) if a is not type(None)]
            if len(options) != 1:
                return None
            kind = options[0]
        else:
            return kind


@functools.cache
def _keys_taken(model: type[BaseModel]) -> dict[str, Any]:
    """A model's keys, each with what to walk under it: a model, a list, or
    None for a value with no keys of ours (a number, a text, free JSON)."""
    return {
        field.alias or name: _walked(_bare(field.annotation))
        for name, field in model.model_fields.items()
    }


def _walked(kind: Any) -> Any:
    """What the walk looks under a key of type ``kind`` for: a model's keys,
    a list's items, or nothing."""
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        return kind
    if get_origin(kind) is list and (item := _walked(_bare(get_args(kind)[0]))) is not None:
        return _ListOf(item)
    return None


# -- punches --------------------------------------------------------------------------


class LocationData(Body):
    address: Text = ""
    latitude: Number | None = None
    longitude: Number | None = None
    accuracy: Number | None = None

    def to_domain(self) -> PunchLocation:
        return PunchLocation(
            self.address,
            None if self.latitude is None else float(self.latitude),
            None if self.longitude is None else float(self.longitude),
            None if self.accuracy is None else float(self.accuracy),
        )


class ClockOutBody(Body):
    userId: Int64
    timezone: Zone | None = None
    locationData: LocationData | None = None
    timestamp: Int64 | None = None


class ClockInBody(ClockOutBody):
    jobId: Text | None = None
    schedulerShiftId: Text | None = None


class BreakStartBody(ClockOutBody):
    pass


class BreakEndBody(ClockOutBody):
    isResumeShift: StrictBool | None = None


class ValidatePunchBody(ClockInBody):
    """One punch to judge without storing it: its kind and that punch's fields."""

    kind: Literal["clockIn", "clockOut", "breakStart", "breakEnd"]
    manualBreakId: Text | None = None
    isResumeShift: StrictBool | None = None


# -- geofences ------------------------------------------------------------------------


def _fence_coordinate(value: Any) -> str | float | None:
    """A numeric string as the spec's samples send it ("40.7128"), or a
    number: one validator rather than a union, whose refusals would name
    each member (``latitude.float``) instead of the field."""
    if value is None or isinstance(value, str):
        return value if value is None else _text(value)
    if isinstance(value, float):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:
            raise PydanticCustomError("finite_number", "Input should be a finite number") from None
    raise PydanticCustomError("coordinate_type", "Input should be a number or a numeric string")


FenceCoordinate = Annotated[
    Any,
    AfterValidator(_fence_coordinate),
    WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "number"}, {"type": "null"}]}),
]


class FenceLocation(Body):
    address: Text = ""
    latitude: FenceCoordinate = None
    longitude: FenceCoordinate = None


class FenceIn(Body):
    model_config = _required("name")
    name: Name = ""
    location: FenceLocation = FenceLocation()
    isEnabled: StrictBool | None = None
    fenceSize: Int32 | None = None
    jobIds: Annotated[
        list[Text],
        *at_most(
            MAX_JOB_IDS_PER_FENCE,
            ErrorCode.TOO_MANY_JOB_IDS,
            "{count} job ids; the limit is {limit}",
        ),
    ] = []
    onGeofenceExitAction: Text = ""


class CreateGeofencesBody(Body):
    geofences: Annotated[
        list[FenceIn], *at_most(MAX_GEOFENCES_PER_REQUEST, refuse=check_geofence_count)
    ]


def _coordinate(value: str | float | None, path: str) -> float | None:
    """A coordinate as a number; the range and finiteness are the rules' to check."""
    if value is None or isinstance(value, float | int):
        return None if value is None else float(value)
    try:
        return float(value)
    except ValueError:
        raise DomainError(
            ErrorCode.INVALID_COORDINATES,
            f'{path}: {value[:24]!r} is not a number; send a numeric string such as "40.7128"',
        ) from None


def fence_draft(g: FenceIn, i: int) -> GeofenceDraft:
    where = f"geofences[{i}].location"
    return GeofenceDraft(
        name=g.name,
        address=g.location.address,
        latitude=_coordinate(g.location.latitude, f"{where}.latitude"),
        longitude=_coordinate(g.location.longitude, f"{where}.longitude"),
        is_enabled=g.isEnabled,
        fence_size_m=g.fenceSize,
        job_ids=tuple(g.jobIds),
        exit_action=g.onGeofenceExitAction,
    )


# -- set-up: time clocks, schedulers, days --------------------------------------------


class JobIn(Body):
    id: DefinedId
    name: Text = ""
    color: Text = ""
    subJobs: Annotated[list["JobIn"], *at_most(MAX_JOBS)] = []


#: A time clock's or a scheduler's jobs, sub-jobs included, within the limit.
JobTree = Annotated[
    list[JobIn], Field(max_length=MAX_JOBS), BeforeValidator(_job_tree_within_limit)
]


class BreakTypeIn(Body):
    model_config = _required("name")
    id: DefinedId
    name: Name = ""
    isMandatory: StrictBool = False
    minDurationSeconds: BreakMinimum = 0
    isPaid: StrictBool = False


class ExitDetectionIn(Body):
    highAccuracyMaxM: Number | None = None
    bufferHighAccuracyM: Number | None = None
    lowAccuracyMaxM: Number | None = None
    bufferLowAccuracyM: Number | None = None
    bufferUnknownAccuracyM: Number | None = None

    def to_domain(self) -> ExitDetectionSettings:
        d = ExitDetectionSettings()

        def pick(v: float | None, default: float) -> float:
            return default if v is None else float(v)

        return ExitDetectionSettings(
            high_accuracy_max_m=pick(self.highAccuracyMaxM, d.high_accuracy_max_m),
            buffer_high_accuracy_m=pick(self.bufferHighAccuracyM, d.buffer_high_accuracy_m),
            low_accuracy_max_m=pick(self.lowAccuracyMaxM, d.low_accuracy_max_m),
            buffer_low_accuracy_m=pick(self.bufferLowAccuracyM, d.buffer_low_accuracy_m),
            buffer_unknown_accuracy_m=pick(
                self.bufferUnknownAccuracyM, d.buffer_unknown_accuracy_m
            ),
        )


def _resource_id(sent: int | None, path: int | None) -> int:
    """The id of a resource a body creates (``path`` None: the body's, or 0
    for the server to choose) or replaces (the path's). A body naming
    another id than its path is refused: one of the two is a mistake."""
    if path is None:
        return sent or 0
    if sent is not None and sent != path:
        said = f"the body's id {sent} is not the path's {path}; send the same id, or none"
        problem = FieldViolation("id", said, ErrorCode.INVALID_ARGUMENT)
        raise DomainError.from_violations([problem], "the request")
    return path


class TimeClockIn(Body):
    model_config = _required("name", "timezone")
    id: EntityId | None = None
    name: Name = ""
    timezone: Zone = ""
    jobEnforcement: StrictBool = False
    jobs: JobTree = []
    userIds: Annotated[list[EntityId], *at_most(MAX_USERS)] = []
    manualBreaksEnabled: StrictBool = False
    manualBreakTypes: Annotated[list[BreakTypeIn], *at_most(MAX_BREAK_TYPES)] = []
    geofencePolicy: GeofencePolicy = GeofencePolicy.OFF
    accuracyToleranceM: Tolerance = 0.0
    exitDetection: ExitDetectionIn = ExitDetectionIn()

    def to_domain(self, tc_id: int | None = None) -> tuple[TimeClock, list[str]]:
        jobs, paths = flatten_jobs(self.jobs, "jobs", "subJobs")
        tc = TimeClock(
            id=_resource_id(self.id, tc_id),
            name=self.name,
            timezone=self.timezone,
            job_enforcement=self.jobEnforcement,
            jobs=jobs,
            user_ids=frozenset(self.userIds),
            manual_breaks_enabled=self.manualBreaksEnabled,
            manual_break_types=tuple(
                ManualBreakType(b.id, b.name, b.isMandatory, b.minDurationSeconds, b.isPaid)
                for b in self.manualBreakTypes
            ),
            geofence_policy=self.geofencePolicy,
            accuracy_tolerance_m=float(self.accuracyToleranceM),
            exit_detection=self.exitDetection.to_domain(),
        )
        return tc, paths


class SchedulerIn(Body):
    model_config = _required("name", "timezone")
    id: EntityId | None = None
    name: Name = ""
    timezone: Zone = ""
    jobs: JobTree = []
    userIds: Annotated[list[EntityId], *at_most(MAX_USERS)] = []
    multiUserShifts: StrictBool = False

    def to_domain(self, scheduler_id: int | None = None) -> tuple[Scheduler, list[str]]:
        jobs, paths = flatten_jobs(self.jobs, "jobs", "subJobs")
        s = Scheduler(
            id=_resource_id(self.id, scheduler_id),
            name=self.name,
            timezone=self.timezone,
            jobs=jobs,
            user_ids=frozenset(self.userIds),
            multi_user_shifts=self.multiUserShifts,
        )
        return s, paths


class DayStatusBody(Body):
    dates: Annotated[
        list[Text],
        *at_most(MAX_DATES_PER_CALL, ErrorCode.BATCH_TOO_LARGE, "at most {limit} dates per call"),
    ]
    status: Literal["OPEN", "LOCKED", "APPROVED"]


# -- scheduled shifts -----------------------------------------------------------------


class GpsIn(Body):
    address: Text = ""
    latitude: Number | None = None
    longitude: Number | None = None


class ShiftLocationIn(Body):
    isReferencedToJob: StrictBool = False
    gps: GpsIn | None = None


class NoteIn(Body):
    html: Text = ""


class ShiftBreakIn(Body):
    name: Text = ""
    type: Text = ""
    startTime: Int32 = 0
    duration: Int32 = 0


class LayerValueIn(Body):
    id: Text = ""


class ShiftLayerIn(Body):
    id: Text = ""
    value: LayerValueIn = LayerValueIn()


class ShiftDetailsIn(Body):
    shiftLayers: Annotated[list[ShiftLayerIn], *at_most(MAX_ITEMS)] = []
    shiftSource: Text | None = None


class CustomFieldIn(Body):
    id: Text = ""
    value: JsonValue = None


class ShiftIn(Body):
    startTime: Int64
    endTime: Int64
    title: Text | None = None
    jobId: Text | None = None
    timezone: Zone | None = None
    isPublished: StrictBool | None = None
    isOpenShift: StrictBool | None = None
    openSpots: Int32 | None = None
    isRequireAdminApproval: StrictBool | None = None
    assignedUserIds: Annotated[list[Int64], *at_most(MAX_USERS)] = []
    locationData: ShiftLocationIn | None = None
    color: Text | None = None
    notes: Annotated[list[NoteIn], *at_most(MAX_ITEMS)] = []
    breaks: Annotated[list[ShiftBreakIn], *at_most(MAX_ITEMS)] = []
    statuses: Annotated[list[JsonObject], *at_most(MAX_ITEMS)] = []
    shiftDetails: ShiftDetailsIn | None = None
    customFields: Annotated[list[CustomFieldIn], *at_most(MAX_ITEMS)] = []

    def to_domain(self) -> ScheduledShift:
        location = None
        if self.locationData is not None:
            g = self.locationData.gps
            gps = None
            if g is not None:
                gps = PunchLocation(
                    g.address,
                    None if g.latitude is None else float(g.latitude),
                    None if g.longitude is None else float(g.longitude),
                )
            location = ShiftLocation(self.locationData.isReferencedToJob, gps)
        details = self.shiftDetails or ShiftDetailsIn()
        return ScheduledShift(
            start_time=self.startTime,
            end_time=self.endTime,
            title=self.title,
            job_id=self.jobId,
            timezone=self.timezone,
            is_published=self.isPublished,
            is_open_shift=self.isOpenShift,
            open_spots=self.openSpots,
            is_require_admin_approval=self.isRequireAdminApproval,
            assigned_user_ids=tuple(self.assignedUserIds),
            location=location,
            color=self.color,
            notes=tuple(n.html for n in self.notes),
            breaks=tuple(ShiftBreak(b.name, b.type, b.startTime, b.duration) for b in self.breaks),
            statuses=tuple(self.statuses),
            has_details=self.shiftDetails is not None,
            shift_layers=tuple(ShiftLayer(x.id, x.value.id) for x in details.shiftLayers),
            shift_source=details.shiftSource,
            custom_fields=tuple(CustomField(c.id, c.value) for c in self.customFields),
        )


# -- location checks ------------------------------------------------------------------


class PointIn(Body):
    latitude: Number
    longitude: Number
    accuracy: Number | None = None


class CheckLocationsBody(Body):
    """A modest batch as JSON arrays; large batches belong on gRPC's raw columns."""

    points: list[PointIn] = Field(min_length=1, max_length=MAX_HTTP_POINTS)


# -- answers' documented shapes (for the OpenAPI document) ---------------------------


class FieldProblem(BaseModel):
    field: str
    description: str
    code: str


class ErrorBody(BaseModel):
    """Every refusal: ``detail`` is a string, a list of strings (a geofence
    batch) or problems keyed by ``shift-N`` (a shift batch); ``code`` is the
    reason, as in the gRPC API's ErrorInfo; ``errors`` names the fields."""

    detail: str | list[str] | dict[str, list[str]]
    code: str
    requestId: str
    errors: list[FieldProblem] | None = None


# -- time activities ------------------------------------------------------------------


class ActivityPointIn(Body):
    timestamp: Int64
    timezone: Zone | None = None
    locationData: LocationData | None = None

    def to_domain(self) -> PointDraft:
        loc = self.locationData
        return PointDraft(
            self.timestamp, self.timezone or "", None if loc is None else loc.to_domain()
        )


class ShiftActivityIn(Body):
    start: ActivityPointIn
    end: ActivityPointIn
    jobId: Text | None = None
    schedulerShiftId: Text | None = None
    notes: Text | None = None

    def to_domain(self) -> ShiftDraft:
        return ShiftDraft(
            self.start.to_domain(),
            self.end.to_domain(),
            self.jobId or "",
            self.schedulerShiftId or "",
            self.notes or "",
        )


class BreakActivityIn(Body):
    manualBreakId: Text
    start: ActivityPointIn
    end: ActivityPointIn
    notes: Text | None = None

    def to_domain(self) -> BreakDraft:
        return BreakDraft(
            self.manualBreakId, self.start.to_domain(), self.end.to_domain(), self.notes or ""
        )


class UserActivitiesIn(Body):
    userId: Int64
    # Bounded with the whole request's count (``_activities_within_limit``).
    shifts: Annotated[list[ShiftActivityIn], Field(max_length=MAX_ACTIVITIES_PER_REQUEST)] = []
    manualBreaks: Annotated[
        list[BreakActivityIn], Field(max_length=MAX_ACTIVITIES_PER_REQUEST)
    ] = []

    def to_domain(self) -> UserActivities:
        return UserActivities(
            self.userId,
            tuple(s.to_domain() for s in self.shifts),
            tuple(b.to_domain() for b in self.manualBreaks),
        )


def _raw_activity_count(group: Any) -> int:
    """A user's entry's shifts and breaks as sent, before validation."""
    if not isinstance(group, dict):
        return 0
    lists = (group.get("shifts"), group.get("manualBreaks"))
    return sum(len(x) for x in lists if isinstance(x, list))


def _activities_within_limit(value: Any) -> Any:
    """The users' entries and their activities all told within the rules'
    limits (their reason and sentence, as gRPC answers), counted on the JSON
    as sent: each entry's own bound let 500 entries of 1,000 shifts through
    to be validated (33 MB: 11.8 s, 8 s of it with the event loop held)."""
    if isinstance(value, list):
        with _as_validation_error():
            check_activity_batch(value, _raw_activity_count)
    return value


class CreateTimeActivitiesBody(Body):
    timeActivities: Annotated[
        list[UserActivitiesIn],
        Field(max_length=MAX_ACTIVITIES_PER_REQUEST),
        BeforeValidator(_activities_within_limit),
    ]


class UpdateTimeActivityBody(Body):
    """The corrected activity whole, and the ``modifiedAt`` it was read with."""

    modifiedAt: Int64
    start: ActivityPointIn
    end: ActivityPointIn
    jobId: Text | None = None
    schedulerShiftId: Text | None = None
    manualBreakId: Text | None = None
    notes: Text | None = None

    def to_domain(self, activity_id: str) -> Correction:
        return Correction(
            activity_id=activity_id,
            modified_at=self.modifiedAt,
            start=self.start.to_domain(),
            end=self.end.to_domain(),
            job_id=self.jobId or "",
            manual_break_id=self.manualBreakId or "",
            scheduler_shift_id=self.schedulerShiftId or "",
            notes=self.notes or "",
        )


class WebhookSubscriptionIn(Body):
    """A subscription to create, or the fields of one to change (those sent)."""

    url: Text | None = None
    eventTypes: Annotated[list[Text], Field(max_length=64)] | None = None
    timeClockIds: Annotated[list[Int64], Field(max_length=1000)] | None = None
    secret: Text | None = None
    #: Updates only: "active" puts a failing subscription back to work.
    status: Text | None = None

    def to_domain(self) -> SubscriptionChange:
        return SubscriptionChange(
            url=self.url,
            event_types=None if self.eventTypes is None else tuple(self.eventTypes),
            time_clock_ids=None if self.timeClockIds is None else tuple(self.timeClockIds),
            secret=self.secret,
            status=self.status,
        )


class NewWebhookIn(WebhookSubscriptionIn):
    """A subscription to create: its url is required."""

    model_config = _required("url")


class ReplayBody(Body):
    fromSeq: Seq
