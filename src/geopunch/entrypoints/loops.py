"""Which asyncio event loop the server's loops run on.

uvloop (libuv) by default where it is installed: on this 2-core machine it
more than doubled the HTTP API's punches per second and raised gRPC ``Ping``
from about half of a bare ``grpc.aio`` server's calls to two thirds
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
