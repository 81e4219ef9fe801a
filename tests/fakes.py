"""An in-memory unit of work: the store's repositories over dicts.

Use cases run on it in microseconds, so each can be tested without SQLite or
gRPC; the SQLite and PostgreSQL suites prove the real repositories. A unit
of work works on a copy of the store's state and writes it back on commit,
so leaving without commit (or raising) changes nothing, as a transaction.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date
from types import TracebackType
from typing import Self

from geopunch.domain.accounts import DEFAULT_ACCOUNT
from geopunch.domain.errors import ConcurrentChange, DomainError, ErrorCode
from geopunch.domain.events import Event, LiveTrail, new_event_ids
from geopunch.domain.locations import FenceRows
from geopunch.domain.models import DayStatus, Geofence, TimeClock
from geopunch.domain.punches import Activity, PunchPoint, PunchState
from geopunch.domain.rules import MAX_ENTITY_ID
from geopunch.domain.shifts import ScheduledShift, Scheduler


def _next_free(taken: Mapping[int, object]) -> int:
    """As the SQL stores: one above the largest id, else the lowest free one."""
    top = max(taken, default=0)
    if top < MAX_ENTITY_ID:
        return top + 1
    return next(i for i in itertools.count(1) if i not in taken)


@dataclass
class _State:
    time_clocks: dict[int, TimeClock] = field(default_factory=dict)
    day_statuses: dict[tuple[int, int, date], DayStatus] = field(default_factory=dict)
    geofences: dict[tuple[int, str], Geofence] = field(default_factory=dict)
    activities: dict[str, Activity] = field(default_factory=dict)
    idempotency: dict[str, tuple[str, str, bytes, int]] = field(default_factory=dict)
    schedulers: dict[int, Scheduler] = field(default_factory=dict)
    shifts: dict[str, ScheduledShift] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    live_trails: dict[tuple[int, int], LiveTrail] = field(default_factory=dict)


@dataclass
class _World:
    """Every account's state, and what is store-wide."""

    accounts: dict[int, _State] = field(default_factory=dict)
    # seq, account, clock, at
    index_changes: list[tuple[int, int, int, int]] = field(default_factory=list)
    #: The highest seq purged from the event log.
    purged_through: int = 0

    def of(self, account: int | None) -> _State:
        if account is None:  # housekeeping: no account's rows
            return _State()
        return self.accounts.setdefault(account, _State())


class MemoryStore:
    """The committed state, shared by the units of work made from it."""

    def __init__(self, now: int = 1_800_000_000) -> None:
        self.world = _World()
        self.now = now  # what "created at" means for idempotency keys and index changes
        self.commits = 0

    @property
    def state(self) -> _State:
        """The default account's committed state (what most tests look at)."""
        return self.world.of(DEFAULT_ACCOUNT)

    def __call__(self, *, account: int | None = None, readonly: bool = False) -> MemoryUnitOfWork:
        return MemoryUnitOfWork(self, account, readonly)


class _TimeClocks:
    def __init__(self, s: _State) -> None:
        self.s = s

    def get(self, time_clock_id: int) -> TimeClock | None:
        return self.s.time_clocks.get(time_clock_id)

    def list_all(self) -> list[TimeClock]:
        return [self.s.time_clocks[k] for k in sorted(self.s.time_clocks)]

    def list_of(self, time_clock_ids: Collection[int]) -> list[TimeClock]:
        return [tc for tc in self.list_all() if tc.id in time_clock_ids]

    def add(self, tc: TimeClock) -> None:
        if tc.id in self.s.time_clocks:
            raise DomainError(
                ErrorCode.TIME_CLOCK_ALREADY_EXISTS, f"time clock {tc.id} already exists"
            )
        self.s.time_clocks[tc.id] = tc

    def replace(self, tc: TimeClock) -> None:
        self.s.time_clocks[tc.id] = tc

    def next_id(self) -> int:
        return _next_free(self.s.time_clocks)

    def day_statuses(self, time_clock_id: int, user_id: int) -> dict[date, DayStatus]:
        return {
            d: st
            for (c, u, d), st in self.s.day_statuses.items()
            if (c, u) == (time_clock_id, user_id)
        }

    def set_day_status(
        self, time_clock_id: int, user_id: int, days: Sequence[date], status: DayStatus
    ) -> None:
        for d in days:
            if status is DayStatus.OPEN:
                self.s.day_statuses.pop((time_clock_id, user_id, d), None)
            else:
                self.s.day_statuses[(time_clock_id, user_id, d)] = status


