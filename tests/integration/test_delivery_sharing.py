"""Deliverers on one store share the subscriptions evenly: one that comes up
takes over half of what the first one held, with nothing sent twice in the
handover, and one that dies has its share taken over once its time runs
out, with nothing lost."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, select

from geopunch.adapters.db.store import SqlUnitOfWorkFactory
from geopunch.adapters.db.tables import webhook_subscriptions
from geopunch.adapters.wakeup import Wakeup
from geopunch.domain.accounts import DEFAULT_ACCOUNT
from geopunch.domain.events import Event
from geopunch.domain.webhooks import SubscriptionChange
from geopunch.service import webhooks
from geopunch.service.delivery import DeliverySettings
from tests.helpers import RunningDeliverer, eventually
from tests.webhook_receiver import Receiver

SUBSCRIPTIONS = 10
#: Short, so that a dead deliverer's share is taken over within the test.
SETTINGS = DeliverySettings(lease_s=2.0, poll_s=0.2)


def _holders(engine: Engine) -> dict[str, str]:
    t = webhook_subscriptions
    with engine.connect() as conn:
        rows = conn.execute(select(t.c.id, t.c.lease_owner))
        return {r.id: r.lease_owner or "" for r in rows}  # "": no holder


@pytest.fixture
def receivers() -> Iterator[list[Receiver]]:
    started = [Receiver().start() for _ in range(SUBSCRIPTIONS)]
    yield started
    for r in started:
        r.stop()


def test_deliverers_share_subscriptions_evenly_and_take_over_a_dead_ones(
    engine: Engine, receivers: list[Receiver]
) -> None:
    signal = Wakeup()
    uows = SqlUnitOfWorkFactory(engine, signal.notify)
    subs = [
        webhooks.create_subscription(uows, DEFAULT_ACCOUNT, SubscriptionChange(url=r.url), None)
        for r in receivers
    ]
    appended = 0
    appending = threading.Event()

    def append() -> None:
        nonlocal appended
        while not appending.is_set():
            with uows(account=DEFAULT_ACCOUNT) as uow:
                batch = [Event("clockIn", int(time.time()), {"n": appended + i}) for i in range(5)]
                uow.events.append(batch)
                uow.commit()
            appended += 5
            time.sleep(0.01)

    writer = threading.Thread(target=append, daemon=True)
    writer.start()
    first = RunningDeliverer(uows, signal, SETTINGS, owner="first")
    second = third = None
    try:
        eventually(lambda: set(_holders(engine).values()) == {"first"}, 10, "the first takes all")
        second = RunningDeliverer(uows, signal, SETTINGS, owner="second")
        eventually(
            lambda: (
                first.deliverer.held == second.deliverer.held == SUBSCRIPTIONS // 2
                and sorted(_holders(engine).values()) == ["first"] * 5 + ["second"] * 5
            ),
            15,
            "the two share the subscriptions",
        )
        time.sleep(0.5)  # both deliver for a while
        appending.set()
        writer.join(10)
        for r in receivers:
            r.wait_for(appended, 30)
        # The handover sent nothing twice: a clean stop hands over too.
        for r in receivers:
            ns = [q.event["payload"]["n"] for q in r.accepted()]
            assert ns == list(range(appended)), "each event once, in order"

        # A third comes up and the second dies: once the second's time runs
        # out, the first and the third share all ten again.
        third = RunningDeliverer(uows, signal, SETTINGS, owner="third")
        eventually(lambda: third.deliverer.held >= 3, 15, "the third takes its share")
        appending.clear()
        writer = threading.Thread(target=append, daemon=True)
        writer.start()
        time.sleep(0.3)
        second.die()
        eventually(
            lambda: sorted(_holders(engine).values()) == ["first"] * 5 + ["third"] * 5,
            20,
            "the survivors take the dead one's share",
        )
        appending.set()
        writer.join(10)
        for r, sub in zip(receivers, subs, strict=True):
            got = r.wait_for(appended, 30)
            assert [q.event["payload"]["n"] for q in got] == list(range(appended)), sub.id
            # Only the dead one's unsaved progress comes again, under the same ids.
            seen: dict[str, int] = {}
            for q in r.accepted():
                seen[q.webhook_id] = seen.get(q.webhook_id, 0) + 1
            assert len(seen) == appended
    finally:
        appending.set()
        writer.join(10)
        for running in (first, second, third):
            if running is not None:
                running.close()
