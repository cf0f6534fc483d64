"""Fan-out in process: direct-write rounds, a broken stream not costing the others, topic namespaces, and
notifications it cannot read skipped rather than fatal."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import pytest_asyncio

from gateway.bus import create_bus
from gateway.bus.base import Bus, Notification
from gateway.core.encoders import create_encoder
from gateway.core.hub import HubEvent
from gateway.core.stream import HEARTBEAT, Frame
from gateway.core.topics import hub_key, view_key
from gateway.metrics import Metrics
from gateway.web.fanout import Fanout, Members

pytestmark = pytest.mark.unit


class Target:
    """A stream that takes direct writes (or fails them), recording what it was given and what was queued."""

    def __init__(self, fail: bool = False, ready: bool = True, offer: bool | None = None) -> None:
        self.fail = fail
        self.ready = ready
        self.offer = ready if offer is None else offer
        self.ready_checks = 0
        self.writes: list[list[str]] = []
        self.fed: list[str] = []
        self.got = asyncio.Event()

    def direct_ready(self) -> bool:
        self.ready_checks += 1
        return self.ready

    def direct_offer(self) -> bool:
        return self.offer

    def direct_write(self, frames: list[Frame], now: float) -> None:
        if self.fail:
            raise OSError("the socket broke")
        self.writes.append([f.version for f in frames])
        self.got.set()

    def direct_link(self) -> None:
        return None

    def feed(self, frame: Frame, now: float) -> None:
        self.fed.append(frame.version)
        self.got.set()


async def _noop(command_id: str, command: object) -> None:
    return None


@dataclass
class Rig:
    bus: Bus
    metrics: Metrics
    fanout: Fanout


@pytest_asyncio.fixture
async def rig() -> AsyncIterator[Rig]:
    """A memory bus and a fan-out on it, not started yet (views are added before ``start``)."""
    bus = create_bus("memory://", history=100, workers=1, queue_size=10, idempotency_ttl=1)
    await bus.start(_noop)
    metrics = Metrics()
    fanout = Fanout(bus, metrics)
    yield Rig(bus, metrics, fanout)
    await fanout.close()
    await bus.close(1)


def _event(topic: str, n: int) -> bytes:
    return HubEvent(topic, f"x{n}").payload


@pytest.mark.asyncio
async def test_one_round_one_write_and_a_failing_stream_costs_the_others_nothing(rig: Rig) -> None:
    good, bad, after = Target(), Target(fail=True), Target()
    await rig.fanout.start()
    for target in (good, bad, after):
        rig.fanout.attach_hub(("t",), target)
    for i in range(3):  # three publishes before the loop turns: one round
        await rig.bus.publish(hub_key("t"), _event("t", i))
    async with asyncio.timeout(5):
        await good.got.wait()
        await after.got.wait()
    assert good.writes == [["1", "2", "3"]], "the round's events were not written together, in order"
    assert after.writes == [["1", "2", "3"]], "a stream after the broken one lost its events"
    assert bad.writes == []
    assert bad.fed == [], "the broken stream's batch was re-queued behind a half write"


class Link:
    """An h2 or h3 connection of ``Linked`` streams: records in one log, shared by all, when it is flushed."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log = name, log

    def flush(self) -> None:
        self.log.append(f"flush {self.name}")


class Linked(Target):
    """A stream of a multiplexed connection: its direct writes gather in ``link``."""

    def __init__(self, name: str, link: Link) -> None:
        super().__init__()
        self.name, self.link = name, link

    def direct_link(self) -> Link:  # type: ignore[override]
        return self.link

    def direct_write(self, frames: list[Frame], now: float) -> Link:  # type: ignore[override]
        super().direct_write(frames, now)
        self.link.log.append(f"write {self.name}")
        return self.link


