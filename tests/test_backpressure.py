"""Clients that stop reading must not cost the gateway memory, nor delay anybody else."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import httpx
import pytest

from tests.support.metrics import metric, wait_metric
from tests.support.proc import rss
from tests.support.server import Server, start_server
from tests.support.sse_client import SSEReader

pytestmark = [pytest.mark.live, pytest.mark.asyncio]


class StalledH2Client:
    """An h2c client that reads every frame (TCP never backs up) but never grants flow-control window."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.received = 0
        self.headers: dict[bytes, bytes] = {}
        self.reset = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, port: int, path: str) -> StalledH2Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer)
        client.conn.initiate_connection()
        client.conn.send_headers(1, [(":method", "GET"), (":path", path), (":scheme", "http"),
                                     (":authority", f"127.0.0.1:{port}"), ("accept-encoding", "identity")],
                                 end_stream=True)
        writer.write(client.conn.data_to_send())
        await writer.drain()
        client._task = asyncio.create_task(client._read())
        return client

    async def _read(self) -> None:
        while data := await self.reader.read(65536):
            for event in self.conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    self.headers = dict(event.headers)
                elif isinstance(event, h2.events.DataReceived):
                    self.received += len(event.data)  # and never acknowledged: no WINDOW_UPDATE
                elif isinstance(event, h2.events.StreamReset | h2.events.StreamEnded):
                    self.reset.set()
            self.writer.write(self.conn.data_to_send())  # pings and settings acks only

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        sock = self.writer.get_extra_info("socket")
        if sock is not None:  # now, not on a later loop iteration (see RawStream.close)
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self.writer.close()


@pytest.fixture(scope="module")
def stall_server(tmp_path_factory: pytest.TempPathFactory, certs: tuple[Path, Path]) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("stall"), certs, args=["--app", "tests.apps:gw"],
                       env={"GATEWAY_SSE_WRITE_TIMEOUT": "3"})
    yield srv
    assert srv.stop() == 0


async def publish_and_watch(client: httpx.AsyncClient, reader: SSEReader, pid: int, renders: int
                            ) -> tuple[int, list[float]]:
    """Publish ``renders`` new versions of /sized one by one; returns the server's RSS growth and, per render,
    the healthy client's delay from publish to receipt."""
    rss_before = rss(pid)
    lags = []
    for _ in range(renders):
        published = time.monotonic()
        assert (await client.post("/tick", json={})).status_code == 204
        await reader.until(lambda e: e.data.startswith("<p>tick "), timeout=10)
        lags.append(time.monotonic() - published)
    return rss(pid) - rss_before, lags


async def test_h2_client_granting_no_window_costs_bounded_memory(stall_server: Server) -> None:
    base, port = stall_server.http, stall_server.http_port
    ticks, size = 120, 1024 * 1024
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        assert (await client.post("/size", json={"bytes": size})).status_code == 204
        stalled = await StalledH2Client.open(port, "/sized")
        try:
            async with client.stream("GET", "/sized", headers={"accept-encoding": "br"}) as healthy:
                reader = SSEReader(healthy.aiter_raw(), healthy.headers.get("content-encoding"))
                await reader.next_event()
                growth, lags = await publish_and_watch(client, reader, stall_server.proc.pid, ticks)
            print(f"\n{ticks} renders of 1 MiB with an h2 client granting no window: RSS +{growth / 2**20:.1f} MiB,"
                  f" stalled client got {stalled.received} B; healthy client lag max {max(lags) * 1000:.0f} ms")
            assert stalled.headers.get(b":status") == b"200"
            assert stalled.received <= 65_535  # exactly the initial window, nothing more
            assert growth < 64 * 2**20  # without the StreamBuffer fix this grows by every render
            assert max(lags) < 1.0
            # The stalled stream is closed by the write deadline (3 s here), not kept forever.
            await wait_metric(base, "gateway_streams_closed_total", 1, timeout=10, kind="view", reason="write_timeout")
        finally:
            await stalled.close()


