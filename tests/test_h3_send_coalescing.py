"""HTTP/3 sends coalesced per connection and round (``gateway.web.hypercorn.h3_send_coalescing``), on a real gateway
over loopback UDP: many hub streams sharing one QUIC connection receive every event, in order; an event to all of
them is one packet-building pass, not one per stream; a stream reset by its client and a connection closed in the
middle of a broadcast cost the other streams nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import httpx
import pytest

from gateway.core.sse import SSEParser
from tests.support.h3client import H3Client, H3Error, H3Stream
from tests.support.metrics import wait_metric
from tests.support.quic_flushes import FlushProbe
from tests.support.server import HUB_TOKEN, Server, start_server

pytestmark = [pytest.mark.live, pytest.mark.asyncio]

AUTH = {"Authorization": f"Bearer {HUB_TOKEN}"}
STREAMS = 60  # on one QUIC connection: Hypercorn alone builds packets once per stream's write, so 60+ per event
WAIT = 20.0  # seconds any one step may take on a loaded machine


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, certs: tuple[Path, Path]) -> Iterator[tuple[Server, FlushProbe]]:
    tmp = tmp_path_factory.mktemp("h3-coalescing")
    probe = FlushProbe(tmp)
    srv = start_server(tmp, certs, env=probe.env)
    yield srv, probe
    assert srv.stop() == 0, srv.output()
    assert "Traceback" not in srv.output(), srv.output()  # a flush or timer that failed is logged with one


class Reader:
    """The hub events of one HTTP/3 stream, read as they arrive."""

    def __init__(self, stream: H3Stream) -> None:
        self.stream = stream
        self.data: list[str] = []
        self.changed = asyncio.Event()

    async def run(self) -> None:
        parser = SSEParser()
        try:
            async for chunk in self.stream.aiter_raw(idle_timeout=WAIT):
                self.data += [event.data for event in parser.feed(chunk) if event.data]
                self.changed.set()
        except H3Error:
            pass  # this test reset the stream or closed its connection: what it read so far is what counts

    async def at_least(self, count: int) -> list[str]:
        async with asyncio.timeout(WAIT):
            while len(self.data) < count:
                self.changed.clear()
                await self.changed.wait()
        return self.data


@asynccontextmanager
async def subscribed(client: H3Client, topic: str, count: int) -> AsyncIterator[list[Reader]]:
    """``count`` hub streams of ``topic`` on ``client``'s one connection, each read by a task of its own."""
    async with AsyncExitStack() as stack, asyncio.TaskGroup() as tasks:
        readers = []
        for _ in range(count):
            stream = await stack.enter_async_context(client.stream("GET", f"/hub/subscribe?topic={topic}"))
            assert stream.status == 200
            readers.append(Reader(stream))
        running = [tasks.create_task(reader.run()) for reader in readers]
        try:
            yield readers
        finally:
            for task in running:
                task.cancel()


async def publish(http: httpx.AsyncClient, topic: str, datas: list[str]) -> None:
    for data in datas:
        answer = await http.post("/hub/publish", json={"topic": topic, "data": data}, headers=AUTH)
        assert answer.status_code == 204


async def test_one_event_to_many_streams_is_one_flush(gateway: tuple[Server, FlushProbe]) -> None:
    srv, probe = gateway
    async with (H3Client("127.0.0.1", srv.tls_port, verify=False, timeout=WAIT) as client,
                httpx.AsyncClient(base_url=srv.http, timeout=WAIT) as http,
                subscribed(client, "flushes", STREAMS) as readers):
        await wait_metric(srv.http, "gateway_streams_active", STREAMS, WAIT, kind="hub")
        await publish(http, "flushes", ["warm-up"])  # every stream's task has written once, its state is made
        for reader in readers:
            assert await reader.at_least(1) == ["warm-up"]
        before = probe.count()
        await publish(http, "flushes", ["one"])
        for reader in readers:
            assert await reader.at_least(2) == ["warm-up", "one"]
        passes = probe.count() - before
    # Its writes leave in one flush; the client's ACKs of its packets each let a few more go (congestion control).
    # Without the correction: one pass per stream's write, STREAMS or more.
    assert 1 <= passes < STREAMS // 4, f"{passes} packet-building passes for one event to {STREAMS} streams"


async def test_many_streams_on_one_connection_get_every_event_in_order(gateway: tuple[Server, FlushProbe]) -> None:
    srv, _ = gateway
    sent = [f"event {n:03d} " + "x" * (n * 7 % 300) for n in range(40)]  # sizes vary: frames cross packets
    async with (H3Client("127.0.0.1", srv.tls_port, verify=False, timeout=WAIT) as client,
                httpx.AsyncClient(base_url=srv.http, timeout=WAIT) as http,
                subscribed(client, "order", STREAMS) as readers):
        await wait_metric(srv.http, "gateway_streams_active", STREAMS, WAIT, kind="hub")
        await publish(http, "order", sent)
        for reader in readers:
            assert await reader.at_least(len(sent)) == sent


async def test_a_reset_stream_and_a_closed_connection_mid_broadcast_disturb_no_other(
    gateway: tuple[Server, FlushProbe]
) -> None:
    srv, _ = gateway
    sent = [f"event {n:03d}" for n in range(60)]
    await wait_metric(srv.http, "gateway_streams_active", 0, WAIT, kind="hub")  # the other tests' streams are gone
    async with (H3Client("127.0.0.1", srv.tls_port, verify=False, timeout=WAIT) as kept,
                H3Client("127.0.0.1", srv.tls_port, verify=False, timeout=WAIT) as dropped,
                httpx.AsyncClient(base_url=srv.http, timeout=WAIT) as http,
                subscribed(kept, "mid", 30) as readers,
                subscribed(dropped, "mid", 10) as doomed):
        await wait_metric(srv.http, "gateway_streams_active", 40, WAIT, kind="hub")
        publishing = asyncio.create_task(publish(http, "mid", sent))
        await readers[0].at_least(15)
        assert not publishing.done(), "the broadcast ended before the reset: publish more events"
        readers[-1].stream.cancel()  # RESET_STREAM + STOP_SENDING, as a browser dropping an EventSource
        await dropped.close()  # CONNECTION_CLOSE with ten streams open
        await publishing
        for reader in readers[:-1]:
            assert await reader.at_least(len(sent)) == sent
        assert all(len(reader.data) < len(sent) for reader in doomed)
        # The gateway closed the reset stream and the closed connection's ten, and nothing else.
        await wait_metric(srv.http, "gateway_streams_active", 29, WAIT, kind="hub")
