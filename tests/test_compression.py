"""The compression engine against a real gateway: bytes on the wire, codecs end to end, route policies, windows
that follow the renders, and the memory budget under 1,000 concurrent Brotli streams."""

from __future__ import annotations

import asyncio
import resource
import statistics
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.core.sse import ParsedEvent, SSEParser
from tests.support.metrics import metric
from tests.support.proc import rss
from tests.support.raw_stream import RawStream
from tests.support.server import Server, start_server
from tests.support.sse_client import SSEReader

pytestmark = [pytest.mark.live, pytest.mark.asyncio]


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory, certs: tuple[Path, Path]) -> Iterator[Server]:
    """A demo gateway of its own (its todo list starts empty) that prefers zstd, for the codec tests."""
    srv = start_server(tmp_path_factory.mktemp("fresh"), certs)
    yield srv
    assert srv.stop() == 0


async def test_demo_view_with_50_todos_costs_under_80_bytes_per_event(fresh: Server) -> None:
    async with httpx.AsyncClient(base_url=fresh.http, timeout=10) as client:
        for i in range(50):
            text = f"Todo number {i}: water the plants, call the bank, review pull request #{1000 + i}"
            assert (await client.post("/todos/add", json={"text": text})).status_code == 204
        stream = await RawStream.open(fresh.http_port, "/todos/updates", "br")
        try:
            assert stream.headers["content-encoding"] == "br"
            first, first_bytes = await stream.next_event()
            while first.count("<li ") < 50:  # the commands may still be landing: wait for the full list
                first, first_bytes = await stream.next_event()
            sizes = []
            for i in range(60):
                todo_id = 1 + (i * 7) % 50
                assert (await client.post("/todos/toggle", json={"id": todo_id})).status_code == 204
                data, size = await stream.next_event()
                assert f'data-id="{todo_id}"' in data
                assert data.count("<li ") == 50
                sizes.append(size)
        finally:
            stream.close()
    median = statistics.median(sizes)
    print(f"\n50 todos, {len(first.encode())} bytes per render: first event {first_bytes} B on the wire, "
          f"then median {median} B/event (min {min(sizes)}, max {max(sizes)}), chunk framing included")
    assert median <= 80


@pytest.mark.parametrize("encoding", ["zstd", "gzip", "br"])
@pytest.mark.parametrize("protocol", ["http/1.1", "h2"])
async def test_codecs_end_to_end_decoded_by_httpx(fresh: Server, encoding: str, protocol: str) -> None:
    h2 = protocol == "h2"
    base = fresh.https if h2 else fresh.http
    async with (
        httpx.AsyncClient(http1=not h2, http2=h2, verify=False, timeout=10) as client,
        client.stream("GET", base + "/todos/updates", headers={"accept-encoding": encoding}) as r,
    ):
        assert r.headers["content-encoding"] == encoding
        assert r.headers["vary"] == "accept-encoding"
        parser = SSEParser()
        chunks = r.aiter_bytes()  # httpx's own decoders
        events: list[ParsedEvent] = []
        async with asyncio.timeout(10):
            while not events:
                events += parser.feed(await chunks.__anext__())
            text = f"{encoding} over {protocol}"
            assert (await client.post(base + "/todos/add", json={"text": text})).status_code == 204
            while not any(text in e.data for e in events):
                events += parser.feed(await chunks.__anext__())


@pytest.fixture(scope="module")
def app_server(tmp_path_factory: pytest.TempPathFactory, certs: tuple[Path, Path]) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("apps"), certs, args=["--app", "tests.apps:gw"])
    yield srv
    assert srv.stop() == 0


@pytest.mark.parametrize(("path", "expected"), [("/secret", None), ("/gzip-only", "gzip")])
async def test_route_policy_restricts_or_refuses_compression(app_server: Server, path: str,
                                                            expected: str | None) -> None:
    async with httpx.AsyncClient(timeout=10) as client, \
            client.stream("GET", app_server.http + path, headers={"accept-encoding": "br, zstd, gzip"}) as r:
        assert r.headers.get("content-encoding") == expected
        reader = SSEReader(r.aiter_raw(), r.headers.get("content-encoding"))
        assert (await reader.next_event()).data


async def test_window_grows_when_renders_outgrow_it(app_server: Server) -> None:
    """The /sized view is configured with a 16 KiB window; its renders grow from 5 KB to 60 KB."""
    port, base = app_server.http_port, app_server.http
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        before = await RawStream.open(port, "/sized", "br")  # opened while renders are 5 KB
        try:
            await before.next_event()
            assert (await client.post("/size", json={"bytes": 60_000})).status_code == 204
            big, _ = await before.next_event()
            assert len(big) > 55_000
            after = await RawStream.open(port, "/sized", "br")  # opened once the gateway has seen 60 KB renders
            try:
                await after.next_event()
                old, new = [], []
                for _ in range(8):
                    assert (await client.post("/tick", json={})).status_code == 204
                    old.append((await before.next_event())[1])
                    new.append((await after.next_event())[1])
            finally:
                after.close()
        finally:
            before.close()
    old_median, new_median = statistics.median(old), statistics.median(new)
    print(f"\n60 KB renders: window sized for 5 KB renders {old_median} B/event; grown window {new_median} B/event")
    assert new_median * 20 < old_median
    assert await metric(base, "gateway_compression_window_grown_total", route="/sized", encoding="br") >= 1
    assert "renders of /sized reach" in app_server.output()


