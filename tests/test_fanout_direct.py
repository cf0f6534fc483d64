"""Fan-out in process: direct-write rounds, a broken stream not costing the others, topic namespaces, and
notifications it cannot read skipped rather than fatal."""

from __future__ import annotations

import asyncio

import pytest

from gateway.bus import create_bus
from gateway.bus.base import Bus
from gateway.core.hub import HubEvent
from gateway.core.stream import Frame
from gateway.core.topics import hub_key, view_key
from gateway.metrics import Metrics
from gateway.web.fanout import Fanout

pytestmark = pytest.mark.unit


class Target:
    """A stream that takes direct writes (or fails them), recording what it was given and what was queued."""

    def __init__(self, fail: bool = False, ready: bool = True) -> None:
        self.fail = fail
        self.ready = ready
        self.writes: list[list[str]] = []
        self.fed: list[str] = []
        self.got = asyncio.Event()

    def direct_ready(self) -> bool:
        return self.ready

    def direct_write(self, frames: list[Frame], now: float) -> None:
        if self.fail:
            raise OSError("the socket broke")
        self.writes.append([f.version for f in frames])
        self.got.set()

    def feed(self, frame: Frame, now: float) -> None:
        self.fed.append(frame.version)
        self.got.set()


async def _noop(command_id: str, command: object) -> None:
    return None


async def _bus() -> Bus:
    bus = create_bus("memory://", history=100, workers=1, queue_size=10, idempotency_ttl=1)
    await bus.start(_noop)
    return bus


def _event(topic: str, n: int) -> bytes:
    return HubEvent(topic, f"x{n}").payload


@pytest.mark.asyncio
async def test_one_round_one_write_and_a_failing_stream_costs_the_others_nothing() -> None:
    bus = await _bus()
    metrics = Metrics()
    fanout = Fanout(bus, metrics)
    good, bad, after = Target(), Target(fail=True), Target()
    try:
        await fanout.start()
        for target in (good, bad, after):
            fanout.attach_hub(("t",), target)
        for i in range(3):  # three publishes before the loop turns: one round
            await bus.publish(hub_key("t"), _event("t", i))
        async with asyncio.timeout(5):
            await good.got.wait()
            await after.got.wait()
        assert good.writes == [["1", "2", "3"]], "the round's events were not written together, in order"
        assert after.writes == [["1", "2", "3"]], "a stream after the broken one lost its events"
        assert bad.writes == []
        assert bad.fed == [], "the broken stream's batch was re-queued behind a half write"
    finally:
        await fanout.close()
        await bus.close(1)


@pytest.mark.asyncio
async def test_a_stream_not_ready_gets_its_frames_in_its_mailbox_in_order() -> None:
    bus = await _bus()
    fanout = Fanout(bus, Metrics())
    busy = Target(ready=False)
    try:
        await fanout.start()
        fanout.attach_hub(("t",), busy)
        for i in range(3):
            await bus.publish(hub_key("t"), _event("t", i))
        async with asyncio.timeout(5):
            while len(busy.fed) < 3:
                busy.got.clear()
                await busy.got.wait()
        assert busy.fed == ["1", "2", "3"]
        assert busy.writes == []
    finally:
        await fanout.close()
        await bus.close(1)


@pytest.mark.asyncio
async def test_view_and_hub_topics_of_one_name_never_meet() -> None:
    """A hub client naming a view's topic gets no view change, and the view is not disturbed by it."""
    bus = await _bus()
    metrics = Metrics()
    fanout = Fanout(bus, metrics)
    renders = 0

    async def render() -> str:
        nonlocal renders
        renders += 1
        return f"render {renders}"

    channel = fanout.add_view("/v", ("todos",), render)
    viewer, hub_client = Target(), Target()
    try:
        await fanout.start()
        fanout.attach_view(channel, viewer)
        fanout.attach_hub(("todos",), hub_client)
        await bus.publish(view_key("todos"))
        async with asyncio.timeout(5):
            await viewer.got.wait()
        await bus.publish(hub_key("todos"), _event("todos", 1))
        async with asyncio.timeout(5):
            await hub_client.got.wait()
        assert viewer.writes == [["1"]]
        assert hub_client.writes == [["2"]]
        assert metrics.notifications_skipped.labels("payload")._value.get() == 0
    finally:
        await fanout.close()
        await bus.close(1)


@pytest.mark.asyncio
async def test_a_payload_fanout_cannot_read_is_counted_and_skipped() -> None:
    bus = await _bus()
    metrics = Metrics()
    fanout = Fanout(bus, metrics)
    target = Target()
    try:
        await fanout.start()
        fanout.attach_hub(("t",), target)
        await bus.publish(hub_key("t"), b'{"data": "written by hand"}')
        await bus.publish(hub_key("t"), b"")
        await bus.publish(hub_key("t"), _event("t", 3))
        async with asyncio.timeout(5):
            await target.got.wait()
        assert target.writes == [["3"]], "the readable event after the unreadable ones was not delivered"
        assert metrics.notifications_skipped.labels("payload")._value.get() == 2
    finally:
        await fanout.close()
        await bus.close(1)
