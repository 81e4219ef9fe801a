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

log = logging.getLogger("geopunch")


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
    ) -> None:
        """With ``tls_cert``: HTTPS with the gRPC server's certificate, and
        client certificates required when ``tls_client_ca`` is given."""
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
