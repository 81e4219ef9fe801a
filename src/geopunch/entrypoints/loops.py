"""Which asyncio event loop the server's loops run on.

uvloop (libuv) by default where it is installed: on this 2-core machine it
more than doubled the HTTP API's punches per second, where py-spy had found
the stock loop's selector and transports holding the GIL as long as the
punch itself; grpc.aio, which polls in its own code, gained a few per cent
(bench/README.md). The stock loop stays one setting away (``--event-loop
asyncio``), for platforms without uvloop or to rule it out when debugging.
"""

from __future__ import annotations

import asyncio
import importlib.util


def resolve(setting: str) -> str:
    """``setting`` ("auto", "uvloop" or "asyncio") as the loop to use."""
    if setting == "auto":
        return "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"
    if setting == "uvloop" and importlib.util.find_spec("uvloop") is None:
        raise RuntimeError("--event-loop uvloop: uvloop is not installed")
    return setting


def new_event_loop(kind: str) -> asyncio.AbstractEventLoop:
    """A new loop of ``kind`` (as ``resolve`` gives it)."""
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()
