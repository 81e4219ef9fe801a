"""Webhook subscriptions in the store: leases that keep two deliverers
apart, progress that only the holder stores, and retention that keeps
what a subscription has yet to deliver."""

from __future__ import annotations

import time
from dataclasses import replace

from sqlalchemy import Engine

from geopunch.domain.events import Event
from geopunch.domain.webhooks import Attempt, Subscription, SubscriptionChange
from geopunch.service import webhooks
from geopunch.service.events import purge_events
from tests.helpers import AccountStore


def _sub(uows: AccountStore, **fields: object) -> Subscription:
    change = SubscriptionChange(url="http://receiver.example/hooks", **fields)  # type: ignore[arg-type]
    return webhooks.create_subscription(uows.factory, uows.account, change, None)


def _with_subscriptions(engine: Engine, count: int) -> AccountStore:
    uows = AccountStore(engine)
    for _ in range(count):
        _sub(uows)
    return uows


def test_one_deliverer_holds_a_subscription_until_its_lease_runs_out(engine: Engine) -> None:
    uows = AccountStore(engine)
    sub = _sub(uows)
    now = int(time.time() * 1000)
    with uows() as uow:
        assert [s.id for s in uow.webhooks.claim("a", now, 2000, 10)] == [sub.id]
        assert uow.webhooks.claim("b", now + 1000, 2000, 10) == []  # a holds it
        uow.commit()
    with uows() as uow:
        # a renews; b still gets nothing
        assert [s.id for s in uow.webhooks.claim("a", now + 1500, 2000, 10)] == [sub.id]
        assert uow.webhooks.claim("b", now + 3000, 2000, 10) == []
        # a stopped renewing: b takes over once the lease ran out, and a lost it
        assert [s.id for s in uow.webhooks.claim("b", now + 3600, 2000, 10)] == [sub.id]
        advanced = replace(sub, cursor=sub.cursor + 5)
        assert not uow.webhooks.save_progress(advanced, "a", sub.modified_at)
        assert uow.webhooks.save_progress(advanced, "b", sub.modified_at)
        uow.commit()
    # An update moves modified_at: the holder's next store is refused, so it
    # reloads instead of overwriting the change.
    webhooks.update_subscription(
        uows.factory, uows.account, sub.id, SubscriptionChange(event_types=("clockIn",)), None
    )
    with uows() as uow:
        assert not uow.webhooks.save_progress(advanced, "b", sub.modified_at)
        uow.webhooks.release("b")
        assert [s.id for s in uow.webhooks.claim("c", now + 3700, 2000, 10)] == [sub.id]
        uow.commit()


def test_failing_subscriptions_are_not_claimed_until_reactivated(engine: Engine) -> None:
    uows = AccountStore(engine)
    sub = _sub(uows)
    webhooks.update_subscription(
        uows.factory, uows.account, sub.id, SubscriptionChange(status="failing"), None
    )
    now = int(time.time() * 1000)
    with uows() as uow:
        assert uow.webhooks.claim("a", now, 2000, 10) == []
    back = webhooks.update_subscription(
        uows.factory, uows.account, sub.id, SubscriptionChange(status="active"), None
    )
    assert (back.status.value, back.attempts, back.failing_since) == ("active", 0, None)
    with uows() as uow:
        assert [s.id for s in uow.webhooks.claim("a", now, 2000, 10)] == [sub.id]


def test_retention_keeps_what_a_subscription_has_yet_to_deliver(engine: Engine) -> None:
    uows = AccountStore(engine)
    with uows() as uow:
        uow.events.append([Event("shiftPublished", 100 + i, {"n": i}) for i in range(3)])
        uow.commit()
    sub = _sub(uows)  # from the newest event on
    with uows() as uow:
        uow.events.append([Event("shiftPublished", 200 + i, {"n": i}) for i in range(4)])
        uow.commit()
    with uows() as uow:
        seqs = [e.seq for e in uow.events.after(0)]
    later = time.time() + 40 * 86400
    # The three before the subscription go; the four it has not delivered stay.
    assert purge_events(uows.factory, later, 30 * 86400) == 3
    with uows() as uow:
        assert [e.seq for e in uow.events.after(0)] == seqs[3:]
        uow.webhooks.claim("a", 0, 10**12, 10)
        assert uow.webhooks.save_progress(replace(sub, cursor=seqs[4]), "a", sub.modified_at)
        uow.commit()
    assert purge_events(uows.factory, later, 30 * 86400) == 2
    webhooks.delete_subscription(uows.factory, uows.account, sub.id)
    assert purge_events(uows.factory, later, 30 * 86400) == 2


