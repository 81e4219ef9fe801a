"""Time activity use cases: record completed shifts and breaks, correct and
delete them, list a timesheet, and tell who is on the clock.

Each write is one transaction that reads what its rules need, writes, and
appends one event per changed activity. A write that loses a race (the
store refused an overlap that a concurrent transaction created, or a
correction found the row changed) runs again from scratch, so the second
writer gets a named refusal, never a silent overlap.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import date, timedelta
from typing import TypeVar

from geopunch.domain.errors import ConcurrentChange, DomainError, ErrorCode
from geopunch.domain.events import EventType
from geopunch.domain.models import DayStatus, TimeClock
from geopunch.domain.ports import Clock, FenceEngine, PageQuery, UnitOfWork, UnitOfWorkFactory
from geopunch.domain.punches import (
    Activity,
    ActivityKind,
    ActivityRow,
    SchedulerShiftCheck,
    activity_ids,
    check_idempotency_key,
    timesheet_day,
)
from geopunch.domain.rules import Collector
from geopunch.domain.timesheets import (
    Board,
    Correction,
    ListQuery,
    Planned,
    UserActivities,
    WindowTotals,
    activity_event,
    check_completed,
    check_list_query,
    check_status_users,
    check_version,
    judge_against_store,
    locked_day,
    next_page_token,
    plan_correction,
    plan_time_activities,
    reattributed_breaks,
    span_of,
    totals,
    user_statuses,
)
from geopunch.service.punches import (
    MAX_ATTEMPTS,
    activity_from_dict,
    scheduler_shift_check,
    time_clock_settings,
)

T = TypeVar("T")

_CREATE = "create_time_activities"


def _retrying(uows: UnitOfWorkFactory, account: int, work: Callable[[UnitOfWork], T]) -> T:
    """Run ``work`` in a transaction of ``account`` and commit; again from the
    start while it loses a race, at most MAX_ATTEMPTS times."""
    for _ in range(MAX_ATTEMPTS):
        try:
            with uows(account=account) as uow:
                result = work(uow)
                uow.commit()
                return result
        except ConcurrentChange:
            continue
    raise DomainError(
        ErrorCode.CONCURRENT_MODIFICATION,
        "the same users' activities were changed by concurrent calls; retry",
    )


def _day_statuses(
    uow: UnitOfWork, time_clock_id: int, users: Sequence[int], lo: int, hi: int
) -> dict[int, dict[date, DayStatus]]:
    """The users' day statuses around ``[lo, hi]``: a day either side of the
    span in UTC covers every day an activity in it touches, in any zone."""
    first = timesheet_day(lo, "UTC") - timedelta(days=1)
    last = timesheet_day(hi, "UTC") + timedelta(days=1)
    return uow.time_clocks.day_statuses_of(time_clock_id, users, first, last)


def _judge(
    uow: UnitOfWork,
    tc: TimeClock,
    planned: Sequence[Planned],
    out: Collector,
    leave_out: str = "",
) -> list[Activity]:
    """Read what the planned activities' store rules need and apply them."""
    if not planned:
        return []
    users = sorted({p.activity.user_id for p in planned})
    lo, hi = span_of(p.activity for p in planned)
    near = uow.activities.near(tc.id, users, lo, hi)
    stored = {u: [a for a in acts if a.id != leave_out] for u, acts in near.items()}
    days = _day_statuses(uow, tc.id, users, lo, hi)
    checks: dict[tuple[str, int], SchedulerShiftCheck] = {}
    for p in planned:
        a = p.activity
        if a.scheduler_shift_id and (a.scheduler_shift_id, a.user_id) not in checks:
            checks[a.scheduler_shift_id, a.user_id] = scheduler_shift_check(
                uow, a.scheduler_shift_id, a.user_id
            )
    return judge_against_store(planned, stored, days, checks, out)


