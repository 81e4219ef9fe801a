"""A real HTTP webhook receiver for the tests: it records what arrives and
can be told to fail, to answer too late, or to go down for a while."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook

#: What the receiver does with one request: answer this status after this
#: many seconds.
Behaviour = Callable[["Received"], tuple[int, float]]


@dataclass
class Received:
    webhook_id: str
    timestamp: str
    signature: str
    body: bytes
    at: float
    #: Attempts of this webhook-id so far, this one included.
    attempt: int
    #: The status it was answered with (0 until answered).
    status: int = 0

    @property
    def event(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed

    def headers(self) -> dict[str, str]:
        return {
            "webhook-id": self.webhook_id,
            "webhook-timestamp": self.timestamp,
            "webhook-signature": self.signature,
        }


@dataclass
class Receiver:
    behaviour: Behaviour = lambda r: (204, 0.0)
    #: Every request, in arrival order (also those answered with an error).
    requests: list[Received] = field(default_factory=list)
    port: int = 0
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real receivers

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                wid = self.headers.get("webhook-id", "")
                with receiver._lock:
                    attempt = 1 + sum(r.webhook_id == wid for r in receiver.requests)
                    got = Received(
                        wid,
                        self.headers.get("webhook-timestamp", ""),
                        self.headers.get("webhook-signature", ""),
                        body,
                        time.time(),
                        attempt,
                    )
                    receiver.requests.append(got)
                status, delay = receiver.behaviour(got)
                if delay:
                    time.sleep(delay)
                got.status = status if not delay else 0  # a late answer is not taken
                try:
                    self.send_response(status)
                    self.send_header("content-length", "0")
                    self.end_headers()
                except OSError:  # the sender gave up waiting
                    pass

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        # A short poll: stop() waits for the serving loop's next look, half
        # a second by default, and the tests stop receivers by the dozen.
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        ).start()
        return self

    def stop(self) -> None:
        """Go down: stop listening and drop open connections."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def accepted(self) -> list[Received]:
        """Requests answered with a 2xx, in arrival order."""
        with self._lock:
            return [r for r in self.requests if 200 <= r.status < 300]

    def wait_for(self, count: int, timeout: float) -> list[Received]:
        """Wait until ``count`` distinct webhook-ids were accepted; the first
        accepted request of each, in arrival order."""
        deadline = time.monotonic() + timeout
        while True:
            firsts: dict[str, Received] = {}
            for r in self.accepted():
                firsts.setdefault(r.webhook_id, r)
            if len(firsts) >= count or time.monotonic() > deadline:
                return list(firsts.values())
            time.sleep(0.05)


def verify(secret: str, r: Received) -> dict[str, Any]:
    """The event, once its signature checks out with the standardwebhooks library."""
    parsed: dict[str, Any] = Webhook(secret).verify(r.body, r.headers())
    return parsed
