"""The Redis bus through Sentinel: a real ``redis-server --sentinel`` names the master the bus connects to."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from benchmarks.ports import free_port
from gateway.bus import Command, Notification, create_bus
from gateway.bus.redis_layout import parse_url
from tests.support.redis import RedisServer
from tests.support.wait import poll_until

WAIT = 10.0


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[tuple[RedisServer, int]]:
    with RedisServer() as master:
        port = free_port()
        conf = tmp_path / "sentinel.conf"  # Sentinel rewrites its file: it must be its own and writable
        conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
                        f"sentinel monitor primary 127.0.0.1 {master.port} 1\n"
                        "sentinel down-after-milliseconds primary 5000\n")
        proc = subprocess.Popen([master.binary, str(conf), "--sentinel"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)

        def names_the_master() -> bool:  # Sentinel's readiness: asked for, bounded
            if proc.poll() is not None:
                raise RuntimeError(f"redis-server --sentinel exited with {proc.returncode}")
            try:
                with redis.Redis(port=port, socket_timeout=1) as client:
                    return bool(client.execute_command("SENTINEL", "get-master-addr-by-name", "primary"))
            except (redis.ConnectionError, redis.TimeoutError):
                return False

        try:
            poll_until(names_the_master, 10, what="redis-server --sentinel naming the master")
            yield master, port
        finally:
            proc.kill()
            proc.wait(10)


@pytest.mark.unit
def test_sentinel_url_parts() -> None:
    target = parse_url("redis+sentinel://user:pw@h1:26379,h2:26380/primary/3?namespace=app")
    assert target.sentinels == (("h1", 26379), ("h2", 26380))
    assert (target.service, target.db, target.namespace, target.username, target.password) == (
        "primary", 3, "app", "user", "pw")
    with pytest.raises(ValueError, match="names the master"):
        parse_url("redis+sentinel://h1:26379")


@pytest.mark.live
@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_bus_through_sentinel_runs_commands_and_delivers(sentinel: tuple[RedisServer, int]) -> None:
    master, port = sentinel
    bus = create_bus(f"redis+sentinel://127.0.0.1:{port}/primary?namespace=sentinel", history=10, workers=2,
                     queue_size=10, idempotency_ttl=60)
    ran = asyncio.Event()
    seen: list[str] = []

    async def handler(command_id: str, command: Command) -> None:
        seen.append(command_id)
        await bus.publish("t", command.name.encode())
        ran.set()

    await bus.start(handler)
    try:
        assert bus.ready
        stream = bus.subscribe(["t"], after=await bus.head())
        command_id = await bus.submit(Command("hello"))
        async with asyncio.timeout(WAIT):
            await ran.wait()
            item = await stream.__anext__()
        assert seen == [command_id]
        assert isinstance(item, Notification)
        assert item.payload == b"hello"
        with redis.Redis(port=master.port) as direct:  # it really went to the master Sentinel named
            assert direct.xlen("{sentinel}:topic:t") == 1
        await stream.aclose()  # type: ignore[attr-defined]
    finally:
        async with asyncio.timeout(WAIT):
            await bus.close(5)
