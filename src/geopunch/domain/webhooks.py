"""Webhook subscriptions: what a subscriber asks for, and how deliveries of
one subscription are paced.

A subscription follows the event log with a cursor of its own. Events go
out one at a time, in ``seq`` order: the event after the cursor is retried
(exponential backoff with jitter) until it is accepted or the retry window
closes; then the subscription is *failing* and waits, cursor unchanged,
until it is updated back to active or replayed. Nothing is skipped.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import random
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urlsplit

from geopunch.domain.errors import DomainError, ErrorCode
from geopunch.domain.events import EventType, check_watch_filter
from geopunch.domain.rules import Collector

#: Subscriptions one account may hold.
MAX_SUBSCRIPTIONS = 100
MAX_URL_LENGTH = 2048
SECRET_PREFIX = "whsec_"
#: Secret bytes: at least 24 (192 bits), at most 64, as Standard Webhooks has them.
MIN_SECRET_BYTES, MAX_SECRET_BYTES = 24, 64
#: The first retry comes after about this many seconds, then twice as long each time...
FIRST_RETRY_S = 1.0
#: ...up to this.
MAX_RETRY_S = 600.0


class SubscriptionStatus(StrEnum):
    ACTIVE = "active"
    FAILING = "failing"


@dataclass(frozen=True, slots=True)
class Subscription:
    """A stored subscription. ``cursor`` is the last delivered seq;
    ``attempts`` the failed attempts of the event after it, the first at
    ``failing_since`` (Unix ms); times are Unix milliseconds."""

    id: str
    account_id: int
    url: str
    event_types: tuple[str, ...]
    time_clock_ids: tuple[int, ...]
    secret: str
    status: SubscriptionStatus
    cursor: int
    attempts: int
    failing_since: int | None
    next_attempt_at: int
    created_at: int
    modified_at: int


@dataclass(frozen=True, slots=True)
class SubscriptionChange:
    """What a create or an update sets (None: unchanged, or for a create the default)."""

    url: str | None = None
    event_types: tuple[str, ...] | None = None
    time_clock_ids: tuple[int, ...] | None = None
    secret: str | None = None
    status: str | None = None


@dataclass(frozen=True, slots=True)
class Attempt:
    """One delivery attempt of one event to one subscription."""

    subscription_id: str
    seq: int
    event_id: str
    event_type: str
    attempt: int
    attempted_at: int  # Unix ms
    status_code: int | None
    latency_ms: float
    error: str | None
    succeeded: bool
    id: int = 0


def new_subscription_id() -> str:
    return f"whsub_{uuid.uuid4().hex}"


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def check_change(change: SubscriptionChange, creating: bool, prefix: str = "") -> None:
    """Every problem of a create or update request, each at its field
    (under ``prefix``: the request's path to the subscription)."""
    out = _Prefixed(prefix)
    if creating and change.url is None:
        out.add("url", ErrorCode.INVALID_ARGUMENT, "url is required")
    if change.url is not None:
        problem = url_problem(change.url)
        if problem:
            out.add("url", ErrorCode.INVALID_ARGUMENT, problem)
    if change.event_types is not None or change.time_clock_ids is not None:
        try:
            check_watch_filter(change.event_types or (), change.time_clock_ids or ())
        except DomainError as err:
            field = "time_clock_ids" if err.code is ErrorCode.BATCH_TOO_LARGE else "event_types"
            out.add(field, err.code, err.message)
    if change.secret is not None and change.secret != "":
        problem = secret_problem(change.secret)
        if problem:
            out.add("secret", ErrorCode.INVALID_ARGUMENT, problem)
    if change.status is not None and change.status not in (
        SubscriptionStatus.ACTIVE.value,
        SubscriptionStatus.FAILING.value,
        "",
    ):
        out.add("status", ErrorCode.INVALID_ARGUMENT, "status is 'active' or 'failing'")
    out.raise_if_any("webhook subscription")


class _Prefixed(Collector):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self._prefix = prefix

    def add(self, path: str, reason: ErrorCode, description: str) -> None:
        super().add(self._prefix + path, reason, description)


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot receive webhooks, or None."""
    if len(url) > MAX_URL_LENGTH:
        return f"url is longer than {MAX_URL_LENGTH} characters"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises on a bad port)
    except ValueError as err:
        return f"url is not a URL: {err}"
    if parts.scheme not in ("http", "https"):
        return "url must be http:// or https://"
    if not parts.hostname:
        return "url has no host"
    if parts.username or parts.password:
        return "url must not carry credentials (sign with the secret instead)"
    if parts.fragment:
        return "url must not have a fragment"
    return None


def secret_problem(secret: str) -> str | None:
    body = secret.removeprefix(SECRET_PREFIX)
    try:
        raw = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        return f"secret must be {SECRET_PREFIX} and base64"
    if not MIN_SECRET_BYTES <= len(raw) <= MAX_SECRET_BYTES:
        return f"secret must hold {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes"
    return None


def refused_address(address: str) -> bool:
    """Addresses a webhook may not reach unless the operator allows private
    ones: loopback, private, link-local (cloud metadata), unspecified,
    multicast and reserved."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast


def check_addresses(host: str, addresses: Sequence[str]) -> None:
    """WEBHOOK_URL_NOT_ALLOWED when ``host`` resolves to a refused address (or to none)."""
    if not addresses:
        raise DomainError(ErrorCode.WEBHOOK_URL_NOT_ALLOWED, f"the host {host!r} does not resolve")
    bad = [a for a in addresses if refused_address(a)]
    if bad:
        raise DomainError(
            ErrorCode.WEBHOOK_URL_NOT_ALLOWED,
            f"the host {host!r} resolves to {bad[0]}, a loopback, private or reserved address "
            "(an operator may allow such with --webhook-allow-private)",
        )


def retry_delay_s(attempts: int, rng: random.Random | None = None) -> float:
    """Wait before the next attempt after ``attempts`` failures: about a
    second, doubling to at most MAX_RETRY_S, each spread by ±25 % so that
    receivers coming back are not hit by every sender at once."""
    base = min(FIRST_RETRY_S * 2 ** max(attempts - 1, 0), MAX_RETRY_S)
    spread: float = (rng or random).uniform(0.75, 1.25)
    return float(base * spread)


def failing_event_payload(sub: Subscription, seq: int, error: str) -> dict[str, object]:
    return {
        "subscriptionId": sub.id,
        "url": sub.url,
        "seq": seq,
        "attempts": sub.attempts,
        "failingSince": sub.failing_since,
        "error": error,
    }


#: The event a subscription that ran out of retries is reported with.
FAILING_EVENT = EventType.WEBHOOK_FAILING
