"""Slow-client limits per hub topic and per view, against a real gateway and clients that stop reading."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.core.sse import ParsedEvent
from tests.support.metrics import metric, wait_metric
from tests.support.raw_stream import RawStream
from tests.support.server import HUB_TOKEN, Server, start_server
from tests.support.stalled import close_now, kernel_send_buffer_max, open_stalled, read_until_gone
from tests.support.wait import wait_until

pytestmark = [pytest.mark.live, pytest.mark.asyncio]

AUTH = {"Authorization": f"Bearer {HUB_TOKEN}"}
EVENT = 16_000  # bytes of data per hub event
# The global policy is drop-oldest and the global grace 10 s: the rules, not the globals, decide below.
HUB_RULES = [
    {"topic": "lossy.*", "overflow": "drop-oldest", "max_events": 20, "grace": 120},
    # A bound below one event: the first event fan-out cannot write straight to the socket overflows the mailbox
    # at once, while the stream's task sleeps, so the cut is decided with no write in flight and the goodbye goes
    # out (a cut that has to abandon a write stuck on the client sends none: its encoder's state is unknown).
    {"topic": "strict.*", "overflow": "disconnect", "max_bytes": 8192, "grace": 120},
]


@pytest.fixture(scope="module")
def hub_server(tmp_path_factory: pytest.TempPathFactory, certs: tuple[Path, Path]) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("slowhub"), certs, env={
        "GATEWAY_HUB_SLOW_CLIENTS": json.dumps(HUB_RULES), "GATEWAY_HUB_OVERFLOW_POLICY": "drop-oldest",
        "GATEWAY_SSE_WRITE_TIMEOUT": "300"})
    yield srv
    assert srv.stop() == 0


async def _publish(base: str, topic: str, prefix: str, count: int) -> list[str]:
    """``count`` events of ``EVENT`` bytes with ids ``<prefix>0000``..., one after the other; their ids."""
    ids = [f"{prefix}{i:04d}" for i in range(count)]
    async with httpx.AsyncClient(timeout=10) as client:
        for event_id in ids:
            body = {"topic": topic, "data": event_id + "y" * (EVENT - len(event_id)), "id": event_id}
            assert (await client.post(f"{base}/hub/publish", json=body, headers=AUTH)).status_code == 204
    return ids


async def _until(stream: RawStream, last_id: str, timeout: float = 30) -> list[ParsedEvent]:
    """Events up to and including the one with id ``last_id``."""
    events = [await stream.next_parsed(timeout)]
    while events[-1].id != last_id:
        events.append(await stream.next_parsed(timeout))
    return events


async def _dropped(base: str) -> float:
    return await metric(base, "gateway_events_dropped_total", kind="hub")


async def _any_dropped(base: str) -> bool:
    return bool(await _dropped(base))


async def _behind_over(base: str, kind: str, bound: str) -> float:
    """How many observations of ``gateway_stream_bytes_behind`` exceeded ``bound`` bytes."""
    total = await metric(base, "gateway_stream_bytes_behind_count", kind=kind)
    return total - await metric(base, "gateway_stream_bytes_behind_bucket", kind=kind, le=bound)


async def test_a_drop_oldest_topic_keeps_a_stalled_reader_and_names_the_first_lost_id(hub_server: Server) -> None:
    base = hub_server.http
    stream = await open_stalled(hub_server.http_port, "/hub/subscribe?topic=lossy.a")
    try:
        # More than the kernel can ever buffer for the socket: the rest waits in the gateway, past 20 events.
        ids = await _publish(base, "lossy.a", "L", kernel_send_buffer_max() // EVENT + 60)
        await wait_until(lambda: _any_dropped(base), 10, what="events dropped for the stalled reader")

        events = await _until(stream, ids[-1])
        dropped = await _dropped(base)  # every event was fed by now
        # The stall shows in the histogram: the write after it took a full mailbox, 20 events of 16 kB.
        assert await _behind_over(base, "hub", "262144.0") >= 1
        gaps = [e for e in events if e.event == "gap"]
        got = [e.id or "" for e in events if e.event != "gap"]
        assert gaps, "events were dropped, yet no gap was announced"
        assert got == sorted(got), "events out of order"
        assert got[-1] == ids[-1], "the newest event did not arrive"
        assert len(ids) - len(got) == dropped, "what is missing is not what was dropped"
        for gap in gaps:  # each names the first event lost after the last one delivered before it
            before = [e.id or "" for e in events[:events.index(gap)] if e.event != "gap"]
            expected = ids[ids.index(before[-1]) + 1] if before else ids[0]
            assert json.loads(gap.data) == {"reason": "dropped", "firstLostId": expected}
            after = events[events.index(gap) + 1]
            assert ids.index(after.id or "") > ids.index(expected), "a gap announced an event that came"

        # Still connected: the next event arrives on the same stream.
        tail = await _publish(base, "lossy.a", "T", 1)
        assert (await stream.next_parsed(10)).id == tail[0]
        assert await metric(base, "gateway_slow_consumers_cut_total", kind="hub") == 0
    finally:
        await close_now(stream)


async def test_a_disconnect_topic_cuts_a_stalled_reader_which_resumes_with_last_event_id(
    hub_server: Server,
) -> None:
    base = hub_server.http
    stream = await open_stalled(hub_server.http_port, "/hub/subscribe?topic=strict.a")
    try:
        ids = await _publish(base, "strict.a", "S", kernel_send_buffer_max() // EVENT + 60)
        await wait_metric(base, "gateway_slow_consumers_cut_total", 1, kind="hub", policy="disconnect")

        delivered = await read_until_gone(stream)  # the goodbye waits in the socket's buffer behind the rest
        await wait_metric(base, "gateway_streams_closed_total", 1, kind="hub", reason="slow_consumer")
        assert stream.ended, "the response did not end with its last chunk"
        assert stream.decoded.endswith(b": slow consumer: reconnect with Last-Event-ID\n\n")
        assert stream.parser.retry is not None
        got = [e.id or "" for e in delivered]
        assert got == ids[:len(got)], "a stream cut off must have delivered a prefix, in order"
        assert 0 < len(got) < len(ids)
    finally:
        await close_now(stream)

    resumed = await RawStream.open(hub_server.http_port, "/hub/subscribe?topic=strict.a",
                                   headers={"Last-Event-ID": got[-1]})
    try:
        replayed = await _until(resumed, ids[-1])
        assert [e.id for e in replayed] == ids[len(got):], "the replay is not exactly what the cut-off missed"
        tail = await _publish(base, "strict.a", "T", 1)
        assert (await resumed.next_parsed(10)).id == tail[0]
    finally:
        await close_now(resumed)


async def test_views_take_their_own_grace_and_cap(tmp_path: Path, certs: tuple[Path, Path]) -> None:
    """Four stalled readers of 1 MB renders under a 300 s global grace: the view declaring a 1 s grace, the one a
    settings rule gives 1 s and the one capped at a render and 32 KiB behind are cut off within seconds; the
    fourth stays and still converges on the newest render."""
    srv = start_server(tmp_path, certs, args=["--app", "tests.support.slowclient_app:gw"], env={
        "GATEWAY_SSE_SLOW_CLIENT_GRACE": "300", "GATEWAY_SSE_WRITE_TIMEOUT": "300",
        "GATEWAY_SSE_VIEW_SLOW_CLIENTS": json.dumps([{"path": "/configured", "grace": 1}])})
    try:
        streams = {path: await open_stalled(srv.http_port, path)
                   for path in ("/quick", "/configured", "/capped", "/patient")}
    except BaseException:
        srv.stop()
        raise
    try:
        ticks = 0
        async with httpx.AsyncClient(base_url=srv.http, timeout=10) as client:

            async def tick() -> None:
                nonlocal ticks
                assert (await client.post("/tick", json={})).status_code == 204
                ticks += 1

            async def three_cut() -> bool:  # polled every 0.1 s: a new render each time while nobody reads
                if await metric(srv.http, "gateway_slow_consumers_cut_total", kind="view") >= 3:
                    return True
                await tick()
                return False

            await wait_until(three_cut, 20, what="three view streams cut off", interval=0.1)
            assert await metric(srv.http, "gateway_slow_consumers_cut_total", kind="view", policy="conflate") == 3
            assert await _behind_over(srv.http, "view", "1048576.0") >= 1  # over one whole render behind

            for path in ("/quick", "/configured", "/capped"):
                await read_until_gone(streams[path])
            await wait_metric(srv.http, "gateway_streams_active", 1, kind="view")
            # The patient one was kept: it drains, converges on the newest render, then gets the next one.
            patient = streams["/patient"]
            while not (await patient.next_parsed(30)).data.startswith(f"<p>tick {ticks}</p>"):
                pass
            await tick()
            assert (await patient.next_parsed(10)).data.startswith(f"<p>tick {ticks}</p>")
    finally:
        await close_now(*streams.values())
        assert srv.stop() == 0
