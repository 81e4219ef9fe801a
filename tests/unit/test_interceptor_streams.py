"""A stream the client left is closed by the event loop's finaliser, in a
task of its own: the call still ends cleanly (access line, metrics) instead
of failing on the context variables it set."""

from __future__ import annotations

import asyncio
import gc
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from geopunch.adapters.grpc.auth import principal_var
from geopunch.adapters.grpc.interceptors import ServiceInterceptor, _Call
from geopunch.domain.accounts import Principal, Scope
from geopunch.service.accounts import KeyRing


class _Context:
    def peer(self) -> str:
        return "ipv4:127.0.0.1:5"


def test_a_stream_closed_by_the_loops_finaliser_ends_cleanly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ready = threading.Event()
    ready.set()
    with ThreadPoolExecutor(1) as executor:
        interceptor = ServiceInterceptor(KeyRing(), ready, executor)
    who = Principal(1, frozenset(Scope), "k")
    call = _Call("/geopunch.v1.LocationService/WatchEvents", who, None)
    errors: list[dict[str, Any]] = []

    async def stream() -> Any:
        async with interceptor._call(_Context(), call):
            assert principal_var.get() is who
            yield 1
            yield 2

    async def run() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: errors.append(ctx))
        left = stream()
        assert await anext(left) == 1
        del left  # the client went away: nothing iterates it again
        gc.collect()  # the loop's hook closes it in a task of its own
        for _ in range(5):
            await asyncio.sleep(0)

    with caplog.at_level("INFO", "geopunch.rpc"):
        asyncio.run(run())
    assert errors == []
    assert [r.getMessage() for r in caplog.records] == ["rpc"]