@pytest.mark.asyncio
async def test_each_connection_is_flushed_as_soon_as_its_streams_are_written(rig: Rig) -> None:
    """With streams of two connections interleaved in the topic, the first connection's bytes leave before the
    second's streams are framed (not once the whole round is over), each connection once."""
    log: list[str] = []
    a, b = Link("a", log), Link("b", log)
    plain = Target()
    streams = [Linked("a1", a), Linked("b1", b), Linked("a2", a), Linked("b2", b)]
    await rig.fanout.start()
    for target in (streams[0], plain, *streams[1:]):
        rig.fanout.attach_hub(("t",), target)
    for i in range(2):
        await rig.bus.publish(hub_key("t"), _event("t", i))
    async with asyncio.timeout(5):
        for target in (plain, *streams):
            await target.got.wait()
    assert plain.writes == [["1", "2"]]
    assert all(stream.writes == [["1", "2"]] for stream in streams)
    # A topic's streams are a set: either connection may come first, but each is written, then flushed, whole.
    assert len(log) == 6, log
    for group in (log[:3], log[3:]):
        name = group[2].removeprefix("flush ")
        assert group[2].startswith("flush "), log
        assert sorted(group[:2]) == [f"write {name}1", f"write {name}2"], log


@pytest.mark.asyncio
async def test_a_stream_not_ready_gets_its_frames_in_its_mailbox_in_order(rig: Rig) -> None:
    busy = Target(ready=False)
    await rig.fanout.start()
    rig.fanout.attach_hub(("t",), busy)
    for i in range(3):
        await rig.bus.publish(hub_key("t"), _event("t", i))
    async with asyncio.timeout(5):
        while len(busy.fed) < 3:
            busy.got.clear()
            await busy.got.wait()
    assert busy.fed == ["1", "2", "3"]
    assert busy.writes == []


@pytest.mark.asyncio
async def test_readiness_is_checked_once_a_round_at_the_write(rig: Rig) -> None:
    """``direct_offer`` decides what is batched, ``direct_ready`` the write, once per stream and round (an h3
    stream's readiness reads ten attributes through Hypercorn and aioquic); a stream offered but no longer ready
    at the write gets the round's frames in its mailbox, in order."""
    late, fine = Target(ready=False, offer=True), Target()
    await rig.fanout.start()
    for target in (late, fine):
        rig.fanout.attach_hub(("t",), target)
    for i in range(3):  # three publishes before the loop turns: one round
        await rig.bus.publish(hub_key("t"), _event("t", i))
    async with asyncio.timeout(5):
        await fine.got.wait()
        while len(late.fed) < 3:
            late.got.clear()
            await late.got.wait()
    assert late.fed == ["1", "2", "3"]
    assert late.writes == []
    assert fine.writes == [["1", "2", "3"]]
    assert (late.ready_checks, fine.ready_checks) == (1, 1)


@pytest.mark.asyncio
async def test_view_and_hub_topics_of_one_name_never_meet(rig: Rig) -> None:
    """A hub client naming a view's topic gets no view change, and the view is not disturbed by it."""

    async def render() -> str:
        return "the view"

    channel = rig.fanout.add_view("/v", ("todos",), render)
    viewer, hub_client = Target(), Target()
    await rig.fanout.start()
    rig.fanout.attach_view(channel, viewer)
    rig.fanout.attach_hub(("todos",), hub_client)
    await rig.bus.publish(view_key("todos"))
    async with asyncio.timeout(5):
        await viewer.got.wait()
    await rig.bus.publish(hub_key("todos"), _event("todos", 1))
    async with asyncio.timeout(5):
        await hub_client.got.wait()
    assert viewer.writes == [["1"]]
    assert hub_client.writes == [["2"]]
    assert rig.metrics.notifications_skipped.labels("payload")._value.get() == 0


