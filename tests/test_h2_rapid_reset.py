"""HTTP/2 Rapid Reset (CVE-2023-44487) against a live gateway: others keep being served, memory stays bounded, and
a connection that resets streams without pause is told to calm down (``gateway.web.hypercorn.h2_rapid_reset``).

The attacker runs in a process of its own (``tests/support/h2attack.py``) so that the measuring event loop here
only measures. Without the correction, ``/healthz`` went unanswered for minutes and the unpaced connection's task
died with ``priority.TooManyStreamsError`` and no GOAWAY.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.h2attack import goaway, opened_and_reset
from tests.support.metrics import metric
from tests.support.proc import rss
from tests.support.server import HUB_TOKEN, ROOT, Server, start_server
from tests.support.sse_client import SSEReader

pytestmark = [pytest.mark.live, pytest.mark.asyncio]

AUTH = {"authorization": f"Bearer {HUB_TOKEN}"}
ATTACK_SECONDS = 10.0
ATTACKERS = 4
STREAMS_PER_CONNECTION = 900
HEALTH_BOUND = 1.0  # seconds /healthz may take during and right after the attack
RSS_BOUND = 64 * 2**20
# Delivery p99 under attack, against the baseline p99 measured just before. The attacker (a separate process on its
# own loopback address, 127.0.0.2, replaying a 900-stream request on every connection and reconnecting at once) is
# niced: it shares this machine's 2 cores with the gateway and the measuring client, and a contended core would be
# charged to the gateway. After limits.abuse_strikes GOAWAYs its address is in the penalty box: by default the
# kernel then drops its SYNs (limits.abuse_kernel_filter), and it costs the gateway nothing more; with the filter off
# each of its ~7,000 reconnects a second is accepted and closed. Measured (docs/security.md, "HTTP/2 Rapid Reset and
# connection churn"), 2026-12-07 on a quiet machine, p99 during / before: with the filter 0.74-1.39x (median 0.98,
# ten runs); without it 0.90-1.52x (median 1.17, fifteen runs); and with an "attacker" that only sleeps, the
# measurement's own noise, 0.78-1.52x (median 1.08, eight runs). The p99 of a few hundred samples is one of the few
# largest, and a stall of the shared machine moves it by a millisecond or two, so the bound asserted is 1.2x the
# baseline or the baseline plus a slack, whichever is larger: 2 ms with the filter and 10 ms without it.
P99_FACTOR = 1.2
PERIOD = 0.01  # seconds between published events (each waits for the previous publish's answer)


@pytest.fixture
def gateway(tmp_path: Path, certs: tuple[Path, Path]) -> Iterator[Server]:
    server = start_server(tmp_path, certs)
    yield server
    server.stop()


@pytest.fixture(params=[True, False], ids=["kernel_filter", "accept_refusal"])
def attacked(request: pytest.FixtureRequest, tmp_path: Path, certs: tuple[Path, Path]) -> Iterator[Server]:
    """A gateway whose penalty box drops a boxed address's SYNs in the kernel (the default), or refuses its
    connections at accept (``limits.abuse_kernel_filter`` off)."""
    env = {} if request.param else {"GATEWAY_LIMITS_ABUSE_KERNEL_FILTER": "false"}
    server = start_server(tmp_path, certs, env=env)
    yield server
    server.stop()


def p99(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=100)[98] if len(samples) >= 2 else max(samples, default=0.0)


async def healthz_latencies(base: str, stop: asyncio.Event, latencies: list[float]) -> None:
    """Ask /healthz every 100 ms until ``stop``; each latency (a timeout counts as its bound, and fails)."""
    async with httpx.AsyncClient(timeout=HEALTH_BOUND) as client:
        while not stop.is_set():
            started = time.monotonic()
            try:
                response = await client.get(base + "/healthz")
                latencies.append(time.monotonic() - started if response.status_code == 200 else HEALTH_BOUND * 2)
            except httpx.TransportError:
                latencies.append(HEALTH_BOUND * 2)
            await asyncio.sleep(0.1)  # the polling period, not synchronisation


async def publish_periodically(base: str, stop: asyncio.Event) -> None:
    async with httpx.AsyncClient(timeout=5.0) as client:
        while not stop.is_set():
            body = {"topic": "rr", "data": repr(time.monotonic())}
            response = await client.post(base + "/hub/publish", json=body, headers=AUTH)
            assert response.status_code == 204, response.text
            await asyncio.sleep(PERIOD)  # the publishing period


async def collect(reader: SSEReader, received: list[tuple[float, float]]) -> None:
    """(receive time, delivery latency) of every event, the latency being the receive time minus the publish time
    the event carries; runs until cancelled (a read cut short would end the response's iterator)."""
    while True:
        event = await reader.next_event(timeout=ATTACK_SECONDS + 60)
        now = time.monotonic()
        received.append((now, now - float(event.data)))


def between(received: list[tuple[float, float]], start: float, end: float) -> list[float]:
    return [latency for at, latency in received if start <= at < end]


def run_attack(port: int) -> subprocess.Popen[str]:
    cmd = ["nice", "-n", "19", sys.executable, "-m", "tests.support.h2attack", str(port), str(ATTACK_SECONDS),
           str(ATTACKERS), str(STREAMS_PER_CONNECTION)]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)


