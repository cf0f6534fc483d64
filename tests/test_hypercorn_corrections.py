"""The Hypercorn corrections (``gateway.web.hypercorn``): refused on an unverified server version unless accepted,
installed by the gateway's own startup under any server, once.

A different installed version is faked for a whole gateway process with a ``sitecustomize`` module on its
``PYTHONPATH`` that makes ``importlib.metadata.version("hypercorn")`` answer 0.18.1: the product has no test hook.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from gateway.web import hypercorn as corrections
from gateway.web.hypercorn import VERIFIED, Correction, UnverifiedServer
from tests.support.metrics import metric
from tests.support.raw_stream import RawStream
from tests.support.server import HUB_TOKEN, ROOT, Server, free_port, start_server
from tests.support.wait import poll_until

FAKE = "0.18.1"
SETTING_ENV = "GATEWAY_SERVER_ACCEPT_UNVERIFIED_SERVER"
NAMES = ["quic_shutdown", "h3_disconnects", "h2_late_data", "h2_backpressure", "send_after_disconnect",
         "tcp_close_abort", "connection_limits", "header_deadline",
         "h3_backpressure", "h2_rapid_reset", "tcp_eof_close", "accept_backoff", "quic_retry",
         "h3_receive_queue", "h3_send_coalescing", "app_queue",
         "h11_can_read", "drain_waiters", "asgi_wrapper", "h11_switch_proposals", "writer_future",
         "h11_post_lane"]


@pytest.fixture
def fake_hypercorn(tmp_path: Path) -> dict[str, str]:
    """The environment of a process in which the installed Hypercorn claims to be 0.18.1."""
    site = tmp_path / "fake-version"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import importlib.metadata as metadata\n"
        "real = metadata.version\n"
        f"metadata.version = lambda name: {FAKE!r} if name.lower() == 'hypercorn' else real(name)\n")
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path}


def _gateway(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True, timeout=60,
                          cwd=ROOT, env={**os.environ, **env})


@pytest.mark.live
@pytest.mark.parametrize("command", ["serve", "check"])
def test_an_unverified_hypercorn_is_refused_with_one_line(fake_hypercorn: dict[str, str], command: str) -> None:
    port = free_port()
    result = _gateway(command, "--bind", f"127.0.0.1:{port}", env=fake_hypercorn)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    (line,) = lines
    for expected in ("hypercorn", FAKE, VERIFIED["hypercorn"], "server.accept_unverified_server", SETTING_ENV):
        assert expected in line, line
    assert "listening" not in result.stdout + result.stderr


@pytest.mark.live
def test_an_accepted_unverified_hypercorn_starts_without_the_corrections(
        tmp_path: Path, certs: tuple[Path, Path], fake_hypercorn: dict[str, str]) -> None:
    # No QUIC listener: without the quic_shutdown correction it would hold up the stop for the graceful timeout.
    srv = start_server(tmp_path, certs, env={**fake_hypercorn, SETTING_ENV: "true"}, args=["--quic-bind", ""])
    try:
        assert httpx.get(f"{srv.http}/healthz", timeout=5).status_code == 200
    finally:
        assert srv.stop() == 0
    warnings = [line for line in srv.output().splitlines() if " WARNING " in line and "hypercorn" in line]
    assert len(warnings) == 1, srv.output()  # once, though both serve() and the lifespan install
    assert FAKE in warnings[0]
    assert VERIFIED["hypercorn"] in warnings[0]
    assert "direct writes off" in warnings[0]


@pytest.fixture
def plain_hypercorn(tmp_path: Path) -> Iterator[Server]:
    """``tests.support.corrections_app:gw`` served by ``python -m hypercorn``: no ``gateway serve`` involved."""
    port = free_port()
    log = tmp_path / "hypercorn.log"
    env = {**os.environ, "GATEWAY_HUB_PUBLISH_TOKEN": HUB_TOKEN, "GATEWAY_HUB_PUBLIC_TOPICS": "*",
           "PYTHONUNBUFFERED": "1"}
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "hypercorn", "tests.support.corrections_app:gw",
                                 "--bind", f"127.0.0.1:{port}"], stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                env=env)
    srv = Server(proc, port, port, Path(), log)
    try:
        poll_until(srv.ready, 30, what="plain Hypercorn serving the gateway's /readyz")
        yield srv
    finally:
        srv.stop()


@pytest.mark.live
@pytest.mark.asyncio
async def test_the_gateway_installs_its_corrections_under_plain_hypercorn(plain_hypercorn: Server) -> None:
    srv = plain_hypercorn
    async with httpx.AsyncClient(base_url=srv.http, timeout=10) as client:
        assert (await client.get("/corrections")).json() == {"installed": NAMES}
        # What only the installed package gives: fan-out writes straight to an idle HTTP/1.1 stream's socket.
        stream = await RawStream.open(srv.http_port, "/hub/subscribe?topic=plain")
        try:
            answer = await client.post("/hub/publish", json={"topic": "plain", "data": "hello"},
                                       headers={"Authorization": f"Bearer {HUB_TOKEN}"})
            assert answer.status_code == 204
            events = await stream.read_frames(1, timeout=10)  # the opening retry: frame counts, as no event
            events += await stream.read_frames(1, timeout=10) if not events else []
            assert [e.data for e in events] == ["hello"]
        finally:
            stream.close()
    assert await metric(srv.http, "gateway_stream_writes_total", kind="hub", path="direct") > 0


IDEMPOTENT = """
import json
from hypercorn.protocol.h3 import H3Protocol
from gateway.web import hypercorn as corrections
first = corrections.install(accept_unverified=False)
stream_send = H3Protocol.stream_send
second = corrections.install(accept_unverified=False)
print(json.dumps({"first": first, "second": second, "installed": corrections.installed(),
                  "wrapped_once": H3Protocol.stream_send is stream_send,
                  "direct_writes": corrections.direct_writes_trusted()}))
