"""Connection churn against a live gateway: a connection its client closed gives its descriptor back at once
(``gateway.web.hypercorn.tcp_eof_close``), and running out of descriptors is logged at a bounded rate while the
accept loop backs off (``gateway.web.hypercorn.accept_backoff``).

Without ``tcp_eof_close`` every closed connection kept its socket for the 75 s keep-alive timeout; without
``accept_backoff`` each readiness of the listener logged up to 4,096 tracebacks.
"""

from __future__ import annotations

import os
import resource
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.server import Server, start_server
from tests.support.wait import poll_until

pytestmark = pytest.mark.live

PAIRS = 5000


@pytest.fixture
def gateway(tmp_path: Path, certs: tuple[Path, Path]) -> Iterator[Server]:
    server = start_server(tmp_path, certs)
    yield server
    server.stop()


def descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def connect_close(port: int, count: int) -> None:
    for _ in range(count):
        with socket.create_connection(("127.0.0.1", port), timeout=2.0):
            pass


def healthz(base: str) -> bool:
    try:
        return httpx.get(base + "/healthz", timeout=1.0).status_code == 200
    except httpx.TransportError:
        return False


def test_closed_connections_release_their_descriptors(gateway: Server) -> None:
    pid = gateway.proc.pid
    base = descriptors(pid)
    log_lines = len(gateway.output().splitlines())
    started = time.monotonic()
    connect_close(gateway.http_port, PAIRS)
    took = time.monotonic() - started
    peak = descriptors(pid)
    poll_until(lambda: descriptors(pid) <= base, 2.0, what=f"descriptors back to {base} (at {descriptors(pid)})")
    grown = len(gateway.output().splitlines()) - log_lines
    print(f"{PAIRS} connect/close pairs in {took:.1f} s ({PAIRS / took:.0f}/s): descriptors {base} -> {peak} at the "
          f"end -> {descriptors(pid)}; log +{grown} lines")
    assert grown <= 5, gateway.output()[-3000:]
    assert healthz(gateway.http)


def test_descriptor_exhaustion_is_logged_at_a_bounded_rate(gateway: Server) -> None:
    """Held connections take every descriptor the gateway may open; more keep arriving for 3 s. The log grows by
    about a line a second, the loop keeps serving the connections it has, and once they are released a new one is
    accepted again."""
    pid = gateway.proc.pid
    limit = descriptors(pid) + 60
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (limit, limit))
    log_lines = len(gateway.output().splitlines())
    held: list[socket.socket] = []
    try:
        for _ in range(100):  # more than the gateway can accept: the rest wait in the backlog
            held.append(socket.create_connection(("127.0.0.1", gateway.http_port), timeout=2.0))
        poll_until(lambda: descriptors(pid) >= limit - 1, 5.0, what="the gateway's descriptors exhausted")
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:  # connections keep arriving while none can be accepted
            held.append(socket.create_connection(("127.0.0.1", gateway.http_port), timeout=2.0))
            time.sleep(0.01)  # pacing of the arrivals, not synchronisation
        grown = len(gateway.output().splitlines()) - log_lines
    finally:
        for sock in held:
            sock.close()
    print(f"{len(held)} connections held against a limit of {limit} descriptors: log +{grown} lines in 3 s")
    assert grown <= 10, gateway.output()[-3000:]
    assert "cannot accept connections" in gateway.output()
    poll_until(lambda: healthz(gateway.http), 5.0, what="/healthz answering once descriptors are free")