async def test_rapid_reset_leaves_others_served_and_memory_bounded(attacked: Server) -> None:
    gateway = attacked
    kernel_filter = "GATEWAY_LIMITS_ABUSE_KERNEL_FILTER" not in gateway.env
    base = gateway.http
    stop_health, stop_publish = asyncio.Event(), asyncio.Event()
    health: list[float] = []
    async with httpx.AsyncClient(timeout=httpx.Timeout(5.0, read=None)) as client, \
            client.stream("GET", base + "/hub/subscribe", params={"topic": "rr"}, headers=AUTH) as response:
        assert response.status_code == 200
        reader = SSEReader(response.aiter_raw(), response.headers.get("content-encoding"))
        publisher = asyncio.create_task(publish_periodically(base, stop_publish))
        poller = asyncio.create_task(healthz_latencies(base, stop_health, health))
        received: list[tuple[float, float]] = []
        collector = asyncio.create_task(collect(reader, received))
        await asyncio.sleep(5.0)  # 1 s warm-up, then 4 s of baseline
        attack_start = time.monotonic()
        rss_before = rss(gateway.proc.pid)
        health_before = len(health)

        attacker = run_attack(gateway.http_port)
        out, _ = await asyncio.to_thread(attacker.communicate, timeout=ATTACK_SECONDS + 30)
        attack_end = time.monotonic()
        tally = json.loads(out)
        await asyncio.sleep(2.0)  # deliveries and /healthz right after the attack
        rss_after = rss(gateway.proc.pid)
        stop_health.set()
        stop_publish.set()
        await asyncio.wait_for(asyncio.gather(poller, publisher), 10)
        collector.cancel()
        baseline = between(received, attack_start - 4.0, attack_start)
        under_attack = between(received, attack_start, attack_end)
        after = between(received, attack_end, attack_end + 2.0)

    during = health[health_before:]
    refused_at_accept = await metric(base, "gateway_connections_refused_total", reason="abuse")
    report = {
        "attack": tally, "refused_at_accept": refused_at_accept,
        "rss_before_mb": rss_before / 2**20, "rss_after_mb": rss_after / 2**20,
        "healthz_max_before_s": max(health[:health_before]), "healthz_max_during_after_s": max(during),
        "p99_baseline_ms": p99(baseline) * 1000, "p99_attack_ms": p99(under_attack) * 1000,
        "p99_after_ms": p99(after) * 1000, "events": [len(baseline), len(under_attack), len(after)],
    }
    print(json.dumps(report))
    attempts = tally["connections"] + tally["refused"]
    assert attempts >= 2 * ATTACKERS, report  # every attacker reconnected
    assert max(during) < HEALTH_BOUND, report
    assert rss_after - rss_before < RSS_BOUND, report
    assert len(under_attack) >= ATTACK_SECONDS / PERIOD / 2, report  # events kept flowing
    slack = 0.002 if kernel_filter else 0.010
    assert p99(under_attack) <= max(P99_FACTOR * p99(baseline), p99(baseline) + slack), report
    goaways = sum(tally["goaways"].values())
    assert goaways > 0, report
    # After limits.abuse_strikes GOAWAYs the attacker's address is in the penalty box: a handful of GOAWAYs, not one
    # per connection.
    assert "127.0.0.2 put in the penalty box" in gateway.output()
    if kernel_filter:
        # Its SYNs go unanswered (each attempt times out in the attacker's connect) and the few connections the
        # kernel had queued before the filter are all the process refuses.
        assert tally["refused"] >= ATTACKERS, report
        assert await metric(base, "gateway_penalty_box_addresses") == 1, report
        assert goaways <= tally["connections"], report
        assert refused_at_accept < 100, report
    else:
        assert tally["streams"] > 10 * STREAMS_PER_CONNECTION, report
        assert goaways < tally["connections"] / 10, report
        assert refused_at_accept > 1000, report
    assert "Traceback" not in gateway.output()


async def test_an_unpaced_connection_gets_goaway_not_a_crashed_task(gateway: Server) -> None:
    _, blob = opened_and_reset(5000)
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", gateway.http_port), 5)
    try:
        writer.write(blob)
        await asyncio.wait_for(writer.drain(), 10)
        code = await goaway(reader, timeout=10)
    finally:
        writer.close()
    assert code == "ENHANCE_YOUR_CALM"
    async with httpx.AsyncClient(timeout=HEALTH_BOUND) as client:
        assert (await client.get(gateway.http + "/healthz")).status_code == 200
    log = gateway.output()
    assert "TooManyStreamsError" not in log, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    assert "GOAWAY ENHANCE_YOUR_CALM" in log