"""


@pytest.mark.live  # in a process of its own: the corrections patch Hypercorn's classes for the whole process
def test_install_is_idempotent_and_names_the_corrections_in_order() -> None:
    result = subprocess.run([sys.executable, "-c", IDEMPOTENT], capture_output=True, text=True, timeout=60,
                            cwd=ROOT, check=False)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"first": NAMES, "second": NAMES, "installed": NAMES, "wrapped_once": True,
                                         "direct_writes": True}


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The package with nothing installed yet and recording stand-ins for the corrections; returns the calls."""
    calls: list[str] = []

    def recorder(name: str) -> Callable[[], None]:
        return lambda: calls.append(name)

    stand_ins = tuple(Correction(c.name, c.relies_on, recorder(c.name)) for c in corrections.CORRECTIONS)
    monkeypatch.setattr(corrections, "CORRECTIONS", stand_ins)
    monkeypatch.setattr(corrections, "_installed", [])
    monkeypatch.setattr(corrections, "_warned", set())
    monkeypatch.setattr(corrections, "_direct_writes", False)
    return calls


def _fake_versions(monkeypatch: pytest.MonkeyPatch, **versions: str) -> None:
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: versions.get(name) or real(name))


@pytest.mark.unit
def test_an_unverified_package_installs_nothing_unless_accepted(fresh: list[str],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_versions(monkeypatch, h2="4.5.0")
    with pytest.raises(UnverifiedServer) as refused:
        corrections.install(accept_unverified=False)
    assert "h2 4.5.0" in str(refused.value)
    assert "h2 4.4.1" in str(refused.value)
    assert "server.accept_unverified_server" in str(refused.value)
    assert fresh == []
    assert not corrections.direct_writes_trusted()


@pytest.mark.unit
def test_an_accepted_unverified_package_skips_what_relies_on_it_and_warns_once(
        fresh: list[str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    _fake_versions(monkeypatch, h2="4.5.0")
    with caplog.at_level(logging.WARNING, logger="gateway.hypercorn"):
        names = corrections.install(accept_unverified=True)
        assert corrections.install(accept_unverified=True) == names
    assert names == [n for n in NAMES if n not in ("h2_late_data", "h2_rapid_reset")]
    assert fresh == names  # each installed once, in order
    (warning,) = [r.getMessage() for r in caplog.records]  # one, though install ran twice
    assert "h2 4.5.0" in warning
    assert "h2_late_data" in warning
    assert not corrections.direct_writes_trusted()
