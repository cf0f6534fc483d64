"""Real gateway processes on loopback, started exactly as ``gateway serve`` starts them, and the system binaries
tests need.

``GATEWAY_TEST_STRICT=1`` (as in CI) turns a missing binary from a skip into a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from benchmarks import terminate
from benchmarks.ports import free_port as free_port  # re-exported: the tests take it from here
from tests.support.wait import poll_until

STRICT = os.environ.get("GATEWAY_TEST_STRICT") == "1"
HUB_TOKEN = "test-token-" + "x" * 16
ROOT = Path(__file__).resolve().parents[2]
# Query parameters as a list, typed as httpx takes them (its own name for this, in httpx._types, is private).
QueryList = list[tuple[str, str | int | float | bool | None]]


def require_binary(name: str) -> str:
    """Path of a system binary; skip without it, or fail when GATEWAY_TEST_STRICT=1 (as in CI)."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (apt-get install {name})"
        if STRICT:
            pytest.fail(message + "; GATEWAY_TEST_STRICT=1 makes this a failure")
        pytest.skip(message)
    return path


@dataclass
class Server:
    """A running ``gateway serve`` process."""

    proc: subprocess.Popen[bytes]
    http_port: int
    tls_port: int
    certfile: Path
    log: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def https(self) -> str:
        return f"https://127.0.0.1:{self.tls_port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 20.0) -> int:
        return terminate(self.proc, timeout)

    def ready(self) -> bool:
        """``/readyz`` answers 200; ``RuntimeError`` once the process has exited, since it can never be ready then."""
        if self.proc.poll() is not None:
            raise RuntimeError(f"gateway exited with {self.proc.returncode}:\n{self.output()}")
        try:
            return httpx.get(f"{self.http}/readyz", timeout=1.0).status_code == 200
        except httpx.TransportError:
            return False


def start_server(tmp: Path, certs: tuple[Path, Path], *, env: dict[str, str] | None = None,
                 args: list[str] | None = None, ready_timeout: float = 30.0, http_port: int = 0) -> Server:
    """Start ``python -m gateway serve`` on fresh loopback ports (or ``http_port``, when a setting must name it)
    and wait until /readyz answers 200."""
    http_port, tls_port = http_port or free_port(), free_port()
    cert, key = certs
    log = tmp / f"gateway-{http_port}.log"
    # Hub topics are private by default; tests about other things read them anonymously. Authorization's own
    # tests (test_auth_live.py) set GATEWAY_HUB_PUBLIC_TOPICS themselves.
    full_env = {**os.environ, "GATEWAY_HUB_PUBLISH_TOKEN": HUB_TOKEN, "GATEWAY_HUB_PUBLIC_TOPICS": "*",
                "PYTHONUNBUFFERED": "1", **(env or {})}
    cmd = [
        sys.executable, "-m", "gateway", "serve",
        "--bind", f"127.0.0.1:{http_port}",
        "--tls-bind", f"127.0.0.1:{tls_port}",
        "--quic-bind", f"127.0.0.1:{tls_port}",
        "--certfile", str(cert), "--keyfile", str(key),
        *(args or []),
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=full_env)
    server = Server(proc, http_port, tls_port, cert, log, env or {})
    try:
        # Readiness of another process can only be observed by asking it; every attempt is bounded.
        poll_until(server.ready, ready_timeout, what="gateway /readyz answering 200")
    except TimeoutError:
        server.stop()
        raise RuntimeError(f"gateway not ready within {ready_timeout} s:\n{server.output()}") from None
    return server
