"""Webhook rules: which URLs and secrets are taken, which addresses are
refused, how retries are paced, and that the poster refuses private
addresses unless allowed."""

from __future__ import annotations

import random

import pytest

from geopunch.config import Config
from geopunch.domain.errors import DomainError, ErrorCode
from geopunch.domain.webhooks import (
    MAX_RETRY_S,
    SubscriptionChange,
    check_change,
    new_secret,
    refused_address,
    retry_delay_s,
    secret_problem,
    url_problem,
)
from geopunch.service.webhooks import resolving_guard


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("https://hooks.example.com/geopunch?x=1", None),
        ("http://10.0.0.1:8080/", None),  # the address is judged separately
        ("ftp://example.com/", "http:// or https://"),
        ("example.com/hooks", "http:// or https://"),
        ("http:///path", "no host"),
        ("https://u:p@example.com/", "credentials"),
        ("https://example.com/#frag", "fragment"),
        ("https://example.com:99999/", "not a URL"),
        ("https://example.com/" + "a" * 2100, "longer than"),
    ],
)
def test_urls(url: str, problem: str | None) -> None:
    found = url_problem(url)
    assert (found is None) if problem is None else (problem in (found or ""))


def test_secrets() -> None:
    assert secret_problem(new_secret()) is None
    assert secret_problem("whsec_" + "A" * 32) is None  # 24 bytes
    assert "24 to 64" in (secret_problem("whsec_" + "A" * 16) or "")
    assert "base64" in (secret_problem("whsec_not base64!") or "")


def test_every_problem_is_named_at_its_field() -> None:
    with pytest.raises(DomainError) as info:
        check_change(
            SubscriptionChange(
                url="gopher://x",
                event_types=("clockIn", "nope"),
                secret="whsec_x",
                status="paused",
            ),
            creating=True,
            prefix="subscription.",
        )
    fields = {v.field for v in info.value.violations}
    assert fields == {
        "subscription.url",
        "subscription.event_types",
        "subscription.secret",
        "subscription.status",
    }


@pytest.mark.parametrize(
    ("address", "refused"),
    [
        ("127.0.0.1", True),
        ("10.1.2.3", True),
        ("192.168.0.1", True),
        ("169.254.169.254", True),  # cloud metadata
        ("0.0.0.0", True),
        ("::1", True),
        ("fe80::1%eth0", True),
        ("::ffff:127.0.0.1", True),
        ("224.0.0.1", True),
        ("8.8.8.8", False),
        ("2001:4860:4860::8888", False),
    ],
)
def test_refused_addresses(address: str, refused: bool) -> None:
    assert refused_address(address) is refused


def test_the_guard_refuses_hosts_that_resolve_to_private_addresses() -> None:
    guard = resolving_guard(allow_private=False)
    assert guard is not None
    for url in ("http://localhost:9/x", "http://127.0.0.1/", "http://[::1]:80/"):
        with pytest.raises(DomainError) as info:
            guard(url)
        assert info.value.code is ErrorCode.WEBHOOK_URL_NOT_ALLOWED
    with pytest.raises(DomainError) as info:
        guard("http://no-such-host.invalid/")
    assert "does not resolve" in info.value.message
    assert resolving_guard(allow_private=True) is None


def test_retries_start_near_a_second_and_back_off_to_a_cap() -> None:
    rng = random.Random(7)
    first = [retry_delay_s(1, rng) for _ in range(200)]
    assert min(first) >= 0.75 and max(first) <= 1.25 and len(set(first)) > 100  # jittered
    assert 3.0 <= retry_delay_s(3, rng) <= 5.0
    assert max(retry_delay_s(n, rng) for n in range(1, 60)) <= MAX_RETRY_S * 1.25


def test_the_server_flag_and_variable_allow_private_addresses() -> None:
    assert not Config.from_env({}).webhook_allow_private
    assert Config.from_env({"GEOPUNCH_WEBHOOK_ALLOW_PRIVATE": "1"}).webhook_allow_private
    assert Config.from_env({}, webhook_allow_private="1").webhook_allow_private
    with pytest.raises(ValueError):
        Config.from_env({"GEOPUNCH_WEBHOOK_ALLOW_PRIVATE": "maybe"})
