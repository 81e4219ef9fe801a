"""Trails and live positions: exit detection, exit actions, events."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from geopunch.domain.errors import DomainError, ErrorCode, FieldViolation
from geopunch.domain.events import Event, EventType, LiveTrail
from geopunch.domain.locations import (
    DEFAULT_MAX_SKEW_S,
    EXIT_ACTIONS,
    Held,
    InsideCarry,
    PointStatus,
    TrailVerdict,
    untimely,
)
from geopunch.domain.models import ExitAction
from geopunch.domain.ports import (
    AsyncTransactionRunner,
    Clock,
    FenceEngine,
    FenceView,
    UnitOfWork,
)
from geopunch.domain.punches import Activity, ActivityKind, PunchLocation, PunchPoint
from geopunch.domain.rules import long_id_violations
from geopunch.geo.engine import pair_codes
from geopunch.service.punches import run_retrying

#: Most samples per EvaluateTrails call, and per ReportLocations call. A
#: request of 250,000 samples is about 9 MB and its answer, with every sample's
#: fences, stays well under the 32 MiB message cap; larger histories are the
#: trails command's job.
MAX_TRAIL_SAMPLES = 250_000
MAX_LIVE_SAMPLES = 100_000
AUTO_CLOCK_OUT_SOURCE = "autoClockOut"
#: Last accepted time of a trail with none: below every timestamp.
_NEVER = np.iinfo(np.int64).min


class Outcome:
    """What an exit's action did or would do."""

    REPORTED = "reported"
    NOTIFIED = "notified"
    CLOCKED_OUT = "clockedOut"
    STILL_INSIDE = "stillInsideAnotherFence"
    NO_OPEN_SHIFT = "noOpenShift"


@dataclass(frozen=True, slots=True)
class TrailBatch:
    """Samples, column by column (see ``detect_exits`` for dtypes and units)."""

    user_ids: npt.NDArray[np.int64]
    time_clock_ids: npt.NDArray[np.int64]
    timestamps: npt.NDArray[np.int64]
    lats: npt.NDArray[np.float64]
    lons: npt.NDArray[np.float64]
    accuracy_m: npt.NDArray[np.float64] | None = None
    job_indexes: npt.NDArray[np.int32] | None = None
    job_names: tuple[str, ...] = ()

    @property
    def size(self) -> int:
        return int(self.user_ids.size)

    def check(self, limit: int) -> None:
        """INVALID_ARGUMENT for ragged columns, BATCH_TOO_LARGE above ``limit``."""
        n = self.size
        problems = [
            FieldViolation(
                f"samples.{name}", f"{col.size} values for {n} samples", ErrorCode.INVALID_ARGUMENT
            )
            for name, col in (
                ("time_clock_ids", self.time_clock_ids),
                ("timestamps", self.timestamps),
                ("latitudes", self.lats),
                ("longitudes", self.lons),
                ("accuracies", self.accuracy_m),
                ("job_ids", self.job_indexes),
            )
            if col is not None and col.size != n
        ]
        problems += long_id_violations(self.job_names, "samples.job_ids")
        if problems:
            raise DomainError.from_violations(problems, "the samples")
        if n > limit:
            raise DomainError(
                ErrorCode.BATCH_TOO_LARGE,
                f"{n} samples in one call; the limit is {limit}",
                {"limit": str(limit)},
            )


@dataclass(frozen=True, slots=True)
class ExitReport:
    """Exits of a batch as columns, plus each one's fence id and outcome."""

    samples: npt.NDArray[np.int64]
    fence_ids: list[str]
    actions: list[str]
    other_inside: npt.NDArray[np.bool_]
    outcomes: list[str]
    shift_ids: list[str]


@dataclass(frozen=True, slots=True)
class TrailOutcome:
    result: TrailVerdict
    fence_ids: list[str]  # of every sample's matches, as result.offsets says
    exits: ExitReport


def _detect(
    view: FenceView,
    batch: TrailBatch,
    skip: npt.NDArray[np.bool_] | None = None,
    initial: Held | InsideCarry | None = None,
    job_indexes: npt.NDArray[np.int32] | None = None,
    job_names: Sequence[str] = (),
) -> TrailVerdict:
    return view.detect_exits(
        batch.user_ids,
        batch.time_clock_ids,
        batch.timestamps,
        batch.lats,
        batch.lons,
        batch.accuracy_m,
        job_indexes=job_indexes,
        job_names=job_names,
        skip=skip,
        initial=initial,
    )


