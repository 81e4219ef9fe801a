"""The deliverer takes up a subscription that is created or replayed in its
process at once, not at its next poll of the store, also while it is busy
delivering other subscriptions."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Mapping

import pytest
from sqlalchemy import Engine, select

from geopunch.adapters.db.store import SqlUnitOfWorkFactory
from geopunch.adapters.db.tables import webhook_subscriptions
from geopunch.adapters.wakeup import Wakeup
from geopunch.adapters.webhook_http import HttpPoster
from geopunch.domain.accounts import DEFAULT_ACCOUNT
from geopunch.domain.events import Event
from geopunch.domain.ports import PostResult
from geopunch.domain.webhooks import Subscription, SubscriptionChange
from geopunch.service import webhooks
from geopunch.service.delivery import Deliverer, DeliverySettings
from tests.helpers import RunningDeliverer, eventually
from tests.webhook_receiver import Receiver

#: Far longer than any wait below: what arrives came from a wake-up, not a poll.
POLL_S = 60.0
SETTINGS = DeliverySettings(lease_s=3 * POLL_S, poll_s=POLL_S)


def _append(uows: SqlUnitOfWorkFactory, count: int) -> None:
    with uows(account=DEFAULT_ACCOUNT) as uow:
        uow.events.append([Event("clockIn", int(time.time()), {"n": i}) for i in range(count)])
        uow.commit()


def _wait_for(receiver: Receiver, count: int, within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while len(receiver.requests) < count:
        assert time.monotonic() < deadline, f"{len(receiver.requests)} of {count} arrived"
        time.sleep(0.02)


def test_created_and_replayed_subscriptions_start_at_once(engine: Engine) -> None:
    events, changes = Wakeup(), Wakeup()
    uows = SqlUnitOfWorkFactory(engine, events.notify, on_subscriptions=changes.notify)
    slow = Receiver(lambda r: (204, 0.05)).start()  # keeps its subscription's task busy
    fast = Receiver().start()
    busy = webhooks.create_subscription(
        uows, DEFAULT_ACCOUNT, SubscriptionChange(url=slow.url), guard=None
    )
    _append(uows, 200)
    running = RunningDeliverer(uows, events, SETTINGS, changes=changes)
    try:
        _wait_for(slow, 1, 10)  # held, and busy for about 10 s more
        made = webhooks.create_subscription(
            uows, DEFAULT_ACCOUNT, SubscriptionChange(url=fast.url), guard=None
        )
        _append(uows, 3)
        _wait_for(fast, 3, 5)
        assert [r.event["payload"]["n"] for r in fast.requests] == [0, 1, 2]
        webhooks.replay_subscription(uows, DEFAULT_ACCOUNT, made.id, fast.requests[0].event["seq"])
        _wait_for(fast, 6, 5)
        assert [r.event["payload"]["n"] for r in fast.requests[3:]] == [0, 1, 2]
        assert len(slow.requests) < 200  # the busy one was still delivering meanwhile
        assert busy.id != made.id
    finally:
        running.stop()
        slow.stop()
        fast.stop()


def test_a_stop_ends_the_deliverer_at_once_with_its_progress_stored(engine: Engine) -> None:
    """Neither the wait for the next claim nor a subscription waiting to retry
    holds a stop back until its timer runs out."""
    events, changes = Wakeup(), Wakeup()
    uows = SqlUnitOfWorkFactory(engine, events.notify, on_subscriptions=changes.notify)
    failing = Receiver(lambda r: (500, 0)).start()
    sub = webhooks.create_subscription(
        uows, DEFAULT_ACCOUNT, SubscriptionChange(url=failing.url), guard=None
    )
    _append(uows, 1)
    running = RunningDeliverer(uows, events, SETTINGS, changes=changes)
    try:
        _wait_for(failing, 1, 10)  # failed once: waiting to retry
        time.sleep(0.1)
        running.stopping.set()
        running.thread.join(5)
        assert not running.thread.is_alive(), "the stop waited for a timer"
        with uows(account=DEFAULT_ACCOUNT) as uow:
            stored = uow.webhooks.get(sub.id)
        assert stored is not None
        assert stored.attempts == 1 and stored.cursor == 0
        t = webhook_subscriptions
        with engine.connect() as conn:
            assert conn.execute(select(t.c.lease_owner)).scalar_one() is None, "lease given back"
    finally:
        running.stop()
        failing.stop()


def test_a_change_found_as_events_wake_its_task_still_starts_it_anew(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claim that finds a subscription changed ends its task and starts it
    again. The wake-up for new events may come at that very moment (the
    store watcher's notify comes up to a poll after the commit): here it
    always does. The new event types must then be delivered."""
    events, changes = Wakeup(), Wakeup()
    claim = Deliverer._claim

    def claim_then_wake(self: Deliverer, handed: list[str]) -> tuple[list[Subscription], int]:
        got = claim(self, handed)
        events.notify()
        return got

    monkeypatch.setattr(Deliverer, "_claim", claim_then_wake)
    uows = SqlUnitOfWorkFactory(engine, events.notify, on_subscriptions=changes.notify)
    receiver = Receiver().start()
    sub = webhooks.create_subscription(
        uows, DEFAULT_ACCOUNT, SubscriptionChange(url=receiver.url), guard=None
    )
    running = RunningDeliverer(uows, events, SETTINGS, changes=changes)
    try:
        for n, kind in enumerate(["clockOut", "clockIn"] * 3):
            time.sleep(0.05)  # the task waits for events
            webhooks.update_subscription(
                uows, DEFAULT_ACCOUNT, sub.id, SubscriptionChange(event_types=(kind,)), guard=None
            )
            time.sleep(0.05)
            with uows(account=DEFAULT_ACCOUNT) as uow:
                uow.events.append([Event(kind, int(time.time()), {"n": n})])
                uow.commit()
            _wait_for(receiver, n + 1, 5)
        assert [r.event["payload"]["n"] for r in receiver.requests] == list(range(6))
    finally:
        running.stop()
        receiver.stop()


