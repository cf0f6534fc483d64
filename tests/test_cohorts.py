"""Compression cohorts against a live gateway: streams of a shared view opened on the same version share one
encoder per codec and write byte-identical chunks, decoded by the real decoders; a stream opened later starts a
cohort of its own; a stalled member is cut without holding the others back; a drain ends every member's compressed
stream properly."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.metrics import metric
from tests.support.raw_stream import RawStream
from tests.support.server import HUB_TOKEN, Server, start_server
from tests.support.wait import wait_until

pytestmark = [pytest.mark.live, pytest.mark.asyncio]

AUTH = {"authorization": f"Bearer {HUB_TOKEN}"}
ENV = {"GATEWAY_LIMITS_MAX_STREAMS_PER_CLIENT": "0", "GATEWAY_SSE_SLOW_CLIENT_GRACE": "1"}


@pytest.fixture
def gateway(tmp_path: Path, certs: tuple[Path, Path]) -> Iterator[Server]:
    srv = start_server(tmp_path, certs, env=ENV, args=["--app", "tests.apps:gw"])
    yield srv
    srv.stop()


def ticks(text: bytes) -> list[int]:
    return [int(n) for n in re.findall(rb"<p>tick (\d+)</p>", text)]


async def _released(base: str) -> bool:
    return await cohorts(base) == (0, 0)


async def cohorts(base: str) -> tuple[float, float]:
    return (await metric(base, "gateway_compression_cohorts"), await metric(base, "gateway_compression_cohort_streams"))


async def test_streams_opened_on_one_version_share_one_encoder_per_codec(gateway: Server) -> None:
    port, base = gateway.http_port, gateway.http
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        assert (await client.post("/noise/set", json={"bytes": 2000})).status_code == 204
        first = await RawStream.open(port, "/noise", "br", keep_wire=True)
        await first.next_event()
        members = {"br": [first], "zstd": [], "gzip": []}
        for _ in range(11):
            members["br"].append(await RawStream.open(port, "/noise", "br", keep_wire=True))
        for name in ("zstd", "gzip"):
            for _ in range(6):
                members[name].append(await RawStream.open(port, "/noise", name, keep_wire=True))
        own = [await RawStream.open(port, "/noise", "identity", keep_wire=True) for _ in range(2)]
        everyone = members["br"] + members["zstd"] + members["gzip"] + own
        try:
            for stream in everyone[1:]:
                assert ticks((await stream.next_parsed()).data.encode()) == [1]
            assert await cohorts(base) == (3, 24)  # one per codec; identity streams need none
            for n in range(2, 12):
                assert (await client.post("/noise/set", json={"bytes": 2000})).status_code == 204
                for stream in everyone:
                    event = await stream.next_parsed()
                    assert ticks(event.data.encode()) == [n]
            # Each member's bytes on the wire are the cohort's: the same for all members of a codec.
            for name, streams in members.items():
                assert {bytes(s.wire or b"") for s in streams} == {bytes(streams[0].wire or b"")}, name
                assert all(s.headers["content-encoding"] == name for s in streams)
            # A stream opened now, after the cohorts took a second render, starts a cohort of its own.
            late = await RawStream.open(port, "/noise", "br", keep_wire=True)
            assert ticks((await late.next_parsed()).data.encode()) == [11]
            everyone.append(late)
            assert await cohorts(base) == (4, 25)
            assert (await client.post("/noise/set", json={"bytes": 2000})).status_code == 204
            for stream in everyone:
                assert ticks((await stream.next_parsed()).data.encode()) == [12]
        finally:
            for stream in everyone:
                stream.close()
        await wait_until(lambda: _released(base), 10, what="cohorts released")  # as the closes are noticed


async def test_a_stalled_member_is_cut_and_the_others_get_every_render(gateway: Server) -> None:
    """A member that stops reading falls behind its cohort (it cannot skip a render: the shared encoder would no
    longer match it) and is cut after the grace; the other members get every render, in order. Renders of 400 KB
    that do not compress fill the kernel's buffers (tests.support.stalled) within a dozen renders."""
    port, base = gateway.http_port, gateway.http
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        assert (await client.post("/noise/set", json={"bytes": 400_000})).status_code == 204
        healthy = [await RawStream.open(port, "/noise", "br") for _ in range(3)]
        stalled = await RawStream.open(port, "/noise", "br", rcvbuf=4096, mss=1200, keep_wire=True)
        try:
            for stream in healthy:
                await stream.next_parsed()
            assert (await cohorts(base))[1] == 4
            for n in range(2, 60):
                assert (await client.post("/noise/set", json={"bytes": 400_000})).status_code == 204
                for stream in healthy:
                    assert ticks((await stream.next_parsed()).data.encode()) == [n]
                if await metric(base, "gateway_slow_consumers_cut_total", kind="view", policy="disconnect") >= 1:
                    break
            assert await metric(base, "gateway_slow_consumers_cut_total", kind="view", policy="disconnect") == 1
            # What the stalled client did receive decodes as an exact prefix of the renders, in order (the cut
            # abandoned a write half-way: the connection ends without the last chunk, and without a goodbye).
            with contextlib.suppress(asyncio.IncompleteReadError):
                await stalled.until_end(timeout=30)
            got = ticks(stalled.decoded)
            assert got == list(range(1, len(got) + 1))
        finally:
            for stream in [*healthy, stalled]:
                stream.close()


