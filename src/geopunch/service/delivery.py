"""The deliverer: pushes the event log to webhook subscriptions.

Each process runs one. It takes leases on active subscriptions in the store
(so that no two processes or replicas deliver one subscription at once, and
a killed process's subscriptions are taken over once its leases run out) and
delivers each held subscription in a task of its own, so that a failing
receiver holds back its own subscription only.

The live deliverers share the subscriptions evenly: each claim counts them,
and one holding more than its share hands the rest over. A handed-over
subscription's task ends after the delivery under way, stores its progress,
and only then does the next claim give the lease back, so the one taking it
over never delivers beside it.

Delivery is at least once and in ``seq`` order per subscription. Progress is
stored in batches (every ``FLUSH_EVENTS`` deliveries or ``FLUSH_S``), not per
event: a store write per event would halve the rate. A process killed between
two stores sends what it sent since the last one again, with the same
``webhook-id``, which receivers use to drop duplicates.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from standardwebhooks import Webhook

from geopunch import metrics
from geopunch.domain.errors import DomainError, ErrorCode, StoreUnavailable
from geopunch.domain.events import Event
from geopunch.domain.ports import (
    EventPublisher,
    EventSignal,
    StopSignal,
    UnitOfWorkFactory,
    WebhookPoster,
)
from geopunch.domain.webhooks import (
    FAILING_EVENT,
    Attempt,
    Subscription,
    SubscriptionStatus,
    failing_event_payload,
    retry_delay_s,
)
from geopunch.logs import FailureLog
from geopunch.service.events import EVENT_PAGE
from geopunch.service.log_pages import Outgoing, SharedPages, event_body

log = logging.getLogger("geopunch.webhooks")

FLUSH_EVENTS = 200
FLUSH_S = 0.25
#: How much of an error an attempt keeps.
ERROR_CHARS = 300
#: Subscriptions one process delivers at most, whatever its share (the others
#: wait for another process).
MAX_HELD = 1000
#: The pause before a deliverer or sink that failed is started again.
RESTART_S = 1.0


@dataclass(frozen=True, slots=True)
class DeliverySettings:
    retry_window_s: float = 24 * 3600.0
    lease_s: float = 30.0
    #: How often the store is asked for subscriptions to hold (and leases
    #: renewed) when nothing says that one changed; at most a third of the lease.
    poll_s: float = 1.0


def owner_name() -> str:
    """This process's name in the leases it holds: readable, and unique."""
    return f"{socket.gethostname()[:30]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class _Changed(Exception):
    """The subscription changed (updated, replayed, deleted) or its lease was
    lost: its task ends, and the next claim starts it again from the store."""