class _SlowToEnd:
    """Posts as the real poster does, but a post to ``url`` waits, and once
    cancelled does not end until ``release`` is set: a task slow to end, as
    a library that defers a cancel would make it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.posts = 0
        self.release = threading.Event()
        self._inner = HttpPoster(5.0, True, "test")

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> PostResult:
        if url != self.url:
            return await self._inner.post(url, body, headers)
        self.posts += 1
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            while not self.release.is_set():
                await asyncio.sleep(0.01)
            raise
        return PostResult(None, "never")

    async def close(self) -> None:
        await self._inner.close()


def test_a_task_slow_to_end_holds_back_its_own_subscription_only(engine: Engine) -> None:
    """A changed subscription's task is cancelled; while it takes its time to
    end, the deliverer goes on claiming and starting the others, and starts
    the changed one anew once it has ended."""
    events, changes = Wakeup(), Wakeup()
    uows = SqlUnitOfWorkFactory(engine, events.notify, on_subscriptions=changes.notify)
    stuck_url = "http://127.0.0.1:9/stuck"
    poster = _SlowToEnd(stuck_url)
    stuck = webhooks.create_subscription(
        uows, DEFAULT_ACCOUNT, SubscriptionChange(url=stuck_url), guard=None
    )
    _append(uows, 1)
    running = RunningDeliverer(uows, events, SETTINGS, changes=changes, poster=poster)
    fast = Receiver().start()
    try:
        eventually(lambda: poster.posts == 1, 10, "the first post under way")
        webhooks.update_subscription(
            uows,
            DEFAULT_ACCOUNT,
            stuck.id,
            SubscriptionChange(secret="whsec_" + "C" * 40),
            guard=None,
        )
        time.sleep(0.2)  # the claim has found the change and cancelled the task
        webhooks.create_subscription(
            uows, DEFAULT_ACCOUNT, SubscriptionChange(url=fast.url), guard=None
        )
        _append(uows, 2)
        _wait_for(fast, 2, 10)  # while the stuck task has yet to end
        assert poster.posts == 1
        poster.release.set()
        eventually(lambda: poster.posts == 2, 15, "the changed subscription started anew")
    finally:
        poster.release.set()
        running.stop()
        fast.stop()


class _FailsOnce:
    """A poster whose first post fails on a defect (an exception, not a failed attempt)."""

    def __init__(self) -> None:
        self.failed = False
        self._inner = HttpPoster(5.0, True, "test")

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> PostResult:
        if not self.failed:
            self.failed = True
            raise RuntimeError("a defect in the poster")
        return await self._inner.post(url, body, headers)

    async def close(self) -> None:
        await self._inner.close()


def test_a_delivery_task_ended_by_a_defect_is_logged_and_started_again(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    events, changes = Wakeup(), Wakeup()
    uows = SqlUnitOfWorkFactory(engine, events.notify, on_subscriptions=changes.notify)
    receiver = Receiver().start()
    sub = webhooks.create_subscription(
        uows, DEFAULT_ACCOUNT, SubscriptionChange(url=receiver.url), guard=None
    )
    _append(uows, 2)
    settings = DeliverySettings(lease_s=30, poll_s=0.2)
    with caplog.at_level(logging.ERROR, "geopunch.webhooks"):
        running = RunningDeliverer(uows, events, settings, changes=changes, poster=_FailsOnce())
        try:
            _wait_for(receiver, 2, 10)
        finally:
            running.stop()
            receiver.stop()
    assert [r.event["payload"]["n"] for r in receiver.requests] == [0, 1]
    [record] = caplog.records
    assert record.getMessage() == "webhook delivery failed; starting it again"
    assert record.fields == {"id": sub.id, "error": "a defect in the poster"}  # type: ignore[attr-defined]
    assert record.exc_info and "a defect in the poster" in str(record.exc_info[1])
