"""The webhook poster against scripted receivers on real sockets: what it
sends, keep-alive, answers of every framing, a receiver that closes, that
never answers or answers garbage, interim answers, TLS, and the refusal of
private addresses."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import uvloop

from geopunch.adapters.webhook_http import ERROR_BODY_BYTES, HttpPoster
from geopunch.domain.ports import PostResult
from tests.pki import issue, pem
from tests.webhook_receiver import Receiver

HEADERS = {"content-type": "application/json", "webhook-id": "msg_1"}

#: Answers one request read from a connection: the bytes to send back, and
#: whether to close the connection after them (None: send nothing, close).
Script = Callable[[int, "Request"], tuple[bytes | None, bool]]


@dataclass
class Request:
    head: list[str]
    body: bytes

    def header(self, name: str) -> str:
        for line in self.head[1:]:
            key, _, value = line.partition(":")
            if key.strip().lower() == name:
                return value.strip()
        raise KeyError(name)


@dataclass
class Scripted:
    """A receiver on this loop that answers as ``script`` says (called with
    the request's number, from 0, and the request)."""

    script: Script
    connections: int = 0
    requests: list[Request] = field(default_factory=list)
    port: int = 0
    server: asyncio.Server | None = None

    async def start(self, tls: ssl.SSLContext | None = None) -> Scripted:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=tls)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    def url(self, scheme: str = "http", path: str = "/hooks") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                try:
                    raw = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                head = raw.decode("latin-1").split("\r\n")[:-2]
                req = Request(head, b"")
                req.body = await reader.readexactly(int(req.header("content-length")))
                self.requests.append(req)
                answer, close = self.script(len(self.requests) - 1, req)
                if answer is not None:
                    writer.write(answer)
                    await writer.drain()
                if answer is None or close:
                    return
        finally:
            writer.close()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()


Run = Callable[[Callable[[], Awaitable[object]]], None]


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Run:
    """Runs a test's coroutine on asyncio's own loop, then on uvloop's (the server's)."""
    factory = asyncio.new_event_loop if request.param == "asyncio" else uvloop.new_event_loop

    def run(test: Callable[[], Awaitable[object]]) -> None:
        async def bounded() -> None:
            await asyncio.wait_for(test(), 60)

        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(bounded())

    return run


def _ok(n: int, r: Request) -> tuple[bytes | None, bool]:
    return b"HTTP/1.1 204 No Content\r\n\r\n", False


async def _post(poster: HttpPoster, url: str, body: bytes = b'{"n": 1}') -> PostResult:
    return await poster.post(url, body, HEADERS)


def test_requests_go_out_whole_on_one_kept_connection(run: Run) -> None:
    async def test() -> None:
        rx = await Scripted(_ok).start()
        poster = HttpPoster(5.0, True, "geopunch/test")
        try:
            for n in range(5):
                got = await _post(poster, rx.url(path="/in/é hooks?a=1&b=x y"), b'{"n": %d}' % n)
                assert got == PostResult(204, None)
        finally:
            await poster.close()
            await rx.stop()
        assert rx.connections == 1
        first = rx.requests[0]
        assert first.head[0] == "POST /in/%C3%A9%20hooks?a=1&b=x%20y HTTP/1.1"
        assert first.header("host") == f"127.0.0.1:{rx.port}"
        assert first.header("user-agent") == "geopunch/test"
        assert first.header("content-type") == "application/json"
        assert first.header("webhook-id") == "msg_1"
        assert [r.body for r in rx.requests] == [b'{"n": %d}' % n for n in range(5)]

    run(test)


def test_error_answers_are_kept_short_in_any_framing_and_the_connection_goes_on(run: Run) -> None:
    long = b"x" * (3 * ERROR_BODY_BYTES)

    def script(n: int, r: Request) -> tuple[bytes | None, bool]:
        if n == 0:  # chunked
            return (
                b"HTTP/1.1 500 Oops\r\ntransfer-encoding: chunked\r\n\r\n4\r\nboom\r\n0\r\n\r\n",
                False,
            )
        if n == 1:  # a long body with its length
            return b"HTTP/1.1 503 Busy\r\ncontent-length: %d\r\n\r\n%s" % (len(long), long), False
        if n == 2:  # an interim answer first
            return (
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
                False,
            )
        return b"HTTP/1.1 410 Gone\r\nconnection: close\r\n\r\nno more", True  # ended by the close

    async def test() -> None:
        rx = await Scripted(script).start()
        poster = HttpPoster(5.0, True, "test")
        try:
            assert await _post(poster, rx.url()) == PostResult(500, "HTTP 500: boom")
            busy = await _post(poster, rx.url())
            assert busy.status_code == 503 and busy.error == "HTTP 503: " + "x" * ERROR_BODY_BYTES
            assert await _post(poster, rx.url()) == PostResult(200, None)
            assert await _post(poster, rx.url()) == PostResult(410, "HTTP 410: no more")
            assert rx.connections == 1
            assert await _post(poster, rx.url()) == PostResult(410, "HTTP 410: no more")
            assert rx.connections == 2  # the close was seen: a new connection
        finally:
            await poster.close()
            await rx.stop()

    run(test)