def would_do(action: str, other_inside: bool) -> str:
    """What an exit's action does when nothing stops it (no open shift, say)."""
    if action == ExitAction.SEND_NOTIFICATION.value:
        return Outcome.NOTIFIED
    if action == ExitAction.AUTO_CLOCK_OUT.value:
        return Outcome.STILL_INSIDE if other_inside else Outcome.CLOCKED_OUT
    return Outcome.REPORTED


def evaluate_trails(
    fences: FenceEngine,
    account: int,
    batch: TrailBatch,
    now: float,
    max_skew_s: float = DEFAULT_MAX_SKEW_S,
) -> TrailOutcome:
    """Verdicts and exits of historical samples, as if each trail started outside
    every fence. Nothing is stored; an automatic clock-out is reported as what
    it would do if a shift were open. Samples before 2000 or later than ``now``
    plus ``max_skew_s`` are INVALID_TIMESTAMP and take no part."""
    batch.check(MAX_TRAIL_SAMPLES)
    late = untimely(batch.timestamps, now, max_skew_s)

    def detect(view: FenceView) -> tuple[TrailVerdict, npt.NDArray[np.bool_]]:
        strangers = view.unassigned(batch.user_ids, batch.time_clock_ids)
        verdict = _detect(
            view, batch, strangers | late, job_indexes=batch.job_indexes, job_names=batch.job_names
        )
        return verdict, strangers

    r, strangers = detect(fences.view(account))
    unknown = r.status == PointStatus.UNKNOWN_TIME_CLOCK
    if unknown.any():  # time clocks this process may not know yet: catch up, judge again
        named = np.unique(batch.time_clock_ids[unknown]).tolist()
        r, strangers = detect(fences.view_knowing(account, named))
    _mark_skipped(r, late, strangers)
    actions = exit_action_names(r)
    others = r.exit_other_inside
    return TrailOutcome(
        r,
        r.fence_ids.tolist(),
        ExitReport(
            r.exit_samples,
            r.exit_fence_ids.tolist(),
            actions,
            others,
            [would_do(a, o) for a, o in zip(actions, others.tolist(), strict=True)],
            [""] * len(actions),
        ),
    )


async def report_locations(
    submit: AsyncTransactionRunner,
    fences: FenceEngine,
    clock: Clock,
    account: int,
    batch: TrailBatch,
    max_skew_s: float = DEFAULT_MAX_SKEW_S,
) -> TrailOutcome:
    """Live samples of ``account``: advance each trail's durable state and fire exit actions.

    ``submit`` commits the work (the server's group committer, or
    ``run_alone``). In one transaction: samples of users not assigned to their
    time clock are skipped (UNKNOWN_USER), samples older than the user's last
    accepted sample (on any time clock) too (STALE); the exits found from the
    stored inside state are logged as ``geofenceExit`` events,
    ``sendNotification`` fences add an ``exitNotification`` event, and an
    ``autoClockOut`` fence closes the user's open shift on that time clock at
    the exit sample's time (end source ``autoClockOut``, event
    ``autoClockOut``) unless the user is still inside another enabled fence
    that applies to the shift's job. Samples before 2000 or later than now
    plus ``max_skew_s`` are INVALID_TIMESTAMP and change nothing.
    """
    batch.check(MAX_LIVE_SAMPLES)
    view = fences.view(account)
    clocks = np.unique(batch.time_clock_ids).tolist()
    if any(view.time_clock(t) is None for t in clocks):  # see punches.punch
        view = await asyncio.to_thread(fences.view_knowing, account, clocks)
    work = _live_work(view, account, batch, clock.now(), max_skew_s)
    first_user = int(batch.user_ids.min()) if batch.size else 0
    order = (account, int(clocks[0]) if clocks else 0, first_user)
    r, report = await run_retrying(submit, work, _LOST_TRAILS, order)
    # After the transaction: a shared commit waits for nothing that needs no store.
    return TrailOutcome(r, r.fence_ids.tolist(), report)


_LOST_TRAILS = "the trails were changed by concurrent calls; retry"


def exit_action_names(r: TrailVerdict) -> list[str]:
    return [EXIT_ACTIONS[a].value for a in r.exit_actions.tolist()]


def _mark_skipped(
    r: TrailVerdict, late: npt.NDArray[np.bool_], strangers: npt.NDArray[np.bool_]
) -> None:
    """Say why each sample the engine was told to skip was skipped."""
    skipped = r.status == PointStatus.SKIPPED
    r.status[late & skipped] = PointStatus.INVALID_TIMESTAMP
    r.status[strangers & ~late & skipped] = PointStatus.UNKNOWN_USER


