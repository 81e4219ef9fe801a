"""The JetStream sink's broker side, with nats-py (the NATS maintainers'
asyncio client).

Messages carry ``Nats-Msg-Id`` (the event id): within the stream's
duplicate window (two minutes unless the stream says otherwise) JetStream
stores a message id once, so events published again after a restart (sent,
but not yet recorded as acknowledged) are not stored twice.
"""

from __future__ import annotations

import asyncio
import contextlib

import nats
import nats.errors
from nats.aio.client import Client as NatsClient
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

from geopunch.domain.errors import BrokerUnavailable
from geopunch.logs import first_line

#: Why a publish waiting for its acknowledgement is cancelled, and failed.
_LOST = "connection lost before the acknowledgement"


class JetStreamPublisher:
    """Implements ``EventPublisher``. Connects on first use (and again after
    the connection closed), and makes the stream when it does not exist."""

    def __init__(self, url: str, stream: str, subject_prefix: str, timeout_s: float = 5.0) -> None:
        self._url, self._stream, self._prefix = url, stream, subject_prefix
        self._timeout = timeout_s
        self._nc: NatsClient | None = None
        self._js: JetStreamContext | None = None
        #: What the connection last failed with, while it is down: a publish
        #: then only times out, which does not say why.
        self._lost: str | None = None
        #: Publishes waiting for their acknowledgement, which a lost
        #: connection ends (``_disconnected``).
        self._waiting: set[asyncio.Task[object]] = set()

    async def _connection_failed(self, exc: Exception) -> None:
        # Without a callback of its own, nats-py logs every failed
        # reconnection as an error with its stack: one every 2 s while the
        # broker is away. The sink logs the outage once (``FailureLog``).
        self._lost = first_line(exc)

    async def _disconnected(self) -> None:
        # nats-py leaves a request that was sent, or buffered for after a
        # reconnection, waiting out its timeout (5 s) when the connection
        # goes; its answer cannot come on the next connection. Ended now,
        # the publish fails at once and the sink sends it again later (the
        # message id keeps the broker from storing it twice).
        for task in self._waiting:
            task.cancel(_LOST)

    async def _reconnected(self) -> None:
        self._lost = None

    async def _context(self) -> JetStreamContext:
        if self._nc is None or self._nc.is_closed or self._js is None:
            self._nc = await nats.connect(
                self._url,
                connect_timeout=self._timeout,
                allow_reconnect=True,
                # nats-py's default (60 attempts 2 s apart) holds a first
                # connect for two minutes without a word, the sink with it.
                # One more attempt each, then the call fails and the sink
                # connects afresh a second later, logging the outage.
                max_reconnect_attempts=1,
                error_cb=self._connection_failed,
                disconnected_cb=self._disconnected,
                reconnected_cb=self._reconnected,
            )
            self._js = self._nc.jetstream(timeout=self._timeout)
            try:
                await self._js.stream_info(self._stream)
            except NotFoundError:
                await self._js.add_stream(name=self._stream, subjects=[f"{self._prefix}.>"])
        return self._js

    async def publish(self, subject: str, body: bytes, msg_id: str) -> None:
        """Raises ``BrokerUnavailable`` when the broker cannot be reached, did
        not acknowledge in time or refused the message."""
        try:
            js = await self._context()
            if not self._nc or not self._nc.is_connected:  # reconnecting
                raise nats.errors.ConnectionReconnectingError
            await self._acknowledged(js, subject, body, msg_id)
        except (TimeoutError, nats.errors.Error, OSError) as exc:
            said = first_line(exc)
            if self._lost is not None and self._lost != said:
                said = f"{said}; the connection: {self._lost}"
            raise BrokerUnavailable(said) from exc

    async def _acknowledged(
        self, js: JetStreamContext, subject: str, body: bytes, msg_id: str
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._waiting.add(task)
        try:
            await js.publish(subject, body, stream=self._stream, headers={"Nats-Msg-Id": msg_id})
        except asyncio.CancelledError as exc:
            if exc.args != (_LOST,):
                raise
            task.uncancel()
            raise nats.errors.Error(_LOST) from None
        finally:
            self._waiting.discard(task)

    async def close(self) -> None:
        # Every publish awaited its acknowledgement: nothing is left to drain
        # (a drain waits up to 30 s for subscriptions this client has none of).
        if self._nc is not None and not self._nc.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._nc.close(), self._timeout)
        self._nc = self._js = None
