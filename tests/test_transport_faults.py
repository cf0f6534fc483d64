"""Transport faults under a streaming response: a TCP reset while the server is blocked writing, and an HTTP/3
client that stops granting flow-control credit. Each must cost the gateway one closed stream, not memory, CPU or
its responsiveness (see ``send_after_disconnect`` and ``h3_backpressure`` in ``gateway/web/hypercorn/``)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import struct
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.h3client import H3Client, H3StreamReset
from tests.support.metrics import metric, wait_metric
from tests.support.proc import rss
from tests.support.server import Server, start_server
from tests.support.sse_client import SSEReader
from tests.support.wait import wait_until

pytestmark = [pytest.mark.live, pytest.mark.asyncio]

MIB = 1024 * 1024
RSS_BUDGET = 64 * MIB
WRITE_TIMEOUT = 3.0


class ResettingClient:
    """A raw HTTP/1.1 client with a tiny receive buffer that stops reading after the response head, then resets
    the connection (SO_LINGER 0: close() sends RST, not FIN)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.local_port = int(sock.getsockname()[1])

    @classmethod
    async def open(cls, port: int, path: str) -> ResettingClient:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: the window stays small
        sock.settimeout(5.0)
        client = None
        try:
            await asyncio.to_thread(sock.connect, ("127.0.0.1", port))
            client = cls(sock)
            request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept-Encoding: identity\r\n\r\n"
            await asyncio.to_thread(sock.sendall, request.encode())
            head = await asyncio.to_thread(sock.recv, 4096)
            assert head.startswith(b"HTTP/1.1 200"), head[:200]
            return client
        finally:
            if client is None:
                sock.close()

    def reset(self) -> None:
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


def _server_send_queue(server_port: int, client_port: int) -> int | None:
    """Bytes the kernel holds unacknowledged in the server's socket of this loopback connection (tx_queue in
    /proc/net/tcp), or None when the socket is gone."""
    local, remote = f"0100007F:{server_port:04X}", f"0100007F:{client_port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == local and fields[2] == remote:
            return int(fields[4].split(":")[0], 16)
    return None


async def _healthz_answers(base: str, within: float) -> float:
    """Time /healthz took; fails if it does not answer 200 within ``within`` seconds."""
    started = time.monotonic()
    async with httpx.AsyncClient(timeout=within) as client:
        response = await client.get(base + "/healthz")
    assert response.status_code == 200
    return time.monotonic() - started


def _stop_now(srv: Server) -> None:
    """Whatever happened, leave no gateway behind (a starved one ignores SIGTERM)."""
    if srv.proc.poll() is None:
        srv.proc.kill()
        srv.proc.wait(5)


async def test_http1_reset_while_blocked_in_drain_ends_the_view_stream(tmp_path: Path,
                                                                        certs: tuple[Path, Path]) -> None:
    srv = start_server(tmp_path, certs, args=["--app", "tests.apps:gw"])
    stalled: ResettingClient | None = None
    try:
        base = srv.http
        async with httpx.AsyncClient(base_url=base, timeout=5) as client:
            assert (await client.post("/size", json={"bytes": MIB})).status_code == 204
            active = await metric(base, "gateway_streams_active", kind="view")
            closed = await metric(base, "gateway_streams_closed_total", kind="view")
            conflated = await metric(base, "gateway_view_versions_conflated_total", route="/sized")
            stalled = await ResettingClient.open(srv.http_port, "/sized")
            await wait_metric(base, "gateway_streams_active", active + 1, kind="view")
            # The client reads nothing more. Once a version is conflated, two arrived while the writer held a frame:
            # it is stuck in send(), i.e. in drain() on a full socket.
            ticks = 0
            while await metric(base, "gateway_view_versions_conflated_total", route="/sized") == conflated:
                assert ticks < 100, "the writer never blocked"
                assert (await client.post("/tick", json={})).status_code == 204
                ticks += 1
            rss_before = rss(srv.proc.pid)
            stalled.reset()
            reset_at = time.monotonic()
            await wait_metric(base, "gateway_streams_active", active, timeout=1.0, kind="view")
            ended_after = time.monotonic() - reset_at
            assert await metric(base, "gateway_streams_closed_total", kind="view") == closed + 1
            # The view keeps publishing 1 MiB renders; the process must stay responsive and flat.
            slowest = 0.0
            for _ in range(20):
                assert (await client.post("/tick", json={}, timeout=2)).status_code == 204
                slowest = max(slowest, await _healthz_answers(base, within=2.0))
            growth = rss(srv.proc.pid) - rss_before
        stopping = time.monotonic()
        code = srv.stop(timeout=15)
        stop_took = time.monotonic() - stopping
        print(f"\nHTTP/1.1 reset after {ticks} ticks of 1 MiB: stream ended {ended_after * 1000:.0f} ms after the RST,"
              f" /healthz max {slowest * 1000:.0f} ms, RSS {growth / MIB:+.1f} MiB, SIGTERM exit {code}"
              f" in {stop_took:.1f} s")
        assert growth < RSS_BUDGET
        assert code == 0, srv.output()
    finally:
        if stalled is not None:
            stalled.sock.close()
        _stop_now(srv)