async def test_a_drain_ends_every_members_stream_properly(tmp_path: Path, certs: tuple[Path, Path]) -> None:
    """On SIGTERM each member gets its own goodbye (a raw block after the shared chunks) and the end of its
    compressed stream: the decoders report a finished stream, not a truncated one (gzip's: with the CRC-32 and
    length of everything that member received, which zlib checks)."""
    srv = start_server(tmp_path, certs, env=ENV, args=["--app", "tests.apps:gw"])
    try:
        streams = [await RawStream.open(srv.http_port, "/noise", name) for name in ("br", "zstd", "gzip") * 3]
        for stream in streams:
            await stream.next_parsed()
        assert await cohorts(srv.http) == (3, 9)
        srv.proc.send_signal(signal.SIGTERM)
        for stream in streams:
            await stream.until_end(timeout=20)
            assert stream.decoder is not None
            assert stream.decoder.finished, stream.headers["content-encoding"]
            assert stream.decoded.endswith(b": draining\n\n")
            assert re.search(rb"retry: \d+\n", stream.decoded[-40:])
    finally:
        srv.stop()


async def _publish(client: httpx.AsyncClient, topic: str, data: str) -> None:
    response = await client.post("/hub/publish", json={"topic": topic, "data": data}, headers=AUTH)
    assert response.status_code == 204, response.text


async def test_hub_subscribers_share_an_encoder_from_the_same_point(tmp_path: Path, certs: tuple[Path, Path]) -> None:
    """Subscriptions to the same topics that replay nothing share a cohort until its first event; one that resumes
    with Last-Event-ID, or whose topic drops the oldest events when slow, keeps an encoder of its own; a two-topic
    cohort gets both topics' events in the bus's order."""
    rules = [{"topic": "lossy.*", "overflow": "drop-oldest", "max_events": 20}]
    srv = start_server(tmp_path, certs, env={**ENV, "GATEWAY_HUB_SLOW_CLIENTS": json.dumps(rules)})
    port = srv.http_port
    streams: list[RawStream] = []
    try:
        async with httpx.AsyncClient(base_url=srv.http, timeout=10) as client:
            await _publish(client, "news", "before")
            ticker = [await RawStream.open(port, "/hub/subscribe?topic=news", name, keep_wire=True)
                      for name in ("br", "zstd") * 6]
            pair = [await RawStream.open(port, "/hub/subscribe?topic=news&topic=sport", "br", keep_wire=True)
                    for _ in range(3)]
            resumed = await RawStream.open(port, "/hub/subscribe?topic=news", "br", headers={"Last-Event-ID": "0"})
            lossy = await RawStream.open(port, "/hub/subscribe?topic=lossy.a", "br")
            streams = [*ticker, *pair, resumed, lossy]
            assert await cohorts(srv.http) == (3, 15)  # news br, news zstd, news+sport br
            sent = []
            for n in range(20):
                topic = "sport" if n % 3 == 0 else "news"
                await _publish(client, topic, f"{topic} {n}")
                sent.append((topic, f"{topic} {n}"))
            news = [data for topic, data in sent if topic == "news"]
            for stream in ticker:
                assert [(await stream.next_parsed()).data for _ in news] == news
            for stream in pair:
                assert [(await stream.next_parsed()).data for _ in sent] == [data for _, data in sent]
            assert [(await resumed.next_parsed()).data for _ in range(len(news) + 1)] == ["before", *news]
            for group in (ticker[0::2], ticker[1::2], pair):  # each cohort's members: the same bytes
                assert {bytes(s.wire or b"") for s in group} == {bytes(group[0].wire or b"")}
            # A subscription made now, after the cohorts' first event, opens a new one.
            late = await RawStream.open(port, "/hub/subscribe?topic=news", "br")
            streams.append(late)
            assert await cohorts(srv.http) == (4, 16)
            await _publish(client, "news", "last")
            for stream in [*ticker, late]:
                assert (await stream.next_parsed()).data == "last"
    finally:
        for stream in streams:
            stream.close()
        srv.stop()