def create_time_activities(
    uows: UnitOfWorkFactory,
    fences: FenceEngine | None,
    clock: Clock,
    account: int,
    time_clock_id: int,
    groups: Sequence[UserActivities],
    idempotency_key: str = "",
) -> list[Activity]:
    """Record 1..1000 completed shifts and breaks, all or none, in request
    order; with an idempotency key a retry answers the first result."""
    check_idempotency_key(idempotency_key)
    body_hash = _digest(time_clock_id, groups) if idempotency_key else ""

    def work(uow: UnitOfWork) -> list[Activity]:
        if idempotency_key:
            stored = uow.idempotency.get(idempotency_key)
            if stored is not None:
                return _replay(idempotency_key, body_hash, *stored)
        now = clock.now()
        tc = time_clock_settings(uow, fences, account, time_clock_id)
        out = Collector()
        count = sum(len(g.shifts) + len(g.manual_breaks) for g in groups)
        planned = plan_time_activities(tc, groups, now, out, activity_ids(count))
        created = _judge(uow, tc, planned, out)
        out.raise_if_any("the time activities")
        # Built before the insert: from it to the commit the users (or the
        # whole clock) wait for this transaction's turn to end.
        stamp = int(now)
        made = [activity_event(EventType.TIME_ACTIVITY_CREATED, stamp, None, a) for a in created]
        answer = b""
        if idempotency_key:
            answer = json.dumps([asdict(a) for a in created], separators=(",", ":")).encode()
        uow.activities.add_many(created)
        uow.events.append(made)
        if idempotency_key:
            uow.idempotency.put(idempotency_key, _CREATE, body_hash, answer)
        return created

    return _retrying(uows, account, work)


def _digest(time_clock_id: int, groups: Sequence[UserActivities]) -> str:
    body = json.dumps(
        [time_clock_id, [asdict(g) for g in groups]], separators=(",", ":"), default=str
    )
    return hashlib.sha256(body.encode()).hexdigest()


def _replay(
    key: str, body_hash: str, method: str, stored_hash: str, answer: bytes
) -> list[Activity]:
    if method != _CREATE or stored_hash != body_hash:
        raise DomainError(
            ErrorCode.IDEMPOTENCY_KEY_REUSED,
            f"idempotency key {key!r} was used for a different request; "
            "use a new key for new activities",
            {"idempotencyKey": key},
        )
    return [activity_from_dict(d) for d in json.loads(answer)]


def _existing(uow: UnitOfWork, time_clock_id: int, activity_id: str) -> Activity:
    current = uow.activities.get(time_clock_id, activity_id)
    if current is None:
        raise DomainError(
            ErrorCode.TIME_ACTIVITY_NOT_FOUND,
            f"time clock {time_clock_id} has no shift or break {activity_id[:128]!r}",
            {"activityId": activity_id[:128]},
        )
    check_completed(current)
    return current


def _check_unlocked(uow: UnitOfWork, tc: TimeClock, current: Activity) -> None:
    """An activity on a locked or approved day stays as it is."""
    assert current.end is not None
    statuses = _day_statuses(
        uow, tc.id, [current.user_id], current.start.timestamp, current.end.timestamp
    )
    locked = locked_day(current, statuses.get(current.user_id, {}))
    if locked is not None:
        day, status = locked
        raise DomainError(
            ErrorCode.HAS_LOCKED_DAYS,
            f"{current.kind.value} {current.id} is on {day.isoformat()}, which is "
            f"{status.value.lower()} for user {current.user_id}; unlock the day first",
            {"date": day.isoformat(), "status": status.value},
        )


def update_time_activity(
    uows: UnitOfWorkFactory,
    fences: FenceEngine | None,
    clock: Clock,
    account: int,
    time_clock_id: int,
    change: Correction,
) -> Activity:
    """Correct a completed activity read at ``change.modified_at``."""

    def work(uow: UnitOfWork) -> Activity:
        tc = time_clock_settings(uow, fences, account, time_clock_id)
        current = _existing(uow, time_clock_id, change.activity_id)
        now = clock.now()
        out = Collector()
        corrected = plan_correction(tc, current, change, now, out)
        out.raise_if_any("the correction")
        assert corrected is not None
        _check_unlocked(uow, tc, current)
        (corrected,) = _judge(uow, tc, [Planned("", corrected)], out, leave_out=current.id)
        out.raise_if_any("the correction")
        uow.activities.replace(corrected, current.modified_at)
        uow.events.append(
            [activity_event(EventType.TIME_ACTIVITY_UPDATED, int(now), current, corrected)]
        )
        _breaks_follow(uow, current, corrected, int(now))
        return corrected

    return _retrying(uows, account, work)


