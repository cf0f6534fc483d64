"""Start-up problems are found before anything starts: ``gateway check`` and ``gateway serve`` exit with 2 and one
line naming the setting, the path or address and what is wrong. And HTTP/3 connections do not fill the log."""

from __future__ import annotations

import ctypes
import os
import re
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway import devcert
from tests.support.h3client import H3Client
from tests.support.redis import SHARED_URL
from tests.support.server import ROOT, free_port, start_server

pytestmark = pytest.mark.live

COMMANDS = ["check", "serve"]
PR_CAPBSET_DROP = 24
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 1, 2


def _gateway(command: str, *args: str, env: dict[str, str] | None = None,
             preexec_fn: Callable[[], None] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", command, *args], capture_output=True, text=True,
                          timeout=60, cwd=ROOT, env={**os.environ, **(env or {})}, preexec_fn=preexec_fn)


def _one_line_exit_2(result: subprocess.CompletedProcess[str], *expected: str) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    # Refused before anything ran.
    assert "listening" not in result.stderr
    assert "started" not in result.stderr
    return lines[0]


def _tls_args(cert: Path | str, key: Path | str) -> list[str]:
    port = free_port()
    return ["--bind", f"127.0.0.1:{free_port()}", "--tls-bind", f"127.0.0.1:{port}", "--quic-bind",
            f"127.0.0.1:{port}", "--certfile", str(cert), "--keyfile", str(key)]


# --- certificate and key ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS)
def test_a_missing_certificate(tmp_path: Path, certs: tuple[Path, Path], command: str) -> None:
    missing = tmp_path / "nowhere" / "cert.pem"
    result = _gateway(command, *_tls_args(missing, certs[1]))
    _one_line_exit_2(result, "server.certfile", str(missing), "no such file")


@pytest.mark.parametrize("command", COMMANDS)
def test_a_certificate_that_is_not_pem(tmp_path: Path, certs: tuple[Path, Path], command: str) -> None:
    junk = tmp_path / "cert.pem"
    junk.write_text("not a certificate\n")
    result = _gateway(command, *_tls_args(junk, certs[1]))
    _one_line_exit_2(result, "server.certfile", str(junk), "not a PEM certificate")


def _without_root_file_access() -> None:
    """In the child before exec: root loses the capabilities that let it read any file (dropped from the
    bounding set, they are not in the exec'd process's permitted set)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


@pytest.fixture
def unreadable_key(tmp_path: Path, certs: tuple[Path, Path]) -> Iterator[tuple[Path, Callable[[], None] | None]]:
    """A copy of the key nobody may read, and what makes a child process unable to read it (root reads anything)."""
    key = tmp_path / "key.pem"
    key.write_bytes(certs[1].read_bytes())
    key.chmod(0)
    preexec = _without_root_file_access if os.geteuid() == 0 else None
    probe = subprocess.run(["cat", str(key)], capture_output=True, preexec_fn=preexec, timeout=10, check=False)
    if probe.returncode == 0:
        pytest.skip("this process cannot make a file unreadable for its children (root without CAP_SETPCAP)")
    yield key, preexec
    key.chmod(0o600)


@pytest.mark.parametrize("command", COMMANDS)
def test_an_unreadable_key(certs: tuple[Path, Path], unreadable_key: tuple[Path, Callable[[], None] | None],
                           command: str) -> None:
    key, preexec = unreadable_key
    result = _gateway(command, *_tls_args(certs[0], key), preexec_fn=preexec)
    _one_line_exit_2(result, "server.keyfile", str(key), "cannot be read (Permission denied)")


@pytest.mark.parametrize("command", COMMANDS)
def test_a_certificate_and_a_key_that_do_not_match(tmp_path: Path, certs: tuple[Path, Path], command: str) -> None:
    _other_cert, other_key = devcert.create(tmp_path / "other")
    result = _gateway(command, *_tls_args(certs[0], other_key))
    _one_line_exit_2(result, "server.keyfile", str(other_key), f"not the private key of server.certfile ({certs[0]})")


@pytest.mark.parametrize("command", COMMANDS)
def test_a_certificate_without_a_key(certs: tuple[Path, Path], command: str) -> None:
    result = _gateway(command, *_tls_args(certs[0], ""))
    _one_line_exit_2(result, "server.keyfile", "server.certfile is set")


# --- listeners -------------------------------------------------------------------------------------------------------


@pytest.fixture
def tcp_in_use() -> Iterator[int]:
    """A loopback TCP port another socket listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        yield int(held.getsockname()[1])


@pytest.mark.parametrize("command", COMMANDS)
def test_the_plain_port_in_use(tcp_in_use: int, command: str) -> None:
    result = _gateway(command, "--bind", f"127.0.0.1:{tcp_in_use}")
    _one_line_exit_2(result, "server.bind", f"127.0.0.1:{tcp_in_use}", "TCP", "already in use")


@pytest.mark.parametrize("command", COMMANDS)
def test_the_tls_port_in_use(certs: tuple[Path, Path], tcp_in_use: int, command: str) -> None:
    result = _gateway(command, "--bind", f"127.0.0.1:{free_port()}", "--tls-bind", f"127.0.0.1:{tcp_in_use}",
                      "--quic-bind", "", "--certfile", str(certs[0]), "--keyfile", str(certs[1]))
    _one_line_exit_2(result, "server.tls_bind", f"127.0.0.1:{tcp_in_use}", "already in use")


@pytest.mark.parametrize("command", COMMANDS)
def test_the_quic_port_in_use(certs: tuple[Path, Path], command: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as held:
        held.bind(("127.0.0.1", 0))
        port = int(held.getsockname()[1])
        result = _gateway(command, "--bind", f"127.0.0.1:{free_port()}", "--tls-bind", f"127.0.0.1:{free_port()}",
                          "--quic-bind", f"127.0.0.1:{port}", "--certfile", str(certs[0]), "--keyfile", str(certs[1]))
    _one_line_exit_2(result, "server.quic_bind", f"127.0.0.1:{port}", "UDP", "already in use")


def test_a_port_in_use_stops_the_workers_before_they_start(tcp_in_use: int) -> None:
    """``--workers``: the supervisor checks the listeners before spawning (the workers share them on purpose)."""
    result = _gateway("serve", "--workers", "2", "--bus", SHARED_URL, "--bind", f"127.0.0.1:{tcp_in_use}")
    _one_line_exit_2(result, "server.bind", f"127.0.0.1:{tcp_in_use}", "already in use")
    assert "worker" not in result.stderr


def test_an_unknown_gateway_variable_stops_serve() -> None:
    result = _gateway("serve", "--bind", f"127.0.0.1:{free_port()}", env={"GATEWAY_SSE_HEARTBEET": "3"})
    _one_line_exit_2(result, "GATEWAY_SSE_HEARTBEET", "did you mean GATEWAY_SSE_HEARTBEAT?")


# --- the log ---------------------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_http3_connections_log_nothing_at_the_default_level(tmp_path: Path, certs: tuple[Path, Path]) -> None:
    srv = start_server(tmp_path, certs)
    try:
        async with H3Client("127.0.0.1", srv.tls_port, verify=False) as client:
            response = await client.request("GET", "/healthz")
            assert response.status == 200
    finally:
        assert srv.stop() == 0
    noisy = [line for line in srv.output().splitlines() if re.search(r" INFO (quic|http3|aioquic)\b", line)]
    assert not noisy, "\n".join(noisy)
    assert re.search(r" INFO gateway", srv.output()), srv.output()  # the gateway's own INFO lines are still there
