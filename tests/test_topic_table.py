"""Reading topic names costs nothing that outlives the reader: 100,000 hub subscriptions to distinct random
names, opened and closed through fan-out, leave the memory bus's topic tables at their base size."""

from __future__ import annotations

import gc
import os
import secrets

import pytest

from gateway.bus.memory import MemoryBus
from gateway.core.hub import HubEvent
from gateway.core.stream import Frame
from gateway.core.topics import hub_key
from gateway.metrics import Metrics
from gateway.web.fanout import Fanout
from tests.support.wait import wait_until

pytestmark = pytest.mark.unit

SUBSCRIPTIONS = 100_000
BATCH = 2_000  # subscriptions open at once


class Sink:
    def feed(self, frame: Frame, now: float) -> None:
        pass

    def direct_ready(self) -> bool:
        return False

    def direct_offer(self) -> bool:
        return False

    def direct_write(self, frames: list[Frame], now: float) -> None:
        pass

    def direct_link(self) -> None:
        return None


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def _noop(command_id: str, command: object) -> None:
    return None


@pytest.mark.asyncio
async def test_distinct_topic_names_opened_and_closed_leave_no_trace() -> None:
    bus = MemoryBus(history=100, workers=1)
    await bus.start(_noop)
    fanout = Fanout(bus, Metrics(), shrink_delay=0.01)
    await fanout.start()
    await bus.publish(hub_key("kept"), HubEvent("kept", "x").payload)  # a topic with history stays
    base = bus.topic_count
    assert base == 1
    gc.collect()
    rss_before = _rss()
    try:
        for _ in range(SUBSCRIPTIONS // BATCH):
            sinks = [(Sink(), (secrets.token_hex(8),)) for _ in range(BATCH)]
            for sink, topics in sinks:
                fanout.attach_hub(topics, sink)
            await wait_until(lambda: bus.topic_count >= base + BATCH, 10, interval=0.001,
                             what="fan-out subscribing to the new topics")
            for sink, topics in sinks:
                fanout.detach_hub(topics, sink)
        await wait_until(lambda: bus.topic_count == base, 10, what="the topic table shrinking back to its base")
        gc.collect()
        grown = _rss() - rss_before
        assert grown < 20 * 1024 * 1024, f"RSS grew by {grown / 1e6:.1f} MB"
    finally:
        await fanout.close()
        await bus.close(1)