def _live_work(
    view: FenceView, account: int, batch: TrailBatch, now: float, max_skew_s: float
) -> Callable[[UnitOfWork], tuple[TrailVerdict, ExitReport]]:
    users, clocks = batch.user_ids, batch.time_clock_ids
    group, _, first = pair_codes(users, clocks)
    # (user, clock) in order of first appearance; group[i] indexes sample i's pair
    pairs = list(zip(users[first].tolist(), clocks[first].tolist(), strict=True))
    # Depends on the view only: worked out before the shared transaction.
    strangers = view.unassigned(users, clocks)
    late = untimely(batch.timestamps, now, max_skew_s)
    latest_allowed = int(now + max_skew_s)

    def work(shared: UnitOfWork) -> tuple[TrailVerdict, ExitReport]:
        uow = shared.for_account(account)
        known = uow.locations.load(sorted({u for u, _ in pairs}))
        # Stale: older than the user's last accepted sample, on any time clock.
        user_last: dict[int, int] = {}
        for (u, _), trail in known.items():
            user_last[u] = max(user_last.get(u, _NEVER), trail.last_ts)
        last = np.array([user_last.get(u, _NEVER) for u, _ in pairs], np.int64)
        stale = (batch.timestamps < last[group]) & ~strangers & ~late
        skip = stale | strangers | late
        stored = {p: known[p] for p in pairs if p in known}
        held = [(u, c, f) for (u, c), trail in stored.items() for f in trail.inside]
        # Turned into the view's own form once: the trails may be judged twice.
        initial = view.carry(
            Held(
                np.array([u for u, _, _ in held], np.int64),
                np.array([c for _, c, _ in held], np.int64),
                [f for _, _, f in held],
            )
        )
        r = _detect(view, batch, skip=skip, initial=initial)
        shifts: dict[tuple[int, int], Activity] = {}
        auto = EXIT_ACTIONS.index(ExitAction.AUTO_CLOCK_OUT)
        leaving = r.exit_samples[(r.exit_actions == auto) & ~r.exit_other_inside]
        if leaving.size:
            # Only now are open shifts needed: their jobs decide which other
            # fences count, so the trails are judged again with them.
            at_stake = {(int(clocks[i]), int(users[i])) for i in leaving.tolist()}
            shifts = uow.activities.open_many(sorted(at_stake))
            job_names = sorted({a.job_id for a in shifts.values() if a.job_id})
            if job_names:
                code = {name: i for i, name in enumerate(job_names)}
                group_job = np.array(
                    [_shift_job(shifts.get((c, u)), code) for u, c in pairs], np.int32
                )
                r = _detect(view, batch, skip, initial, group_job[group], job_names)
        _mark_skipped(r, late, strangers)
        report, events = _fire(uow, batch, r, shifts, int(now), latest_allowed)
        uow.locations.save(_new_trails(pairs, group, batch, r, stored), known)
        uow.events.append(events)
        return r, report

    return work


def _new_trails(
    pairs: list[tuple[int, int]],
    group: npt.NDArray[np.int64],
    batch: TrailBatch,
    r: TrailVerdict,
    stored: dict[tuple[int, int], LiveTrail],
) -> dict[tuple[int, int], LiveTrail]:
    """Trails whose last accepted time or inside fences changed."""
    accepted = r.status == 0
    newest = np.full(len(pairs), _NEVER, np.int64)
    np.maximum.at(newest, group[accepted], batch.timestamps[accepted])
    inside: dict[tuple[int, int], list[str]] = {}
    final = r.final.held()
    for u, c, f in zip(
        final.user_ids.tolist(), final.time_clock_ids.tolist(), final.fence_ids, strict=True
    ):
        inside.setdefault((u, c), []).append(f)
    out: dict[tuple[int, int], LiveTrail] = {}
    for pair, ts in zip(pairs, newest.tolist(), strict=True):
        old = stored.get(pair)
        held = inside.get(pair)
        fences = tuple(sorted(held)) if held else ()
        if old is None:
            if ts != _NEVER:  # else nothing accepted, nothing to remember
                out[pair] = LiveTrail(ts, fences)
        elif ts > old.last_ts or old.inside != fences:
            out[pair] = LiveTrail(max(ts, old.last_ts), fences)
    return out


