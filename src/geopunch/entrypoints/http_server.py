"""The HTTP/JSON API's server: uvicorn on the gRPC server's event loop, so one
process and one loop serve both protocols."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import socket
import ssl
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("geopunch")

_TIMED_OUT = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


class ReceiveDeadline(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol with a deadline for receiving each request
    whole, head and body: ``receive_s`` from the connection's first moment
    or the request's first byte. uvicorn has none (its keep-alive timer stops
    at the first byte received; Kludex/uvicorn#157 asks for one), so a client
    that connected and sent nothing, or trickled a request, held its
    connection (a descriptor of the process gRPC shares) for ever. The same
    setting bounds how long a gRPC call may take to send its message."""

    receive_s = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline: asyncio.TimerHandle | None = None
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._deadline is None:  # a later request on a kept-alive connection
            self._arm()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
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
            self.transport.write(_TIMED_OUT)
        self.transport.close()


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
        raise RuntimeError(f"cannot listen for HTTP on {listen}: {exc}") from exc
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
        tls: dict[str, Any] = {}
        if tls_cert:
            tls = {"ssl_certfile": tls_cert, "ssl_keyfile": tls_key}
            if tls_client_ca:
                tls.update(ssl_ca_certs=tls_client_ca, ssl_cert_reqs=ssl.CERT_REQUIRED)
        config = uvicorn.Config(
            app,
            log_config=None,  # geopunch's JSON logging
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=10,
            http=type("ReceiveDeadline", (ReceiveDeadline,), {"receive_s": receive_s}),
            **tls,
        )
        self._server = uvicorn.Server(config)
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
