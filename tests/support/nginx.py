"""The real nginx, run from a private prefix so a test's configuration, pid file and logs stay in its tmp dir."""

from __future__ import annotations

import contextlib
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

from tests.support.server import require_binary
from tests.support.wait import poll_until

# The main file around a test's ``gateway.conf``: every path nginx writes to lives under ``prefix``.
WRAPPER = """\
daemon off;
master_process on;
worker_processes 1;
{user}
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    include {prefix}/gateway.conf;
}}
"""


@contextlib.contextmanager
def running_nginx(prefix: Path, main: Path, port: int) -> Iterator[None]:
    """nginx on ``main`` (checked with ``nginx -t`` first), until it accepts on ``port``; stopped on exit."""
    binary = require_binary("nginx")
    check = subprocess.run([binary, "-t", "-p", str(prefix), "-c", str(main)], capture_output=True, text=True,
                           check=False, timeout=30)
    assert check.returncode == 0, check.stderr
    proc = subprocess.Popen([binary, "-p", str(prefix), "-c", str(main)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)

    def accepting() -> bool:
        if proc.poll() is not None:
            raise RuntimeError((prefix / "error.log").read_text(errors="replace"))
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        except OSError:
            return False
        return True

    try:
        try:  # another process's readiness can only be seen by trying it; bounded
            poll_until(accepting, 10, what=f"nginx accepting on port {port}")
        except TimeoutError:
            raise RuntimeError((prefix / "error.log").read_text(errors="replace")) from None
        yield
    finally:
        proc.terminate()
        proc.wait(10)
