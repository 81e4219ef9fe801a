"""Ports: what the use cases need from storage and time, as Protocols."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import date
from types import TracebackType
from typing import NamedTuple, Protocol, Self, TypeVar

import numpy as np

from geopunch.domain.accounts import Account, ApiKey
from geopunch.domain.events import Event, LiveTrail
from geopunch.domain.locations import (
    F64,
    I32,
    I64,
    B,
    BatchVerdict,
    FenceRows,
    Held,
    InsideCarry,
    TrailVerdict,
)
from geopunch.domain.models import DayStatus, Geofence, TimeClock
from geopunch.domain.punches import (
    Activity,
    ActivityRow,
    PointVerdict,
    PunchPoint,
    PunchState,
)
from geopunch.domain.shifts import ScheduledShift, Scheduler
from geopunch.domain.webhooks import Attempt, Subscription

T = TypeVar("T")


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the Unix epoch."""
        ...


class TimeClockRepository(Protocol):
    def get(self, time_clock_id: int) -> TimeClock | None: ...

    def list_all(self) -> list[TimeClock]: ...

    def list_of(self, time_clock_ids: Collection[int]) -> list[TimeClock]:
        """The ones of these that exist, by id."""
        ...

    def add(self, tc: TimeClock) -> None:
        """Insert; raise DomainError(TIME_CLOCK_ALREADY_EXISTS) when the id is taken."""
        ...

    def replace(self, tc: TimeClock) -> None: ...

    def next_id(self) -> int: ...

    def day_statuses_of(
        self, time_clock_id: int, user_ids: Sequence[int], first: date, last: date
    ) -> dict[int, dict[date, DayStatus]]:
        """Statuses of the users' days from ``first`` to ``last`` (inclusive)."""
        ...

    def day_statuses(self, time_clock_id: int, user_id: int) -> dict[date, DayStatus]: ...

    def set_day_status(
        self, time_clock_id: int, user_id: int, days: Sequence[date], status: DayStatus
    ) -> None: ...


class GeofenceRepository(Protocol):
    def list_for(self, time_clock_id: int) -> list[Geofence]: ...

    def enabled_rows(self, time_clock_ids: Collection[int] | None = None) -> FenceRows:
        """Every enabled fence (of these time clocks) as columns, ordered by
        time clock (a full index build reads these)."""
        ...

    def get(self, time_clock_id: int, fence_id: str) -> Geofence | None: ...

    def add_many(self, fences: Sequence[Geofence]) -> None: ...

    def delete(self, time_clock_id: int, fence_id: str) -> bool: ...

    def job_ids_in_use(self, time_clock_id: int) -> set[str]: ...


@dataclass(frozen=True, slots=True)
class FenceSnapshot:
    """Accounts' enabled fences as columns, and the newest seq of the index's
    change feed, read in one snapshot of the store."""

    cursor: int
    rows: Mapping[int, FenceRows]


class FenceSnapshotReader(Protocol):
    """Reads ``accounts``' enabled fences (as ``GeofenceRepository.enabled_rows``
    does) in a transaction of its own, leaving the interpreter to other
    threads while the store works: start-up runs it beside its other work.
    None: the store is too small for it to pay; read them in the unit of work."""

    def __call__(self, accounts: Sequence[int]) -> FenceSnapshot | None: ...


class PageQuery(NamedTuple):
    """Which activities a listed page holds: a time clock's overlapping
    ``[start, end)``, of the users and jobs named (none named: all), in
    (start, id) order after ``after``, at most ``limit``."""

    time_clock_id: int
    start: int
    end: int
    user_ids: Sequence[int]
    job_ids: Sequence[str]
    after: tuple[int, str] | None
    limit: int


class EncodedPage(NamedTuple):
    """A page of activities as one value: their kept lines, joined."""

    size: int
    lines: bytes
    #: The (start, id) of the page's last activity when more follow it.
    next_after: tuple[int, str] | None


