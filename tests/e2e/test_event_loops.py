"""The server on either event loop (``--event-loop``): gRPC and HTTP share the
server's loop, punches of both cross from it to the group committer's thread
and back, and the same answers come out of either kind of loop."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from geopunch.config import Config, hash_key
from geopunch.entrypoints import loops
from geopunch.entrypoints.server import Server
from geopunch.v1 import admin_pb2, timeclock_pb2
from tests.conftest import API_KEY, Client, make_time_clock


def test_auto_prefers_uvloop_and_unknown_loops_are_refused() -> None:
    assert loops.resolve("auto") == "uvloop"  # a dependency wherever it is built
    assert loops.resolve("asyncio") == "asyncio"
    with pytest.raises(ValueError, match="event loop 'trio'"):
        Config.from_env({"GEOPUNCH_EVENT_LOOP": "trio"})
    assert Config.from_env({}, event_loop="ASYNCIO").event_loop == "asyncio"


@pytest.mark.parametrize("kind", ["uvloop", "asyncio"])
def test_punches_over_both_protocols_on_each_loop(kind: str, tmp_path: object) -> None:
    server = Server(
        Config(
            listen="127.0.0.1:0",
            http_listen="127.0.0.1:0",
            database_url=f"sqlite:///{tmp_path}/store.db",
            api_key_hashes=(hash_key(API_KEY),),
            event_loop=kind,
        )
    )
    server.start()
    client = Client(f"127.0.0.1:{server.port}")
    try:
        loop_module = type(server.loop.loop).__module__
        assert loop_module.startswith("uvloop") == (kind == "uvloop"), loop_module
        assert server.http is not None
        # Both protocols on one loop: uvicorn's listening server belongs to it.
        listening = server.http._server.servers
        assert listening and all(s.get_loop() is server.loop.loop for s in listening)
        client(client.admin.Ping, admin_pb2.PingRequest())
        tc = make_time_clock(client)
        started = client(
            client.timeclock.ClockIn,
            timeclock_pb2.ClockInRequest(time_clock_id=tc.id, user_id=9170357),
        )
        assert started.data.shift.user_id == 9170357

        http_address = server.http.address

        async def over_http() -> list[httpx.Response]:
            async with httpx.AsyncClient(
                base_url=f"http://{http_address}", headers={"X-API-KEY": API_KEY}
            ) as http:
                base = f"/time-clock/v1/time-clocks/{tc.id}"
                # At once, so that one commit may answer both waiting calls.
                return list(
                    await asyncio.gather(
                        http.post(f"{base}/clock-out", json={"userId": 9170357}),
                        http.post(f"{base}/clock-in", json={"userId": 9170358}),
                    )
                )

        ended, begun = asyncio.run(over_http())
        assert ended.status_code == 200, ended.text
        assert ended.json()["data"]["shift"]["userId"] == 9170357
        assert ended.json()["data"]["shift"]["end"] is not None
        assert begun.status_code == 200, begun.text
        assert begun.json()["data"]["shift"]["userId"] == 9170358
    finally:
        client.close()
        server.stop()
