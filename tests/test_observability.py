"""The measures operators ask first, against a live gateway: delivery latency from the command's acceptance to the
socket (per route and protocol), bus lag, render time, readiness, build info, process and GC series, and no
``_created`` series."""

from __future__ import annotations

from pathlib import Path
from typing import TypedDict

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.metrics import metric, wait_metric
from tests.support.raw_stream import RawStream
from tests.support.redis import drop_namespace, redis_namespace
from tests.support.server import HUB_TOKEN, start_server
from tests.support.sse_client import SSEReader
from tests.support.wait import wait_until
from tests.support.workers import METRICS_ENV, per_worker

pytestmark = [pytest.mark.live, pytest.mark.asyncio]

APP = ["--app", "tests.support.observability_app:gw"]
SLOW_MS = 300


class _Where(TypedDict):
    """The labels of a delivery series (typed, so that ``**`` spreads them only over ``**labels``)."""

    route: str
    protocol: str


async def bucket(base: str, name: str, le: str, **labels: str) -> float:
    return await metric(base, name + "_bucket", le=le, **labels)


async def test_delivery_is_timed_from_the_command_to_the_socket_per_protocol(tmp_path: Path,
                                                                            certs: tuple[Path, Path]) -> None:
    srv = start_server(tmp_path, certs, args=APP)
    try:
        h1 = await RawStream.open(srv.http_port, "/obs")
        await h1.next_parsed()  # the state at connect: not a delivery of a change
        async with httpx.AsyncClient(http1=False, http2=True, verify=False, timeout=10) as h2client, \
                h2client.stream("GET", srv.https + "/obs") as response:
            assert response.http_version == "HTTP/2"
            h2 = SSEReader(response.aiter_raw(), response.headers.get("content-encoding"))
            await h2.next_event()
            async with httpx.AsyncClient(base_url=srv.http, timeout=10) as client:
                for _ in range(3):
                    answer = await client.post("/slow", json={"ms": SLOW_MS})
                    assert answer.status_code == 204
                    assert (await h1.next_parsed(10)).data.startswith("n=")
                    assert (await h2.next_event(10)).data.startswith("n=")
                hub = await RawStream.open(srv.http_port, "/hub/subscribe?topic=ticks")
                for i in range(5):
                    answer = await client.post("/hub/publish", json={"topic": "ticks", "data": str(i)},
                                               headers={"Authorization": f"Bearer {HUB_TOKEN}"})
                    assert answer.status_code == 204
                    assert (await hub.next_parsed(10)).data == str(i)
        base = srv.http
        for protocol in ("h1", "h2"):
            labels: _Where = {"route": "/obs", "protocol": protocol}
            await wait_metric(base, "gateway_delivery_seconds_count", 3, **labels)
            # Timed from the acceptance of the command, which took SLOW_MS before it published: never below it.
            assert await bucket(base, "gateway_delivery_seconds", "0.25", **labels) == 0
            assert await bucket(base, "gateway_delivery_seconds", "5.0", **labels) == 3
        hub_labels: _Where = {"route": "/hub/subscribe", "protocol": "h1"}
        await wait_metric(base, "gateway_delivery_seconds_count", 5, **hub_labels)
        assert await bucket(base, "gateway_delivery_seconds", "1.0", **hub_labels) == 5  # published: delivered
        assert await metric(base, "gateway_bus_lag_seconds_count", kind="view") >= 3
        assert await metric(base, "gateway_bus_lag_seconds_count", kind="hub") >= 5
        assert await metric(base, "gateway_view_render_seconds_count", route="/obs") >= 4
        await wait_metric(base, "gateway_ready", 1, timeout=10)
        async with httpx.AsyncClient(timeout=5) as client:
            text = (await client.get(base + "/metrics")).text
        families = {f.name: f for f in text_string_to_metric_families(text)}
        build = families["gateway_build_info"].samples[0]
        assert build.value == 1
        assert all(build.labels[name] for name in ("version", "python", "hypercorn"))
        assert families["process_resident_memory_bytes"].samples[0].value > 10 * 2**20
        assert families["process_open_fds"].samples[0].value > 0
        assert "gateway_gc_pause_seconds" in families
        assert "_created" not in text  # no series doubling every counter
        h1.close()
        hub.close()
    finally:
        assert srv.stop() == 0


async def test_workers_report_process_and_latency_series_each_summed(tmp_path: Path,
                                                                   certs: tuple[Path, Path]) -> None:
    """Under --workers each worker samples its own process numbers (a pid label per worker) and records its own
    deliveries; a scrape of either worker returns their sum, equal to what the clients received. Readiness is
    the lowest of the workers'."""
    url = redis_namespace()
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    srv = start_server(tmp_path, certs, args=[*APP, "--workers", "2"],
                       env={"GATEWAY_BUS_URL": url, METRICS_ENV: str(metrics)})
    streams: list[RawStream] = []
    try:
        async def pids() -> set[str]:
            async with httpx.AsyncClient(timeout=5) as client:
                text = (await client.get(srv.http + "/metrics")).text
            return {s.labels["pid"] for f in text_string_to_metric_families(text)
                    if f.name == "process_resident_memory_bytes" for s in f.samples if s.value > 0}

        async def both() -> bool:
            return len(await pids()) == 2

        await wait_until(both, 15, what="a process_resident_memory_bytes series from each of two workers")
        await wait_metric(srv.http, "gateway_ready", 1, timeout=10)

        def streams_by_worker() -> dict[int, float]:
            return {pid: n for pid, n in per_worker(metrics, "gateway_streams_active", kind="view").items() if n}

        # Fresh connections until both workers hold view streams (the kernel spreads them; bounded).
        for _ in range(40):
            stream = await RawStream.open(srv.http_port, "/obs")
            await stream.next_parsed()
            streams.append(stream)
            if len(streams) >= 4 and len(streams_by_worker()) == 2:
                break
        assert len(streams_by_worker()) == 2, "every stream landed on one worker"
        async with httpx.AsyncClient(base_url=srv.http, timeout=10) as client:
            for _ in range(3):
                assert (await client.post("/slow", json={"ms": 1})).status_code == 204
                for stream in streams:  # the app's counter is per process: only that a change arrives matters
                    assert (await stream.next_parsed(10)).data.startswith("n=")
        expected = 3 * len(streams)

        async def summed() -> bool:  # each worker moves its batched counts into the files within 2 s
            return await metric(srv.http, "gateway_delivery_seconds_count", route="/obs") == expected

        await wait_until(summed, 10, what=f"gateway_delivery_seconds_count == {expected} on a scrape")
        # A worker's file holds each bucket's own count (the scrape accumulates them): their sum is its count.
        own = per_worker(metrics, "gateway_delivery_seconds_bucket", route="/obs")
        assert sum(own.values()) == expected
        assert len([v for v in own.values() if v]) == 2, own  # both workers delivered and recorded their share
    finally:
        for stream in streams:
            stream.close()
        assert srv.stop() == 0
        await drop_namespace(url)