class ActivityRepository(Protocol):
    """Shifts and breaks. ``add`` and ``close`` raise ConcurrentChange when the
    database refuses them because another transaction got there first."""

    def punch_state(self, time_clock_id: int, user_id: int, day: date) -> PunchState:
        """The open activity, the last end and ``day``'s status, in one read."""
        ...

    def add(self, activity: Activity) -> None: ...

    def close(self, activity: Activity, end: PunchPoint, modified_at: int) -> None:
        """End the open ``activity`` (its id, time clock and user) at ``end``."""
        ...

    def close_many(self, closes: Sequence[tuple[Activity, PunchPoint, int]]) -> None:
        """``close`` each (activity, end, modified_at), as one write."""
        ...

    def list_for(self, time_clock_id: int, user_id: int) -> list[Activity]: ...

    def open_many(self, pairs: Sequence[tuple[int, int]]) -> dict[tuple[int, int], Activity]:
        """Open activities of (time clock, user) pairs."""
        ...

    def add_many(self, new: Sequence[Activity]) -> None:
        """Insert completed activities (ConcurrentChange: the store found an overlap)."""
        ...

    def get(self, time_clock_id: int, activity_id: str) -> Activity | None: ...

    def near(
        self, time_clock_id: int, user_ids: Sequence[int], lo: int, hi: int
    ) -> dict[int, list[Activity]]:
        """Each user's activities that overlap or touch ``[lo, hi]``, open ones included."""
        ...

    def replace(self, activity: Activity, read_modified_at: int) -> None:
        """Store a corrected completed activity; ConcurrentChange unless it is
        still as read (its ``modified_at``)."""
        ...

    def remove(self, activity_id: str, read_modified_at: int) -> None: ...

    def page(self, q: PageQuery) -> list[ActivityRow]:
        """The page's activities as flat rows (a page may hold 10,000)."""
        ...

    def page_lines(self, q: PageQuery) -> EncodedPage:
        """The page's activities as the lines the store keeps for them (each
        the activity as a listed page of the gRPC API holds it), joined."""
        ...

    def spans(self, q: PageQuery, paid_breaks: Sequence[str], now: int) -> Iterator[np.ndarray]:
        """Every activity the page's window and filters hold (``after`` and
        ``limit`` aside) as the :data:`Span` rows totals read (breaks of the
        types in ``paid_breaks`` paid, open activities ending at ``now``):
        int64 arrays of four columns, each of a bounded size, rows in no
        particular order."""
        ...

    def open_for(self, time_clock_id: int) -> dict[int, ActivityRow]:
        """The open activity of each user of the time clock who has one, as
        flat rows: the board of a large time clock reads thousands."""
        ...


class IdempotencyRepository(Protocol):
    def get(self, key: str) -> tuple[str, str, bytes] | None:
        """(method, body hash, stored response) of a used key."""
        ...

    def put(self, key: str, method: str, body_hash: str, response: bytes) -> None: ...

    def purge(self, created_before: int, limit: int) -> int:
        """Forget at most ``limit`` keys used before ``created_before``; return how many."""
        ...


class SchedulerRepository(Protocol):
    def get(self, scheduler_id: int) -> Scheduler | None: ...

    def has_user(self, scheduler_id: int, user_id: int) -> bool: ...

    def next_id(self) -> int: ...

    def add(self, s: Scheduler) -> None:
        """Insert; raise DomainError(SCHEDULER_ALREADY_EXISTS) when the id is taken."""
        ...

    def replace(self, s: Scheduler) -> None: ...


class ShiftRepository(Protocol):
    def add_many(self, shifts: Sequence[ScheduledShift]) -> None: ...

    def get(self, shift_id: str) -> ScheduledShift | None: ...

    def list_range(self, scheduler_id: int, start: int, end: int) -> list[ScheduledShift]: ...


