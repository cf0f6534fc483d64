"""Fan-out's direct-write rounds, in process: batching per round, and one broken stream not costing the others."""

from __future__ import annotations

import asyncio

import pytest

from gateway.bus import create_bus
from gateway.metrics import Metrics
from gateway.web.fanout import Fanout, Frame, Subscriber

pytestmark = pytest.mark.unit


class Target:
    """A stream that takes direct writes (or fails them), recording what it was given."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.writes: list[list[str]] = []
        self.got = asyncio.Event()

    def direct_ready(self) -> bool:
        return True

    def direct_write(self, frames: list[Frame], now: float) -> None:
        if self.fail:
            raise OSError("the socket broke")
        self.writes.append([f.version for f in frames])
        self.got.set()


async def _noop(command_id: str, command: object) -> None:
    return None


@pytest.mark.asyncio
async def test_one_round_one_write_and_a_failing_stream_is_cut_alone() -> None:
    bus = create_bus("memory://", history=100, workers=1, queue_size=10, idempotency_ttl=1)
    await bus.start(_noop)
    fanout = Fanout(bus, Metrics())
    good, bad = Target(), Target(fail=True)
    cuts: list[str] = []
    subs = [Subscriber(asyncio.Event(), direct=good), Subscriber(asyncio.Event(), direct=bad, cut=cuts.append)]
    try:
        await fanout.start()
        for sub in subs:
            fanout.attach_hub(("t",), sub)
        for i in range(3):  # three publishes before the loop turns: one round
            await bus.publish("t", b'{"data": "x%d", "event": null, "id": null}' % i)
        async with asyncio.timeout(5):
            await good.got.wait()
        assert good.writes == [["1", "2", "3"]], "the round's events were not written together, in order"
        assert cuts == ["send_failed"], "the broken stream was not ended"
        assert subs[1].direct is None
        assert subs[1].hub_box is None or not len(subs[1].hub_box)  # nothing re-queued behind a half write
    finally:
        await fanout.close()
        await bus.close(1)