@pytest.mark.asyncio
async def test_a_payload_fanout_cannot_read_is_counted_and_skipped(rig: Rig) -> None:
    target = Target()
    await rig.fanout.start()
    rig.fanout.attach_hub(("t",), target)
    await rig.bus.publish(hub_key("t"), b'{"data": "written by hand"}')
    await rig.bus.publish(hub_key("t"), b"")
    await rig.bus.publish(hub_key("t"), _event("t", 3))
    async with asyncio.timeout(5):
        await target.got.wait()
    assert target.writes == [["3"]], "the readable event after the unreadable ones was not delivered"
    assert rig.metrics.notifications_skipped.labels("payload")._value.get() == 2


# -- a round's events of a hub topic, shared by its streams ------------------------------------------------------


def _note(topic: str, version: int) -> Notification:
    return Notification(hub_key(topic), str(version), _event(topic, version))


def _written(target: Target) -> list[str]:
    return [version for write in target.writes for version in write]


@pytest.mark.asyncio
async def test_a_round_gives_every_stream_its_own_topics_events_in_order(rig: Rig) -> None:
    """Streams of one topic share the round's list of its events; a stream of two topics, one not ready, and one
    with a batch of its own (a view's) each get exactly their events, in the order they came."""
    fanout = rig.fanout
    a1, a2, b1, both, slow = Target(), Target(), Target(), Target(), Target(ready=False)
    for target, topics in ((a1, ("a",)), (a2, ("a",)), (b1, ("b",)), (both, ("a", "b")), (slow, ("a",))):
        fanout.attach_hub(topics, target)
    for version, topic in enumerate("abaab", start=1):
        fanout._dispatch(_note(topic, version))
    fanout._flush()
    assert a1.writes == a2.writes == [["1", "3", "4"]]
    assert b1.writes == [["2", "5"]], "a stream of one topic was given another topic's events"
    assert both.writes == [["1", "2", "3", "4", "5"]], "a stream of two topics lost their order"
    assert slow.writes == []
    assert slow.fed == ["1", "3", "4"]


@pytest.mark.asyncio
async def test_streams_that_come_or_go_mid_round_get_only_the_events_of_their_time(rig: Rig) -> None:
    """A stream that attaches between two events of a round is given the later ones only; one that leaves keeps
    what it had been given and is handed nothing after; the streams that stayed get every event."""
    fanout = rig.fanout
    stays, leaves, comes = Target(), Target(), Target()
    fanout.attach_hub(("a",), stays)
    fanout.attach_hub(("a",), leaves)
    fanout._dispatch(_note("a", 1))
    fanout.attach_hub(("a",), comes)
    fanout._dispatch(_note("a", 2))
    fanout.detach_hub(("a",), leaves)
    fanout._dispatch(_note("a", 3))
    fanout._dispatch(_note("a", 4))
    fanout._flush()
    assert stays.writes == [["1", "2", "3", "4"]]
    assert leaves.writes == [["1", "2"]], "a stream that left was handed events from after it left"
    assert comes.writes == [["2", "3", "4"]], "a stream that came mid-round was handed an event from before it came"
    # the next round starts over: every stream of the topic shares its list again
    fanout._dispatch(_note("a", 5))
    fanout._flush()
    assert _written(stays)[-1] == _written(comes)[-1] == "5"
    assert _written(leaves) == ["1", "2"]


@pytest.mark.asyncio
async def test_a_cohorts_members_share_its_round_and_one_that_joins_mid_round_gets_only_later_chunks(rig: Rig) -> None:
    """A hub cohort's members write the round's chunks from one list; a member that joins after a chunk of the
    round (a heartbeat: the cohort is still joinable) is handed only the chunks that follow."""
    fanout = rig.fanout
    first, second, late = Target(), Target(), Target()

    def join(target: Target) -> Members:
        fanout.attach_hub(("t",), target)
        fanout.join_hub_cohort(("t",), target, (0, 0), b"", create_encoder("br"), None, lambda: None,
                               lambda seconds: None)
        return fanout._hub_member_of[target]

    members = join(first)
    assert join(second) is members
    now = asyncio.get_running_loop().time()
    fanout._advance(members, Frame((0, 0), "", HEARTBEAT), HEARTBEAT, now, heartbeat=True)
    assert join(late) is members, "a cohort that sent only heartbeats takes newcomers"
    fanout._dispatch(_note("t", 1))
    fanout._dispatch(_note("t", 2))
    fanout._flush()
    assert first.writes == second.writes == [["", "1", "2"]]
    assert late.writes == [["1", "2"]], "a member that joined mid-round was handed a chunk from before it joined"