def test_a_kept_connection_the_receiver_closed_is_replaced(run: Run) -> None:
    """Closed while kept (seen before the next request), the request goes
    out once on a new one; closed as the next request arrives, before any
    answer, the request is sent again on a new one."""

    def script(n: int, r: Request) -> tuple[bytes | None, bool]:
        if n == 2:
            return None, True  # the kept connection dropped under the request
        return b"HTTP/1.1 204 No Content\r\n\r\n", n == 0

    async def test() -> None:
        rx = await Scripted(script).start()
        poster = HttpPoster(5.0, True, "test")
        try:
            assert (await _post(poster, rx.url(), b"a")).status_code == 204
            await asyncio.sleep(0.1)  # the receiver's close has arrived
            assert (await _post(poster, rx.url(), b"b")).status_code == 204
            assert rx.connections == 2 and len(rx.requests) == 2
            assert (await _post(poster, rx.url(), b"c")).status_code == 204
        finally:
            await poster.close()
            await rx.stop()
        assert rx.connections == 3
        assert [r.body for r in rx.requests] == [b"a", b"b", b"c", b"c"]

    run(test)


def test_a_request_left_unanswered_times_out_or_fails_and_its_connection_is_dropped(
    run: Run,
) -> None:
    def script(n: int, r: Request) -> tuple[bytes | None, bool]:
        if n == 0:
            return b"", False  # no answer: the sender gives up
        if n == 1:
            return None, True  # closed without an answer
        if n == 2:
            return b"SMTP ready\r\n\r\n", False  # not HTTP
        return b"HTTP/1.1 204 No Content\r\n\r\n", False

    async def test() -> None:
        rx = await Scripted(script).start()
        poster = HttpPoster(0.3, True, "test")
        try:
            assert await _post(poster, rx.url()) == PostResult(None, "no answer within 0.3 s")
            closed = await _post(poster, rx.url())
            assert closed.status_code is None and "closed the connection" in (closed.error or "")
            garbage = await _post(poster, rx.url())
            assert garbage.status_code is None and "HttpParserError" in (garbage.error or "")
            assert (await _post(poster, rx.url())).status_code == 204
            assert rx.connections == 4  # none of the failed ones was used again
        finally:
            await poster.close()
            await rx.stop()
        refused = await _post(HttpPoster(1.0, True, "test"), f"http://127.0.0.1:{rx.port}/")
        assert refused.status_code is None and "ConnectionRefusedError" in (refused.error or "")

    run(test)


def test_a_request_on_a_kept_connection_times_out_and_the_next_goes_on_a_new_one(
    run: Run,
) -> None:
    def script(n: int, r: Request) -> tuple[bytes | None, bool]:
        if n == 1:
            return b"", False  # the kept connection's second request: no answer
        return b"HTTP/1.1 204 No Content\r\n\r\n", False

    async def test() -> None:
        rx = await Scripted(script).start()
        poster = HttpPoster(0.3, True, "test")
        try:
            assert (await _post(poster, rx.url())).status_code == 204
            started = time.monotonic()
            assert await _post(poster, rx.url()) == PostResult(None, "no answer within 0.3 s")
            assert 0.25 <= time.monotonic() - started < 2.0
            assert (await _post(poster, rx.url())).status_code == 204
            assert rx.connections == 2  # the one that timed out was not used again
        finally:
            await poster.close()
            await rx.stop()

    run(test)


def test_https_receivers_are_verified(run: Run, tmp_path: Path) -> None:
    ca = issue("webhook test CA", None, ca=True)
    cert = pem(*issue("127.0.0.1", ca, server=True))
    (tmp_path / "server.pem").write_bytes(cert.cert)
    (tmp_path / "server.key").write_bytes(cert.key)
    (tmp_path / "ca.pem").write_bytes(pem(*ca).cert)
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served.load_cert_chain(tmp_path / "server.pem", tmp_path / "server.key")
    trusted = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))

    async def test() -> None:
        rx = await Scripted(_ok).start(served)
        try:
            poster = HttpPoster(5.0, True, "test", ssl_context=trusted)
            assert await _post(poster, rx.url("https")) == PostResult(204, None)
            assert await _post(poster, rx.url("https")) == PostResult(204, None)
            await poster.close()
            assert rx.connections == 1
            untrusted = await _post(HttpPoster(5.0, True, "test"), rx.url("https"))
            assert untrusted.status_code is None
            assert "CERTIFICATE_VERIFY_FAILED" in (untrusted.error or "")
        finally:
            await rx.stop()

    run(test)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_the_poster_refuses_loopback_unless_allowed(run: Run, host: str) -> None:
    receiver = Receiver().start()

    async def post(allow: bool) -> PostResult:
        poster = HttpPoster(2.0, allow, "test")
        try:
            return await _post(poster, f"http://{host}:{receiver.port}/hooks")
        finally:
            await poster.close()

    got: list[PostResult] = []

    async def both() -> None:
        got.extend([await post(False), await post(True)])

    try:
        run(both)
        refused, allowed = got
        assert refused.status_code is None and refused.error is not None
        assert allowed == PostResult(204, None)
        assert len(receiver.requests) == 1
    finally:
        receiver.stop()