def test_attempts_are_listed_newest_first_by_page_and_purged_by_age(engine: Engine) -> None:
    uows = AccountStore(engine)
    sub = _sub(uows)
    with uows() as uow:
        uow.webhooks.record_attempts(
            [
                Attempt(sub.id, 10 + i, f"evt_{i}", "clockIn", 1, 1_000 * i, 200, 1.5, None, True)
                for i in range(1, 6)
            ]
        )
        uow.commit()
    page, token = webhooks.list_deliveries(uows.factory, uows.account, sub.id, 2, "")
    assert [a.seq for a in page] == [15, 14] and token
    page, token = webhooks.list_deliveries(uows.factory, uows.account, sub.id, 2, token)
    assert [a.seq for a in page] == [13, 12] and token
    page, token = webhooks.list_deliveries(uows.factory, uows.account, sub.id, 2, token)
    assert [a.seq for a in page] == [11] and token == ""
    assert webhooks.purge_attempts(uows.factory, now=4.5, retention_s=1.0) == 3
    page, _ = webhooks.list_deliveries(uows.factory, uows.account, sub.id, 0, "")
    assert [a.seq for a in page] == [15, 14]


def test_live_deliverers_share_the_active_subscriptions_evenly(engine: Engine) -> None:
    uows = _with_subscriptions(engine, 10)
    now = int(time.time() * 1000)
    with uows() as uow:
        hooks = uow.webhooks
        assert hooks.fair_share("a", now, 2000) == 10  # alone
        assert len(hooks.claim("a", now, 2000, 10)) == 10
        assert hooks.fair_share("b", now, 2000) == 5
        assert hooks.fair_share("c", now, 2000) == 3
        # the remainder goes to the first by name: 4, 3, 3
        assert [hooks.fair_share(o, now, 2000) for o in "abc"] == [4, 3, 3]
        # a claim keeps what it holds beyond its share: the deliverer hands
        # those over itself, once their deliveries have stopped
        held = [s.id for s in hooks.claim("a", now, 2000, 4)]
        assert len(held) == 10
        hooks.release("a", held[4:])
        assert len(hooks.claim("b", now, 2000, 3)) == 3
        assert len(hooks.claim("c", now, 2000, 3)) == 3
        # b stops renewing: once its time ran out, a and c share its part
        assert [hooks.fair_share(o, now + 1000, 2000) for o in "ac"] == [4, 3]
        later = now + 2500
        assert [hooks.fair_share(o, later, 2000) for o in "ac"] == [5, 5]
        assert len(hooks.claim("a", later, 2000, 5)) == 5
        assert len(hooks.claim("c", later, 2000, 5)) == 5
        # a clean stop gives everything back and leaves the count at once
        hooks.release("c")
        assert hooks.fair_share("a", later, 2000) == 10
        uow.commit()


def test_a_subscription_going_moves_no_other_between_deliverers(engine: Engine) -> None:
    """The remainder of the split goes to the deliverers holding the most:
    when one of ``a``'s subscriptions is deleted, ``b`` keeps its five and
    ``a`` its four, where shares by name alone would move one of ``b``'s to
    ``a``. New ones then go to whoever is below its share."""
    uows = _with_subscriptions(engine, 10)
    now = int(time.time() * 1000)
    with uows() as uow:
        hooks = uow.webhooks
        hooks.fair_share("b", now, 2000)  # both live
        assert [hooks.fair_share(o, now, 2000) for o in "ab"] == [5, 5]
        a_held = [s.id for s in hooks.claim("a", now, 2000, 5)]
        assert len(hooks.claim("b", now, 2000, 5)) == 5
        uow.commit()
    webhooks.delete_subscription(uows.factory, uows.account, a_held[0])
    with uows() as uow:
        hooks = uow.webhooks
        assert [hooks.fair_share(o, now, 2000) for o in "ab"] == [4, 5]
        uow.commit()
    added = _sub(uows)
    with uows() as uow:
        hooks = uow.webhooks
        assert [hooks.fair_share(o, now, 2000) for o in "ab"] == [5, 5]
        assert len(hooks.claim("b", now, 2000, 5)) == 5  # b takes nothing
        assert added.id in {s.id for s in hooks.claim("a", now, 2000, 5)}
        uow.commit()