async def test_http1_reset_under_a_send_only_loop_fails_its_send(tmp_path: Path, certs: tuple[Path, Path]) -> None:
    """An app whose only suspension point is ``send`` (a Quart streaming response) must see ``send`` fail once
    the client reset the connection; Hypercorn used to swallow the error and return without ever yielding."""
    srv = start_server(tmp_path, certs, args=["--app", "tests.support.send_loop_app:gw"])
    stalled: ResettingClient | None = None
    try:
        base = srv.http
        stalled = await ResettingClient.open(srv.http_port, "/export")
        # The producer never ends, so once the kernel holds unsent data for this connection the app is ahead of the
        # client for good: blocked in drain(). Another process's socket state is observed by polling, bounded.
        await wait_until(lambda: bool(_server_send_queue(srv.http_port, stalled.local_port)), 5,
                         what="unsent data queued in the server's socket")
        rss_before = rss(srv.proc.pid)
        stalled.reset()
        try:
            slowest = 0.0
            for _ in range(10):
                slowest = max(slowest, await _healthz_answers(base, within=2.0))
            answered = f"/healthz max {slowest * 1000:.0f} ms"
        except httpx.TimeoutException:
            answered = "/healthz did not answer within 2 s"
        growth = rss(srv.proc.pid) - rss_before
        stopping = time.monotonic()
        # A starved process would grow by hundreds of MiB a second: give it a short grace only.
        code = srv.stop(timeout=10 if answered.startswith("/healthz max") else 1)
        stop_took = time.monotonic() - stopping
        print(f"\nHTTP/1.1 reset under a send-only loop: {answered}, RSS {growth / MIB:+.1f} MiB,"
              f" SIGTERM exit {code} in {stop_took:.1f} s")
        assert answered.startswith("/healthz max"), answered
        assert growth < RSS_BUDGET
        assert code == 0, srv.output()[-5000:]
        log = srv.output()
        # Every further send would have logged asyncio's "socket.send() raised exception." warning.
        assert log.count("socket.send() raised exception") < 10
        assert "Error in ASGI Framework" not in log  # the client leaving is no server error
    finally:
        if stalled is not None:
            stalled.sock.close()
        _stop_now(srv)


def _stop_granting_flow_control(client: H3Client) -> None:
    """Make an aioquic client keep acknowledging packets but never raise a stream's MAX_STREAM_DATA again, as a
    client whose application stopped reading: the server may send the initial window (1 MiB) and no more."""
    protocol: Any = client._protocol
    assert protocol is not None
    protocol._quic._write_stream_limits = lambda *args, **kwargs: None


_TICK = re.compile(r"<p>tick (\d+)</p>")


async def test_http3_client_granting_no_credit_costs_bounded_memory(tmp_path: Path,
                                                                    certs: tuple[Path, Path]) -> None:
    srv = start_server(tmp_path, certs, args=["--app", "tests.apps:gw"],
                       env={"GATEWAY_SSE_WRITE_TIMEOUT": str(WRITE_TIMEOUT)})
    ticks, size = 200, MIB
    try:
        base = srv.http
        async with (
            httpx.AsyncClient(base_url=base, timeout=30) as client,
            H3Client("127.0.0.1", srv.tls_port, verify=False) as h3,
        ):
            assert (await client.post("/size", json={"bytes": size})).status_code == 204
            _stop_granting_flow_control(h3)
            async with (
                h3.stream("GET", "/sized", headers={"accept-encoding": "identity"}) as stalled,
                client.stream("GET", "/sized", headers={"accept-encoding": "br"}) as healthy,
            ):
                assert stalled.status == 200
                reader = SSEReader(healthy.aiter_raw(), healthy.headers.get("content-encoding"))
                first = await reader.next_event()
                match = _TICK.match(first.data)
                assert match is not None
                tick = int(match.group(1))
                rss_before = rss(srv.proc.pid)
                lags = []
                first_tick_at = time.monotonic()
                closed_after: float | None = None  # seconds from the first tick (the first write beyond the window)
                for _ in range(ticks):
                    published = time.monotonic()
                    assert (await client.post("/tick", json={})).status_code == 204
                    tick += 1
                    await reader.until(lambda e, n=tick: e.data.startswith(f"<p>tick {n}</p>"), timeout=10)
                    lags.append(time.monotonic() - published)
                    if closed_after is None and await metric(base, "gateway_streams_closed_total", kind="view",
                                                             reason="write_timeout") >= 1:
                        closed_after = time.monotonic() - first_tick_at
                growth = rss(srv.proc.pid) - rss_before
                if closed_after is None:
                    remaining = WRITE_TIMEOUT + 1.5 - (time.monotonic() - first_tick_at)
                    with contextlib.suppress(TimeoutError):
                        await wait_metric(base, "gateway_streams_closed_total", 1, timeout=max(remaining, 0.2),
                                          kind="view", reason="write_timeout")
                        closed_after = time.monotonic() - first_tick_at
                # The server resets the stream it gave up on (RESET_STREAM): the client learns, aioquic frees it.
                received, outcome = 0, "nothing within 5 s"
                try:
                    async for chunk in stalled.aiter_raw(idle_timeout=5):
                        received += len(chunk)
                    outcome = "ended"
                except H3StreamReset:
                    outcome = "reset"
                except TimeoutError:
                    pass
            closed = "never" if closed_after is None else f"{closed_after:.1f} s after the first tick"
            print(f"\n{ticks} renders of 1 MiB with an HTTP/3 client granting no credit: RSS {growth / MIB:+.1f} MiB,"
                  f" stalled stream closed {closed} (write_timeout {WRITE_TIMEOUT:g} s), got {received} B then"
                  f" {outcome}; healthy client lag max {max(lags) * 1000:.0f} ms")
            assert growth < RSS_BUDGET
            assert closed_after is not None, "the stalled HTTP/3 stream was not closed by the write deadline"
            assert closed_after < WRITE_TIMEOUT + 1.5
            assert outcome == "reset"
            assert received <= MIB + 65536  # the initial window and no more
            assert max(lags) < 1.0
        assert srv.stop() == 0
    finally:
        _stop_now(srv)