class WebhookRepository(Protocol):
    """Webhook subscriptions (one account's) and, for the deliverer, their
    leases, progress and attempts across accounts."""

    def count(self) -> int: ...

    def add(self, sub: Subscription) -> None: ...

    def get(self, sub_id: str, *, for_update: bool = False) -> Subscription | None: ...

    def all(self) -> list[Subscription]: ...

    def replace(self, sub: Subscription) -> None: ...

    def remove(self, sub_id: str) -> bool: ...

    def attempts(self, sub_id: str, limit: int, before_id: int = 0) -> list[Attempt]:
        """Newest first, ids below ``before_id`` (0: from the newest)."""
        ...

    def fair_share(self, owner: str, now_ms: int, lease_ms: int) -> int:
        """Count ``owner`` as a live deliverer for ``lease_ms``; how many
        active subscriptions it should hold, the live ones sharing evenly."""
        ...

    def claim(self, owner: str, now_ms: int, lease_ms: int, limit: int) -> list[Subscription]:
        """Renew ``owner``'s leases and take free ones until it holds
        ``limit``; every active one ``owner`` now holds, by id."""
        ...

    def release(self, owner: str, sub_ids: Sequence[str] | None = None) -> None:
        """Give back the leases on ``sub_ids`` (None: all, and stop counting
        ``owner`` as a live deliverer)."""
        ...

    def save_progress(self, sub: Subscription, owner: str, seen_modified_at: int) -> bool:
        """Store cursor and retry state while ``owner`` holds the lease and the
        subscription is unchanged since ``seen_modified_at``."""
        ...

    def record_attempts(self, done: Sequence[Attempt]) -> None: ...

    def purge_attempts(self, before_ms: int, limit: int) -> int: ...

    def claim_sink(
        self, name: str, owner: str, now_ms: int, lease_ms: int, start: int
    ) -> int | None:
        """Take or keep the lease of an event sink; its cursor, or None while
        another holds it (a new sink starts at ``start``)."""
        ...

    def save_sink(self, name: str, owner: str, cursor: int) -> bool: ...

    def release_sink(self, name: str, owner: str) -> None: ...


class EventRepository(Protocol):
    """The append-only event log; written in the transaction of its cause."""

    def append(self, new: Sequence[Event]) -> None: ...

    def horizon(self) -> int:
        """The log holds no event at or below this seq any more (0: none purged)."""
        ...

    def purge(self, recorded_before: int, limit: int) -> int:
        """Remove at most ``limit`` of the oldest events recorded before
        ``recorded_before`` (a prefix of the log, every account's)."""
        ...

    def newest(self) -> int:
        """The newest seq of any account, 0 for none (store-wide)."""
        ...

    def every_after(self, cursor: int, limit: int) -> list[Event]:
        """Every account's events after ``cursor`` in log order (store-wide)."""
        ...

    def after(
        self,
        cursor: int,
        limit: int = 1000,
        types: Sequence[str] = (),
        time_clock_ids: Sequence[int] = (),
    ) -> list[Event]:
        """Events after ``cursor`` in log order, of these types and clocks (empty: any)."""
        ...


class LocationStateRepository(Protocol):
    """Live trails, keyed by (user, time clock)."""

    def load(self, user_ids: Sequence[int]) -> dict[tuple[int, int], LiveTrail]:
        """Every stored trail of these users, keyed by (user, time clock)."""
        ...

    def save(
        self, new: dict[tuple[int, int], LiveTrail], known: Mapping[tuple[int, int], LiveTrail]
    ) -> None:
        """Write ``new``; ``known`` are the trails as loaded (the others are created).
        Raise ConcurrentChange when another call created one of them first."""
        ...


class NotedChange:
    """A change of the fence index feed noted in an open transaction. Its
    ``seq`` is drawn as the transaction commits (0 until then)."""

    __slots__ = ("seq",)

    def __init__(self) -> None:
        self.seq = 0


class IndexChangeRepository(Protocol):
    """The feed of changed time clocks that keeps every process's fence index current."""

    def note(self, time_clock_id: int) -> NotedChange:
        """Record that the time clock's settings or geofences change in this
        transaction. The change is written, and its seq drawn, at the commit."""
        ...

    def after(self, cursor: int, limit: int = 1000) -> list[tuple[int, int, int]]:
        """(seq, account, time clock id) of every account's changes after
        ``cursor``, in commit order."""
        ...

    def last(self) -> int:
        """The newest seq, 0 for none."""
        ...

    def prune(self, before: int) -> int:
        """Forget changes recorded before ``before`` (Unix seconds); how many went."""
        ...

    def identity(self) -> tuple[str, int]:
        """The feed's id (made with the store) and the newest seq pruned from it."""
        ...

    def count_after(self, cursor: int) -> int:
        """How many changes come after ``cursor``."""
        ...

    def at(self, seq: int) -> tuple[int, int, int] | None:
        """(account, time clock id, changed at) of the change ``seq``; None once pruned."""
        ...


class AccountRepository(Protocol):
    def create(self, name: str) -> Account: ...

    def by_name(self, name: str) -> Account | None: ...

    def list_all(self) -> list[Account]: ...

    def ids(self) -> list[int]: ...


