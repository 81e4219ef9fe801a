"""Domain values: time clocks and their settings, geofences, day statuses."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar

T = TypeVar("T")


class GeofencePolicy(StrEnum):
    """How a time clock enforces locations on punches."""

    OFF = "OFF"
    REQUIRE_LOCATION = "REQUIRE_LOCATION"
    REQUIRE_INSIDE = "REQUIRE_INSIDE"


class ExitAction(StrEnum):
    """What happens when a user leaves a geofence."""

    NO_ACTION = "noAction"
    SEND_NOTIFICATION = "sendNotification"
    AUTO_CLOCK_OUT = "autoClockOut"


class DayStatus(StrEnum):
    OPEN = "OPEN"
    LOCKED = "LOCKED"
    APPROVED = "APPROVED"


@dataclass(frozen=True, slots=True)
class Job:
    """A job of a time clock or scheduler; ``parent_id`` is set for a sub-job.

    ``color`` ("#RRGGBB", or "" for none) is what scheduled shifts of the job
    are painted with by default.
    """

    id: str
    name: str = ""
    parent_id: str | None = None
    color: str = ""


def flatten_jobs(
    nodes: Iterable[Any], prefix: str, children: str
) -> tuple[tuple[Job, ...], list[str]]:
    """Nested jobs as the flat tuple time clocks and schedulers hold, with
    each one's path in the request.

    ``nodes`` are anything with ``id``, ``name`` and ``color`` and their
    sub-jobs under the attribute ``children`` (a message of either API).
    """
    flat: list[tuple[str, Job]] = []

    def walk(items: Iterable[Any], where: str, parent: str | None) -> None:
        for i, node in enumerate(items):
            path = f"{where}[{i}]"
            flat.append((path, Job(node.id, node.name, parent, node.color)))
            walk(getattr(node, children), f"{path}.{children}", node.id)

    walk(nodes, prefix, None)
    return tuple(job for _, job in flat), [path for path, _ in flat]


@dataclass(frozen=True, slots=True)
class TreeSize:
    """How many nodes a tree holds and how deep it goes; ``whole`` False:
    the counting stopped past a limit, so the tree holds at least ``count``
    nodes and goes at least ``depth`` levels deep."""

    count: int
    whole: bool = True
    depth: int = 0


def measure_tree(
    nodes: Sequence[Any], children: Callable[[Any], Sequence[Any]], limit: int
) -> TreeSize:
    """``nodes`` and, through ``children``, their descendants, counted no
    further than just past ``limit``: a level is walked only while the count
    is within it, so a tree of a million nodes costs what ``limit`` of them
    do. Where the count stops on the last level, the level's nodes are
    looked at for children only when there are no more than twice ``limit``
    of them, so that the usual mistake (a flat list a little too long) is
    told its exact length and a huge level still costs nothing. The walk
    keeps its own stack: a tree as deep as it is long costs no recursion."""
    count, deepest, todo = 0, 0, [(nodes, 1)]
    while todo:
        level, depth = todo.pop()
        count += len(level)
        if level:
            deepest = max(deepest, depth)
        if count > limit:
            last = not todo and len(level) <= 2 * limit
            return TreeSize(count, last and not any(map(children, level)), deepest)
        todo.extend((children(node), depth + 1) for node in level)
    return TreeSize(count, True, deepest)


def nest_jobs(jobs: Iterable[Job], make: Callable[[Job, list[T]], T]) -> list[T]:
    """The flat jobs as a tree again: ``make(job, its made sub-jobs)`` per job."""
    by_parent: dict[str | None, list[Job]] = {}
    for job in jobs:
        by_parent.setdefault(job.parent_id, []).append(job)

    def nest(parent: str | None) -> list[T]:
        return [make(j, nest(j.id)) for j in by_parent.get(parent, [])]

    return nest(None)


@dataclass(frozen=True, slots=True)
class ManualBreakType:
    id: str
    name: str
    is_mandatory: bool = False
    min_duration_s: int = 0
    #: Paid breaks count as paid time in timesheet totals.
    is_paid: bool = False


@dataclass(frozen=True, slots=True)
class ExitDetectionSettings:
    """Thresholds of exit detection, in metres."""

    high_accuracy_max_m: float = 10.0
    buffer_high_accuracy_m: float = 50.0
    low_accuracy_max_m: float = 300.0
    buffer_low_accuracy_m: float = 100.0
    buffer_unknown_accuracy_m: float = 50.0


@dataclass(frozen=True, slots=True)
class TimeClock:
    """A time clock with every setting the punch and geofence rules read.

    ``jobs`` is flat: sub-jobs follow their parents and carry ``parent_id``.
    """

    id: int
    name: str
    timezone: str
    job_enforcement: bool = False
    jobs: tuple[Job, ...] = ()
    user_ids: frozenset[int] = frozenset()
    manual_breaks_enabled: bool = False
    manual_break_types: tuple[ManualBreakType, ...] = ()
    geofence_policy: GeofencePolicy = GeofencePolicy.OFF
    accuracy_tolerance_m: float = 0.0
    exit_detection: ExitDetectionSettings = field(default_factory=ExitDetectionSettings)

    @property
    def job_ids(self) -> frozenset[str]:
        return frozenset(job.id for job in self.jobs)

    def with_descendants(self, job_ids: Iterable[str]) -> frozenset[str]:
        """The given jobs and every sub-job below them, at any depth."""
        children: dict[str, list[str]] = {}
        for job in self.jobs:
            if job.parent_id is not None:
                children.setdefault(job.parent_id, []).append(job.id)
        found: set[str] = set()
        stack = list(job_ids)
        while stack:
            job_id = stack.pop()
            if job_id in found:
                continue
            found.add(job_id)
            stack.extend(children.get(job_id, ()))
        return frozenset(found)


@dataclass(frozen=True, slots=True)
class Geofence:
    """A stored geofence circle: centre in WGS84 degrees, radius in metres."""

    id: str
    time_clock_id: int
    name: str
    is_enabled: bool
    fence_size_m: int
    job_ids: tuple[str, ...]
    exit_action: ExitAction
    address: str
    latitude: float
    longitude: float


@dataclass(frozen=True, slots=True)
class GeofenceDraft:
    """A geofence as a caller sent it, before validation. ``None`` means omitted."""

    name: str
    address: str
    latitude: float | None
    longitude: float | None
    is_enabled: bool | None = None
    fence_size_m: int | None = None
    job_ids: tuple[str, ...] = ()
    exit_action: str = ""
    #: A fence has no accuracy; one that is sent must still be a number >= 0.
    accuracy: float | None = None
