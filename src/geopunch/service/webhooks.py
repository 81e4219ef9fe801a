"""Webhook subscriptions: creating, changing, replaying and listing them
(``service.delivery`` delivers them)."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import replace
from urllib.parse import urlsplit

from geopunch.domain.bounds import int64_text
from geopunch.domain.errors import DomainError, ErrorCode
from geopunch.domain.ports import UnitOfWork, UnitOfWorkFactory
from geopunch.domain.webhooks import (
    MAX_SUBSCRIPTIONS,
    Attempt,
    Subscription,
    SubscriptionChange,
    SubscriptionStatus,
    check_addresses,
    check_change,
    new_secret,
    new_subscription_id,
)
from geopunch.service.events import check_resumable, in_batches

#: Checks a webhook URL's host before it is stored (None: any host will do).
UrlGuard = Callable[[str], None] | None

#: Attempts listed per page.
MAX_PAGE = 500


def _ms() -> int:
    return int(time.time() * 1000)


def resolving_guard(allow_private: bool) -> UrlGuard:
    """The URL check of a server: a host that resolves to a loopback or
    private address is refused unless the operator allows such."""
    if allow_private:
        return None

    def guard(url: str) -> None:
        parts = urlsplit(url)
        host = parts.hostname or ""
        try:
            infos = socket.getaddrinfo(host, parts.port or 443, type=socket.SOCK_STREAM)
        except OSError:
            infos = []
        check_addresses(host, sorted({str(info[4][0]) for info in infos}))

    return guard


# -- Use cases ------------------------------------------------------------------------


def create_subscription(
    uows: UnitOfWorkFactory,
    account: int,
    change: SubscriptionChange,
    guard: UrlGuard,
    prefix: str = "",
) -> Subscription:
    """A new active subscription; it receives the events committed from now
    on. ``prefix``: where the request holds the subscription (for field paths)."""
    check_change(change, creating=True, prefix=prefix)
    assert change.url is not None
    if guard is not None:
        guard(change.url)
    now = _ms()
    with uows(account=account) as uow:
        if uow.webhooks.count() >= MAX_SUBSCRIPTIONS:
            raise DomainError(
                ErrorCode.TOO_MANY_WEBHOOK_SUBSCRIPTIONS,
                f"an account holds at most {MAX_SUBSCRIPTIONS} webhook subscriptions",
            )
        sub = Subscription(
            id=new_subscription_id(),
            account_id=account,
            url=change.url,
            event_types=tuple(change.event_types or ()),
            time_clock_ids=tuple(change.time_clock_ids or ()),
            secret=change.secret or new_secret(),
            status=SubscriptionStatus.ACTIVE,
            cursor=uow.events.newest(),
            attempts=0,
            failing_since=None,
            next_attempt_at=0,
            created_at=now,
            modified_at=now,
        )
        uow.webhooks.add(sub)
        uow.commit()
    return sub


def get_subscription(uows: UnitOfWorkFactory, account: int, sub_id: str) -> Subscription:
    with uows(account=account, readonly=True) as uow:
        return _found(uow, sub_id)


def list_subscriptions(uows: UnitOfWorkFactory, account: int) -> list[Subscription]:
    with uows(account=account, readonly=True) as uow:
        return uow.webhooks.all()


def update_subscription(
    uows: UnitOfWorkFactory,
    account: int,
    sub_id: str,
    change: SubscriptionChange,
    guard: UrlGuard,
    prefix: str = "",
) -> Subscription:
    """Change what a subscription receives, where, and with which secret;
    ``status`` active puts a failing one back to work where it stopped."""
    check_change(change, creating=False, prefix=prefix)
    if change.url is not None and guard is not None:
        guard(change.url)
    with uows(account=account) as uow:
        sub = _found(uow, sub_id, for_update=True)
        updated = replace(
            sub,
            url=change.url if change.url is not None else sub.url,
            event_types=sub.event_types if change.event_types is None else change.event_types,
            time_clock_ids=(
                sub.time_clock_ids if change.time_clock_ids is None else change.time_clock_ids
            ),
            secret=change.secret or sub.secret,
            modified_at=max(_ms(), sub.modified_at + 1),
        )
        if change.status == SubscriptionStatus.ACTIVE.value:
            updated = _restarted(updated)
        elif change.status == SubscriptionStatus.FAILING.value:
            updated = replace(updated, status=SubscriptionStatus.FAILING)
        uow.webhooks.replace(updated)
        uow.commit()
    return updated


def delete_subscription(uows: UnitOfWorkFactory, account: int, sub_id: str) -> None:
    with uows(account=account) as uow:
        if not uow.webhooks.remove(sub_id):
            raise _missing(sub_id)
        uow.commit()


def replay_subscription(
    uows: UnitOfWorkFactory, account: int, sub_id: str, from_seq: int
) -> Subscription:
    """Deliver again from ``from_seq`` on (an event still in the log), and
    put a failing subscription back to work."""
    if from_seq < 1:
        raise DomainError(ErrorCode.INVALID_ARGUMENT, "from_seq must be at least 1")
    check_resumable(uows, account, from_seq - 1)
    with uows(account=account) as uow:
        sub = _found(uow, sub_id, for_update=True)
        replayed = _restarted(
            replace(sub, cursor=from_seq - 1, modified_at=max(_ms(), sub.modified_at + 1))
        )
        uow.webhooks.replace(replayed)
        uow.commit()
    return replayed


def list_deliveries(
    uows: UnitOfWorkFactory, account: int, sub_id: str, page_size: int, page_token: str
) -> tuple[list[Attempt], str]:
    """Attempts of a subscription, newest first, and the next page's token ('' at the end)."""
    if not 0 <= page_size <= MAX_PAGE:
        raise DomainError(ErrorCode.INVALID_ARGUMENT, f"page_size must be within 0..{MAX_PAGE}")
    after = int64_text(page_token) if page_token else 0
    if after is None:
        raise DomainError(ErrorCode.INVALID_ARGUMENT, "page_token is not one this server gave")
    size = page_size or 100
    with uows(account=account, readonly=True) as uow:
        _found(uow, sub_id)
        page = uow.webhooks.attempts(sub_id, size + 1, after)
    if len(page) > size:
        return page[:size], str(page[size - 1].id)
    return page, ""


def purge_attempts(uows: UnitOfWorkFactory, now: float, retention_s: float) -> int:
    """Forget delivery attempts made more than ``retention_s`` before ``now``."""
    cutoff = int((now - retention_s) * 1000)
    return in_batches(uows, lambda uow: uow.webhooks.purge_attempts(cutoff, 1000), 1000)


def _restarted(sub: Subscription) -> Subscription:
    return replace(
        sub, status=SubscriptionStatus.ACTIVE, attempts=0, failing_since=None, next_attempt_at=0
    )


def _found(uow: UnitOfWork, sub_id: str, *, for_update: bool = False) -> Subscription:
    sub = uow.webhooks.get(sub_id, for_update=for_update) if len(sub_id) <= 40 else None
    if sub is None:
        raise _missing(sub_id)
    return sub


def _missing(sub_id: str) -> DomainError:
    return DomainError(
        ErrorCode.WEBHOOK_SUBSCRIPTION_NOT_FOUND,
        f"no webhook subscription {sub_id[:64]!r}",
        {"subscriptionId": sub_id[:64]},
    )