class ApiKeyRepository(Protocol):
    def add(self, key: ApiKey) -> None: ...

    def get(self, key_id: str) -> ApiKey | None: ...

    def list_for(self, account_id: int) -> list[ApiKey]: ...

    def active(self) -> list[ApiKey]:
        """Every account's keys that are not revoked."""
        ...

    def fingerprint(self) -> tuple[int, ...]:
        """A value that changes whenever a key is added or revoked."""
        ...

    def revoke(self, key_id: str) -> bool: ...


class UnitOfWork(Protocol):
    """One transaction's repositories, seeing the rows of one account
    (``account``; None in housekeeping, where only the methods documented
    as store-wide work). ``for_account`` gives another account's
    repositories in the same transaction."""

    @property
    def account(self) -> int | None: ...

    def for_account(self, account: int) -> UnitOfWork: ...

    @property
    def time_clocks(self) -> TimeClockRepository: ...

    @property
    def geofences(self) -> GeofenceRepository: ...

    @property
    def activities(self) -> ActivityRepository: ...

    @property
    def idempotency(self) -> IdempotencyRepository: ...

    @property
    def schedulers(self) -> SchedulerRepository: ...

    @property
    def shifts(self) -> ShiftRepository: ...

    @property
    def events(self) -> EventRepository: ...

    @property
    def locations(self) -> LocationStateRepository: ...

    @property
    def index_changes(self) -> IndexChangeRepository: ...

    @property
    def accounts(self) -> AccountRepository: ...

    @property
    def api_keys(self) -> ApiKeyRepository: ...

    @property
    def webhooks(self) -> WebhookRepository: ...

    def commit(self) -> None: ...

    def savepoint(self) -> AbstractContextManager[object]:
        """A nested scope: its writes are undone if the block raises."""
        ...

    def together(self) -> AbstractContextManager[object]:
        """A block whose writes the store may send at once and answer at its
        end: a constraint's refusal of any of them is raised there, as
        ConcurrentChange (a lost race, as for a single write)."""
        ...

    def changes(self) -> int | None:
        """A counter that only grows and moves whenever this connection may
        have written, or a statement failed (SQLite's changed rows; on
        PostgreSQL, statements other than plain reads, and failures); None
        when the store cannot tell cheaply."""
        ...


class Transaction(UnitOfWork, Protocol):
    """A unit of work as opened: leaving the block without commit() rolls back."""

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class UnitOfWorkFactory(Protocol):
    def __call__(self, *, account: int | None = None, readonly: bool = False) -> Transaction: ...


class TransactionRunner(Protocol):
    """From a thread: runs ``work`` in a transaction (perhaps shared with
    other callers', each in its own savepoint) and returns its result once
    committed; ``after(result)`` runs first, once the commit is durable and
    before any later commit, under the fence index's write lock."""

    def __call__(
        self, work: Callable[[UnitOfWork], T], after: Callable[[T], None] | None = None
    ) -> T: ...


class AsyncTransactionRunner(Protocol):
    """Runs ``work`` in a transaction and commits its writes before the
    awaited result is set.

    An implementation may share one transaction (and one fsync) among several
    callers' work, each in its own savepoint; work that raises leaves no
    writes behind and its exception reaches its caller only. Work the store
    chose as a deadlock's victim raises ConcurrentChange, to be run again.
    """

    def __call__(
        self, work: Callable[[UnitOfWork], T], order: tuple[int, ...] = ()
    ) -> Awaitable[T]:
        """``order`` (account, time clock, user) is the place of ``work``
        among work committed together: rows are locked in that order."""
        ...


class FenceListener(Protocol):
    """Told about committed time clock and geofence changes (the fence index listens).

    Use cases commit inside ``write_lock()`` and report the change before
    leaving it, so the listener sees changes in commit order.
    """

    def write_lock(self) -> AbstractContextManager[None]: ...

    def time_clock_changed(
        self, account: int, tc: TimeClock, fences: Sequence[Geofence], seq: int = 0
    ) -> None:
        """``seq``: the change's seq in the index-change feed, when its writer reports it."""
        ...

    def fences_changed(
        self,
        account: int,
        tc: TimeClock,
        added: Sequence[Geofence],
        removed: Sequence[str],
        seq: int = 0,
    ) -> None: ...

    def time_clocks_read_again(
        self, account: int, time_clocks: Sequence[TimeClock], fences: FenceRows
    ) -> None:
        """Several time clocks as the store holds them now, with all their
        enabled fences as columns (the feed's follower reads changes so)."""
        ...

    def reported(self, seq: int) -> bool:
        """Whether the feed's change ``seq`` was reported here by its writer
        (then the feed's follower need not read it again); forgets it."""
        ...


