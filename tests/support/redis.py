"""Redis for tests: the machine's shared server under a fresh namespace per test, or a private server to break.

Tests that only use Redis share the one on 6379 (database 15), each under its own ``namespace`` so nothing leaks
between tests or runs; tests that stop or kill Redis start their own ``redis-server`` on a free port.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import uuid
from urllib.parse import urlsplit

import pytest
import redis
import redis.asyncio

from benchmarks.ports import free_port
from benchmarks.redis_server import RedisServer as BenchRedisServer
from tests.support.server import STRICT
from tests.support.wait import poll_until

SHARED_URL = os.environ.get("GATEWAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def _unavailable(reason: str) -> None:
    if STRICT:
        pytest.fail(reason + "; GATEWAY_TEST_STRICT=1 makes this a failure")
    pytest.skip(reason)


def redis_or_skip(url: str = SHARED_URL) -> str:
    """``url`` when a Redis answers there; skip (or fail in strict mode) otherwise."""
    parts = urlsplit(url)
    try:
        with redis.Redis(host=parts.hostname or "127.0.0.1", port=parts.port or 6379, socket_timeout=2) as client:
            client.ping()
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        _unavailable(f"no Redis at {url} ({exc}); start one or set GATEWAY_TEST_REDIS_URL")
    return url


def redis_namespace(url: str = SHARED_URL) -> str:
    """The shared Redis URL with a namespace of its own (skips without a Redis)."""
    redis_or_skip(url)
    return f"{url}?namespace=test-{uuid.uuid4().hex[:12]}"


def namespace_of(url: str) -> str:
    return url.partition("namespace=")[2] or "gateway"


async def drop_namespace(url: str) -> None:
    """Delete every key of the URL's namespace."""
    base = url.partition("?")[0]
    client = redis.asyncio.Redis.from_url(base)
    try:
        keys = [key async for key in client.scan_iter(match="{" + namespace_of(url) + "}:*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


class RedisServer(BenchRedisServer):
    """``benchmarks.redis_server.RedisServer`` that skips the test (or fails it in strict mode) without Redis."""

    def __init__(self, port: int | None = None, *, persistent: bool = False) -> None:
        try:
            super().__init__(port, persistent=persistent)
        except FileNotFoundError as exc:
            _unavailable(str(exc))

    def __enter__(self) -> RedisServer:
        self.start()
        return self


class RedisClusterNodes:
    """A private three-primary Redis Cluster on free loopback ports (``redis-server`` + ``redis-cli --cluster``)."""

    def __init__(self) -> None:
        self.servers = [RedisServer(self._port()) for _ in range(3)]
        cli = shutil.which("redis-cli")
        if cli is None:
            _unavailable("redis-cli is not installed (apt-get install redis-tools)")
        assert cli is not None
        self.cli = cli

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{s.port}" for s in self.servers)

    def __enter__(self) -> RedisClusterNodes:
        for server in self.servers:
            server.extra = ("--cluster-enabled", "yes", "--cluster-config-file", str(server.dir / "nodes.conf"))
            server.start()
        subprocess.run([self.cli, "--cluster", "create", *(f"127.0.0.1:{s.port}" for s in self.servers),
                        "--cluster-replicas", "0", "--cluster-yes"], check=True, capture_output=True, timeout=60)
        # The cluster agrees on its slots a moment after creation: asked for, bounded.
        poll_until(lambda: all(self._state(server.port) == "ok" for server in self.servers), 20,
                   what="the Redis Cluster reaching cluster_state:ok")
        return self

    @staticmethod
    def _port() -> int:
        """A free port whose cluster bus port (port + 10000) is valid and free too."""
        for _ in range(100):
            port = free_port()
            if port + 10_000 > 65_535:
                continue
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port + 10_000))
                except OSError:
                    continue
            return port
        raise RuntimeError("no free port pair for a cluster node")

    @staticmethod
    def _state(port: int) -> str:
        with redis.Redis(port=port, socket_timeout=1) as client:
            return str(client.cluster("info")["cluster_state"])

    def __exit__(self, *exc: object) -> None:
        for server in self.servers:
            server.__exit__()
