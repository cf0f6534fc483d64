"""Fan-out's direct writes to HTTP/2 streams (``gateway.web.hypercorn.h2_direct``) under a client that plays with
flow control: nothing lost, nothing reordered, and the direct path really taken.

One h2c connection carries eight hub streams. Five read at once; three are given a tiny window and no
WINDOW_UPDATE, so the server must stop sending to them mid-event while the other five keep receiving every event
live; one of the stalled streams is reset with data still queued for it, the two others get their WINDOW_UPDATE
late and must then receive everything, in order; one live stream is reset too; finally the client says GOAWAY and
the gateway closes the connection and its streams, and goes on serving. The same run with
``sse.h2_direct_writes`` off must deliver the same and take no direct write: the counter tells the paths apart.

The seam itself is then held to Hypercorn's own objects in process (``tests/support/h2harness.py``): one round is
one transport write, a stream whose task-path bytes wait in Hypercorn's buffer (or a connection whose send lock is
taken, or whose socket is full) is not written to, the windows decide, what an encoder overshoots waits for
Hypercorn's send task, and a reset stream or a GOAWAY ends direct writes.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from gateway.web.direct import HIGH_WATER, H2Writer, h2_writer
from tests.support.h2harness import H2Harness
from tests.support.h2window import H2Window
from tests.support.metrics import metric, wait_metric
from tests.support.server import HUB_TOKEN, Server, start_server
from tests.support.wait import wait_until

pytestmark = [pytest.mark.live, pytest.mark.asyncio]

AUTH = {"Authorization": f"Bearer {HUB_TOKEN}"}
TOPIC = "h2direct"
TINY_WINDOW = 160  # bytes: the opening retry: frame and an event or two, then the stream is stalled mid-event
STREAMS, STALLED = 8, (1, 2, 3)


async def _publish(client: httpx.AsyncClient, base: str, first: int, count: int) -> list[str]:
    """``count`` numbered events, one after the other (so the bus's order is the list's)."""
    datas = [f"event {n:04d} " + "x" * (n % 40) for n in range(first, first + count)]
    for data in datas:
        answer = await client.post(f"{base}/hub/publish", json={"topic": TOPIC, "data": data}, headers=AUTH)
        assert answer.status_code == 204
    return datas


async def _writes(srv: Server, path: str) -> float:
    return await metric(srv.http, "gateway_stream_writes_total", kind="hub", path=path)


@pytest.mark.parametrize("direct", [True, False], ids=["h2-direct", "h2-task-only"])
async def test_flow_control_resets_and_goaway_lose_and_reorder_nothing(
    tmp_path: Path, certs: tuple[Path, Path], direct: bool
) -> None:
    srv = start_server(tmp_path, certs, env={"GATEWAY_SSE_H2_DIRECT_WRITES": str(direct).lower()})
    client = await H2Window.open(srv.http_port, TINY_WINDOW)
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            ids = [await client.subscribe(f"/hub/subscribe?topic={TOPIC}", live=i not in STALLED)
                   for i in range(STREAMS)]
            await wait_metric(srv.http, "gateway_streams_active", STREAMS, kind="hub")
            live = [s for i, s in enumerate(ids) if i not in STALLED]
            held, stalled_reset, live_reset = [ids[1], ids[2]], ids[3], ids[5]
            sent = await _publish(http, srv.http, 0, 30)
            for stream_id in live:  # the stalled streams cost the others nothing
                assert await client.events(stream_id, len(sent)) == sent
            for stream_id in (*held, stalled_reset):
                assert len(client.streams[stream_id].events) < len(sent), "a stalled stream got everything"
            # A reset of a stream whose events wait in the server for its window, then more events.
            client.reset(stalled_reset)
            sent += await _publish(http, srv.http, 30, 30)
            for stream_id in live:
                assert await client.events(stream_id, len(sent)) == sent
            # The late WINDOW_UPDATE: the stalled streams get everything, in order, and stay live from now on.
            for stream_id in held:
                client.grant(stream_id, 1 << 20, live=True)
            for stream_id in held:
                assert await client.events(stream_id, len(sent)) == sent
            # A reset of a live stream; the others keep receiving.
            client.reset(live_reset)
            sent += await _publish(http, srv.http, 60, 30)
            for stream_id in [*live, *held]:
                if stream_id != live_reset:
                    assert await client.events(stream_id, len(sent)) == sent
            await wait_metric(srv.http, "gateway_streams_active", STREAMS - 2, kind="hub")
            direct_writes = await _writes(srv, "direct")
            if direct:
                assert direct_writes > 0, "no event took the h2 direct path"
            else:
                assert direct_writes == 0
            # GOAWAY from the client: the server closes the connection and every stream on it.
            client.goaway()
            await _closed(client)
            await wait_metric(srv.http, "gateway_streams_active", 0, kind="hub")
            # And goes on serving a new connection, on the same path.
            again = await H2Window.open(srv.http_port, 1 << 16)
            try:
                stream_id = await again.subscribe(f"/hub/subscribe?topic={TOPIC}")
                await wait_metric(srv.http, "gateway_streams_active", 1, kind="hub")
                tail = await _publish(http, srv.http, 90, 3)
                assert await again.events(stream_id, 3) == tail
            finally:
                await again.close()
            assert (await _writes(srv, "direct") > direct_writes) is direct
    finally:
        await client.close()
        code = srv.stop()
        log = srv.output()
    assert code == 0
    assert "Traceback" not in log, log[-3000:]
    assert "ERROR" not in log, log[-3000:]


async def _closed(client: H2Window, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        await client.closed.wait()


# -- the seam against Hypercorn's own objects, in process (tests/support/h2harness.py) ---------------------------


@pytest.fixture
def trusted(monkeypatch: pytest.MonkeyPatch) -> None:
    """The seam walks Hypercorn's objects only once the versions were verified; these tests run on them."""
    import gateway.web.hypercorn as corrections

    assert not corrections.unverified()
    monkeypatch.setattr(corrections, "_direct_writes", True)


