"""``deploy/nginx/gateway.conf``, run as shipped by the real nginx in front of two gateway processes.

Only the addresses and certificate paths are rewritten for the test; every proxy directive is the shipped one.
The two gateways share one Redis bus, so an event is published once, to one of them, and reaches the streams held
by both.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import ssl
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.support.metrics import metric
from tests.support.nginx import WRAPPER, running_nginx
from tests.support.redis import drop_namespace, redis_namespace
from tests.support.server import HUB_TOKEN, ROOT, Server, free_port, require_binary, start_server
from tests.support.sse_client import SSEReader

pytestmark = pytest.mark.live

SHIPPED = ROOT / "deploy" / "nginx" / "gateway.conf"


def render(prefix: Path, port: int, upstreams: list[int], cert: Path, key: Path) -> Path:
    """The shipped file with this test's addresses, inside a wrapper that keeps nginx in ``prefix``."""
    conf = SHIPPED.read_text()
    conf, listens = re.subn(r"listen 443 ssl http2;", f"listen 127.0.0.1:{port} ssl http2;", conf)
    servers = iter(upstreams)
    conf, replaced = re.subn(r"server 127\.0\.0\.1:800\d", lambda _: f"server 127.0.0.1:{next(servers)}", conf)
    conf = conf.replace("/etc/gateway/cert.pem", str(cert)).replace("/etc/gateway/key.pem", str(key))
    assert (listens, replaced) == (1, len(upstreams)), "the shipped file's layout changed: update render()"
    (prefix / "gateway.conf").write_text(conf)
    user = "user root;" if os.geteuid() == 0 else ""
    main = prefix / "nginx.conf"
    main.write_text(WRAPPER.format(prefix=prefix, user=user))
    return main


def test_shipped_config_passes_nginx_t(tmp_path: Path, certs: tuple[Path, Path]) -> None:
    require_binary("nginx")
    main = render(tmp_path, free_port(), [8001, 8002], *certs)
    check = subprocess.run(["nginx", "-t", "-p", str(tmp_path), "-c", str(main)], capture_output=True, text=True,
                           check=False, timeout=30)
    assert check.returncode == 0, check.stderr


async def _publish_once(client: httpx.AsyncClient, backend: Server, data: str) -> None:
    answer = await client.post(f"{backend.http}/hub/publish", json={"topic": "proxied", "data": data},
                               headers={"Authorization": f"Bearer {HUB_TOKEN}"})
    assert answer.status_code == 204


@pytest.mark.asyncio
async def test_streams_through_nginx_are_unbuffered_keep_br_and_spread(tmp_path: Path,
                                                                       certs: tuple[Path, Path]) -> None:
    require_binary("nginx")
    bus = redis_namespace()
    env = {"GATEWAY_LIMITS_TRUSTED_PROXIES": "127.0.0.1/32", "GATEWAY_BUS_URL": bus}
    backends: list[Server] = []
    for i in range(2):
        (tmp_path / f"g{i}").mkdir()
        backends.append(start_server(tmp_path / f"g{i}", certs, env=env))
    port = free_port()
    prefix = tmp_path / "nginx"
    prefix.mkdir()
    main = render(prefix, port, [b.http_port for b in backends], *certs)
    tls = ssl.create_default_context(cafile=str(certs[0]))
    try:
        with running_nginx(prefix, main, port):
            async with httpx.AsyncClient(http2=True, verify=tls, timeout=10) as client, \
                    httpx.AsyncClient(timeout=5) as publisher, contextlib.AsyncExitStack() as stack:
                readers = []
                for _ in range(6):
                    response = await stack.enter_async_context(client.stream(
                        "GET", f"https://127.0.0.1:{port}/hub/subscribe?topic=proxied",
                        headers={"Accept-Encoding": "br", "Accept": "text/event-stream"}))
                    assert response.status_code == 200
                    assert response.http_version == "HTTP/2"
                    assert response.headers["content-encoding"] == "br", "nginx re-encoded or dropped br"
                    assert "alt-svc" not in response.headers
                    readers.append(SSEReader(response.aiter_raw(), "br"))
                held = [await metric(b.http, "gateway_streams_active", kind="hub") for b in backends]
                assert sum(held) == 6
                assert min(held) >= 2, f"least_conn did not spread the streams: {held}"
                for backend in backends:  # the publisher's connections exist already: their set-up is not timed
                    answer = await publisher.get(f"{backend.http}/healthz")
                    assert answer.status_code == 200
                for i in range(5):
                    sent = time.perf_counter()  # the publisher's client exists already: its set-up is not timed
                    await _publish_once(publisher, backends[i % 2], f"event {i}")

                    async def latency(reader: SSEReader, expected: str = f"event {i}", since: float = sent) -> float:
                        event = await reader.next_event(timeout=5)
                        assert event.data == expected
                        return time.perf_counter() - since

                    lags = await asyncio.gather(*(latency(r) for r in readers))
                    # nginx buffering holds a ~20-byte event until its buffer fills or the stream ends: seconds or
                    # never. Twice in full-suite CI runs (never alone) one event reached all six readers ~230 ms
                    # late at once, a delay before the bus and not nginx's (cause not established): 1 s tells the
                    # two apart.
                    assert max(lags) < 1.0, f"event {i} took {max(lags) * 1000:.0f} ms through nginx: buffered?"
    finally:
        for srv in backends:
            assert srv.stop() == 0
        await drop_namespace(bus)