class _Geofences:
    def __init__(self, s: _State) -> None:
        self.s = s

    def list_for(self, time_clock_id: int) -> list[Geofence]:
        return [f for (c, _), f in self.s.geofences.items() if c == time_clock_id]

    def list_all(self) -> list[Geofence]:
        return list(self.s.geofences.values())

    def enabled_rows(self, time_clock_ids: Collection[int] | None = None) -> FenceRows:
        fences = sorted(self.s.geofences.items(), key=lambda kv: kv[0][0])
        return FenceRows.of(
            f for (c, _), f in fences if time_clock_ids is None or c in time_clock_ids
        )

    def get(self, time_clock_id: int, fence_id: str) -> Geofence | None:
        return self.s.geofences.get((time_clock_id, fence_id))

    def add_many(self, fences: Sequence[Geofence]) -> None:
        for f in fences:
            self.s.geofences[(f.time_clock_id, f.id)] = f

    def delete(self, time_clock_id: int, fence_id: str) -> bool:
        return self.s.geofences.pop((time_clock_id, fence_id), None) is not None

    def job_ids_in_use(self, time_clock_id: int) -> set[str]:
        return {j for f in self.list_for(time_clock_id) for j in f.job_ids}


class _Activities:
    def __init__(self, s: _State) -> None:
        self.s = s

    def _of(self, time_clock_id: int, user_id: int) -> list[Activity]:
        return [
            a
            for a in self.s.activities.values()
            if (a.time_clock_id, a.user_id) == (time_clock_id, user_id)
        ]

    def punch_state(self, time_clock_id: int, user_id: int, day: date) -> PunchState:
        mine = self._of(time_clock_id, user_id)
        ends = [a.end.timestamp for a in mine if a.end is not None]
        return PunchState(
            open=next((a for a in mine if a.end is None), None),
            last_end=max(ends, default=None),
            day_status=self.s.day_statuses.get((time_clock_id, user_id, day)),
        )

    def add(self, activity: Activity) -> None:
        # As the store's partial unique index: one open activity per user and clock.
        if activity.end is None and any(
            a.end is None for a in self._of(activity.time_clock_id, activity.user_id)
        ):
            raise ConcurrentChange("an open activity exists")
        self.s.activities[activity.id] = activity

    def close(self, activity_id: str, end: PunchPoint, modified_at: int) -> None:
        current = self.s.activities.get(activity_id)
        if current is None or current.end is not None:
            raise ConcurrentChange(f"activity {activity_id} is not open")
        self.s.activities[activity_id] = replace(current, end=end, modified_at=modified_at)

    def list_for(self, time_clock_id: int, user_id: int) -> list[Activity]:
        return sorted(self._of(time_clock_id, user_id), key=lambda a: a.start.timestamp)

    def open_many(self, pairs: Sequence[tuple[int, int]]) -> dict[tuple[int, int], Activity]:
        wanted = set(pairs)
        return {
            (a.time_clock_id, a.user_id): a
            for a in self.s.activities.values()
            if a.end is None and (a.time_clock_id, a.user_id) in wanted
        }


class _Idempotency:
    def __init__(self, s: _State, store: MemoryStore, world: _World) -> None:
        self.world = world
        self.s, self.store = s, store

    def get(self, key: str) -> tuple[str, str, bytes] | None:
        row = self.s.idempotency.get(key)
        return None if row is None else row[:3]

    def put(self, key: str, method: str, body_hash: str, response: bytes) -> None:
        self.s.idempotency[key] = (method, body_hash, response, self.store.now)

    def purge(self, created_before: int, limit: int) -> int:
        old = [
            (st, k)
            for st in self.world.accounts.values()
            for k, row in st.idempotency.items()
            if row[3] < created_before
        ][:limit]
        for st, k in old:
            del st.idempotency[k]
        return len(old)


class _Schedulers:
    def __init__(self, s: _State) -> None:
        self.s = s

    def get(self, scheduler_id: int) -> Scheduler | None:
        return self.s.schedulers.get(scheduler_id)

    def has_user(self, scheduler_id: int, user_id: int) -> bool:
        s = self.s.schedulers.get(scheduler_id)
        return s is not None and user_id in s.user_ids

    def next_id(self) -> int:
        return _next_free(self.s.schedulers)

    def add(self, s: Scheduler) -> None:
        if s.id in self.s.schedulers:
            raise DomainError(
                ErrorCode.SCHEDULER_ALREADY_EXISTS, f"scheduler {s.id} already exists"
            )
        self.s.schedulers[s.id] = s

    def replace(self, s: Scheduler) -> None:
        self.s.schedulers[s.id] = s


class _Shifts:
    def __init__(self, s: _State) -> None:
        self.s = s

    def add_many(self, shifts: Sequence[ScheduledShift]) -> None:
        for sh in shifts:
            assert sh.id is not None
            self.s.shifts[sh.id] = sh

    def get(self, shift_id: str) -> ScheduledShift | None:
        return self.s.shifts.get(shift_id)

    def list_range(self, scheduler_id: int, start: int, end: int) -> list[ScheduledShift]:
        return sorted(
            (
                sh
                for sh in self.s.shifts.values()
                if sh.scheduler_id == scheduler_id and sh.start_time < end and start < sh.end_time
            ),
            key=lambda sh: (sh.start_time, sh.id or ""),
        )


