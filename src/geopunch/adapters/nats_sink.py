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
from nats.aio.client import Client as NatsClient
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError


class JetStreamPublisher:
    """Implements ``EventPublisher``. Connects on first use (and again after
    the connection closed), and makes the stream when it does not exist."""

    def __init__(self, url: str, stream: str, subject_prefix: str, timeout_s: float = 5.0) -> None:
        self._url, self._stream, self._prefix = url, stream, subject_prefix
        self._timeout = timeout_s
        self._nc: NatsClient | None = None
        self._js: JetStreamContext | None = None

    async def _context(self) -> JetStreamContext:
        if self._nc is None or self._nc.is_closed or self._js is None:
            self._nc = await nats.connect(
                self._url, connect_timeout=self._timeout, allow_reconnect=True
            )
            self._js = self._nc.jetstream(timeout=self._timeout)
            try:
                await self._js.stream_info(self._stream)
            except NotFoundError:
                await self._js.add_stream(name=self._stream, subjects=[f"{self._prefix}.>"])
        return self._js

    async def publish(self, subject: str, body: bytes, msg_id: str) -> None:
        js = await self._context()
        await js.publish(subject, body, stream=self._stream, headers={"Nats-Msg-Id": msg_id})

    async def close(self) -> None:
        # Every publish awaited its acknowledgement: nothing is left to drain
        # (a drain waits up to 30 s for subscriptions this client has none of).
        if self._nc is not None and not self._nc.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._nc.close(), self._timeout)
        self._nc = self._js = None
