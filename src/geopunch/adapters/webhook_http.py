"""Webhook requests over HTTP, with aiohttp.

aiohttp rather than httpx: on this machine a keep-alive POST loop with
aiohttp runs at about twice httpx's rate (bench/webhooks.py measures the
deliverer against such a loop). Connections to each receiver are kept
alive between deliveries.

Unless private addresses are allowed, every connection's resolved address
is checked again here, not only the URL when it is stored: a host name
that later resolves to a private address (DNS rebinding) is refused too.

aiohttp is imported when the first request is made, not with this module:
it was 0.13 s of every server's start (``python -X importtime``), also of
servers that never deliver a webhook.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from geopunch.domain.ports import PostResult
from geopunch.domain.webhooks import refused_address

if TYPE_CHECKING:
    import aiohttp


@functools.cache
def _public_only() -> type[Any]:
    """The class of a resolver that answers no loopback, private or reserved
    address (made on first use, with aiohttp)."""
    from aiohttp.abc import AbstractResolver, ResolveResult
    from aiohttp.resolver import ThreadedResolver

    class PublicOnly(AbstractResolver):
        def __init__(self) -> None:
            self._inner = ThreadedResolver()

        async def resolve(
            self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
        ) -> list[ResolveResult]:
            found = await self._inner.resolve(host, port, family)
            allowed = [r for r in found if not refused_address(r["host"])]
            if not allowed:
                raise OSError(f"{host} resolves to no public address")
            return allowed

        async def close(self) -> None:
            await self._inner.close()

    return PublicOnly


class AiohttpPoster:
    """Implements ``WebhookPoster``; made and used on one event loop."""

    def __init__(self, timeout_s: float, allow_private: bool, user_agent: str) -> None:
        self._timeout_s = timeout_s
        self._allow_private = allow_private
        self._headers = {"user-agent": user_agent}
        self._session: aiohttp.ClientSession | None = None
        self._failures: tuple[type[BaseException], ...] = ()

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            import aiohttp

            connector = aiohttp.TCPConnector(
                limit=0,  # one connection per subscription task at a time anyway
                limit_per_host=0,
                resolver=None if self._allow_private else _public_only()(),
                keepalive_timeout=30,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=self._timeout_s),
                headers=self._headers,
            )
            self._failures = (aiohttp.ClientError, OSError, ValueError)
        return self._session

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> PostResult:
        if not self._allow_private and _literal_refused(url):
            return PostResult(None, "the URL's address is loopback, private or reserved")
        try:
            async with self._open().post(
                url, data=body, headers=dict(headers), allow_redirects=False
            ) as response:
                text = await response.text(errors="replace") if response.status >= 300 else ""
                await response.read()
                error = None if response.status < 300 else f"HTTP {response.status}: {text}"
                return PostResult(response.status, error)
        except TimeoutError:
            return PostResult(None, f"no answer within {self._timeout_s} s")
        except self._failures as err:
            return PostResult(None, f"{type(err).__name__}: {err}")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


@functools.lru_cache(maxsize=4096)
def _literal_refused(url: str) -> bool:
    """An address written into the URL (aiohttp does not resolve those).
    Cached: it depends on the URL alone, and parsing it cost 6-8 us per delivery."""
    host = urlsplit(url).hostname or ""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return refused_address(host)


__all__ = ["AiohttpPoster"]
