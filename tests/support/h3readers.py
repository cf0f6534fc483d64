"""Many HTTP/3 SSE streams on one QUIC connection, each read by a task of its own, for tests of fan-out over h3.

A ``Reader`` decodes its stream chunk by chunk with the real decoder of its ``content-encoding`` (so an event that
was not flushed on its own shows up as missing) and keeps the data of every event, in order; ``at_least`` waits,
bounded, until it has some number of them. ``stop_granting_credit`` makes a client stop reading as far as the
server can tell: it still acknowledges packets but never raises a stream's flow-control limit again.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from gateway.core.sse import SSEParser
from tests.support.h3client import H3Client, H3Error, H3Stream
from tests.support.metrics import wait_metric
from tests.support.server import HUB_TOKEN, Server
from tests.support.sse_client import Decoder

AUTH = {"Authorization": f"Bearer {HUB_TOKEN}"}


class Reader:
    """The hub events of one HTTP/3 stream, decoded and parsed as they arrive."""

    def __init__(self, stream: H3Stream, wait: float) -> None:
        self.stream = stream
        self.wait = wait
        self.data: list[str] = []
        self.received = 0  # bytes of DATA, as sent (compressed)
        self.error: H3Error | None = None
        self.changed = asyncio.Event()

    async def run(self) -> None:
        parser, decoder = SSEParser(), Decoder(self.stream.header("content-encoding"))
        try:
            async for chunk in self.stream.aiter_raw(idle_timeout=self.wait):
                self.received += len(chunk)
                self.data += [event.data for event in parser.feed(decoder.decode(chunk)) if event.data]
                self.changed.set()
        except H3Error as exc:  # reset or closed: what it read so far is what counts
            self.error = exc
            self.changed.set()

    async def at_least(self, count: int) -> list[str]:
        async with asyncio.timeout(self.wait):
            while len(self.data) < count:
                self.changed.clear()
                await self.changed.wait()
        return self.data


@asynccontextmanager
async def subscribed(client: H3Client, topic: str, count: int, wait: float,
                     headers: dict[str, str] | None = None) -> AsyncIterator[list[Reader]]:
    """``count`` hub streams of ``topic`` on ``client``'s one connection, each read by a task of its own."""
    async with AsyncExitStack() as stack, asyncio.TaskGroup() as tasks:
        readers = []
        for _ in range(count):
            stream = await stack.enter_async_context(
                client.stream("GET", f"/hub/subscribe?topic={topic}", headers=headers))
            assert stream.status == 200
            readers.append(Reader(stream, wait))
        running = [tasks.create_task(reader.run()) for reader in readers]
        try:
            yield readers
        finally:
            for task in running:
                task.cancel()


@dataclass
class KeptAndDropped:
    """Two QUIC connections subscribed to one topic: ``readers`` on ``kept`` (30 streams) and ``doomed`` on
    ``dropped`` (10), which a test resets or closes mid-broadcast; ``http`` publishes."""

    kept: H3Client
    dropped: H3Client
    http: httpx.AsyncClient
    readers: list[Reader]
    doomed: list[Reader]


@asynccontextmanager
async def kept_and_dropped(srv: Server, topic: str, wait: float) -> AsyncIterator[KeptAndDropped]:
    """The 40 streams of ``KeptAndDropped``, once the gateway counts them open (and none of an earlier test's)."""
    await wait_metric(srv.http, "gateway_streams_active", 0, wait, kind="hub")
    async with (H3Client("127.0.0.1", srv.tls_port, verify=False, timeout=wait) as kept,
                H3Client("127.0.0.1", srv.tls_port, verify=False, timeout=wait) as dropped,
                httpx.AsyncClient(base_url=srv.http, timeout=wait) as http,
                subscribed(kept, topic, 30, wait) as readers,
                subscribed(dropped, topic, 10, wait) as doomed):
        await wait_metric(srv.http, "gateway_streams_active", 40, wait, kind="hub")
        yield KeptAndDropped(kept, dropped, http, readers, doomed)


async def publish(http: httpx.AsyncClient, topic: str, datas: list[str]) -> None:
    """Publish ``datas`` to the hub one after the other (so the bus's order is the list's)."""
    for data in datas:
        answer = await http.post("/hub/publish", json={"topic": topic, "data": data}, headers=AUTH)
        assert answer.status_code == 204


def stop_granting_credit(client: H3Client) -> None:
    """Make the client keep acknowledging packets but never raise a stream's MAX_STREAM_DATA again, as a client
    whose application stopped reading: the server may send the initial window of each stream (aioquic's 1 MiB)
    and no more."""
    protocol: Any = client._protocol
    assert protocol is not None
    protocol._quic._write_stream_limits = lambda *args, **kwargs: None
