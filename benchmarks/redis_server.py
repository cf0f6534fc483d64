"""A private ``redis-server`` on a free loopback port, for the scale-out benchmark and the tests that break Redis.

Started and stopped at will (same port, same directory), optionally pinned to one CPU (its CPU then counts with
the server's), optionally persistent: an append-only file fsynced on every write, as production runs it for
command durability, so a restart comes back with everything acknowledged before the stop.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from benchmarks.ports import free_port

__all__ = ["RedisServer"]


class RedisServer:
    def __init__(self, port: int | None = None, *, persistent: bool = False, cpu: int | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server is not installed (apt-get install redis-server)")
        self.binary = binary
        self.persistent = persistent
        self.cpu = cpu
        self.extra: tuple[str, ...] = ()
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="gateway-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        argv = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                *(("--appendonly", "yes", "--appendfsync", "always") if self.persistent else ("--appendonly", "no")),
                "--dir", str(self.dir), "--logfile", str(self.dir / "redis.log"), *self.extra]
        taskset = shutil.which("taskset") if self.cpu is not None else None
        if taskset:
            argv = [taskset, "-c", str(self.cpu), *argv]  # taskset execs redis-server: same pid
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:  # another process's readiness can only be seen by asking it; bounded
            try:
                with redis.Redis(port=self.port, socket_timeout=1) as client:
                    client.ping()
                return
            except (redis.ConnectionError, redis.TimeoutError):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start on {self.port}") from None
                time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
