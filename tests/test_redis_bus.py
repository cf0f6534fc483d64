"""What only the Redis bus has: leases and dead letters, outages, and a Redis that comes back without its data.

The shared contract (``tests/test_bus_contract.py``) covers what every backend does; these tests drive the Redis
specifics against a real ``redis-server`` (a private one wherever the test stops it).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
import redis

from gateway.bus import Command, Gap, Notification, create_bus, redis_layout
from gateway.bus.redisbus import MAX_DELIVERIES, RedisBus
from gateway.core.errors import Unavailable
from tests.support.redis import RedisServer, drop_namespace, namespace_of, redis_namespace
from tests.support.wait import wait_until

pytestmark = pytest.mark.live

WAIT = 10.0


def _bus(url: str, *, lease: float = 30.0, on_health: list[bool] | None = None) -> RedisBus:
    bus = create_bus(url, history=10, workers=2, queue_size=100, idempotency_ttl=60, lease=lease, timeout=0.5,
                     on_health=on_health.append if on_health is not None else None)
    assert isinstance(bus, RedisBus)
    return bus


@pytest_asyncio.fixture
async def url() -> AsyncIterator[str]:
    found = redis_namespace()
    yield found
    await drop_namespace(found)


def _key(url: str, name: str) -> str:
    return "{" + namespace_of(url) + "}:" + name


def _blocked_in_xread(url: str) -> bool:
    """A client of the Redis at ``url`` is blocked in XREAD (``CLIENT LIST`` flag ``b``)."""
    with redis.Redis.from_url(url) as client:
        return any(c["cmd"] == "xread" and "b" in c["flags"] for c in client.client_list())


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_a_command_that_keeps_killing_its_process_is_buried(url: str) -> None:
    ran: list[str] = []

    async def handler(command_id: str, command: Command) -> None:
        ran.append(command_id)

    # A command some process took and never finished, as often as MAX_DELIVERIES processes died on it.
    plain = redis.Redis.from_url(url.partition("?")[0])
    stream = _key(url, "commands")
    plain.xgroup_create(stream, "workers", id="0", mkstream=True)
    poison = redis_layout.text(plain.xadd(stream, {"n": "poison", "a": "{}", "k": ""}))
    plain.xreadgroup("workers", "dead-1", {stream: ">"}, count=1)
    for i in range(MAX_DELIVERIES):
        plain.xclaim(stream, "workers", f"dead-{i + 2}", 0, [poison])  # each claim counts a delivery
    bus = _bus(url, lease=0.3)
    await bus.start(handler)
    try:
        await wait_until(lambda: plain.xlen(_key(url, "dead")) > 0, WAIT, what="the poison entry buried")
        buried = plain.xrange(_key(url, "dead"))
        assert buried is not None  # redis-py types a range, and an entry's fields, as optional
        (_entry_id, fields), = buried
        assert fields is not None
        assert redis_layout.text(fields[b"id"]) == poison
        assert int(fields[b"deliveries"]) > MAX_DELIVERIES
        assert fields[b"n"] == b"poison"
        assert plain.xlen(stream) == 0
        assert plain.xpending(stream, "workers")["pending"] == 0
        assert ran == []
        # The bus still works after burying.
        command_id = await bus.submit(Command("fine"))
        await wait_until(lambda: ran == [command_id], WAIT, what="the next command run")
    finally:
        await bus.close(5)
        plain.close()


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_a_malformed_command_entry_is_buried_not_run(url: str) -> None:
    ran: list[str] = []

    async def handler(command_id: str, command: Command) -> None:
        ran.append(command.name)

    bus = _bus(url)
    await bus.start(handler)
    plain = redis.Redis.from_url(url.partition("?")[0])
    try:
        plain.xadd(_key(url, "commands"), {"n": "broken", "a": "{not json"})
        good = await bus.submit(Command("good"))
        await wait_until(lambda: plain.xlen(_key(url, "dead")) > 0 and ran == ["good"], WAIT,
                         what="the broken entry buried and the good one run")
        assert good
        buried = plain.xrange(_key(url, "dead"))
        assert buried is not None  # redis-py types a range, and an entry's fields, as optional
        assert buried[0][1] is not None
        assert buried[0][1][b"n"] == b"broken"
    finally:
        await bus.close(5)
        plain.close()


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_an_entry_without_a_context_runs_with_an_empty_one(url: str) -> None:
    """Entries written before commands carried a context (no ``c`` field) are still run; a context that is not
    a JSON object makes the entry malformed."""
    ran: list[Command] = []

    async def handler(command_id: str, command: Command) -> None:
        ran.append(command)

    bus = _bus(url)
    await bus.start(handler)
    plain = redis.Redis.from_url(url.partition("?")[0])
    try:
        plain.xadd(_key(url, "commands"), {"n": "old", "a": '{"i": 1}', "k": "key-old"})
        plain.xadd(_key(url, "commands"), {"n": "odd", "a": "{}", "k": "", "c": "[1]"})
        await wait_until(lambda: len(ran) == 1 and plain.xlen(_key(url, "dead")) == 1, WAIT,
                         what="the old entry run and the odd one buried")
        (old,) = ran
        assert (old.name, dict(old.args), old.idempotency_key, dict(old.context), old.delivery) == (
            "old", {"i": 1}, "key-old", {}, 1)
    finally:
        await bus.close(5)
        plain.close()


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_outage_refuses_with_retry_after_and_recovers() -> None:
    health: list[bool] = []
    with RedisServer() as server:
        bus = _bus(server.url + "?namespace=outage", on_health=health)
        ran = asyncio.Event()

        async def handler(command_id: str, command: Command) -> None:
            ran.set()

        await bus.start(handler)
        try:
            assert bus.ready
            server.stop()
            with pytest.raises(Unavailable) as refused:
                await bus.submit(Command("during"))
            assert refused.value.status == 503
            assert int(refused.value.headers()["Retry-After"]) >= 1
            assert not bus.ready
            with pytest.raises(Unavailable):
                await bus.publish("t")
            server.start()
            await wait_until(lambda: bus.ready, WAIT, what="the monitor's reconnect")
            await bus.submit(Command("after"))
            async with asyncio.timeout(WAIT):
                await ran.wait()
            assert health == [False, True]
            assert bus.outages == 1
        finally:
            await bus.close(5)


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_redis_that_lost_its_data_yields_gaps_then_goes_on() -> None:
    """A Redis restarted empty: subscribers cannot know what they missed, so they are told, never left silent."""
    with RedisServer() as server:
        bus = _bus(server.url + "?namespace=reset")

        async def handler(command_id: str, command: Command) -> None:
            pass

        await bus.start(handler)
        try:
            first = await bus.publish("a", b"before")
            stream = bus.subscribe(["a", "b"], after=first)
            pending = asyncio.ensure_future(stream.__anext__())
            # The restart must hit a live subscription: wait until its XREAD blocks in this private Redis.
            await wait_until(lambda: _blocked_in_xread(server.url), WAIT, what="the subscription blocked in XREAD")
            server.stop()
            # Until the bus noticed: a restart it never saw is no outage.
            await wait_until(lambda: not bus.ready, WAIT, what="the bus noticing the outage")
            server.start()  # no persistence: everything is gone
            await wait_until(lambda: bus.ready, WAIT, what="the monitor's reconnect")
            after_reset = await bus.publish("a", b"after")
            items = [await asyncio.wait_for(pending, WAIT)]
            async with asyncio.timeout(WAIT):
                while not isinstance(items[-1], Notification):
                    items.append(await stream.__anext__())
            gaps = {item.topic for item in items if isinstance(item, Gap)}
            assert gaps == {"a", "b"}
            assert items[-1] == Notification("a", after_reset, b"after")
            assert after_reset > first  # versions stay ahead of every id issued before the reset
            await stream.aclose()  # type: ignore[attr-defined]
        finally:
            await bus.close(5)