class FenceView(Protocol):
    """One consistent state of every time clock and enabled geofence: every
    answer read from one view agrees with every other.

    Columns are 1-d numpy arrays of one length n: latitudes and longitudes in
    WGS84 degrees (float64), time clock and user ids int64, timestamps in Unix
    seconds (int64), accuracies in metres (float64, NaN for unknown). A job is
    an index (int32, -1 for none) into ``job_names``.
    """

    def time_clock(self, time_clock_id: int) -> TimeClock | None: ...

    def check(
        self,
        lats: F64,
        lons: F64,
        time_clock_ids: I64 | int,
        job_indexes: I32 | None = None,
        job_names: Sequence[str] = (),
        accuracy_m: F64 | None = None,
        *,
        with_distance: bool = False,
    ) -> BatchVerdict:
        """Which enabled fences contain each point, and is it allowed for its job.

        A point is inside a fence when its geodesic distance to the centre is
        at most the fence size plus ``min(accuracy, accuracy_tolerance_m)``.
        """
        ...

    def judge(
        self,
        time_clock_id: int,
        lat: float,
        lon: float,
        job_id: str | None = None,
        accuracy_m: float | None = None,
    ) -> PointVerdict:
        """``check`` for one punch location, with the deepest applicable fence."""
        ...

    def unassigned(self, user_ids: I64, time_clock_ids: I64, *, listed_only: bool = False) -> B:
        """Samples of a known time clock whose user is not one of its users;
        with ``listed_only``, clocks that list no users accept everyone."""
        ...

    def carry(self, held: Held) -> InsideCarry:
        """``held`` in the form this view reads fastest, for several batches."""
        ...

    def detect_exits(
        self,
        user_ids: I64,
        time_clock_ids: I64,
        timestamps: I64,
        lats: F64,
        lons: F64,
        accuracy_m: F64 | None = None,
        *,
        job_indexes: I32 | None = None,
        job_names: Sequence[str] = (),
        skip: B | None = None,
        initial: Held | InsideCarry | None = None,
    ) -> TrailVerdict:
        """Inside/outside verdicts and fence exits of trails (one per user and
        time clock, judged in time order); ``skip`` leaves samples out and
        ``initial`` is where trails stood before (docs/engine.md has the rules)."""
        ...


class FenceEngine(FenceListener, Protocol):
    """Holds every account's time clocks and fences and follows their changes
    (the composition root loads it at start-up); ``view(account)`` is the
    current state of one account, cheap to take and safe to read from any
    thread while changes go on. A view never sees another account's clocks."""

    def view(self, account: int) -> FenceView: ...

    def view_knowing(self, account: int, time_clock_ids: Iterable[int]) -> FenceView:
        """``view(account)``, after catching up with the store when it lacks
        one of ``time_clock_ids``: a time clock made through another replica
        a moment ago is known before the call is answered. Blocking."""
        ...

    def totals(self) -> tuple[int, int]:
        """Time clocks and fences held, over every account."""
        ...


@dataclass(frozen=True, slots=True)
class PostResult:
    """What became of one webhook POST: the status code, or why none came."""

    status_code: int | None
    error: str | None

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class EventPublisher(Protocol):
    """Publishes events to a broker and waits for it to have stored each."""

    async def publish(self, subject: str, body: bytes, msg_id: str) -> None:
        """Raises when the broker did not acknowledge the message."""
        ...

    async def close(self) -> None: ...


class WebhookPoster(Protocol):
    """Sends webhook requests, keeping connections to receivers alive."""

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> PostResult: ...

    async def close(self) -> None: ...


class StopSignal(Protocol):
    """The process is stopping: what threads poll, and what coroutines sleep on
    so that a stop ends their sleep at once instead of at its end."""

    def is_set(self) -> bool: ...

    async def sleep(self, seconds: float) -> bool:
        """Sleep ``seconds``, or less if the stop comes first; whether it has."""
        ...


class EventSignal(Protocol):
    """Moves when a commit appended events (this process's, a sibling's or
    another replica's, as the server learns of them)."""

    @property
    def version(self) -> int: ...

    async def wait(self, seen: int, timeout: float) -> None:
        """Return once ``version`` has moved past ``seen``, or after ``timeout`` seconds."""
        ...
