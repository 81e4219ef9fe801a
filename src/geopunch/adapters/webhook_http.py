"""Webhook requests over HTTP/1.1: a small keep-alive client on asyncio's
transports, its answers read by httptools (llhttp, the parser uvicorn runs).

Why not an HTTP client library: a delivery is little more than its POST, and
at ten subscriptions the deliverer's interpreter is what limits the rate. A
keep-alive POST loop to one local receiver cost about 170 us of CPU a request
through aiohttp (the fastest client measured; httpx ran at half its rate) and
about 60 us here (bench/README, measurement log). A webhook needs little of
HTTP: one request at a time on a connection, no redirects followed, no
cookies, no proxies, no compression; so this is what is written by hand, and
the parsing of answers (chunks, lengths, keep-alive) is left to llhttp.

Connections to a receiver (scheme, host, port) are kept alive between
deliveries, for up to ``IDLE_S``. A kept connection the receiver closed
meanwhile is noticed, and a request that finds it closed before any answer
is sent again on a new one (delivery is at least once anyway, under the same
``webhook-id``).

Unless private addresses are allowed, every new connection's resolved
addresses are checked here, not only the URL when it is stored: a host name
that later resolves to a private address (DNS rebinding) is refused too.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast
from urllib.parse import quote, urlsplit

import httptools

from geopunch.domain.ports import PostResult
from geopunch.domain.webhooks import refused_address

#: How long a connection is kept for the next delivery with nothing sent on it.
IDLE_S = 30.0
#: How much of an error answer's body is kept (the rest is read and dropped).
ERROR_BODY_BYTES = 1000
#: What a path may keep as it is; anything else is percent-encoded.
_PATH_SAFE = "/?=&%:@!$'()*+,;~-._"


@dataclass(frozen=True, slots=True)
class _Target:
    origin: tuple[str, str, int]  # scheme, host (IDNA), port
    host_header: str
    path: str


@functools.lru_cache(maxsize=4096)
def _target(url: str) -> _Target:
    """Where ``url`` sends a request. Cached: it depends on the URL alone."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    host = parts.hostname.encode("idna").decode("ascii")
    default = 443 if parts.scheme == "https" else 80
    port = parts.port or default
    shown = f"[{host}]" if ":" in host else host
    path = quote(parts.path or "/", safe=_PATH_SAFE)
    if parts.query:
        path += "?" + quote(parts.query, safe=_PATH_SAFE)
    return _Target(
        (parts.scheme, host, port), shown if port == default else f"{shown}:{port}", path
    )