class Deliverer:
    def __init__(
        self,
        uows: UnitOfWorkFactory,
        poster: WebhookPoster,
        signal: EventSignal,
        stopping: StopSignal,
        settings: DeliverySettings = DeliverySettings(),
        owner: str | None = None,
        changes: EventSignal | None = None,
    ) -> None:
        """``signal`` moves when events are appended, ``changes`` when a
        subscription is created, changed, replayed or deleted in this
        process; see ``_next_claim`` for which of them ends the wait for the
        next claim."""
        self._uows, self._poster, self._signal = uows, poster, signal
        self._stopping, self._settings = stopping, settings
        self._changes = changes
        self.owner = owner or owner_name()
        self._tasks: dict[str, tuple[asyncio.Task[None], _Delivery]] = {}
        #: How many subscriptions this deliverer held after its last claim.
        self.held = 0
        #: Held beyond the share with no task running: given back at the next claim.
        self._handing: set[str] = set()
        #: Set when a handed-over subscription's task has ended: its lease
        #: goes back at once rather than at the next claim's timer.
        self._wake = asyncio.Event()
        #: The log's pages, read once for the subscriptions held here that
        #: deliver the same account's events with the same filter.
        self._pages = SharedPages(uows)
        self._claims = FailureLog("claiming webhook subscriptions", log)

    async def run(self) -> None:
        """Claim and deliver until ``stopping`` is set; then store progress
        and give the leases back, so that another process goes on at once."""
        every = min(self._settings.poll_s, self._settings.lease_s / 3)
        try:
            while not self._stopping.is_set():
                self._wake.clear()
                seen = self._signal.version
                changed = None if self._changes is None else self._changes.version
                ended = [s for s, (t, d) in self._tasks.items() if d.leaving and t.done()]
                handed = [*ended, *self._handing]
                try:
                    held, share = await asyncio.to_thread(self._claim, handed)
                except Exception as exc:  # the store may be briefly unavailable
                    self._claims.failed(exc)
                else:
                    self._claims.succeeded()
                    for sub_id in ended:
                        del self._tasks[sub_id]
                    self._handing.clear()
                    self._start(held, share)
                await self._next_claim(seen, changed, every)
        finally:
            for task, _ in self._tasks.values():
                task.cancel()
            await asyncio.gather(*(t for t, _ in self._tasks.values()), return_exceptions=True)
            try:
                await asyncio.to_thread(self._release)
            except Exception:  # the leases then run out by themselves
                log.exception("releasing webhook leases failed")
            await self._poster.close()

    async def _next_claim(self, seen: int, changed: int | None, every: float) -> None:
        """Wait ``every`` seconds, or less: until a subscription changes, a
        handed-over one's task has ended, or the stop.

        Without a ``changes`` signal, new events end the wait while no
        subscription is held (one created meanwhile is then found soon).
        With it they never do: a claim is a write transaction, and one per
        commit that appended events doubled a punch's time at one call in
        flight (measured)."""
        waits: list[Awaitable[object]] = [self._stopping.sleep(every), self._wake.wait()]
        if self._changes is not None and changed is not None:
            waits.append(self._changes.wait(changed, every))
        elif not self._tasks:
            waits.append(self._signal.wait(seen, every))
        await _first(*waits)

    def _claim(self, handed: list[str]) -> tuple[list[Subscription], int]:
        """Give back the leases of ``handed`` (their tasks have ended), then
        renew and take leases up to this deliverer's share; the ones held
        and the share."""
        lease_ms, now = int(self._settings.lease_s * 1000), _ms()
        with self._uows() as uow:
            uow.webhooks.release(self.owner, handed)
            share = min(MAX_HELD, uow.webhooks.fair_share(self.owner, now, lease_ms))
            held = uow.webhooks.claim(self.owner, now, lease_ms, share)
            uow.commit()
        return held, share

    def _release(self) -> None:
        with self._uows() as uow:
            uow.webhooks.release(self.owner)
            uow.commit()

    def _start(self, held: list[Subscription], share: int) -> None:
        """Start a task per held subscription, up to ``share``; end those of
        subscriptions no longer held (deleted, failing, taken over) or
        changed since their task read them (updated, replayed). A changed one
        starts anew at the claim after its old task has stored its progress
        and ended (the end wakes the claim); the claim never waits for a task,
        so one slow to end holds back its own subscription only. Beyond the
        share (another deliverer came up), tasks are asked to leave; the next
        claim gives their leases back once they have."""
        now = {s.id: s.modified_at for s in held}
        for sub_id, (task, delivery) in list(self._tasks.items()):
            if delivery.leaving:
                continue  # its lease goes back once it has ended
            if task.done():
                del self._tasks[sub_id]
            elif not delivery.ending and now.get(sub_id) != delivery.seen:
                delivery.ending = True
                task.add_done_callback(self._woken)
                task.cancel()
        staying = [s for s in held if not (s.id in self._tasks and self._tasks[s.id][1].leaving)]
        for sub in staying[share:]:
            if sub.id in self._tasks:
                self._leave(sub.id)
            else:  # no task (it ended by itself): nothing to wait for
                self._handing.add(sub.id)
        for sub in staying[:share]:
            if sub.id not in self._tasks:
                delivery = _Delivery(self, sub)
                task = asyncio.create_task(delivery.run())
                task.add_done_callback(functools.partial(_report_failure, sub.id))
                self._tasks[sub.id] = (task, delivery)
        self.held = min(len(staying), share)
        metrics.WEBHOOK_HELD.set(self.held)

    def _behind(self, reader: _Delivery, cursor: int) -> int:
        """How many other subscriptions held here read what ``reader``
        reads (the same account's events, the same filter) and have yet to
        reach ``cursor``."""
        sub = reader.sub
        return sum(
            1
            for _, d in self._tasks.values()
            if d is not reader
            and not d.to_end
            and d.cursor <= cursor
            and d.sub.account_id == sub.account_id
            and d.sub.event_types == sub.event_types
            and d.sub.time_clock_ids == sub.time_clock_ids
        )

    def _woken(self, _: object) -> None:
        """A task that was asked to end has: the claim goes on at once."""
        self._wake.set()

    def _leave(self, sub_id: str) -> None:
        """Ask a task to end for the subscription's handover: at once if it
        is waiting (for events, or to retry), else after the delivery under
        way; either way its progress is stored as it ends."""
        task, delivery = self._tasks[sub_id]
        delivery.leaving = True
        task.add_done_callback(self._woken)
        if delivery.waiting:
            task.cancel()


