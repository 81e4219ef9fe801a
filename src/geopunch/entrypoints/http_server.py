"""The HTTP/JSON API's server: uvicorn on the gRPC server's event loop, so one
process and one loop serve both protocols."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import socket
import ssl
from asyncio import sslproto
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, Literal

import orjson
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from geopunch import metrics
from geopunch.domain.errors import STATUS, ErrorCode
from geopunch.logs import OncePerSecond, new_request_id

log = logging.getLogger("geopunch")

#: The longest URL (path and query) a request may have: httptools, which
#: uvicorn hands each URL to, refuses longer ones (its offsets are 16-bit).
MAX_URL_BYTES = 65_535
#: The most a request's head (request line and headers) may hold: the
#: longest URL and as much again for the headers.
MAX_HEAD_BYTES = 128 * 1024
#: The most header lines a request may have (gunicorn's default too).
MAX_HEADERS = 100
#: Requests a connection may have parsed and waiting behind the one being
#: answered; what it sent past them is parsed as they are answered.
MAX_PIPELINED = 16
#: Bytes handed to the parser at a time, so that few requests are parsed
#: past MAX_PIPELINED (a read brings up to 256 KiB: 7,000 short requests).
_FEED_BYTES = 16 * 1024
#: How long a connection whose head was refused is still read from.
LINGER_S = 1.0


def _refusal(code: ErrorCode, detail: str) -> bytes:
    """A whole answer with the API's error body, for a request refused
    before it reaches the app."""
    rid = new_request_id()
    status = STATUS[code].http_status
    body = orjson.dumps({"detail": detail, "code": code.value, "requestId": rid})
    return (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nx-request-id: {rid}\r\nconnection: close\r\n\r\n"
    ).encode() + body


def _url_too_long() -> bytes:
    return _refusal(
        ErrorCode.URI_TOO_LONG,
        f"the URL holds more than {MAX_URL_BYTES} bytes: name fewer ids a call",
    )


def _head_too_large() -> bytes:
    return _refusal(
        ErrorCode.REQUEST_HEADER_FIELDS_TOO_LARGE,
        f"the request's head holds more than {MAX_HEAD_BYTES} bytes or {MAX_HEADERS} header lines",
    )


class BoundedHttp(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol with bounds it lacks, on what one
    connection may cost the process both APIs share:

    - a deadline for receiving each request whole, head and body:
      ``receive_s`` from the connection's first moment or the request's first
      byte. uvicorn has none (its keep-alive timer stops at the first byte
      received; Kludex/uvicorn#157 asks for one), so a client that connected
      and sent nothing, or trickled a request, held its connection for ever.
      The same setting bounds how long a gRPC call may take to send its
      message;
    - each request's head: its URL, size and header lines;
    - the requests waiting behind the one being answered (HTTP/1.1
      pipelining): uvicorn queued every request of what it read and read on
      after each answer, so 20 MB of pipelined GETs took 1.2 GB.
    """

    receive_s = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline: asyncio.TimerHandle | None = None
        self._arm()
        #: The head being received; None once it is whole, False once refused.
        self._head: _Head | Literal[False] | None = _Head()
        #: Bytes received but not parsed while MAX_PIPELINED requests wait.
        self._unfed = b""

    def data_received(self, data: bytes) -> None:
        # Checked before the parser sees the bytes: httptools gathers a URL
        # or a header value by concatenation, and uvicorn keeps every header,
        # without bounds. A head of 200 MB held the loop for 5 s, and 100 MB
        # of short headers took 600 MB and were answered, all without a key.
        head = self._head
        if head is False:
            return
        if head is not None and (refusal := head.refusal(data)) is not None:
            self._refuse_head(refusal())
            return
        if self._unfed:  # reading resumed by uvicorn's own flow control
            self._unfed += data
            self.flow.pause_reading()
            return
        self._feed(memoryview(data))

    def _feed(self, data: memoryview) -> None:
        """Parse ``data`` a slice at a time, keeping what follows once
        MAX_PIPELINED requests wait (the parser queues every request it
        reads whole)."""
        for at in range(0, len(data), _FEED_BYTES):
            super().data_received(data[at : at + _FEED_BYTES])  # type: ignore[arg-type]
            if self.transport.is_closing():  # refused as malformed: nothing more to parse
                return
            rest = at + _FEED_BYTES
            if len(self.pipeline) >= MAX_PIPELINED and rest < len(data):
                self._unfed = bytes(data[rest:])
                self.flow.pause_reading()
                return

    def on_response_complete(self) -> None:
        super().on_response_complete()  # starts the next waiting request, resumes reading
        if self.transport.is_closing():
            return
        if self.pipeline or self._unfed:
            self.flow.pause_reading()  # read on once the waiting requests are answered
        if self._unfed and len(self.pipeline) < MAX_PIPELINED:
            unfed, self._unfed = self._unfed, b""
            self._feed(memoryview(unfed))

    def send_400_response(self, msg: str) -> None:
        # What httptools cannot parse: uvicorn answers it in plain text, the
        # one answer without the API's error body.
        self.transport.write(
            _refusal(ErrorCode.INVALID_ARGUMENT, "the request is not valid HTTP/1.1")
        )
        self.transport.close()

    def _refuse_head(self, answer: bytes) -> None:
        """Answer, then what still comes is read and dropped for a moment
        before the connection closes: closed with bytes unread, the socket
        sends a reset, and the client's kernel would drop the answer with it."""
        self._head = False
        self._unfed = b""
        self._disarm()
        self.transport.write(answer)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_S, self.transport.close)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._deadline is None:  # a later request on a kept-alive connection
            self._arm()

    def on_headers_complete(self) -> None:
        self._head = None
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        self._head = _Head()  # the next request on a kept-alive connection
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._unfed = b""
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._deadline = self.loop.call_later(self.receive_s, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        # A 408 only where no answer can be under way: with the head read,
        # the app is running and may be writing one.
        if self.cycle is None or self.cycle.response_complete:
            self.transport.write(
                _refusal(
                    ErrorCode.REQUEST_TIMEOUT,
                    f"the request did not arrive whole within {self.receive_s:g} s",
                )
            )
        self.transport.close()


def _protocols(receive_s: float, tls: ssl.SSLContext | None) -> Any:
    """What uvicorn makes each connection's protocol with: BoundedHttp, and
    over HTTPS the TLS layer around it, made here rather than by the
    listening server. There asyncio and uvloop allow a handshake 60 s, and
    uvicorn has no setting for it: a client that connected and never began
    its handshake held its connection for a minute. Here it has
    ``receive_s``, the time a request has to arrive whole. (``start_tls``
    from the protocol's ``connection_made`` would race uvloop, which reads
    the client's first bytes into the protocol before the TLS layer is in
    place.)"""
    http = type("BoundedHttp", (BoundedHttp,), {"receive_s": receive_s})
    if tls is None:
        return http

    def secured(**kwargs: Any) -> asyncio.BaseProtocol:
        # No waiter (asyncio's own server passes none either), and a float
        # timeout, which asyncio takes though its stubs say int.
        return sslproto.SSLProtocol(
            asyncio.get_running_loop(),
            http(**kwargs),
            tls,
            None,  # type: ignore[arg-type]
            server_side=True,
            ssl_handshake_timeout=receive_s,  # type: ignore[arg-type]
        )

    # uvicorn makes each protocol by calling ``http`` with keywords: a class
    # or, as here, a factory.
    return secured


class _Head:
    """A request's head as far as it has come, measured from the bytes
    received (up to the blank line that ends it, when it is in them)."""

    __slots__ = ("line", "lines", "size", "tail")

    def __init__(self) -> None:
        self.size = 0
        self.lines = 0
        self.tail = b""  # the last bytes seen: the blank line may straddle two reads
        self.line: bytes | None = b""  # the request line, until it is whole

    def refusal(self, data: bytes) -> Callable[[], bytes] | None:
        """With ``data`` received: None while the head is within bounds,
        else what makes the answer refusing it."""
        seen = self.tail + data if self.tail else data
        ends = [i for i in (seen.find(b"\r\n\r\n"), seen.find(b"\n\n")) if i >= 0]
        head = seen[len(self.tail) : min(ends)] if ends else data
        self.size += len(head)
        self.lines += head.count(b"\n")  # a line a header, the request line's end included
        self.tail = seen[-3:]
        if self.line is not None:
            whole = data.find(b"\n")
            self.line += data if whole < 0 else data[:whole]
            if whole >= 0:
                # method, URL, version; the URL alone holds no space
                parts = self.line.split(b" ")
                if len(parts) == 3 and len(parts[1]) > MAX_URL_BYTES:
                    return _url_too_long
                self.line = None
            elif len(self.line) > MAX_URL_BYTES + 32:  # past any method and version
                return _url_too_long
        if self.size > MAX_HEAD_BYTES or self.lines > MAX_HEADERS:
            return _head_too_large
        return None


class CannotListen(RuntimeError):
    """An address the server cannot listen on (taken, or not this host's):
    ``geopunch serve`` says so and exits with 2, without a traceback."""


def metrics_listener(listen: str) -> Callable[[], None]:
    """``metrics.serve`` on ``listen``, or CannotListen."""
    try:
        return metrics.serve(listen)
    except OSError as exc:
        raise CannotListen(f"cannot listen for metrics on {listen}: {exc.strerror or exc}") from exc


def bind(listen: str, shared: bool) -> socket.socket:
    """A listening socket on ``listen`` (port 0: a free one); ``shared``: with
    SO_REUSEPORT, as the workers of ``serve --processes`` share one port."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if shared:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, int(port)))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise CannotListen(f"cannot listen for HTTP on {listen}: {exc.strerror or exc}") from exc
    sock.setblocking(False)
    return sock


class HttpServer:
    """Serves ``app`` on ``sock`` until ``stop``."""

    def __init__(
        self,
        app: Any,
        sock: socket.socket,
        tls_cert: str = "",
        tls_key: str = "",
        tls_client_ca: str = "",
        receive_s: float = 10.0,
    ) -> None:
        """With ``tls_cert``: HTTPS with the gRPC server's certificate, and
        client certificates required when ``tls_client_ca`` is given; a
        request must arrive whole within ``receive_s`` seconds."""
        self.sock = sock
        host, port = sock.getsockname()[:2]
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        tls = None
        if tls_cert:
            # No default CAs: with client certificates required, only those
            # of tls_client_ca are trusted.
            tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            tls.minimum_version = ssl.TLSVersion.TLSv1_2
            tls.load_cert_chain(tls_cert, tls_key or None)
            tls.set_alpn_protocols(["http/1.1"])
            if tls_client_ca:
                tls.load_verify_locations(tls_client_ca)
                tls.verify_mode = ssl.CERT_REQUIRED
        config = uvicorn.Config(
            app,
            log_config=None,  # geopunch's JSON logging
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=10,
            http=_protocols(receive_s, tls),
        )
        self._server = uvicorn.Server(config)
        # uvicorn warns once a malformed request (or an upgrade it cannot
        # serve), before any key is seen: 2,000 such requests wrote 3,000
        # lines in 0.8 s.
        uvicorn_log = logging.getLogger("uvicorn.error")
        if not any(isinstance(f, OncePerSecond) for f in uvicorn_log.filters):
            uvicorn_log.addFilter(OncePerSecond())
        self._serving: concurrent.futures.Future[None] | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Serve on ``loop`` (running on another thread) until ``stop``."""
        self._serving = asyncio.run_coroutine_threadsafe(
            self._server.serve(sockets=[self.sock]), loop
        )
        log.info("http listening", extra={"fields": {"address": self.address}})

    def stop(self, timeout: float) -> None:
        """Stop accepting, let requests in flight finish within ``timeout`` seconds."""
        self._server.should_exit = True
        if self._serving is not None:
            try:
                self._serving.result(timeout + 1)
            except concurrent.futures.TimeoutError:
                log.error("the HTTP server did not stop in time")
        self.sock.close()