@pytest.mark.asyncio
async def test_a_view_cohort_member_that_joins_mid_round_gets_only_later_chunks(rig: Rig) -> None:
    """The same for a view's cohort, whose members join by the render they opened on (no hub topic changes)."""
    fanout = rig.fanout
    channel = fanout.add_view("/v", ("v",), None)
    opened_on = Frame((1, 0), "1", b"data: one\n\n")
    first, late = Target(), Target()

    def join(target: Target) -> Members:
        fanout.attach_view(channel, target)
        fanout.join_cohort(channel, target, opened_on, b"data: one\n\n", create_encoder("br"), None, lambda: None,
                           lambda seconds: None)
        return channel.member_of[target]

    members = join(first)
    now = asyncio.get_running_loop().time()
    fanout._advance(members, Frame((0, 0), "", HEARTBEAT), HEARTBEAT, now, heartbeat=True)
    assert join(late) is members
    fanout._advance(members, Frame((2, 0), "2", b"data: two\n\n"), b"data: two\n\n", now)
    fanout._flush()
    assert first.writes == [["", "2"]]
    assert late.writes == [["2"]], "a member that joined mid-round was handed a chunk from before it joined"


class Timed(Target):
    """A ``Target`` that keeps the loop time of its last direct write's round (``now``)."""

    now = 0.0

    def direct_write(self, frames: list[Frame], now: float) -> None:
        self.now = now
        super().direct_write(frames, now)


async def _written_at(target: Timed, times: list[float]) -> None:
    """Waits for ``target``'s next direct write and records the loop time its round began."""
    target.got.clear()
    async with asyncio.timeout(5):
        await target.got.wait()
    times.append(target.now)


@pytest.mark.asyncio
@pytest.mark.parametrize("window", [0.0, 0.02])
async def test_a_round_right_after_another_waits_out_the_batch_window(window: float) -> None:
    """``sse.batch_window``: a round that would follow the previous one by less than the window is held back until
    the window has passed (its events gather meanwhile); a round after a quiet spell is never held. Told apart by
    ordering, not by timing: a marker due at half the window fires before a held round and after a prompt one."""
    bus = create_bus("memory://", history=100, workers=1, queue_size=10, idempotency_ttl=1)
    await bus.start(_noop)
    fanout = Fanout(bus, Metrics(), batch_window=window)
    loop = asyncio.get_running_loop()
    try:
        target = Timed()
        await fanout.start()
        fanout.attach_hub(("t",), target)
        order: list[str] = []
        times: list[float] = []
        for i in range(2):  # the first after a quiet spell, the second right after it
            loop.call_later(0.01, order.append, f"marker {i}")
            await bus.publish(hub_key("t"), _event("t", i))
            await _written_at(target, times)
            order.append(f"write {i}")
            if i == 0:
                await bus.publish(hub_key("t"), _event("t", 10))  # (this one goes in the next round: it is held
                await bus.publish(hub_key("t"), _event("t", 11))  # back, so these three leave together)
        assert order[0] == "write 0", order
        if window:
            assert order.index("marker 1") < order.index("write 1"), order
            assert times[1] - times[0] >= window - 0.001
            assert target.writes[1] == ["2", "3", "4"], "the held round did not gather the events meanwhile"
        else:
            assert "marker 1" not in order, order
    finally:
        await fanout.close()
        await bus.close(1)
