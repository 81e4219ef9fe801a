"""Punch use cases: clock-in/out and manual breaks, one transaction each.

Each punch loads the user's state, asks the pure decision in
``domain.punches`` what to do, and writes that; the adapter renders the
answer after the transaction. An idempotent punch stores its result (in a
form of its own, not a protocol's) in the same transaction.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

from geopunch import metrics, tracing
from geopunch.domain.errors import ConcurrentChange, DomainError, ErrorCode, FieldViolation
from geopunch.domain.models import TimeClock
from geopunch.domain.ports import (
    AsyncTransactionRunner,
    Clock,
    FenceEngine,
    FenceView,
    UnitOfWork,
    UnitOfWorkFactory,
)
from geopunch.domain.punches import (
    Activity,
    ActivityKind,
    PunchCommand,
    PunchDecision,
    PunchLocation,
    PunchPlan,
    PunchPoint,
    PunchResult,
    SchedulerShiftCheck,
    check_idempotency_key,
    decide_punch,
    fence_job,
    has_point,
    plan_punch,
)
from geopunch.domain.timesheets import punch_events
from geopunch.service.admin import get_time_clock
from geopunch.service.events import in_batches

T = TypeVar("T")

#: Attempts of a use case that lost a race before answering ABORTED.
MAX_ATTEMPTS = 5


@dataclass(frozen=True, slots=True)
class PunchOutcome:
    """A punch's result and the request id it was first answered with (this
    call's, unless it replays an idempotent punch).

    ``legacy_answer`` is set instead of ``result`` when a replayed answer was
    stored by a release that kept the gRPC bytes (see ``_replay``)."""

    result: PunchResult | None
    request_id: str
    replayed: bool = False
    legacy_answer: bytes | None = None
    #: The refusal kept as an idempotency key's answer (raised once committed).
    refusal: DomainError | None = None


def run_alone(uows: UnitOfWorkFactory) -> AsyncTransactionRunner:
    """The plain runner: each piece of work in a transaction of its own,
    run in the caller (tests, tools; the server batches through its committer)."""

    async def run(work: Callable[[UnitOfWork], T], order: tuple[int, ...] = ()) -> T:
        with uows() as uow:
            result = work(uow)
            uow.commit()
            return result

    return run


async def punch(
    submit: AsyncTransactionRunner,
    fences: FenceEngine | None,
    clock: Clock,
    account: int,
    cmd: PunchCommand,
    request_id: str,
) -> PunchOutcome:
    """Apply one punch of ``account`` durably. ``submit`` commits the work (a
    group committer's, or ``run_alone``); a lost race runs it again from scratch."""
    check_idempotency_key(cmd.idempotency_key)
    now = clock.now()  # the window rules judge the time of receipt
    body_hash = command_hash(cmd) if cmd.idempotency_key else ""
    if fences is not None and fences.view(account).time_clock(cmd.time_clock_id) is None:
        # Not in this process's index (yet): catch up before the punch is
        # judged, off the event loop and outside the shared transaction.
        await asyncio.to_thread(fences.view_knowing, account, (cmd.time_clock_id,))

    def work(batch: UnitOfWork) -> PunchOutcome:
        with tracing.span("punch transaction"):
            return write(batch)

    def write(batch: UnitOfWork) -> PunchOutcome:
        uow = batch.for_account(account)
        if cmd.idempotency_key:
            stored = uow.idempotency.get(cmd.idempotency_key)
            if stored is not None:
                return _replay(cmd, body_hash, *stored)
        planned = plan_request(uow, fences, account, now, cmd)  # refusals: the request's own
        try:
            decision = decide_on_state(uow, *planned, now)
        except DomainError as err:
            if not cmd.idempotency_key:
                raise
            # The same key may have been committed (by another process or
            # replica) after the look above and before the state was read:
            # that answer wins.
            stored = uow.idempotency.get(cmd.idempotency_key)
            if stored is not None:
                return _replay(cmd, body_hash, *stored)
            if err.code not in KEPT_REFUSALS:
                raise
            # The refusal is this key's first answer, kept like an OK: a twin
            # of this request on another replica waits for this transaction
            # (the key's row) and then replays the refusal instead of judging
            # again, so the key never gets two answers.
            uow.idempotency.put(
                cmd.idempotency_key, cmd.kind.value, body_hash, encode_refusal(err, request_id)
            )
            return PunchOutcome(None, request_id, refusal=err)
        with uow.together():  # one round trip for them all where the store can
            for activity in decision.closed:
                assert activity.end is not None
                uow.activities.close(activity, activity.end, activity.modified_at)
            for activity in decision.added:
                uow.activities.add(activity)
            uow.events.append(punch_events(cmd.kind, decision.result))
            if cmd.idempotency_key:
                uow.idempotency.put(
                    cmd.idempotency_key,
                    cmd.kind.value,
                    body_hash,
                    encode_answer(decision.result, request_id),
                )
        return PunchOutcome(decision.result, request_id)

    # Rows are locked in this order in a shared transaction; the key's hash
    # orders one user's concurrent punches the same way on every replica.
    order = (account, cmd.time_clock_id, cmd.user_id, zlib.crc32(cmd.idempotency_key.encode()))
    try:
        # Its work runs in the committer's thread within this span (the
        # committer runs each piece in its submitter's context).
        with tracing.span(f"punch {cmd.kind.value}"):
            outcome = await run_retrying(submit, work, _lost_race(cmd), order)
    except DomainError as err:
        metrics.PUNCHES.labels(cmd.kind.value, err.code.value).inc()
        raise
    if outcome.refusal is not None:
        metrics.PUNCHES.labels(cmd.kind.value, outcome.refusal.code.value).inc()
        raise outcome.refusal
    metrics.PUNCHES.labels(cmd.kind.value, "replayed" if outcome.replayed else "ok").inc()
    return outcome


def validate_punch(
    uows: UnitOfWorkFactory,
    fences: FenceEngine | None,
    clock: Clock,
    account: int,
    cmd: PunchCommand,
) -> PunchResult:
    """What the punch would do now, changing nothing: its result, or its DomainError."""
    if fences is not None:
        fences.view_knowing(account, (cmd.time_clock_id,))
    with uows(account=account, readonly=True) as uow:
        return judge(uow, fences, account, clock.now(), cmd).result


def judge(
    uow: UnitOfWork, fences: FenceEngine | None, account: int, now: float, cmd: PunchCommand
) -> PunchDecision:
    """Read what the punch needs and decide it (nothing is written); ``uow``
    sees ``account``."""
    return decide_on_state(uow, *plan_request(uow, fences, account, now, cmd), now)


def plan_request(
    uow: UnitOfWork, fences: FenceEngine | None, account: int, now: float, cmd: PunchCommand
) -> tuple[FenceView | None, PunchPlan]:
    """What the request itself asks for, checked against its time clock's
    settings; a refusal here does not depend on the user's punches."""
    # One view for the settings and the location: both from the same state.
    view = fences.view(account) if fences is not None else None
    tc = _time_clock(uow, view, cmd.time_clock_id)
    return view, plan_punch(tc, cmd, now)


def decide_on_state(
    uow: UnitOfWork, view: FenceView | None, plan: PunchPlan, now: float
) -> PunchDecision:
    """The punch decided on the user's stored state (read here)."""
    tc, cmd = plan.time_clock, plan.cmd
    state = uow.activities.punch_state(tc.id, cmd.user_id, plan.day)
    verdict = None
    location = cmd.location
    if view is not None and has_point(location):
        assert location is not None and location.latitude is not None
        assert location.longitude is not None
        verdict = view.judge(
            tc.id,
            location.latitude,
            location.longitude,
            fence_job(plan, state),
            location.accuracy,
        )
    found: SchedulerShiftCheck = "ok"
    if cmd.scheduler_shift_id and state.open is None:
        found = scheduler_shift_check(uow, cmd.scheduler_shift_id, cmd.user_id)
    return decide_punch(plan, state, verdict, now, found)


def scheduler_shift_check(uow: UnitOfWork, shift_id: str, user_id: int) -> SchedulerShiftCheck:
    shift = uow.shifts.get(shift_id)
    if shift is None:
        return "missing"
    if user_id in shift.assigned_user_ids or (
        shift.is_open_shift and uow.schedulers.has_user(shift.scheduler_id, user_id)
    ):
        return "ok"
    return "not_assigned"


def _lost_race(cmd: PunchCommand) -> str:
    return (
        f"user {cmd.user_id} on time clock {cmd.time_clock_id} was changed by concurrent "
        "calls; retry"
    )


async def run_retrying(
    submit: AsyncTransactionRunner,
    work: Callable[[UnitOfWork], T],
    lost: str,
    order: tuple[int, ...] = (),
) -> T:
    """``await submit(work)``, again while it loses a race or a deadlock
    (ConcurrentChange), at most MAX_ATTEMPTS times; then
    CONCURRENT_MODIFICATION with the message ``lost``."""
    for _ in range(MAX_ATTEMPTS):
        try:
            return await submit(work, order)
        except ConcurrentChange:
            continue
    raise DomainError(ErrorCode.CONCURRENT_MODIFICATION, lost)


def command_hash(cmd: PunchCommand) -> str:
    """A digest of what a punch asks for, whatever protocol carried it: the
    same key with another digest is another punch."""
    fields = asdict(cmd)
    del fields["idempotency_key"]
    body = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(body.encode()).hexdigest()


def _replay(
    cmd: PunchCommand, body_hash: str, method: str, stored_hash: str, answer: bytes
) -> PunchOutcome:
    key = cmd.idempotency_key
    legacy = not answer.startswith(b"{")
    # Answers stored before results were kept in their own form hold the gRPC
    # bytes and a digest of the gRPC body, which cannot be recomputed here:
    # those (kept GEOPUNCH_IDEMPOTENCY_DAYS at most) are matched by punch kind.
    if method != cmd.kind.value or (not legacy and stored_hash != body_hash):
        raise DomainError(
            ErrorCode.IDEMPOTENCY_KEY_REUSED,
            f"idempotency key {key!r} was used for a different request; "
            "use a new key for a new punch",
            {"idempotencyKey": key},
        )
    if legacy:
        return PunchOutcome(None, "", replayed=True, legacy_answer=answer)
    refusal = decode_refusal(answer)
    if refusal is not None:
        raise refusal
    result, request_id = decode_answer(answer)
    return PunchOutcome(result, request_id, replayed=True)


# -- Stored answers: a PunchResult and its request id as JSON -----------------


def encode_answer(result: PunchResult, request_id: str) -> bytes:
    body = {"requestId": request_id, **asdict(result)}
    return json.dumps(body, separators=(",", ":")).encode()


#: Refusals kept as an idempotency key's answer: those a concurrent punch of
#: the same user can cause, so that two copies of one request (say, on two
#: replicas) cannot get an OK and such a refusal. Others depend on the
#: request alone (or on settings) and are given again the same way.
KEPT_REFUSALS = frozenset(
    {
        ErrorCode.ALREADY_CLOCKED_IN,
        ErrorCode.OPEN_BREAK,
        ErrorCode.NO_OPEN_SHIFT,
        ErrorCode.ALREADY_ON_BREAK,
        ErrorCode.NO_OPEN_BREAK,
        ErrorCode.INVALID_TIMESTAMP_BEFORE_CLOCK_IN,
        ErrorCode.INVALID_TIMESTAMP_BEFORE_START,
        ErrorCode.OVERLAPS_COMPLETED_ACTIVITY,
        ErrorCode.MANDATORY_BREAK_TOO_SHORT,
    }
)


def encode_refusal(err: DomainError, request_id: str) -> bytes:
    body = {
        "requestId": request_id,
        "refusal": {
            "code": err.code.value,
            "message": err.message,
            "metadata": err.metadata,
            "violations": [[v.field, v.description, v.reason.value] for v in err.violations],
        },
    }
    return json.dumps(body, separators=(",", ":")).encode()


def decode_refusal(data: bytes) -> DomainError | None:
    body = json.loads(data)
    r = body.get("refusal")
    if r is None:
        return None
    violations = tuple(FieldViolation(f, d, ErrorCode(c)) for f, d, c in r["violations"])
    return DomainError(ErrorCode(r["code"]), r["message"], dict(r["metadata"]), violations)


def decode_answer(data: bytes) -> tuple[PunchResult, str]:
    body = json.loads(data)
    return (
        PunchResult(
            activity_from_dict(body["activity"]),
            activity_from_dict(body["closed_shift"]) if body["closed_shift"] else None,
            activity_from_dict(body["resumed_shift"]) if body["resumed_shift"] else None,
        ),
        body["requestId"],
    )


def activity_from_dict(d: dict[str, Any]) -> Activity:
    return Activity(
        **{
            **d,
            "kind": ActivityKind(d["kind"]),
            "start": _point(d["start"]),
            "end": _point(d["end"]) if d["end"] is not None else None,
        }
    )


def _point(d: dict[str, Any]) -> PunchPoint:
    loc = d["location"]
    return PunchPoint(**{**d, "location": PunchLocation(**loc) if loc is not None else None})


def purge_idempotency_keys(
    uows: UnitOfWorkFactory, now: float, retention_s: float, batch: int = 1000
) -> int:
    """Forget keys used more than ``retention_s`` seconds before ``now``.

    Deletes ``batch`` keys per transaction, so that punches waiting for the
    write lock meanwhile wait for one short transaction at most.
    """
    cutoff = int(now - retention_s)
    return in_batches(uows, lambda uow: uow.idempotency.purge(cutoff, batch), batch)


def list_manual_breaks(uows: UnitOfWorkFactory, account: int, time_clock_id: int) -> TimeClock:
    with uows(account=account, readonly=True) as uow:
        return get_time_clock(uow, time_clock_id)


def time_clock_settings(
    uow: UnitOfWork, fences: FenceEngine | None, account: int, time_clock_id: int
) -> TimeClock:
    """The time clock as the fence engine holds it (no read of its users and
    jobs), or from the store; TIME_CLOCK_NOT_FOUND when it does not exist."""
    view = fences.view_knowing(account, (time_clock_id,)) if fences is not None else None
    return _time_clock(uow, view, time_clock_id)


def _time_clock(uow: UnitOfWork, view: FenceView | None, time_clock_id: int) -> TimeClock:
    """The time clock's settings from the fence engine, which every committed
    change reaches before its call returns; the store when there is no engine."""
    tc = view.time_clock(time_clock_id) if view is not None else None
    return tc if tc is not None else get_time_clock(uow, time_clock_id)
