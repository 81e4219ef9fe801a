"""Subscriptions held by one deliverer that deliver the same account's events
with the same filter read each page of the event log once between them, and
each still gets every event, in order, signed with its own secret."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine

from geopunch.adapters.db.store import SqlUnitOfWorkFactory
from geopunch.adapters.wakeup import Wakeup
from geopunch.domain.accounts import DEFAULT_ACCOUNT
from geopunch.domain.events import Event
from geopunch.domain.webhooks import Subscription, SubscriptionChange, SubscriptionStatus
from geopunch.service import events, log_pages, webhooks
from geopunch.service.delivery import DeliverySettings
from geopunch.service.events import EVENT_PAGE
from tests.helpers import RunningDeliverer
from tests.webhook_receiver import Receiver, verify

SHARING = 6
#: Two full pages and a short one.
EVENTS = 2 * EVENT_PAGE + 200
SETTINGS = DeliverySettings(lease_s=30.0, poll_s=10.0)

Read = tuple[int, tuple[str, ...]]


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counter[Read]]:
    """Every read of the event log by the deliverer: (cursor, event types)."""
    counted: Counter[Read] = Counter()
    lock = threading.Lock()

    def counting(*args: Any) -> list[Event]:
        _, _, after, types, _ = args  # uows, account, after, types, time clocks
        with lock:
            counted[(after, tuple(types))] += 1
        return events.events_after(*args)  # looked up now: a test may replace it

    monkeypatch.setattr(log_pages, "events_after", counting)
    yield counted


def _append(uows: SqlUnitOfWorkFactory, count: int, type_: str = "clockIn") -> None:
    with uows(account=DEFAULT_ACCOUNT) as uow:
        uow.events.append([Event(type_, int(time.time()), {"n": i}) for i in range(count)])
        uow.commit()


def _subscribe(uows: SqlUnitOfWorkFactory, url: str, types: tuple[str, ...]) -> Subscription:
    change = SubscriptionChange(url=url, event_types=types)
    return webhooks.create_subscription(uows, DEFAULT_ACCOUNT, change, guard=None)


def test_subscriptions_with_one_filter_read_each_page_once(
    engine: Engine, reads: Counter[Read]
) -> None:
    signal = Wakeup()
    uows = SqlUnitOfWorkFactory(engine, signal.notify)
    receivers = [Receiver().start() for _ in range(SHARING + 1)]
    subs = [_subscribe(uows, r.url, ("clockIn",)) for r in receivers[:SHARING]]
    other = _subscribe(uows, receivers[-1].url, ())  # every type: a filter of its own
    _append(uows, EVENTS)  # after the subscriptions: they start at the log's end
    running = RunningDeliverer(uows, signal, SETTINGS)
    try:
        for sub, receiver in zip([*subs, other], receivers, strict=True):
            got = receiver.wait_for(EVENTS, 30)
            assert len(got) == EVENTS, f"{len(got)} of {EVENTS} arrived"
            events = [verify(sub.secret, r) for r in got]  # its own secret signed them
            assert [e["payload"]["n"] for e in events] == list(range(EVENTS))
            assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
    finally:
        running.stop()
        for r in receivers:
            r.stop()
    first = min(reads)[0]
    pages = [first, first + EVENT_PAGE, first + 2 * EVENT_PAGE]
    # Once a page for the six; the short last page too, as no event came after it.
    assert [reads[(c, ("clockIn",))] for c in pages] == [1, 1, 1]
    assert [reads[(c, ())] for c in pages] == [1, 1, 1]


def test_the_next_page_is_read_while_the_current_one_goes_out(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full page's successor is read while the page is delivered, so no
    subscription stops at the end of each page to wait for the read."""
    started: dict[int, float] = {}  # cursor: when its page's read began

    def timed(*args: Any) -> list[Event]:
        started.setdefault(args[2], time.time())
        return events.events_after(*args)

    monkeypatch.setattr(log_pages, "events_after", timed)
    signal = Wakeup()
    uows = SqlUnitOfWorkFactory(engine, signal.notify)
    receiver = Receiver().start()
    _subscribe(uows, receiver.url, ())
    _append(uows, EVENTS)
    running = RunningDeliverer(uows, signal, SETTINGS)
    try:
        got = receiver.wait_for(EVENTS, 30)
        assert len(got) == EVENTS
    finally:
        running.stop()
        receiver.stop()
    seqs = [r.event["seq"] for r in got]
    first = seqs[0] - 1
    for page in (1, 2):  # the pages after each full one
        cursor = first + page * EVENT_PAGE
        last_of_previous = got[seqs.index(cursor)]
        first_of_previous = got[seqs.index(cursor - EVENT_PAGE + 1)]
        assert first_of_previous.at - 0.5 < started[cursor] < last_of_previous.at, page