def delete_time_activity(
    uows: UnitOfWorkFactory,
    fences: FenceEngine | None,
    clock: Clock,
    account: int,
    time_clock_id: int,
    activity_id: str,
    modified_at: int,
) -> Activity:
    """Delete a completed activity read at ``modified_at``; answer it as it was."""

    def work(uow: UnitOfWork) -> Activity:
        tc = time_clock_settings(uow, fences, account, time_clock_id)
        current = _existing(uow, time_clock_id, activity_id)
        check_version(current, modified_at, "deletion")
        _check_unlocked(uow, tc, current)
        uow.activities.remove(current.id, current.modified_at)
        stamp = int(clock.now())
        uow.events.append([activity_event(EventType.TIME_ACTIVITY_DELETED, stamp, current, None)])
        _breaks_follow(uow, current, None, stamp)
        return current

    return _retrying(uows, account, work)


def _breaks_follow(uow: UnitOfWork, before: Activity, after: Activity | None, stamp: int) -> None:
    """Re-attribute the breaks around a corrected or deleted shift, each
    change stored and audited like any correction."""
    if before.kind is not ActivityKind.SHIFT or before.end is None:
        return
    ends = [before.end.timestamp] + ([after.end.timestamp] if after and after.end else [])
    nearby = uow.activities.near(before.time_clock_id, [before.user_id], min(ends), max(ends))
    changed = reattributed_breaks(before.id, after, nearby.get(before.user_id, []), stamp)
    for old, new in changed:
        uow.activities.replace(new, old.modified_at)
    uow.events.append(
        [activity_event(EventType.TIME_ACTIVITY_UPDATED, stamp, old, new) for old, new in changed]
    )


@dataclass(frozen=True, slots=True)
class TimeActivityPage:
    #: Flat rows: a page may hold 10,000 (``ActivityRow.activity()`` gives the
    #: object). Empty when the page was asked for as lines.
    activities: list[ActivityRow]
    next_page_token: str
    #: Per user and day over the whole window; on the first page, when asked for.
    totals: WindowTotals | None = None
    #: The page's activities as the store keeps them encoded, joined (see
    #: ``ActivityRepository.page_lines``), when asked for.
    lines: bytes | None = None


def list_time_activities(
    uows: UnitOfWorkFactory,
    fences: FenceEngine | None,
    clock: Clock,
    account: int,
    q: ListQuery,
    *,
    as_lines: bool = False,
) -> TimeActivityPage:
    size, cursor = check_list_query(q)
    with uows(account=account, readonly=True) as uow:
        tc = time_clock_settings(uow, fences, account, q.time_clock_id)
        jobs = sorted(tc.with_descendants(q.job_ids)) if q.job_ids else []
        after = (cursor.start_ts, cursor.activity_id) if cursor is not None else None
        asked = PageQuery(tc.id, q.start_time, q.end_time, q.user_ids, jobs, after, size)

        lines = None
        if as_lines:
            encoded = uow.activities.page_lines(asked)
            lines, next_after = encoded.lines, encoded.next_after
            rows: list[ActivityRow] = []
        else:
            rows = uow.activities.page(asked._replace(limit=size + 1))
            next_after = (rows[size - 1].start_ts, rows[size - 1].id) if len(rows) > size else None
            rows = rows[:size]
        token = next_page_token(q, *next_after) if next_after is not None else ""
        summed = None
        if q.include_totals and cursor is None:
            # The whole window's activities, read in the same snapshot as the page.
            paid = [b.id for b in tc.manual_break_types if b.is_paid]
            spans = uow.activities.spans(asked, paid, int(clock.now()))
            summed = totals(tc, spans, q.start_time, q.end_time)
        return TimeActivityPage(rows, token, summed, lines)


def get_user_statuses(
    uows: UnitOfWorkFactory,
    fences: FenceEngine | None,
    account: int,
    time_clock_id: int,
    user_ids: Sequence[int],
) -> Board:
    """Who of the time clock's users (all, or those named) is on a shift or a break now."""
    with uows(account=account, readonly=True) as uow:
        tc = time_clock_settings(uow, fences, account, time_clock_id)
        users = check_status_users(tc, user_ids)
        return user_statuses(tc, users, uow.activities.open_for(tc.id))
