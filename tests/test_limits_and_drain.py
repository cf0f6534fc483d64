"""Limits, slow consumers, conflation, drop-oldest, lifetimes and the SIGTERM drain, against real servers."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from gateway.core.sse import ParsedEvent
from tests.support.metrics import metric, wait_metric
from tests.support.raw_stream import RawStream
from tests.support.server import HUB_TOKEN, start_server
from tests.support.wait import wait_until

pytestmark = [pytest.mark.live, pytest.mark.asyncio]
AUTH = {"authorization": f"Bearer {HUB_TOKEN}"}


async def test_stream_limits_503_per_process_429_per_client(tmp_path: Path, certs: tuple[Path, Path]) -> None:
    srv = start_server(tmp_path, certs, env={"GATEWAY_LIMITS_MAX_STREAMS": "3",
                                              "GATEWAY_LIMITS_MAX_STREAMS_PER_CLIENT": "2",
                                              "GATEWAY_LIMITS_TRUSTED_PROXIES": "127.0.0.1"})
    opened: list[RawStream] = []
    try:
        alice, bob = {"x-forwarded-for": "198.51.100.1"}, {"x-forwarded-for": "203.0.113.9, 198.51.100.2"}
        for _ in range(2):
            opened.append(await RawStream.open(srv.http_port, "/todos/updates", headers=alice))
            assert opened[-1].status == 200
        opened.append(third := await RawStream.open(srv.http_port, "/todos/updates", headers=alice))
        assert third.status == 429
        assert third.headers["retry-after"]
        assert "198.51.100.1" in json.loads(third.body)["detail"]  # the forwarded address, not the proxy's
        opened.append(await RawStream.open(srv.http_port, "/todos/updates", headers=bob))
        assert opened[-1].status == 200
        opened.append(full := await RawStream.open(srv.http_port, "/hub/subscribe?topic=x",
                                                    headers={"x-forwarded-for": "192.0.2.7"}))
        assert full.status == 503
        assert full.headers["retry-after"]
        assert json.loads(full.body)["error"] == "unavailable"
        opened.pop(0).close()  # a slot frees up once a stream ends
        await wait_metric(srv.http, "gateway_streams_active", 2, kind="view")
        again = await RawStream.open(srv.http_port, "/todos/updates", headers=alice)
        assert again.status == 200
        opened.append(again)
        assert await metric(srv.http, "gateway_streams_refused_total", reason="too_many_requests") == 1
        assert await metric(srv.http, "gateway_streams_refused_total", reason="unavailable") == 1
    finally:
        for stream in opened:
            stream.close()
        assert srv.stop() == 0


async def test_sigterm_with_200_streams(tmp_path: Path, certs: tuple[Path, Path]) -> None:
    record = tmp_path / "executed.txt"
    srv = start_server(tmp_path, certs, args=["--app", "tests.apps:gw"],
                       env={"GATEWAY_SERVER_DRAIN_TIMEOUT": "4", "RECORD_FILE": str(record),
                            "GATEWAY_LIMITS_MAX_STREAMS_PER_CLIENT": "0", "GATEWAY_COMMANDS_WORKERS": "2"})
    streams = [await RawStream.open(srv.http_port, "/both") for _ in range(200)]
    for stream in streams:
        await stream.next_event()
    accepted = []
    async with httpx.AsyncClient(base_url=srv.http, timeout=10) as client:
        for n in range(60):  # 60 x 20 ms on 2 workers: many are still queued when the signal comes
            response = await client.post("/record", json={"n": n})
            if response.status_code == 204:
                accepted.append(n)
        signalled = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(5):
            while (await client.get("/readyz")).status_code != 503:
                pass
        readiness_flipped = time.monotonic() - signalled
        refused = await client.get("/both")
        assert refused.status_code == 503
        assert refused.headers["retry-after"]

    async def drained(stream: RawStream) -> tuple[float, int | None]:
        await stream.until_end(timeout=10)
        return time.monotonic() - signalled, stream.parser.retry

    results = await asyncio.gather(*(drained(s) for s in streams))
    code = await asyncio.to_thread(srv.proc.wait, 20)
    ends = sorted(t for t, _ in results)
    retries = [r for _, r in results]
    print(f"\nreadiness 503 after {readiness_flipped * 1000:.0f} ms; 200 streams ended from {ends[0]:.2f} s to "
          f"{ends[-1]:.2f} s; {len(set(retries))} distinct retry hints ({min((r or 0 for r in retries), default=0)}-"
          f"{max(r or 0 for r in retries)} ms); {len(accepted)} commands accepted")
    assert code == 0, srv.output()
    assert readiness_flipped < 0.1
    assert all(s.ended for s in streams)  # each ended cleanly (final chunk), not cut
    assert all(s.decoded.endswith(b": draining\n\n") for s in streams)
    assert ends[-1] < 4  # within the drain window
    assert ends[-1] - ends[0] > 0.5  # closes were spread, not all at once
    assert len(set(retries)) > 100  # and so are the reconnect delays
    executed = sorted(int(line) for line in record.read_text().split())
    assert executed == accepted  # every command answered 204 was executed before the exit


async def test_slow_view_client_converges_on_the_newest_version(tmp_path: Path, certs: tuple[Path, Path]) -> None:
    srv = start_server(tmp_path, certs, args=["--app", "tests.apps:gw"],
                       env={"GATEWAY_SSE_SLOW_CLIENT_GRACE": "60"})
    try:
        async with httpx.AsyncClient(base_url=srv.http, timeout=10) as client:
            assert (await client.post("/size", json={"bytes": 1_000_000})).status_code == 204
            slow = await RawStream.open(srv.http_port, "/sized", rcvbuf=4096)
            await slow.next_event(timeout=20)  # it reads the first render, then stops reading
            for _ in range(30):
                assert (await client.post("/tick", json={})).status_code == 204
            seen: list[tuple[int, str]] = []
            while not seen or "tick 30</p>" not in seen[-1][1]:  # now it drains
                event = await slow.next_parsed(timeout=20)
                seen.append((int(event.id or 0), event.data[:20]))
        ids = [i for i, _ in seen]
        print(f"\nslow client received {len(seen)} of 30 versions: {ids}")
        assert ids == sorted(ids)  # never an older version after a newer one
        assert len(ids) < 30  # intermediate versions were skipped
        assert await metric(srv.http, "gateway_view_versions_conflated_total", route="/sized") > 0
        slow.close()
    finally:
        assert srv.stop() == 0


async def test_drop_oldest_announces_the_first_lost_id(tmp_path: Path, certs: tuple[Path, Path]) -> None:
    srv = start_server(tmp_path, certs, env={"GATEWAY_HUB_OVERFLOW_POLICY": "drop-oldest",
                                              "GATEWAY_HUB_MAX_BUFFERED_EVENTS": "5",
                                              "GATEWAY_SSE_SLOW_CLIENT_GRACE": "60"})
    try:
        stream = await RawStream.open(srv.http_port, "/hub/subscribe?topic=t", rcvbuf=4096)
        ids = []
        async with httpx.AsyncClient(base_url=srv.http, timeout=10) as client:
            for n in range(200):
                response = await client.post("/hub/publish", headers=AUTH,
                                             json={"topic": "t", "data": f"{n:04d}" + "x" * 50_000, "id": f"e{n}"})
                ids.append(response.headers["event-id"])
        events: list[ParsedEvent] = []
        while not events or events[-1].id != "e199":
            events.append(await stream.next_parsed(timeout=20))
        stream.close()
        gaps = [e for e in events if e.event == "gap"]
        data = [e for e in events if e.event != "gap"]
        assert gaps, "a stalled subscriber under drop-oldest must be told what it lost"
        lost = json.loads(gaps[0].data)
        assert lost["reason"] == "dropped"
        assert lost["firstLostId"] in ids
        order = [ids.index(e.id or "") for e in data]
        assert order == sorted(order)  # what arrives stays in order
        assert data[-1].id == "e199"  # and the newest is never the one dropped
        assert await metric(srv.http, "gateway_events_dropped_total", kind="hub") > 0
    finally:
        assert srv.stop() == 0


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def test_slow_consumer_is_cut_off_after_the_grace_period(tmp_path: Path, certs: tuple[Path, Path]) -> None:
    srv = start_server(tmp_path, certs, args=["--app", "tests.apps:gw"],
                       env={"GATEWAY_SSE_SLOW_CLIENT_GRACE": "1", "GATEWAY_SSE_WRITE_TIMEOUT": "300"})
    try:
        async with httpx.AsyncClient(base_url=srv.http, timeout=10) as client:
            assert (await client.post("/size", json={"bytes": 1_000_000})).status_code == 204
            slow = await RawStream.open(srv.http_port, "/sized", rcvbuf=4096)
            started = time.monotonic()

            async def cut() -> bool:  # polled every 0.1 s: a new version each time while the client reads nothing
                if await metric(srv.http, "gateway_streams_closed_total", reason="slow_consumer") >= 1:
                    return True
                assert (await client.post("/tick", json={})).status_code == 204
                return False

            await wait_until(cut, 15, what="the slow consumer cut off", interval=0.1)
            cut_after = time.monotonic() - started
            # Its socket is released too, although the client still reads nothing (no flush can ever finish).
            fds = _open_fds(srv.proc.pid)
            await wait_until(lambda: _open_fds(srv.proc.pid) < fds, 10, what="its socket released", interval=0.1)
            released_after = time.monotonic() - started
            slow.close()
        print(f"\nslow consumer cut off after {cut_after:.1f} s (grace 1 s, write timeout 300 s), "
              f"its connection released after {released_after:.1f} s")
        assert cut_after < 10  # the grace period, not the 300 s write deadline, ended it
    finally:
        assert srv.stop() == 0


async def test_max_lifetime_ends_streams_with_a_reconnect_hint(tmp_path: Path, certs: tuple[Path, Path]) -> None:
    srv = start_server(tmp_path, certs, env={"GATEWAY_SSE_MAX_LIFETIME": "1"})
    try:
        stream = await RawStream.open(srv.http_port, "/todos/updates")
        await stream.next_event()
        await stream.until_end(timeout=5)
        assert stream.decoded.endswith(b": stream lifetime reached: reconnect\n\n")
        assert stream.parser.retry is not None
        assert await metric(srv.http, "gateway_streams_closed_total", reason="lifetime") == 1
    finally:
        assert srv.stop() == 0
