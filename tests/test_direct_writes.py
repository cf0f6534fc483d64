"""Fan-out's direct writes to idle HTTP/1.1 streams: taken when they may be, never at the cost of order or loss."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from tests.support.metrics import metric
from tests.support.raw_stream import RawStream
from tests.support.server import HUB_TOKEN, start_server
from tests.support.sse_client import SSEReader
from tests.support.wait import wait_until

pytestmark = pytest.mark.live

AUTH = {"Authorization": f"Bearer {HUB_TOKEN}"}


async def _publish(base: str, topic: str, datas: list[str], concurrency: int = 8) -> None:
    """Publish ``datas`` in order of acceptance groups: ``concurrency`` at a time, so several land in one round."""
    async with httpx.AsyncClient(timeout=10) as client:
        for start in range(0, len(datas), concurrency):
            group = datas[start:start + concurrency]
            answers = await asyncio.gather(*[
                client.post(f"{base}/hub/publish", json={"topic": topic, "data": d}, headers=AUTH) for d in group])
            assert [a.status_code for a in answers] == [204] * len(group)


async def _events(stream: RawStream, count: int, timeout: float = 20) -> list[str]:
    """The data of the next ``count`` events (the stream's opening ``retry:`` frame counts as a frame, no event)."""
    events = await stream.read_frames(count, timeout=timeout)
    while len(events) < count:
        events += await stream.read_frames(count - len(events), timeout=timeout)
    return [e.data for e in events]


def _kernel_send_buffer_max() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    except (OSError, ValueError, IndexError):
        return 4 * 1024 * 1024


async def _writes(base: str, path: str) -> float:
    return await metric(base, "gateway_stream_writes_total", kind="hub", path=path)


@pytest.mark.asyncio
async def test_http1_streams_take_direct_writes_in_every_encoding(tmp_path: Path, certs: tuple[Path, Path]) -> None:
    srv = start_server(tmp_path, certs)
    try:
        streams = [await RawStream.open(srv.http_port, "/hub/subscribe?topic=direct", enc)
                   for enc in ("identity", "br", "gzip", "zstd")]
        assert [s.headers.get("content-encoding", "identity") for s in streams] == ["identity", "br", "gzip", "zstd"]
        datas = [f"event {i} " + "x" * (i % 50) for i in range(120)]
        await _publish(srv.http, "direct", datas)
        received = [await _events(stream, len(datas)) for stream in streams]
        # Concurrent publishes are ordered by the bus, not by the list: every stream gets that one order.
        assert sorted(received[0], key=datas.index) == datas
        assert all(r == received[0] for r in received)
        direct = await _writes(srv.http, "direct")
        assert direct > 0, "no event took the direct path"
        # Each stream's task wrote its first frame only: every event went the direct way, some coalesced.
        assert await _writes(srv.http, "task") == len(streams)
        assert direct <= len(streams) * len(datas)
        for stream in streams:
            stream.close()
    finally:
        assert srv.stop() == 0


@pytest.mark.asyncio
async def test_the_off_switches_use_the_task_path(tmp_path: Path, certs: tuple[Path, Path]) -> None:
    srv = start_server(tmp_path, certs, env={"GATEWAY_SSE_DIRECT_WRITES": "false"})
    try:
        h1 = await RawStream.open(srv.http_port, "/hub/subscribe?topic=off", "identity")
        async with httpx.AsyncClient(http1=False, http2=True, timeout=10) as client, client.stream(
            "GET", f"{srv.http}/hub/subscribe?topic=off", headers={"Accept-Encoding": "br"}
        ) as response:
            assert response.http_version == "HTTP/2"
            reader = SSEReader(response.aiter_raw(), response.headers.get("content-encoding"))
            datas = [f"off {i}" for i in range(30)]
            await _publish(srv.http, "off", datas)
            got = await _events(h1, len(datas))
            assert sorted(got, key=datas.index) == datas
            assert [(await reader.next_event()).data for _ in datas] == got
        assert await _writes(srv.http, "direct") == 0
        assert await _writes(srv.http, "task") >= 2 + 1  # the first frames, then at least one batch
        h1.close()
    finally:
        assert srv.stop() == 0
    # h2c with direct writes on but sse.h2_direct_writes off: the task path (gateway.web.hypercorn.h2_direct)
    srv = start_server(tmp_path, certs, env={"GATEWAY_SSE_H2_DIRECT_WRITES": "false"})
    try:
        async with httpx.AsyncClient(http1=False, http2=True, timeout=10) as client, client.stream(
            "GET", f"{srv.http}/hub/subscribe?topic=h2", headers={"Accept-Encoding": "identity"}
        ) as response:
            reader = SSEReader(response.aiter_raw(), response.headers.get("content-encoding"))
            await _publish(srv.http, "h2", ["a", "b", "c"], concurrency=1)
            assert [(await reader.next_event()).data for _ in range(3)] == ["a", "b", "c"]
        assert await _writes(srv.http, "direct") == 0
    finally:
        assert srv.stop() == 0


@pytest.mark.asyncio
async def test_a_client_that_falls_behind_moves_to_the_task_path_in_order(
    tmp_path: Path, certs: tuple[Path, Path]
) -> None:
    """Big events to a client that reads late: once its socket holds 64 KiB, fan-out stops writing directly and
    the stream's task takes over through its mailbox; when it catches up, direct writes resume. Nothing is lost
    and nothing overtakes anything."""
    # This test is about switching paths, not about cutting slow clients: whatever the kernel's socket buffers take
    # this time, the rest waits in the gateway, and neither the hub mailbox's bound nor the slow-client grace may end
    # the stream first (with the defaults, a kernel that did not autotune its buffers left over 4 MiB to queue).
    srv = start_server(tmp_path, certs, env={"GATEWAY_HUB_MAX_BUFFERED_BYTES": str(64 * 2**20),
                                             "GATEWAY_SSE_SLOW_CLIENT_GRACE": "60"})
    try:
        slow = await RawStream.open(srv.http_port, "/hub/subscribe?topic=big", "identity", rcvbuf=4096,
                                     mss=1460)
        # More than the kernel can ever buffer for the socket (its send buffer autotunes up to tcp_wmem's maximum,
        # 4 MiB by default), so the gateway's own buffer must pass 64 KiB, however the kernel sized it this time.
        count = _kernel_send_buffer_max() // 16_000 + 40
        datas = [f"{i:04d}" + "y" * 16_000 for i in range(count)]
        await _publish(srv.http, "big", datas, concurrency=1)  # while the client reads nothing
        events = await _events(slow, len(datas), timeout=60)
        assert [e[:4] for e in events] == [d[:4] for d in datas]
        assert events == datas
        task_w, direct_w = await _writes(srv.http, "task"), await _writes(srv.http, "direct")
        assert task_w >= 2, f"the stalled socket never sent events to the task path: task {task_w}, direct {direct_w}"
        assert direct_w < count
        after = await _writes(srv.http, "direct")
        await _publish(srv.http, "big", ["tail"], concurrency=1)
        assert await _events(slow, 1, timeout=10) == ["tail"]
        assert await _writes(srv.http, "direct") == after + 1, "direct writes did not resume once caught up"
        slow.close()
    finally:
        assert srv.stop() == 0


@pytest.mark.asyncio
async def test_a_burst_to_many_streams_coalesces_events_into_fewer_writes(
    tmp_path: Path, certs: tuple[Path, Path]
) -> None:
    """Busy fan-out keeps its rounds apart, so publishes accepted meanwhile leave in the same write: fewer system
    calls than events, every event still delivered in the bus's order."""
    import orjson

    from benchmarks.loadgen import Fleet, Publisher

    streams, count, concurrency = 600, 128, 16
    srv = start_server(tmp_path, certs, env={"GATEWAY_LIMITS_MAX_STREAMS_PER_CLIENT": "0"})
    try:
        fleet = Fleet("127.0.0.1", srv.http_port, "/hub/subscribe?topic=burst", sink=lambda *_: None)
        assert (await fleet.open(streams)).opened == streams
        publishers = [Publisher("127.0.0.1", srv.http_port) for _ in range(concurrency)]

        async def run(k: int) -> None:  # raw keep-alive POSTs: fast enough to outpace one flush to 600 sockets
            await publishers[k].connect()
            for i in range(k, count, concurrency):
                body = orjson.dumps({"topic": "burst", "data": f"burst {i}"})
                assert await publishers[k].post("/hub/publish", body, AUTH.items()) == 204
            publishers[k].close()

        await asyncio.gather(*(run(k) for k in range(concurrency)))
        await wait_until(lambda: fleet.totals()["events"] >= streams * count, 30, what="every event at every stream")
        assert len({s.parser.last_event_id for s in fleet.streams}) == 1, "streams ended on different last ids"
        events = await metric(srv.http, "gateway_events_sent_total", kind="hub")
        direct = await _writes(srv.http, "direct")
        assert events >= streams * count
        # Measured here: ~0.1 write per event with the deferral, ~0.3 without it (rounds merge only by chance).
        assert direct < 0.2 * streams * count, f"{direct:.0f} direct writes for {events:.0f} events: no coalescing"
        await fleet.close()
    finally:
        assert srv.stop() == 0