class _Delivery:
    """One subscription's deliveries, for as long as it is held unchanged."""

    def __init__(self, owner: Deliverer, sub: Subscription) -> None:
        self._d = owner
        #: The subscription as read, with its retry state kept up to date;
        #: its cursor only as of the last store or page read (``_synced``).
        self.sub = sub
        #: The last seq delivered. Kept apart from ``sub``: a new frozen
        #: ``Subscription`` for every delivery was a tenth of its cost.
        self.cursor = sub.cursor
        #: ``modified_at`` when read: a change since ends the task.
        self.seen = sub.modified_at
        #: Set when another deliverer is to take the subscription over: the
        #: task ends after the delivery under way, its progress stored.
        self.leaving = False
        #: Set when the subscription changed and the task was cancelled: it
        #: starts anew once this one has ended.
        self.ending = False
        #: True while the task waits (no delivery under way): it may be cancelled.
        self.waiting = False
        self._hook = Webhook(sub.secret)
        # Looked up once: a labelled child per event was a measurable part
        # of a delivery's own time.
        self._lag = metrics.EVENT_LAG.labels(sub.id)
        self._outcomes = {
            ok: metrics.WEBHOOK_DELIVERIES.labels("ok" if ok else "failed") for ok in (True, False)
        }
        self._done: list[Attempt] = []
        self._unsaved = 0
        self._saved_at = time.monotonic()
        #: The store write under way, if any (one at a time, so that progress
        #: is stored in order).
        self._saving: asyncio.Future[bool] | None = None

    def _synced(self) -> Subscription:
        """``sub`` with the cursor delivered so far."""
        if self.sub.cursor != self.cursor:
            self.sub = replace(self.sub, cursor=self.cursor)
        return self.sub

    @property
    def to_end(self) -> bool:
        """Asked to end: handed over, or its subscription changed."""
        return self.leaving or self.ending

    async def run(self) -> None:
        d = self._d
        try:
            while not (d._stopping.is_set() or self.to_end):
                seen = d._signal.version
                page = await d._pages.read(self._synced(), d._behind(self, self.cursor), seen)
                if len(page) >= EVENT_PAGE:  # more may follow: read it while this one goes out
                    after = page[-1].seq
                    d._pages.read_ahead(self.sub, after, 1 + d._behind(self, after), seen)
                for event in page:
                    if self.to_end:
                        raise _Changed
                    await self._deliver(event)
                if not page:
                    self._lag.set(0)
                    await self._save()
                    await self._waiting(d._signal.wait(seen, 1.0))
        except _Changed:
            return
        except DomainError as err:
            if err.code is not ErrorCode.EVENTS_PURGED:
                raise
            # Retention keeps what a subscription has yet to deliver; only a
            # store purged by hand gets here.
            log.error("webhook cursor behind retention", extra={"fields": {"id": self.sub.id}})
        finally:
            try:
                await asyncio.shield(self._save())
            except (_Changed, asyncio.CancelledError):
                pass
            except StoreUnavailable as exc:  # sent again after the last stored progress
                log.error("storing webhook progress failed", extra={"fields": {"error": str(exc)}})
            except Exception:
                log.exception("storing webhook progress failed")

    async def _deliver(self, event: Outgoing) -> None:
        self._lag.set(max(time.time() - event.recorded_at, 0.0))
        data = event.body
        while True:
            wait_s = self.sub.next_attempt_at / 1000 - time.time()
            if wait_s > 0 and await self._sleep(wait_s):
                raise _Changed
            started = time.perf_counter()
            now = time.time()
            at = int(now)
            headers = {
                "content-type": "application/json",
                "webhook-id": event.id,
                "webhook-timestamp": str(at),
                # The body's bytes, signed as sent (standardwebhooks 1.3 takes bytes).
                "webhook-signature": self._hook.sign(
                    event.id, datetime.fromtimestamp(at, UTC), data
                ),
            }
            result = await self._d._poster.post(self.sub.url, data, headers)
            latency_ms = (time.perf_counter() - started) * 1000
            self._done.append(
                Attempt(
                    subscription_id=self.sub.id,
                    seq=event.seq,
                    event_id=event.id,
                    event_type=event.type,
                    attempt=self.sub.attempts + 1,
                    attempted_at=int(now * 1000),
                    status_code=result.status_code,
                    latency_ms=round(latency_ms, 3),
                    error=None if result.ok else (result.error or "")[:ERROR_CHARS] or None,
                    succeeded=result.ok,
                )
            )
            self._outcomes[result.ok].inc()
            if result.ok:
                metrics.WEBHOOK_LAG.observe(max(time.time() - event.recorded_at, 0.0))
                self.cursor = event.seq
                sub = self.sub
                if sub.attempts or sub.failing_since is not None or sub.next_attempt_at:
                    self.sub = replace(sub, attempts=0, failing_since=None, next_attempt_at=0)
                self._unsaved += 1
                if self._unsaved >= FLUSH_EVENTS or time.monotonic() - self._saved_at >= FLUSH_S:
                    await self._save(wait=False)
                return
            await self._failed(event, result.error or f"status {result.status_code}")

    async def _failed(self, event: Outgoing, error: str) -> None:
        now = _ms()
        since = self.sub.failing_since or now
        attempts = self.sub.attempts + 1
        if now - since >= self._d._settings.retry_window_s * 1000:
            self.sub = replace(
                self.sub,
                status=SubscriptionStatus.FAILING,
                attempts=attempts,
                failing_since=since,
            )
            notice = Event(
                FAILING_EVENT.value,
                now // 1000,
                failing_event_payload(self.sub, event.seq, error),
            )
            await self._save(notice)
            log.warning(
                "webhook subscription failing",
                extra={"fields": {"id": self.sub.id, "seq": event.seq, "error": error}},
            )
            raise _Changed
        delay = retry_delay_s(attempts)
        self.sub = replace(
            self.sub,
            attempts=attempts,
            failing_since=since,
            next_attempt_at=now + int(delay * 1000),
        )
        await self._save()

    async def _sleep(self, seconds: float) -> bool:
        """Wait to retry, ended early by a stop (or, cancelled, by a
        handover); whether the task is to end."""
        await self._waiting(self._d._stopping.sleep(seconds))
        return self._d._stopping.is_set() or self.to_end

    async def _waiting(self, wait: Awaitable[object]) -> None:
        """Await ``wait`` with no delivery under way: a handover may cancel it."""
        self.waiting = True
        try:
            await wait
        finally:
            self.waiting = False

    async def _save(self, notice: Event | None = None, *, wait: bool = True) -> None:
        """Store the attempts and progress made so far (and ``notice``, in
        the same transaction). ``wait=False`` on the delivery path: the write
        runs while deliveries go on, unless the previous one still runs (the
        next save takes both). _Changed once a write found the subscription
        changed or its lease lost."""
        if self._saving is not None:
            if not self._saving.done():
                if not wait:
                    return
                await asyncio.shield(self._saving)
            kept = self._saving.result()
            self._saving = None
            if not kept:
                raise _Changed
        if not (self._done or self._unsaved or notice):
            return
        done, self._done = self._done, []
        self._unsaved = 0
        self._saved_at = time.monotonic()
        sub, owner, seen = self._synced(), self._d.owner, self.seen

        def write() -> bool:
            with self._d._uows() as uow:
                uow.webhooks.record_attempts(done)
                kept = uow.webhooks.save_progress(sub, owner, seen)
                if kept and notice is not None:
                    uow.for_account(sub.account_id).events.append([notice])
                uow.commit()
            return kept

        self._saving = asyncio.ensure_future(asyncio.to_thread(write))
        if wait:
            await self._save()


