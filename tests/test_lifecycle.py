"""Stream life cycle against a real server: disconnects free streams on every protocol, SIGTERM drains cleanly,
and the metrics and health endpoints say what is going on."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.support.h3client import H3Client
from tests.support.metrics import metric, wait_metric
from tests.support.server import Server, start_server
from tests.support.sse_client import SSEReader

pytestmark = [pytest.mark.live, pytest.mark.asyncio]


async def test_http3_client_going_away_ends_its_streams(tmp_path: Path, certs: tuple[Path, Path]) -> None:
    srv = start_server(tmp_path, certs)
    try:
        client = H3Client("127.0.0.1", srv.tls_port, verify=False)
        await client.__aenter__()
        streams = []
        for _ in range(2):
            cm = client.stream("GET", "/todos/updates", headers={"accept-encoding": "br"})
            stream = await cm.__aenter__()
            streams.append((cm, stream))
            reader = SSEReader(stream.aiter_raw(), stream.header("content-encoding"))
            await reader.next_event()
        await wait_metric(srv.http, "gateway_streams_active", 2, kind="view")
        await client.close()  # the tab closes: CONNECTION_CLOSE, no stream-level goodbye
        await wait_metric(srv.http, "gateway_streams_active", 0, timeout=2.0, kind="view")
        assert await metric(srv.http, "gateway_streams_closed_total", kind="view", reason="client_closed") == 2
    finally:
        assert srv.stop() == 0


@pytest.mark.parametrize("protocol", ["http/1.1", "h2"])
async def test_tcp_client_going_away_ends_its_stream(server: Server, protocol: str) -> None:
    before = await metric(server.http, "gateway_streams_closed_total", kind="view")
    h2 = protocol == "h2"
    async with httpx.AsyncClient(http1=not h2, http2=h2, verify=False, timeout=10) as client:
        base = server.https if h2 else server.http
        async with client.stream("GET", base + "/todos/updates") as response:
            reader = SSEReader(response.aiter_raw(), response.headers.get("content-encoding"))
            await reader.next_event()
    await wait_metric(server.http, "gateway_streams_closed_total", before + 1, kind="view")


async def test_sigterm_drains_streams_on_every_protocol_and_exits_0(tmp_path: Path,
                                                                    certs: tuple[Path, Path]) -> None:
    srv = start_server(tmp_path, certs, env={"GATEWAY_SERVER_DRAIN_TIMEOUT": "6"})
    readers: list[SSEReader] = []
    async with (
        httpx.AsyncClient(timeout=10) as h1,
        httpx.AsyncClient(http1=False, http2=True, verify=False, timeout=10) as h2,
        H3Client("127.0.0.1", srv.tls_port, verify=False) as h3,
        h1.stream("GET", srv.http + "/todos/updates") as r1,
        h2.stream("GET", srv.https + "/todos/updates") as r2,
        h3.stream("GET", "/todos/updates") as r3,
    ):
        readers = [SSEReader(r1.aiter_raw(), r1.headers.get("content-encoding")),
                   SSEReader(r2.aiter_raw(), r2.headers.get("content-encoding")),
                   SSEReader(r3.aiter_raw(), r3.header("content-encoding"))]
        for reader in readers:
            await reader.next_event()
        started = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        for reader in readers:
            await reader.until_end(timeout=10)  # each stream is ended by the server, not cut
        elapsed = time.monotonic() - started
    for reader in readers:
        assert reader.decoded.endswith(b": draining\n\n")
        assert reader.parser.retry is not None
        assert 2000 <= reader.parser.retry <= 4000  # a jittered reconnect hint
    code = await asyncio.to_thread(srv.proc.wait, 30)
    exited = time.monotonic() - started
    assert code == 0, srv.output()
    assert elapsed < 6  # within the drain window (closes are spread over its first half)
    # The process ends once drained, not when Hypercorn's graceful_timeout (drain + 5 s) expires.
    assert exited < 9, f"exit took {exited:.1f} s"  # not at drain + graceful (11 s)


async def test_health_readiness_and_metrics(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.http, timeout=5) as client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        assert (await client.get("/readyz")).status_code == 200
        assert (await client.post("/todos/add", json={"text": "counted"})).status_code == 204
        assert (await client.post("/todos/add", json={})).status_code == 422
        async with client.stream("GET", "/todos/updates", headers={"accept-encoding": "br"}) as response:
            reader = SSEReader(response.aiter_raw(), "br")  # held: dropping it would close the response
            await reader.next_event()
            assert await metric(server.http, "gateway_streams_active", kind="view") >= 1
    base = server.http
    assert await metric(base, "gateway_commands_total", route="/todos/add", outcome="accepted") >= 1
    assert await metric(base, "gateway_commands_total", route="/todos/add", outcome="validation_failed") >= 1
    assert await metric(base, "gateway_events_sent_total", kind="view") >= 1
    sent = await metric(base, "gateway_stream_bytes_sent_total", route="/todos/updates", encoding="br")
    raw = await metric(base, "gateway_stream_bytes_uncompressed_total", route="/todos/updates", encoding="br")
    assert 0 < sent < raw
    assert await metric(base, "gateway_commands_handled_total", route="/todos/add", result="ok") >= 1
    assert await metric(base, "gateway_commands_handled_total", result="error") == 0


@pytest.mark.parametrize("encoding", ["br", "identity"])
async def test_heartbeats_arrive_flushed_on_an_idle_stream(tmp_path: Path, certs: tuple[Path, Path],
                                                         encoding: str) -> None:
    srv = start_server(tmp_path, certs, env={"GATEWAY_SSE_HEARTBEAT": "1"})
    try:
        async with httpx.AsyncClient(timeout=10) as client, \
                client.stream("GET", srv.http + "/todos/updates", headers={"accept-encoding": encoding}) as r:
            reader = SSEReader(r.aiter_raw(), r.headers.get("content-encoding"))
            await reader.next_event()
            async with asyncio.timeout(5):
                while len(reader.parser.comments) < 2:  # two heartbeats, each decodable on arrival
                    assert await reader.more()
            assert reader.chunks_not_on_frame_boundary == 0
        assert await metric(srv.http, "gateway_heartbeats_sent_total") >= 2
    finally:
        assert srv.stop() == 0


async def test_idle_http3_connection_does_not_hold_up_shutdown(tmp_path: Path, certs: tuple[Path, Path]) -> None:
    """Browsers keep QUIC connections open; SIGTERM must not wait for them until the graceful timeout."""
    srv = start_server(tmp_path, certs, env={"GATEWAY_SERVER_DRAIN_TIMEOUT": "10"})
    async with H3Client("127.0.0.1", srv.tls_port, verify=False) as client:
        assert (await client.request("GET", "/healthz")).status == 200  # the connection stays open, idle
        started = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(srv.proc.wait, 30)
        exited = time.monotonic() - started
    assert code == 0, srv.output()
    assert exited < 8, f"exit took {exited:.1f} s"  # Hypercorn's graceful timeout is drain + 5 = 15 s