class _Events:
    def __init__(self, s: _State, world: _World, account: int | None) -> None:
        self.s, self.world, self.account = s, world, account

    def newest(self) -> int:
        return max(
            (st.events[-1].seq for st in self.world.accounts.values() if st.events), default=0
        )

    def append(self, new: Sequence[Event]) -> None:
        seq = self.newest()  # one sequence over every account, as the stores
        self.s.events.extend(
            replace(e, seq=n, id=e.id or new_event_ids(1)[0], account_id=self.account)
            for n, e in enumerate(new, seq + 1)
        )

    def horizon(self) -> int:
        return self.world.purged_through

    def purge(self, recorded_before: int, limit: int) -> int:
        """As the stores, with an event's own time as its recording time."""
        log = sorted(
            ((e.seq, e.occurred_at, st) for st in self.world.accounts.values() for e in st.events),
            key=lambda x: x[0],
        )
        gone = 0
        for seq, occurred_at, st in log[:limit]:
            if occurred_at >= recorded_before:
                break
            st.events[:] = [e for e in st.events if e.seq != seq]
            self.world.purged_through = seq
            gone += 1
        return gone

    def after(
        self,
        cursor: int,
        limit: int = 1000,
        types: Sequence[str] = (),
        time_clock_ids: Sequence[int] = (),
    ) -> list[Event]:
        found = (
            e
            for e in self.s.events
            if e.seq > cursor
            and (not types or e.type in types)
            and (not time_clock_ids or e.time_clock_id in time_clock_ids)
        )
        return list(itertools.islice(found, limit))


class _Locations:
    def __init__(self, s: _State) -> None:
        self.s = s

    def load(self, user_ids: Sequence[int]) -> dict[tuple[int, int], LiveTrail]:
        users = set(user_ids)
        return {k: t for k, t in self.s.live_trails.items() if k[0] in users}

    def save(
        self, new: dict[tuple[int, int], LiveTrail], known: Mapping[tuple[int, int], LiveTrail]
    ) -> None:
        for key, trail in new.items():
            if key not in known and key in self.s.live_trails:
                raise ConcurrentChange(f"trail {key} was created meanwhile")
            self.s.live_trails[key] = trail


class _IndexChanges:
    def __init__(self, world: _World, store: MemoryStore, account: int | None) -> None:
        self.world, self.store, self.account = world, store, account

    def note(self, time_clock_id: int) -> int:
        assert self.account is not None
        seq = self.last() + 1
        self.world.index_changes.append((seq, self.account, time_clock_id, self.store.now))
        return seq

    def after(self, cursor: int, limit: int = 1000) -> list[tuple[int, int, int]]:
        return [(seq, a, tc) for seq, a, tc, _ in self.world.index_changes if seq > cursor][:limit]

    def last(self) -> int:
        return self.world.index_changes[-1][0] if self.world.index_changes else 0

    def prune(self, before: int) -> int:
        kept = [c for c in self.world.index_changes if c[3] >= before]
        removed = len(self.world.index_changes) - len(kept)
        self.world.index_changes[:] = kept
        return removed

    def identity(self) -> tuple[str, int]:
        return "memory", 0

    def count_after(self, cursor: int) -> int:
        return len(self.after(cursor, len(self.world.index_changes)))

    def at(self, seq: int) -> tuple[int, int, int] | None:
        found = [(a, tc, t) for s, a, tc, t in self.world.index_changes if s == seq]
        return found[0] if found else None


class _Repositories:
    account: int | None

    def _bind(self, store: MemoryStore, world: _World) -> None:
        s = world.of(self.account)
        self.time_clocks = _TimeClocks(s)
        self.geofences = _Geofences(s)
        self.activities = _Activities(s)
        self.idempotency = _Idempotency(s, store, world)
        self.schedulers = _Schedulers(s)
        self.shifts = _Shifts(s)
        self.events = _Events(s, world, self.account)
        self.locations = _Locations(s)
        self.index_changes = _IndexChanges(world, store, self.account)


class _Other(_Repositories):
    """Another account's repositories in an open unit of work."""

    def __init__(self, uow: MemoryUnitOfWork, account: int) -> None:
        self._uow, self.account = uow, account
        self._bind(uow._store, uow._work)

    def for_account(self, account: int) -> _Repositories:
        return self._uow.for_account(account)

    def commit(self) -> None:
        self._uow.commit()

    def savepoint(self) -> contextlib.AbstractContextManager[object]:
        return self._uow.savepoint()

    def changes(self) -> int | None:
        return None


class MemoryUnitOfWork(_Repositories):
    """One transaction over a MemoryStore (see the module docstring)."""

    def __init__(self, store: MemoryStore, account: int | None, readonly: bool) -> None:
        self._store, self.account, self._readonly = store, account, readonly

    def __enter__(self) -> Self:
        self._work = copy.deepcopy(self._store.world)
        self._bind(self._store, self._work)
        return self

    def for_account(self, account: int) -> _Repositories:
        return self if account == self.account else _Other(self, account)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        del self._work  # uncommitted writes are gone

    def commit(self) -> None:
        assert not self._readonly, "a read-only unit of work cannot commit"
        self._store.world = copy.deepcopy(self._work)
        self._store.commits += 1

    @contextlib.contextmanager
    def savepoint(self) -> Iterator[object]:
        before = copy.deepcopy(self._work)
        try:
            yield self
        except BaseException:
            self._work.__dict__.update(before.__dict__)
            raise

    def changes(self) -> int | None:
        return None