@functools.lru_cache(maxsize=4096)
def _literal_refused(host: str) -> bool:
    """An address written into the URL that a webhook may not reach."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return refused_address(host)


class _Closed(ConnectionError):
    """The connection closed before any of the answer came."""


class _Connection(asyncio.Protocol):
    """One connection to a receiver: one request at a time, its answer read
    by llhttp (lengths, chunks, keep-alive)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._answer: asyncio.Future[tuple[int, bytes, bool]] | None = None
        self._status = 0
        self._body = bytearray()

    # asyncio's side
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: no isinstance
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._answer is None:  # nothing asked: not a connection to go on with
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as err:
            self._fail(err)
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._status:  # an answer ended by the close (no length given)
            self._complete(keep=False)
        else:
            why = f": {exc}" if exc else ""
            self._fail(_Closed(f"the receiver closed the connection without answering{why}"))

    # llhttp's callbacks
    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        if self._status >= 300 and len(self._body) < ERROR_BODY_BYTES:
            self._body += body[: ERROR_BODY_BYTES - len(self._body)]

    def on_message_complete(self) -> None:
        if self._status < 200:  # an interim answer (100 Continue, 103): the real one follows
            self._status = 0
            return
        self._complete(keep=self._parser.should_keep_alive())

    def _complete(self, keep: bool) -> None:
        answer, self._answer = self._answer, None
        if answer is not None and not answer.done():
            answer.set_result((self._status, bytes(self._body), keep))

    def _fail(self, err: Exception) -> None:
        answer, self._answer = self._answer, None
        if answer is not None and not answer.done():
            answer.set_exception(err)

    async def request(self, data: bytes, deadline: float) -> tuple[int, bytes, bool]:
        """Send one request; its status, the start of an error answer's body,
        and whether the connection may carry another. TimeoutError when no
        whole answer has come by ``deadline`` (the loop's clock).

        The deadline is a timer on the loop rather than ``asyncio.timeout``:
        entering and leaving a timeout scope was about a tenth of the
        deliverer's interpreter time a delivery (py-spy, bench/README.md)."""
        assert self.transport is not None and self._answer is None
        if self.closed:
            raise _Closed("the receiver closed the connection")
        self._status, self._body = 0, bytearray()
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[tuple[int, bytes, bool]] = loop.create_future()
        self._answer = answer
        timer = loop.call_at(deadline, self._timed_out)
        self.transport.write(data)
        try:
            return await answer
        finally:
            timer.cancel()

    def _timed_out(self) -> None:
        self._fail(TimeoutError("no answer by the deadline"))

    def reusable(self, now: float) -> bool:
        """Open, and kept for less than ``IDLE_S``."""
        return not self.closed and now - self.idle_since < IDLE_S

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class HttpPoster:
    """Implements ``WebhookPoster``; made and used on one event loop.
    ``ssl_context``: what ``https`` receivers are verified with (the
    system's trusted certificates by default)."""

    def __init__(
        self,
        timeout_s: float,
        allow_private: bool,
        user_agent: str,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._timeout_s = timeout_s
        self._allow_private = allow_private
        self._user_agent = user_agent
        self._ssl = ssl_context
        #: Kept connections by receiver, the most recently used last.
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._swept_at = time.monotonic()

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> PostResult:
        try:
            target = _target(url)
        except ValueError as err:
            return PostResult(None, f"the URL cannot be used: {err}")
        if not self._allow_private and _literal_refused(target.origin[1]):
            return PostResult(None, "the URL's address is loopback, private or reserved")
        conn: _Connection | None = None
        deadline = asyncio.get_running_loop().time() + self._timeout_s
        try:
            data = self._head(target, headers, len(body)) + body
            conn = self._take(target.origin)
            answer = None
            if conn is not None:
                try:
                    answer = await conn.request(data, deadline)
                except _Closed:  # closed while kept: once more on a new one
                    conn = None
            if answer is None:
                async with asyncio.timeout_at(deadline):
                    conn = await self._connect(target)
                answer = await conn.request(data, deadline)
        except TimeoutError:
            _drop(conn)
            return PostResult(None, f"no answer within {self._timeout_s} s")
        except (OSError, ValueError, httptools.HttpParserError) as err:
            _drop(conn)
            return PostResult(None, f"{type(err).__name__}: {err}")
        except BaseException:  # cancelled: its answer may still come on it
            _drop(conn)
            raise
        status, text, keep = answer
        assert conn is not None
        if keep:
            self._keep(target.origin, conn)
        else:
            conn.close()
        if status < 300:
            return PostResult(status, None)
        return PostResult(status, f"HTTP {status}: {text.decode(errors='replace')}")

    def _head(self, target: _Target, headers: Mapping[str, str], length: int) -> bytes:
        lines = [
            f"POST {target.path} HTTP/1.1",
            f"host: {target.host_header}",
            f"user-agent: {self._user_agent}",
            f"content-length: {length}",
        ]
        for name, value in headers.items():
            if "\r" in value or "\n" in value:
                raise ValueError(f"header {name!r} holds a line break")
            lines.append(f"{name}: {value}")
        lines.append("\r\n")
        return "\r\n".join(lines).encode("latin-1")

    def _take(self, origin: tuple[str, str, int]) -> _Connection | None:
        kept = self._idle.get(origin)
        now = time.monotonic()
        while kept:
            conn = kept.pop()
            if conn.reusable(now):
                return conn
            conn.close()
        return None

    def _keep(self, origin: tuple[str, str, int], conn: _Connection) -> None:
        now = time.monotonic()
        conn.idle_since = now
        self._idle.setdefault(origin, []).append(conn)
        if now - self._swept_at >= IDLE_S:  # receivers no longer posted to
            self._swept_at = now
            for key, kept in list(self._idle.items()):
                fresh = []
                for c in kept:
                    if c.reusable(now):
                        fresh.append(c)
                    else:
                        c.close()
                if fresh:
                    self._idle[key] = fresh
                else:
                    del self._idle[key]

    async def _connect(self, target: _Target) -> _Connection:
        scheme, host, port = target.origin
        loop = asyncio.get_running_loop()
        try:
            found = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as err:
            raise OSError(f"{host} does not resolve: {err.strerror}") from None
        addresses = list(dict.fromkeys(str(info[4][0]) for info in found))
        if not self._allow_private:
            addresses = [a for a in addresses if not refused_address(a)]
            if not addresses:
                raise OSError(f"{host} resolves to no public address")
        tls = None
        if scheme == "https":
            tls = self._ssl or _default_tls()
        failed: OSError | None = None
        for address in addresses:
            try:
                _, conn = await loop.create_connection(
                    _Connection,
                    address,
                    port,
                    ssl=tls,
                    server_hostname=host if tls is not None else None,
                )
                return conn
            except OSError as err:
                failed = err
        assert failed is not None
        raise failed

    async def close(self) -> None:
        for kept in self._idle.values():
            for conn in kept:
                conn.close()
        self._idle.clear()


@functools.cache
def _default_tls() -> ssl.SSLContext:
    return ssl.create_default_context()


def _drop(conn: _Connection | None) -> None:
    """A connection whose request did not end cleanly: never used again."""
    if conn is not None:
        conn.close()


__all__ = ["HttpPoster"]