def _shift_job(shift: Activity | None, codes: dict[str, int]) -> int:
    if shift is None or shift.kind is not ActivityKind.SHIFT or not shift.job_id:
        return -1
    return codes[shift.job_id]


def _fire(
    uow: UnitOfWork,
    batch: TrailBatch,
    r: TrailVerdict,
    shifts: dict[tuple[int, int], Activity],
    now: int,
    latest_allowed: int,
) -> tuple[ExitReport, list[Event]]:
    """Events and automatic clock-outs of the exits, in sample order."""
    fence_ids = r.exit_fence_ids.tolist()
    actions = exit_action_names(r)
    outcomes: list[str] = []
    shift_ids: list[str] = []
    events: list[Event] = []
    open_shifts = dict(shifts)
    closing: list[tuple[Activity, PunchPoint]] = []
    for k, sample in enumerate(r.exit_samples.tolist()):
        user = int(batch.user_ids[sample])
        clock = int(batch.time_clock_ids[sample])
        ts = int(batch.timestamps[sample])
        action = actions[k]
        payload: dict[str, object] = {
            "userId": user,
            "timeClockId": clock,
            "fenceId": fence_ids[k],
            "timestamp": ts,
            "latitude": float(batch.lats[sample]),
            "longitude": float(batch.lons[sample]),
            "action": action,
        }

        events.append(Event(EventType.GEOFENCE_EXIT.value, ts, payload, user, clock))
        outcome, shift_id = would_do(action, bool(r.exit_other_inside[k])), ""
        if action == ExitAction.SEND_NOTIFICATION.value:
            events.append(Event(EventType.EXIT_NOTIFICATION.value, ts, payload, user, clock))
        elif outcome == Outcome.CLOCKED_OUT:
            shift = open_shifts.get((clock, user))
            # Never a shift that ends before it began or in the future (such
            # samples are refused before this; the check costs nothing).
            if (
                shift is None
                or shift.kind is not ActivityKind.SHIFT
                or not shift.start.timestamp < ts <= latest_allowed
            ):
                outcome = Outcome.NO_OPEN_SHIFT
            else:
                acc = batch.accuracy_m[sample] if batch.accuracy_m is not None else np.nan
                end = PunchPoint(
                    ts,
                    shift.start.timezone,
                    PunchLocation(
                        "",
                        float(batch.lats[sample]),
                        float(batch.lons[sample]),
                        None if np.isnan(acc) else float(acc),
                    ),
                    AUTO_CLOCK_OUT_SOURCE,
                    None,
                )
                closing.append((shift, end))
                del open_shifts[(clock, user)]
                shift_id = shift.id
                body = {**payload, "shiftId": shift.id}
                events.append(Event(EventType.AUTO_CLOCK_OUT.value, ts, body, user, clock))
        outcomes.append(outcome)
        shift_ids.append(shift_id)
    # At once, after the exits are judged: the users' turns are taken together
    # (one close a pair: the shift is gone from ``open_shifts``).
    uow.activities.close_many([(shift, end, now) for shift, end in closing])
    report = ExitReport(
        r.exit_samples, fence_ids, actions, r.exit_other_inside, outcomes, shift_ids
    )
    return report, _with_entries(batch, r, events)


def _with_entries(batch: TrailBatch, r: TrailVerdict, exits: list[Event]) -> list[Event]:
    """The exits' events and an event per entry, in the order each trail
    lived them (at one sample, leaving comes before entering)."""
    if not r.enter_samples.size:
        return exits
    entries = []
    for sample, fence in zip(r.enter_samples.tolist(), r.enter_fence_ids.tolist(), strict=True):
        user = int(batch.user_ids[sample])
        clock = int(batch.time_clock_ids[sample])
        ts = int(batch.timestamps[sample])
        payload: dict[str, object] = {
            "userId": user,
            "timeClockId": clock,
            "fenceId": fence,
            "timestamp": ts,
            "latitude": float(batch.lats[sample]),
            "longitude": float(batch.lons[sample]),
        }
        entries.append(Event(EventType.GEOFENCE_ENTER.value, ts, payload, user, clock))
    if not exits:
        return entries
    # Both lists are already in trail order: sort by trail and time, exits first.
    both = [(0, e) for e in exits] + [(1, e) for e in entries]
    both.sort(key=lambda p: (p[1].user_id or 0, p[1].time_clock_id or 0, p[1].occurred_at, p[0]))
    return [e for _, e in both]