def _sub(cursor: int) -> Subscription:
    return Subscription(
        id="whs_test",
        account_id=DEFAULT_ACCOUNT,
        url="http://127.0.0.1:9/hooks",
        event_types=(),
        time_clock_ids=(),
        secret="whsec_" + "A" * 32,
        status=SubscriptionStatus.ACTIVE,
        cursor=cursor,
        attempts=0,
        failing_since=None,
        next_attempt_at=0,
        created_at=0,
        modified_at=0,
    )


def test_a_short_page_is_read_again_once_new_events_were_seen(
    engine: Engine, reads: Counter[Read]
) -> None:
    uows = SqlUnitOfWorkFactory(engine)
    _append(uows, 3)
    pages = log_pages.SharedPages(uows)

    async def run() -> None:
        first = await pages.read(_sub(0), behind=2, seen=1)
        assert len(first) == 3
        # A reader that saw nothing new since takes the kept page.
        assert await pages.read(_sub(0), behind=0, seen=1) is first
        _append(uows, 2)
        # One that saw new events reads them: the kept page would hide them.
        again = await pages.read(_sub(0), behind=0, seen=2)
        assert [json.loads(e.body)["payload"]["n"] for e in again] == [0, 1, 2, 0, 1]

    asyncio.run(run())
    assert sum(reads.values()) == 2


def test_a_full_page_is_kept_for_its_readers_only(engine: Engine, reads: Counter[Read]) -> None:
    uows = SqlUnitOfWorkFactory(engine)
    _append(uows, EVENT_PAGE + 1)
    pages = log_pages.SharedPages(uows)

    async def run() -> None:
        alone = await pages.read(_sub(0), behind=0, seen=1)
        assert len(alone) == EVENT_PAGE
        await pages.read(_sub(0), behind=0, seen=1)  # nothing was kept for it: read
        shared = await pages.read(_sub(0), behind=2, seen=1)
        # Full pages stay right whatever was appended since.
        assert await pages.read(_sub(0), behind=0, seen=5) is shared
        assert await pages.read(_sub(0), behind=0, seen=9) is shared
        await pages.read(_sub(0), behind=0, seen=9)  # its two readers took it: read

    asyncio.run(run())
    assert sum(reads.values()) == 4


def test_a_failed_read_is_not_kept(
    engine: Engine, reads: Counter[Read], monkeypatch: pytest.MonkeyPatch
) -> None:
    uows = SqlUnitOfWorkFactory(engine)
    _append(uows, 3)
    pages = log_pages.SharedPages(uows)
    real = events.events_after
    failures = [OSError("the store went away")]

    def failing_once(*args: Any) -> list[Event]:
        if failures:
            raise failures.pop()
        return real(*args)

    monkeypatch.setattr(events, "events_after", failing_once)

    async def run() -> None:
        with pytest.raises(OSError, match="went away"):
            await pages.read(_sub(0), behind=3, seen=1)
        assert len(await pages.read(_sub(0), behind=0, seen=1)) == 3

    asyncio.run(run())
    assert sum(reads.values()) == 2  # the failed read, then a read again


def test_what_is_kept_is_bounded(engine: Engine, reads: Counter[Read]) -> None:
    """Readers counted that never come (their pages start at other cursors)
    leave at most ``MOST_SHARED_PAGES`` pages behind."""
    uows = SqlUnitOfWorkFactory(engine)
    _append(uows, 40)
    pages = log_pages.SharedPages(uows)

    async def run() -> None:
        for cursor in range(2 * log_pages.MOST_SHARED_PAGES):
            await pages.read(_sub(cursor), behind=1, seen=1)
        assert len(pages._kept) == log_pages.MOST_SHARED_PAGES

    asyncio.run(run())
