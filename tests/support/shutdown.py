"""Gateways stopped at chosen moments of their start, and how long each took to exit.

``start_server`` waits for readiness; a shutdown test needs to signal a process earlier than that (while it is
still starting, or while its bus cannot be ready at all), so ``launch`` only starts it. Every wait here is bounded:
a process that outlives its bound is killed and reported, never waited on.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support.server import HUB_TOKEN, ROOT, Server, free_port
from tests.support.wait import poll_until


def launch(tmp: Path, certs: tuple[Path, Path], *, env: dict[str, str] | None = None,
           args: list[str] | None = None) -> Server:
    """Start ``python -m gateway serve`` as ``start_server`` does (same arguments), without waiting for it."""
    http_port, tls_port = free_port(), free_port()
    cert, key = certs
    log = tmp / f"gateway-{http_port}.log"
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
    return Server(proc, http_port, tls_port, cert, log, env or {})


def wait_for_line(server: Server, text: str, timeout: float) -> None:
    """Until the gateway's log holds ``text``; ``RuntimeError`` with the log if it exited or took too long."""

    def logged() -> bool:
        if text in server.output():
            return True
        if server.proc.poll() is not None:
            raise RuntimeError(f"gateway exited with {server.proc.returncode} before logging {text!r}:\n"
                               f"{server.output()}")
        return False

    try:
        poll_until(logged, timeout, what=f"the gateway logging {text!r}")
    except TimeoutError:
        raise RuntimeError(f"gateway did not log {text!r} within {timeout} s:\n{server.output()}") from None


def readyz(server: Server) -> int | None:
    """``/readyz``'s status, None while nothing answers."""
    try:
        return httpx.get(f"{server.http}/readyz", timeout=1.0).status_code
    except httpx.TransportError:
        return None


@dataclass
class Exit:
    """How a SIGTERM ended: the exit code (None: still running at the bound, then killed) and the seconds it
    took, with the log for the failure message."""

    code: int | None
    seconds: float
    log: str

    def describe(self, label: str) -> str:
        status = f"exit {self.code}" if self.code is not None else "STILL RUNNING (killed)"
        return f"{label}: {status} {self.seconds:.2f} s after SIGTERM\n{self.log[-2500:]}"


def sigterm(server: Server, bound: float) -> Exit:
    """SIGTERM, then wait at most ``bound`` seconds for the exit; a process still running then is killed."""
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    try:
        code: int | None = server.proc.wait(bound)
    except subprocess.TimeoutExpired:
        code = None
    took = time.monotonic() - started
    if code is None:
        server.proc.kill()
        server.proc.wait(10)
    return Exit(code, took, server.output())