async def _drained(harness: H2Harness, writer: H2Writer) -> None:
    """Hypercorn's send task has written what the task path queued for the stream."""
    await wait_until(lambda: not writer.buffer.buffer, 5.0, what="Hypercorn's send task emptying the buffer")
    harness.read()


@pytest.mark.usefixtures("trusted")
async def test_one_round_is_one_write_and_hypercorn_carries_on_in_order() -> None:
    async with H2Harness() as harness:
        (one, send_one), (two, send_two) = await harness.open(), await harness.open()
        first, second = h2_writer(send_one, HIGH_WATER), h2_writer(send_two, HIGH_WATER)
        assert first is not None
        assert second is not None
        assert first.link is second.link
        assert first.ready()
        assert second.ready()
        assert first.room(100)
        writes = len(harness.transport.writes)
        link = first.write(b"a1")
        second.write(b"b1")
        assert len(harness.transport.writes) == writes, "a direct write left before the round's flush"
        link.flush()
        assert harness.read() == 1  # both streams' DATA in one transport write
        # The task path queues behind it; while its bytes wait for Hypercorn's send task, fan-out may not write.
        await send_one({"type": "http.response.body", "body": b"a2", "more_body": True})
        assert not first.ready()
        assert second.ready()
        await _drained(harness, first)
        assert first.ready()
        first.write(b"a3").flush()
        harness.read()
        assert harness.received == {one: b"a1a2a3", two: b"b1"}


@pytest.mark.usefixtures("trusted")
async def test_not_ready_while_hypercorn_holds_bytes_or_the_socket_is_full() -> None:
    async with H2Harness() as harness:
        _, send = await harness.open()
        writer = h2_writer(send, HIGH_WATER)
        assert writer is not None
        assert writer.ready()
        async with harness.server.send_lock:  # bytes taken from h2 wait to be written
            assert not writer.ready()
        harness.transport.buffered = HIGH_WATER
        assert not writer.ready()
        harness.transport.buffered = 0
        assert writer.ready()


@pytest.mark.usefixtures("trusted")
async def test_windows_decide_and_what_an_encoder_overshoots_waits_for_hypercorn() -> None:
    async with H2Harness(initial_window=200) as harness:
        stream_id, send = await harness.open()
        writer = h2_writer(send, HIGH_WATER)
        assert writer is not None
        assert writer.room(100)
        assert not writer.room(150)
        # More than the window (an encoder past the margin): the window's worth goes out, the rest waits in
        # Hypercorn's buffer, and the stream is not ready until Hypercorn's send task has sent it.
        data = bytes(range(256)) * 2
        writer.write(data).flush()
        harness.read()
        assert harness.received[stream_id] == data[:200]
        assert not writer.ready()
        harness.client.increment_flow_control_window(1 << 16, stream_id)
        await harness.deliver()
        await _drained(harness, writer)
        assert harness.received[stream_id] == data
        assert writer.ready()


@pytest.mark.usefixtures("trusted")
async def test_a_reset_stream_and_a_goaway_end_direct_writes() -> None:
    async with H2Harness() as harness:
        (one, send_one), (two, send_two) = await harness.open(), await harness.open()
        first, second = h2_writer(send_one, HIGH_WATER), h2_writer(send_two, HIGH_WATER)
        assert first is not None
        assert second is not None
        harness.client.reset_stream(one)
        await harness.deliver()
        assert not first.ready()
        assert second.ready()
        second.write(b"still here").flush()
        harness.read()
        assert harness.received[two] == b"still here"
        harness.client.close_connection()
        await harness.deliver()
        assert not second.ready()