@pytest.mark.parametrize("cohorts", [False, True], ids=["own-encoders", "cohorts"])
async def test_memory_budget_holds_under_1000_brotli_streams(tmp_path: Path, certs: tuple[Path, Path],
                                                             cohorts: bool) -> None:
    """Without cohorts each stream has its own compressor and the budget downgrades the later ones; with cohorts
    (the default) the 1,000 streams, all opened on the same version, share one and nobody is downgraded."""
    budget = 64 * 1024 * 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
    env = {"GATEWAY_COMPRESSION_MEMORY_BUDGET": str(budget), "GATEWAY_SSE_HEARTBEAT": "55",
           "GATEWAY_LIMITS_MAX_STREAMS_PER_CLIENT": "0",  # every test stream comes from 127.0.0.1
           "GATEWAY_COMPRESSION_COHORTS": str(cohorts).lower()}
    srv = start_server(tmp_path, certs, env=env)
    streams: list[RawStream] = []
    try:
        rss_before = rss(srv.proc.pid)
        for _ in range(1000):
            stream = await RawStream.open(srv.http_port, "/todos/updates", "br, gzip")
            await stream.next_event()  # every one decodable, whatever it was given
            streams.append(stream)
        rss_after = rss(srv.proc.pid)
        accounted = await metric(srv.http, "gateway_compression_memory_bytes")
        encodings = [s.headers.get("content-encoding", "identity") for s in streams]
        counts = {e: encodings.count(e) for e in sorted(set(encodings))}
        downgrades = await metric(srv.http, "gateway_compression_downgrades_total", route="/todos/updates")
        print(f"\n1000 streams, budget {budget >> 20} MiB: accounted {accounted / 2**20:.1f} MiB, "
              f"RSS +{(rss_after - rss_before) / 2**20:.1f} MiB, encodings {counts}, downgrades {downgrades:.0f}")
        assert accounted <= budget
        assert encodings[0] == "br"  # the first connections got the configured encoder
        if cohorts:
            assert counts == {"br": 1000}
            assert downgrades == 0
            assert accounted < budget / 50  # one cohort's encoder, not a thousand
            assert await metric(srv.http, "gateway_compression_cohorts") == 1
            assert await metric(srv.http, "gateway_compression_cohort_streams") == 1000
        else:
            assert downgrades > 0
            assert counts.get("br", 0) < 1000  # the later ones were served by the downgrade path
        # The estimate is conservative: real growth stays within the budget plus per-socket costs.
        assert rss_after - rss_before < budget + 1000 * 64 * 1024
        # A change reaches every one of them, each decoding its own encoding.
        async with httpx.AsyncClient(timeout=10) as client:
            assert (await client.post(srv.http + "/todos/add", json={"text": "to all"})).status_code == 204
        for stream in streams:
            data, _ = await stream.next_event(timeout=20)
            assert "to all" in data
    finally:
        for stream in streams:
            stream.close()
        assert srv.stop() == 0


@pytest.mark.parametrize("preferred", ["zstd", "gzip"])
async def test_chromium_decodes_the_negotiated_codec(tmp_path: Path, certs: tuple[Path, Path],
                                                     preferred: str) -> None:
    """Chromium offers "gzip, deflate, br, zstd" over HTTPS; the server's preference order decides."""
    from tests.support.chromium import NetworkLog, chromium_or_skip, launch

    chromium_or_skip()
    order = f"{preferred},br,identity" if preferred != "gzip" else "gzip,identity"
    srv = start_server(tmp_path, certs, env={"GATEWAY_COMPRESSION_ENCODINGS": order})
    try:
        async with launch() as browser:
            context = await browser.new_context(ignore_https_errors=True)
            page = await context.new_page()
            log = await NetworkLog.attach(page)
            await page.goto(srv.https + "/", wait_until="domcontentloaded")
            await page.wait_for_selector('#status[data-state="connected"]', timeout=10_000)
            stream = await log.wait_for_response("/todos/updates", timeout=10)
            assert stream.protocol == "h2"
            assert stream.headers["content-encoding"] == preferred
            for text in ("first via " + preferred, "second via " + preferred):
                await page.fill("#new-todo", text)
                await page.press("#new-todo", "Enter")
                await page.locator("#todos li", has_text=text).wait_for(timeout=10_000)
            await context.close()
    finally:
        assert srv.stop() == 0
