"""The JetStream publisher against a real NATS server, through a proxy the
test stalls and cuts: what a broker that goes away mid-publish looks like."""

from __future__ import annotations

import asyncio

import pytest

from geopunch.adapters.nats_sink import JetStreamPublisher
from geopunch.domain.errors import BrokerUnavailable
from tests.nats_stream import nats_address, stream_messages
from tests.tcp_proxy import TcpProxy

#: The publisher's acknowledgement timeout here: long enough that a failure
#: well before it can only be the lost connection's.
ACK_TIMEOUT_S = 30.0


def test_a_publish_waiting_when_the_connection_goes_fails_at_once(
    stream: tuple[str, str],
) -> None:
    """nats-py leaves a request waiting out its timeout when its connection
    closes (the answer cannot come on another connection), so the sink sat
    out the whole acknowledgement timeout before it knew. The publish now
    fails as the connection goes, saying so, and the next one, once the
    broker is back, is stored."""
    proxy = TcpProxy(nats_address())
    name, prefix = stream

    async def run() -> tuple[BaseException | None, float]:
        publisher = JetStreamPublisher(
            f"nats://127.0.0.1:{proxy.port}", name, prefix, timeout_s=ACK_TIMEOUT_S
        )
        try:
            await publisher.publish(f"{prefix}.a.first", b"1", "m-1")  # connected, stream made
            proxy.stall()
            waiting = asyncio.ensure_future(publisher.publish(f"{prefix}.a.second", b"2", "m-2"))
            await asyncio.sleep(0.3)
            assert not waiting.done()  # sent, its acknowledgement held back
            loop = asyncio.get_running_loop()
            cut_at = loop.time()
            proxy.cut()
            with pytest.raises(BrokerUnavailable) as failed:
                await asyncio.wait_for(waiting, ACK_TIMEOUT_S)
            took = loop.time() - cut_at
            proxy.open()
            # The sink publishes it again later; the message id keeps the
            # broker from storing it twice, whether or not it got there.
            for _ in range(100):
                try:
                    await publisher.publish(f"{prefix}.a.second", b"2", "m-2")
                    break
                except BrokerUnavailable:
                    await asyncio.sleep(0.1)
            return failed.value, took
        finally:
            await publisher.close()

    try:
        error, took = asyncio.run(run())
    finally:
        proxy.close()
    assert "connection lost before the acknowledgement" in str(error), error
    assert took < ACK_TIMEOUT_S / 3, took
    bodies = [m.data for m in asyncio.run(stream_messages(name, 2, 10))]
    assert bodies == [b"1", b"2"], bodies


def test_a_publish_while_reconnecting_fails_at_once(stream: tuple[str, str]) -> None:
    """Right after the connection went, nats-py would buffer a publish for
    after its reconnection and wait for the acknowledgement meanwhile."""
    proxy = TcpProxy(nats_address())
    name, prefix = stream

    async def run() -> BaseException:
        publisher = JetStreamPublisher(
            f"nats://127.0.0.1:{proxy.port}", name, prefix, timeout_s=ACK_TIMEOUT_S
        )
        try:
            await publisher.publish(f"{prefix}.a.first", b"1", "m-1")
            proxy.cut()
            await asyncio.sleep(0.3)  # nats-py has seen the connection go
            with pytest.raises(BrokerUnavailable) as failed:
                await asyncio.wait_for(
                    publisher.publish(f"{prefix}.a.second", b"2", "m-2"), ACK_TIMEOUT_S / 3
                )
            return failed.value
        finally:
            await publisher.close()

    try:
        error = asyncio.run(run())
    finally:
        proxy.close()
    assert "reconnecting" in str(error), error
