"""The NATS server with JetStream that the event sink's tests publish to
(mandatory in CI: ``.ci/run`` makes sure it is up), a stream of each test's
own (the ``stream`` fixture, a plugin of tests/conftest.py), and reading a
stream back."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import nats
import pytest

NATS_URL = os.environ.get("GEOPUNCH_TEST_NATS_URL", "nats://127.0.0.1:4222")


def nats_address() -> tuple[str, int]:
    """The test NATS server's host and port, as a socket (or a proxy) takes them."""
    host, _, port = NATS_URL.removeprefix("nats://").partition(":")
    return host, int(port or 4222)


def _nats_reachable() -> bool:
    try:
        socket.create_connection(nats_address(), timeout=2).close()
    except OSError:
        return False
    return True


async def stream_messages(stream: str, count: int, timeout: float) -> list[Any]:
    """The stream's messages from the first, by a consumer of its own."""
    nc = await nats.connect(NATS_URL, connect_timeout=5)
    try:
        js = nc.jetstream()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        # The sink makes the stream with its first publish, which may come
        # after the punches' answers on a busy machine.
        while True:
            try:
                await js.stream_info(stream)
                break
            except nats.js.errors.NotFoundError:
                assert loop.time() < deadline, f"stream {stream} never made"
                await asyncio.sleep(0.05)
        sub = await js.pull_subscribe("", durable=None, stream=stream)
        out: list[Any] = []
        while len(out) < count and loop.time() < deadline:
            try:
                batch = await sub.fetch(min(100, count - len(out) + 10), timeout=1)
            except TimeoutError:  # nats-py raises its own subclass or asyncio's own
                continue
            for m in batch:
                await m.ack()
            out.extend(batch)
        # Nothing more than expected arrives afterwards either.
        with contextlib.suppress(TimeoutError):
            out.extend(await sub.fetch(10, timeout=1))
        return out
    finally:
        await nc.close()


async def _delete_stream(stream: str) -> None:
    nc = await nats.connect(NATS_URL, connect_timeout=5)
    try:
        await nc.jetstream().delete_stream(stream)
    except nats.js.errors.NotFoundError:
        pass
    finally:
        await nc.close()


@pytest.fixture
def stream() -> Iterator[tuple[str, str]]:
    """A stream and subject prefix of this test's own. Without a NATS
    server the test is skipped, unless GEOPUNCH_REQUIRE_NATS says it must
    run (CI sets it, as it does GEOPUNCH_REQUIRE_PG)."""
    if not _nats_reachable():
        if os.environ.get("GEOPUNCH_REQUIRE_NATS"):
            pytest.fail(f"no NATS server at {NATS_URL} (GEOPUNCH_REQUIRE_NATS is set)")
        pytest.skip(f"no NATS server at {NATS_URL}; set GEOPUNCH_TEST_NATS_URL")
    tag = uuid.uuid4().hex[:10]
    name, prefix = f"GEOPUNCH_TEST_{tag}", f"geopunch-test.{tag}"
    yield name, prefix
    asyncio.run(_delete_stream(name))
