"""Punch use cases: clock-in/out and manual breaks, one transaction each."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TypeVar

from geopunch.domain.errors import ConcurrentChange, DomainError, ErrorCode
from geopunch.domain.models import GeofencePolicy, ManualBreakType, TimeClock
from geopunch.domain.ports import (
    AsyncTransactionRunner,
    Clock,
    TransactionRunner,
    UnitOfWork,
    UnitOfWorkFactory,
)
from geopunch.domain.punches import (
    MAX_IDEMPOTENCY_KEY,
    Activity,
    ActivityKind,
    PunchCommand,
    PunchKind,
    PunchLocation,
    PunchPoint,
    PunchResult,
    break_type,
    check_day_open,
    check_end_after_start,
    check_location,
    check_mandatory,
    check_start_after_history,
    clock_in_job,
    punch_time,
    punch_timezone,
    timesheet_day,
)
from geopunch.domain.rules import check_user
from geopunch.geo.index import FenceIndex
from geopunch.geo.membership import OK, check_one
from geopunch.service.admin import get_time_clock
from geopunch.service.scheduler import check_scheduler_shift

T = TypeVar("T")

#: Attempts of a use case that lost a race before answering ABORTED.
MAX_ATTEMPTS = 5


@dataclass(frozen=True, slots=True)
class Idempotency:
    """How to remember a punch's answer: ``render`` turns the result into the
    bytes a retry with the same key and body gets back."""

    key: str
    method: str
    body_hash: str
    render: Callable[[PunchResult], bytes]


@dataclass(frozen=True, slots=True)
class PunchOutcome:
    """Either a fresh result or, for a retried idempotent punch, the stored answer."""

    result: PunchResult | None = None
    replay: bytes | None = None


def run_alone(uows: UnitOfWorkFactory) -> TransactionRunner:
    """The plain runner: each piece of work in a transaction of its own."""

    def run(work: Callable[[UnitOfWork], T]) -> T:
        with uows() as uow:
            result = work(uow)
            uow.commit()
            return result

    return run


def punch(
    uows: UnitOfWorkFactory,
    index: FenceIndex | None,
    clock: Clock,
    cmd: PunchCommand,
    idempotency: Idempotency | None = None,
    *,
    dry_run: bool = False,
    runner: TransactionRunner | None = None,
) -> PunchOutcome:
    """Apply one punch durably; with ``dry_run`` check it and change nothing.

    ``runner`` decides how the punch's transaction is committed (alone by
    default, or batched with concurrent punches by a group committer).
    """
    work = punch_work(index, clock, cmd, idempotency)
    if dry_run:
        with uows() as uow:  # leaving without commit rolls back
            return work(uow)
    return run_retrying(runner if runner is not None else run_alone(uows), work, _lost_race(cmd))


async def punch_async(
    submit: AsyncTransactionRunner,
    index: FenceIndex | None,
    clock: Clock,
    cmd: PunchCommand,
    idempotency: Idempotency | None = None,
) -> PunchOutcome:
    """``punch`` for a coroutine: ``submit`` commits the work (a group committer's)."""
    work = punch_work(index, clock, cmd, idempotency)
    return await run_retrying_async(submit, work, _lost_race(cmd))


def _lost_race(cmd: PunchCommand) -> str:
    return (
        f"user {cmd.user_id} on time clock {cmd.time_clock_id} was changed by concurrent "
        "calls; retry"
    )


def punch_work(
    index: FenceIndex | None,
    clock: Clock,
    cmd: PunchCommand,
    idempotency: Idempotency | None,
) -> Callable[[UnitOfWork], PunchOutcome]:
    """The punch's transaction body, judged at the time of this call.

    Requests that no transaction can accept (an over-long idempotency key) are
    refused here, before anything is queued."""
    if idempotency is not None and len(idempotency.key) > MAX_IDEMPOTENCY_KEY:
        raise DomainError(
            ErrorCode.INVALID_ARGUMENT,
            f"idempotency_key is longer than {MAX_IDEMPOTENCY_KEY} characters",
        )
    now = clock.now()  # the window rules judge the time of receipt

    def work(uow: UnitOfWork) -> PunchOutcome:
        if idempotency is not None:
            stored = uow.idempotency.get(idempotency.key)
            if stored is not None:
                return _replay(idempotency, *stored)
        result = apply_punch(uow, index, now, cmd)
        if idempotency is not None:
            uow.idempotency.put(
                idempotency.key,
                idempotency.method,
                idempotency.body_hash,
                idempotency.render(result),
            )
        return PunchOutcome(result=result)

    return work


def run_retrying(run: TransactionRunner, work: Callable[[UnitOfWork], T], lost: str) -> T:
    """``run(work)``, again while it loses a race (ConcurrentChange), at most
    MAX_ATTEMPTS times; then CONCURRENT_MODIFICATION with the message ``lost``."""
    for _ in range(MAX_ATTEMPTS):
        try:
            return run(work)
        except ConcurrentChange:
            continue
    raise DomainError(ErrorCode.CONCURRENT_MODIFICATION, lost)


async def run_retrying_async(
    submit: AsyncTransactionRunner, work: Callable[[UnitOfWork], T], lost: str
) -> T:
    """``run_retrying`` for a coroutine: ``await submit(work)``, again while it
    loses a race."""
    for _ in range(MAX_ATTEMPTS):
        try:
            return await submit(work)
        except ConcurrentChange:
            continue
    raise DomainError(ErrorCode.CONCURRENT_MODIFICATION, lost)


def _replay(idem: Idempotency, method: str, body_hash: str, response: bytes) -> PunchOutcome:
    if method != idem.method or body_hash != idem.body_hash:
        raise DomainError(
            ErrorCode.IDEMPOTENCY_KEY_REUSED,
            f"idempotency key {idem.key!r} was used for a different request; "
            "use a new key for a new punch",
            {"idempotencyKey": idem.key},
        )
    return PunchOutcome(replay=response)


def purge_idempotency_keys(
    uows: UnitOfWorkFactory, now: float, retention_s: float, batch: int = 1000
) -> int:
    """Forget keys used more than ``retention_s`` seconds before ``now``.

    Deletes ``batch`` keys per transaction, so that punches waiting for the
    write lock meanwhile wait for one short transaction at most.
    """
    cutoff = int(now - retention_s)
    total = 0
    while True:
        with uows() as uow:
            removed = uow.idempotency.purge(cutoff, batch)
            uow.commit()
        total += removed
        if removed < batch:
            return total


def list_manual_breaks(uows: UnitOfWorkFactory, time_clock_id: int) -> TimeClock:
    with uows(readonly=True) as uow:
        return get_time_clock(uow, time_clock_id)


def _new_id(kind: ActivityKind) -> str:
    return f"{kind.value}-{uuid.uuid4().hex}"


def geofence_check(
    tc: TimeClock, index: FenceIndex | None, location: PunchLocation | None, job_id: str | None
) -> str | None:
    """Apply the time clock's geofence policy; return the geofence the punch is in."""
    has_point = (
        location is not None and location.latitude is not None and location.longitude is not None
    )
    if not has_point:
        if tc.geofence_policy is not GeofencePolicy.OFF:
            raise DomainError(
                ErrorCode.LOCATION_REQUIRED,
                f"time clock {tc.id} requires locationData with latitude and longitude",
                {"timeClockId": str(tc.id)},
            )
        return None
    if index is None:
        return None
    assert location is not None and location.latitude is not None
    assert location.longitude is not None
    verdict = check_one(
        index.snapshot, location.latitude, location.longitude, tc.id, job_id, location.accuracy
    )
    if verdict.status != OK:
        raise DomainError(
            ErrorCode.INVALID_LOCATION, f"the location cannot be checked (status {verdict.status})"
        )
    if verdict.allowed or tc.geofence_policy is not GeofencePolicy.REQUIRE_INSIDE:
        return verdict.fence_id
    metadata = {"timeClockId": str(tc.id)}
    if verdict.distance_m is None:
        message = f"time clock {tc.id} has no enabled geofence" + (
            f" for job {job_id!r}" if job_id else ""
        )
    else:
        metadata["distanceMeters"] = f"{verdict.distance_m:.1f}"
        metadata["fenceId"] = verdict.nearest_fence_id or ""
        message = (
            f"the location is {verdict.distance_m:.1f} m outside the nearest applicable "
            f"geofence {verdict.nearest_fence_id}"
        )
    raise DomainError(ErrorCode.OUTSIDE_GEOFENCE, message, metadata)


def apply_punch(
    uow: UnitOfWork, index: FenceIndex | None, now: float, cmd: PunchCommand
) -> PunchResult:
    """Every rule of the four punches, in the order a caller fixes them."""
    tc = _time_clock(uow, index, cmd.time_clock_id)
    check_user(tc, cmd.user_id)
    tz = punch_timezone(cmd, tc)
    ts = punch_time(cmd, now)
    check_location(cmd.location)
    bt = break_type(tc, cmd.manual_break_id) if cmd.kind is PunchKind.START_BREAK else None
    job = clock_in_job(tc, cmd.job_id) if cmd.kind is PunchKind.CLOCK_IN else None
    acts = uow.activities
    day = timesheet_day(ts, tz)
    state = acts.punch_state(tc.id, cmd.user_id, day)
    current = state.open
    stamp = int(now)

    def point(fence: str | None) -> PunchPoint:
        return PunchPoint(ts, tz, cmd.location, "api", fence)

    def new_activity(kind: ActivityKind, fence: str | None, **kw: object) -> Activity:
        return Activity(
            id=_new_id(kind),
            time_clock_id=tc.id,
            user_id=cmd.user_id,
            kind=kind,
            start=point(fence),
            end=None,
            created_at=stamp,
            modified_at=stamp,
            **kw,  # type: ignore[arg-type]
        )

    def close(activity: Activity, fence: str | None) -> Activity:
        end = point(fence)
        acts.close(activity.id, end, stamp)
        return replace(activity, end=end, modified_at=stamp)

    def check_day() -> None:
        check_day_open(day, state.day_status, cmd.user_id)

    if cmd.kind is PunchKind.CLOCK_IN:
        if current is not None:
            _already(current)
        check_start_after_history(ts, state.last_end)
        check_day()
        if cmd.scheduler_shift_id:
            check_scheduler_shift(uow, cmd.scheduler_shift_id, cmd.user_id)
        shift = new_activity(
            ActivityKind.SHIFT,
            geofence_check(tc, index, cmd.location, job),
            job_id=job,
            scheduler_shift_id=cmd.scheduler_shift_id or None,
        )
        acts.add(shift)
        return PunchResult(shift)
    if cmd.kind is PunchKind.CLOCK_OUT:
        if current is None or current.kind is not ActivityKind.SHIFT:
            raise DomainError(
                ErrorCode.NO_OPEN_SHIFT,
                f"user {cmd.user_id} has no open shift on time clock {tc.id}"
                + (" (a manual break is open)" if current is not None else ""),
            )
        check_end_after_start(ts, current)
        check_day()
        return PunchResult(close(current, geofence_check(tc, index, cmd.location, current.job_id)))
    if cmd.kind is PunchKind.START_BREAK:
        assert bt is not None
        if current is not None and current.kind is ActivityKind.BREAK:
            raise DomainError(
                ErrorCode.ALREADY_ON_BREAK,
                f"user {cmd.user_id} is already on a manual break on time clock {tc.id}",
                {"breakId": current.id},
            )
        if current is not None:
            check_end_after_start(ts, current)
        else:
            check_start_after_history(ts, state.last_end)
        check_day()
        job_of_shift = current.job_id if current is not None else None
        fence = geofence_check(tc, index, cmd.location, job_of_shift)
        closed = close(current, fence) if current is not None else None
        brk = new_activity(
            ActivityKind.BREAK,
            fence,
            job_id=job_of_shift,
            scheduler_shift_id=current.scheduler_shift_id if current is not None else None,
            break_type_id=bt.id,
            from_shift_id=current.id if current is not None else None,
        )
        acts.add(brk)
        return PunchResult(brk, closed_shift=closed)
    # END_BREAK
    if current is None or current.kind is not ActivityKind.BREAK:
        raise DomainError(
            ErrorCode.NO_OPEN_BREAK,
            f"user {cmd.user_id} has no open manual break on time clock {tc.id}",
        )
    check_end_after_start(ts, current)
    check_mandatory(_break_type_of(tc, current), current.start.timestamp, ts)
    check_day()
    fence = geofence_check(tc, index, cmd.location, current.job_id)
    ended = close(current, fence)
    resumed = None
    if cmd.is_resume_shift is not False and current.from_shift_id is not None:
        resumed = new_activity(
            ActivityKind.SHIFT,
            fence,
            job_id=current.job_id,
            scheduler_shift_id=current.scheduler_shift_id,
        )
        acts.add(resumed)
    return PunchResult(ended, resumed_shift=resumed)


def _time_clock(uow: UnitOfWork, index: FenceIndex | None, time_clock_id: int) -> TimeClock:
    """The time clock's settings from the index's snapshot, which every committed
    change reaches before its call returns; the store when there is no index."""
    if index is not None:
        snap = index.snapshot
        idx = snap.clock_idx.get(time_clock_id)
        if idx is not None:
            return snap.clocks[idx].time_clock
    return get_time_clock(uow, time_clock_id)


def _already(current: Activity) -> None:
    if current.kind is ActivityKind.SHIFT:
        raise DomainError(
            ErrorCode.ALREADY_CLOCKED_IN,
            f"user {current.user_id} already has an open shift on time clock "
            f"{current.time_clock_id} since {current.start.timestamp}",
            {"shiftId": current.id},
        )
    raise DomainError(
        ErrorCode.OPEN_BREAK,
        f"user {current.user_id} is on a manual break; end it before clocking in",
        {"breakId": current.id},
    )


def _break_type_of(tc: TimeClock, brk: Activity) -> ManualBreakType | None:
    return next((b for b in tc.manual_break_types if b.id == brk.break_type_id), None)