async def test_http1_client_that_stops_reading(stall_server: Server) -> None:
    """200 renders of 100 KB to a client whose socket is full: memory bounded, the stall closed by the deadline,
    and a healthy client on the same view gets every latest state promptly."""
    from tests.support.raw_stream import RawStream

    base, port = stall_server.http, stall_server.http_port
    before_closed = await metric(base, "gateway_streams_closed_total", kind="view", reason="write_timeout")
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        assert (await client.post("/size", json={"bytes": 100_000})).status_code == 204
        stalled = await RawStream.open(port, "/sized", rcvbuf=4096)  # reads the headers, then nothing
        try:
            async with client.stream("GET", "/sized", headers={"accept-encoding": "br"}) as healthy:
                reader = SSEReader(healthy.aiter_raw(), healthy.headers.get("content-encoding"))
                await reader.next_event()
                growth, lags = await publish_and_watch(client, reader, stall_server.proc.pid, 200)
            print(f"\n200 renders of 100 KB, an HTTP/1.1 client not reading: RSS +{growth / 2**20:.1f} MiB, "
                  f"healthy lag max {max(lags) * 1000:.0f} ms")
            assert growth < 64 * 2**20
            assert max(lags) < 1.0
            await wait_metric(base, "gateway_streams_closed_total", before_closed + 1, timeout=10,
                              kind="view", reason="write_timeout")
        finally:
            stalled.close()


async def test_1000_hub_subscribers_10_stalled(tmp_path: Path, certs: tuple[Path, Path]) -> None:
    """990 healthy subscribers receive all 500 events in order while 10 stalled ones (h2, no window granted) are
    cut off by their bounded mailboxes; the publisher never waits on them."""
    import resource
    import statistics

    from tests.support.raw_stream import RawStream
    from tests.support.server import HUB_TOKEN

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    srv = start_server(tmp_path, certs, env={"GATEWAY_LIMITS_MAX_STREAMS_PER_CLIENT": "0",
                                              "GATEWAY_HUB_MAX_BUFFERED_EVENTS": "100",
                                              "GATEWAY_SSE_HEARTBEAT": "55"})
    healthy: list[RawStream] = []
    stalled: list[StalledH2Client] = []
    try:
        for _ in range(990):
            healthy.append(await RawStream.open(srv.http_port, "/hub/subscribe?topic=fan"))
        for _ in range(10):
            stalled.append(await StalledH2Client.open(srv.http_port, "/hub/subscribe?topic=fan"))
        await wait_metric(srv.http, "gateway_streams_active", 1000, kind="hub")

        async def consume(stream: RawStream) -> list[str]:
            events = await stream.read_frames(501, timeout=120)  # the retry: frame, then 500 events
            return [e.data[:4] for e in events]

        consumers = [asyncio.create_task(consume(s)) for s in healthy]
        latencies = []
        async with httpx.AsyncClient(base_url=srv.http, timeout=30,
                                     headers={"authorization": f"Bearer {HUB_TOKEN}"}) as client:
            for n in range(500):
                started = time.monotonic()
                response = await client.post("/hub/publish", json={"topic": "fan", "data": f"{n:04d}" + "x" * 300})
                latencies.append(time.monotonic() - started)
                assert response.status_code == 204
        results = await asyncio.gather(*consumers)
        expected = [f"{n:04d}" for n in range(500)]
        assert all(got == expected for got in results)  # every healthy subscriber: all 500, in order
        cut = await metric(srv.http, "gateway_streams_closed_total", kind="hub", reason="slow_consumer")
        print(f"\n990 healthy + 10 stalled: all 500 events delivered in order to all 990; {cut:.0f} stalled cut off; "
              f"publish POST p50 {statistics.median(latencies) * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms")
        assert cut == 10
        assert all(s.received < 70_000 for s in stalled)  # flow control held them to their window
    finally:
        for stream in healthy:
            stream.close()
        for s in stalled:
            await s.close()
        assert srv.stop() == 0