def _report_failure(sub_id: str, task: asyncio.Task[None]) -> None:
    """Log a delivery task that ended on a defect, with its subscription
    (the next claim starts it again), rather than leave asyncio to report an
    exception never retrieved."""
    if task.cancelled():
        return
    err = task.exception()
    if isinstance(err, StoreUnavailable):
        # Not a defect: the store is away; its sentence says all, and the
        # next claim that reaches the store starts the deliveries again.
        log.warning(
            "webhook delivery paused: the store cannot answer",
            extra={"fields": {"id": sub_id, "error": str(err)}},
        )
    elif err is not None:
        log.error(
            "webhook delivery failed; starting it again",
            exc_info=err,
            extra={"fields": {"id": sub_id, "error": str(err)[:300]}},
        )
        metrics.DELIVERY_RESTARTS.labels("subscription").inc()


def _ms() -> int:
    return int(time.time() * 1000)


#: Events read per page by a sink.
SINK_PAGE = 500


class SinkPublisher:
    """Publishes every account's events, in seq order, to a broker (the
    JetStream sink), each under its event id (``Nats-Msg-Id``) so that the
    broker drops the ones a restart publishes again. One process at a time
    holds the sink's lease; its cursor is the last seq the broker
    acknowledged, stored as webhook progress is (in batches, off the path)."""

    def __init__(
        self,
        name: str,
        uows: UnitOfWorkFactory,
        publisher: EventPublisher,
        signal: EventSignal,
        stopping: StopSignal,
        subject_prefix: str,
        lease_s: float = 30.0,
        owner: str | None = None,
    ) -> None:
        self.name = name
        self._uows, self._publisher, self._signal = uows, publisher, signal
        self._stopping, self._prefix, self._lease_s = stopping, subject_prefix, lease_s
        self.owner = owner or owner_name()
        #: The store failing the sink (its claim, its pages), until a page is read.
        self._store = FailureLog("the event sink's store", log)
        #: The broker failing the sink's publishes, until one is acknowledged.
        self._broker = FailureLog("publishing to the event broker", log)

    def subject(self, e: Event) -> str:
        """``<prefix>.<account>.<type>``: a consumer filters by account, type or both."""
        return f"{self._prefix}.{e.account_id}.{e.type}"

    async def run(self) -> None:
        every = min(1.0, self._lease_s / 3)
        try:
            while not self._stopping.is_set():
                cursor = await self._claim()
                if cursor is None:  # another process holds the sink, or the store failed
                    await self._stopping.sleep(every)
                    continue
                try:
                    await self._publish_from(cursor)
                except StoreUnavailable as exc:  # claimed again once the store is back
                    self._store.failed(exc)
                    await self._stopping.sleep(every)
        finally:
            try:
                await asyncio.to_thread(self._release)
            except Exception:  # the lease then runs out by itself
                log.exception("releasing the sink's lease failed")
            await self._publisher.close()

    async def _claim(self) -> int | None:
        def claim() -> int | None:
            with self._uows() as uow:
                start = uow.events.newest()  # a new sink starts with what comes next
                got = uow.webhooks.claim_sink(
                    self.name, self.owner, _ms(), int(self._lease_s * 1000), start
                )
                uow.commit()
            return got

        try:
            return await asyncio.to_thread(claim)
        except Exception as exc:
            self._store.failed(exc)
            return None

    async def _publish_from(self, cursor: int) -> None:
        """Publish while the lease holds; return to claim again (renewing it)."""
        renew_at = time.monotonic() + self._lease_s / 3
        saved = cursor
        while not self._stopping.is_set() and time.monotonic() < renew_at:
            seen = self._signal.version
            page = await asyncio.to_thread(self._page, cursor)
            self._store.succeeded()
            lag = metrics.EVENT_LAG.labels(f"jetstream:{self.name}")
            for e in page:
                lag.set(max(time.time() - e.recorded_at, 0.0))
                body = event_body(e)
                try:
                    await self._publisher.publish(self.subject(e), body, e.id)
                except Exception as err:  # published again from e, in a second
                    self._broker.failed(err)
                    await self._save(cursor, saved)
                    await self._stopping.sleep(1.0)
                    return
                self._broker.succeeded()
                cursor = e.seq
                metrics.SINK_PUBLISHED.inc()
            if cursor != saved:
                if not await self._save(cursor, saved):
                    return
                saved = cursor
            if len(page) < SINK_PAGE:
                lag.set(0)
                await self._signal.wait(seen, min(1.0, max(renew_at - time.monotonic(), 0.01)))

    def _page(self, cursor: int) -> list[Event]:
        with self._uows(readonly=True) as uow:
            return uow.events.every_after(cursor, SINK_PAGE)

    async def _save(self, cursor: int, saved: int) -> bool:
        if cursor == saved:
            return True

        def write() -> bool:
            with self._uows() as uow:
                kept = uow.webhooks.save_sink(self.name, self.owner, cursor)
                uow.commit()
            return kept

        return await asyncio.to_thread(write)

    def _release(self) -> None:
        with self._uows() as uow:
            uow.webhooks.release_sink(self.name, self.owner)
            uow.commit()


async def keep_running(
    start: Callable[[], Awaitable[None]], stopping: StopSignal, what: str
) -> None:
    """Run ``start()`` (a deliverer's or a sink's run) until the stop. Store
    and receiver errors are handled inside; should a defect end it early
    anyway, it is logged and started afresh after a pause, so that events
    never silently stop going out."""
    while True:
        try:
            await start()
            return
        except StoreUnavailable as exc:  # not a defect: the store is away
            log.warning(
                f"{what} paused: the store cannot answer", extra={"fields": {"error": str(exc)}}
            )
        except Exception:
            log.exception(f"{what} failed; starting again")
            metrics.DELIVERY_RESTARTS.labels(what).inc()
        if await stopping.sleep(RESTART_S):
            return


async def _first(*waits: Awaitable[object]) -> None:
    """Wait until the first of ``waits`` has ended; the others are cancelled."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
