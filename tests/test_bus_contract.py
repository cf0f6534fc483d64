"""The ``Bus`` contract (``gateway/bus/base.py``), written once and run against every backend.

The ``bus`` fixture is parametrized over backend names; adding a backend (e.g. Redis) means adding its name to
``BACKENDS`` and its URL to ``_URLS``, nothing else. The tests therefore use only the ``Bus`` protocol and never
assume a version format: versions are compared with ``version_key`` and taken from what ``publish`` returned.

Per-test bus sizes come from the ``bus_options`` fixture, which a test overrides by parametrizing it directly
(``@pytest.mark.parametrize("bus_options", [BusOptions(history=3)])``) instead of building its own bus, so every
test still goes through ``create_bus`` and the shared teardown.

Every wait is bounded by ``asyncio.timeout``: a broken backend fails a test, it never hangs the suite. Handlers
report progress through ``asyncio.Event``s, so nothing depends on sleeping "long enough".
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass

import pytest
import pytest_asyncio

from gateway.bus import Bus, Command, Gap, Notification, create_bus
from gateway.core.errors import Unavailable
from gateway.core.versions import version_key
from tests.support.redis import RedisClusterNodes, drop_namespace, redis_namespace

BACKENDS = ["memory", "redis", "redis-cluster"]
REDIS_URL = os.environ.get("GATEWAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")

WAIT = 5.0  # seconds: generous for a loaded CI machine, still a quick failure when something is stuck


@dataclass(frozen=True)
class BusOptions:
    history: int = 100
    workers: int = 4
    queue_size: int = 100
    idempotency_ttl: float = 300.0


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[str]:
    """One three-primary Redis Cluster for the module (each test still gets its own namespace)."""
    with RedisClusterNodes() as cluster:
        yield cluster.url


@pytest.fixture
def bus_options() -> BusOptions:
    return BusOptions()


# The in-process backend is the fast tier; the Redis ones need servers.
@pytest_asyncio.fixture(params=[pytest.param(name, marks=pytest.mark.unit if name == "memory" else pytest.mark.live)
                                for name in BACKENDS])
async def bus(request: pytest.FixtureRequest, bus_options: BusOptions) -> AsyncIterator[Bus]:
    """A fresh, not yet started bus of one backend; closed after the test (closing twice must be safe)."""
    if request.param == "redis":
        url = redis_namespace(REDIS_URL)
    elif request.param == "redis-cluster":
        url = f"{request.getfixturevalue('redis_cluster')}?namespace=test-{uuid.uuid4().hex[:12]}"
    else:
        url = "memory://"
    instance = create_bus(
        url,
        history=bus_options.history,
        workers=bus_options.workers,
        queue_size=bus_options.queue_size,
        idempotency_ttl=bus_options.idempotency_ttl,
    )
    try:
        yield instance
    finally:
        async with asyncio.timeout(WAIT * 2):
            await instance.close(WAIT)
        if request.param == "redis":
            await drop_namespace(url)


# --- helpers ---------------------------------------------------------------------------------------------------


class Recorder:
    """A command handler that records every call and signals progress through events.

    ``gate``: when given, each call waits for it before finishing (to hold workers busy on purpose).
    ``action``: run inside the handler (e.g. publish, as a real command does).
    A command whose args hold ``{"fail": True}`` raises after being recorded.
    """

    def __init__(
        self,
        expect: int = 0,
        *,
        gate: asyncio.Event | None = None,
        action: Callable[[str, Command], Awaitable[None]] | None = None,
    ) -> None:
        self.expect = expect
        self.gate = gate
        self.action = action
        self.entered: list[tuple[str, Command]] = []
        self.finished: list[str] = []
        self.first_entered = asyncio.Event()
        self.all_arrived = asyncio.Event()  # set when ``expect`` calls have finished
        self._progress = asyncio.Event()  # set whenever a call finishes (for ``wait_finished``)

    async def __call__(self, command_id: str, command: Command) -> None:
        self.entered.append((command_id, command))
        self.first_entered.set()
        try:
            if self.gate is not None:
                await self.gate.wait()
            if self.action is not None:
                await self.action(command_id, command)
            if command.args.get("fail"):
                raise RuntimeError(f"handler failure on purpose ({command_id})")
        finally:
            self.finished.append(command_id)
            self._progress.set()
            if len(self.finished) == self.expect:
                self.all_arrived.set()

    async def wait_all(self) -> None:
        async with asyncio.timeout(WAIT):
            await self.all_arrived.wait()

    async def wait_finished(self, count: int) -> None:
        """Until ``count`` calls have finished. Clearing before each wait cannot lose a wake-up: nothing else
        runs between the length check and the ``clear()``."""
        async with asyncio.timeout(WAIT):
            while len(self.finished) < count:
                self._progress.clear()
                await self._progress.wait()

    async def wait_first(self) -> None:
        async with asyncio.timeout(WAIT):
            await self.first_entered.wait()


async def _noop(command_id: str, command: Command) -> None:
    """Notification-only tests still start the bus: a networked backend connects in ``start``."""


@contextlib.asynccontextmanager
async def subscription(
    bus: Bus, topics: Sequence[str], after: str | None = None
) -> AsyncIterator[AsyncIterator[Notification | Gap]]:
    """``bus.subscribe`` that is always closed, so a backend's per-subscription resources are released."""
    iterator = bus.subscribe(topics, after=after)
    try:
        yield iterator
    finally:
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            async with asyncio.timeout(WAIT):
                await aclose()


async def next_item(iterator: AsyncIterator[Notification | Gap]) -> Notification | Gap:
    async with asyncio.timeout(WAIT):
        return await iterator.__anext__()


async def next_notification(iterator: AsyncIterator[Notification | Gap]) -> Notification:
    item = await next_item(iterator)
    assert isinstance(item, Notification), f"expected a notification, got {item!r}"
    return item


async def take(iterator: AsyncIterator[Notification | Gap], n: int) -> list[Notification]:
    return [await next_notification(iterator) for _ in range(n)]


def assert_increasing(versions: Sequence[str]) -> None:
    keys = [version_key(v) for v in versions]
    assert all(a < b for a, b in itertools.pairwise(keys)), f"not strictly increasing: {versions}"


# --- commands --------------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_submit_before_start_is_unavailable(bus: Bus) -> None:
    """Nothing can be accepted before a handler exists to run it."""
    assert not bus.ready
    with pytest.raises(Unavailable):
        await bus.submit(Command("early"))


@pytest.mark.asyncio
async def test_each_accepted_command_runs_exactly_once(bus: Bus) -> None:
    n = 25
    recorder = Recorder(expect=n)
    await bus.start(recorder)
    assert bus.ready
    ids = [await bus.submit(Command("add", {"i": i})) for i in range(n)]
    assert len(set(ids)) == n, "command ids must be distinct"
    await recorder.wait_all()
    # Closing drains the bus: any duplicate delivery would have happened by the time it returns.
    async with asyncio.timeout(WAIT * 2):
        await bus.close(WAIT)
    assert len(recorder.entered) == n
    assert sorted(c.args["i"] for _, c in recorder.entered) == list(range(n))
    # The handler sees the id that submit returned for that very command.
    assert {command_id: c.args["i"] for command_id, c in recorder.entered} == {ids[i]: i for i in range(n)}


@pytest.mark.asyncio
async def test_the_context_travels_with_the_command(bus: Bus) -> None:
    """What the request told besides the body reaches the handler as it was submitted, on the first delivery."""
    recorder = Recorder(expect=2)
    await bus.start(recorder)
    context = {"client": "203.0.113.9", "headers": {"x-trace": "t-1"}, "identity": {"sub": "ann"},
               "path": {"id": "7"}}
    with_context = await bus.submit(Command("add", {"i": 1}, "key-ctx", context=context))
    without = await bus.submit(Command("add", {"i": 2}))
    await recorder.wait_all()
    received = dict(recorder.entered)
    assert received[with_context].context == context
    assert received[with_context].idempotency_key == "key-ctx"
    assert received[without].context == {}
    assert {c.delivery for c in received.values()} == {1}


@pytest.mark.asyncio
async def test_idempotency_key_returns_first_id_and_runs_once(bus: Bus) -> None:
    recorder = Recorder(expect=2)
    await bus.start(recorder)
    first = await bus.submit(Command("add", {"text": "milk"}, idempotency_key="k-1"))
    # A client retry (same key), even with different args, is the same command.
    again = await bus.submit(Command("add", {"text": "milk"}, idempotency_key="k-1"))
    other = await bus.submit(Command("add", {"text": "milk"}, idempotency_key="k-2"))
    assert again == first
    assert other != first
    await recorder.wait_all()
    # After the command ran, a late retry still maps to it and still does not run it again.
    assert await bus.submit(Command("add", {"text": "milk"}, idempotency_key="k-1")) == first
    async with asyncio.timeout(WAIT * 2):
        await bus.close(WAIT)
    assert [command_id for command_id, _ in recorder.entered].count(first) == 1
    assert len(recorder.entered) == 2


@pytest.mark.asyncio
@pytest.mark.parametrize("bus_options", [BusOptions(workers=1, queue_size=1)])
async def test_full_queue_is_unavailable_with_retry_after(bus: Bus) -> None:
    """Backpressure on commands is a 503 the client can retry, never an unbounded queue."""
    gate = asyncio.Event()
    recorder = Recorder(expect=3, gate=gate)
    await bus.start(recorder)
    await bus.submit(Command("c", {"i": 0}))
    await recorder.wait_first()  # the only worker is now busy, the queue is empty again
    await bus.submit(Command("c", {"i": 1}))  # fills the queue (size 1)
    with pytest.raises(Unavailable) as info:
        await bus.submit(Command("c", {"i": 2}))
    assert info.value.status == 503
    assert int(info.value.headers()["Retry-After"]) >= 1
    # A refused command with an idempotency key must not be remembered, or its retry would be lost.
    with pytest.raises(Unavailable):
        await bus.submit(Command("c", {"i": 3}, idempotency_key="retry-me"))
    gate.set()
    # The refusal is transient: once commands 0 and 1 are done the queue is empty, and the retry is accepted.
    await recorder.wait_finished(2)
    await bus.submit(Command("c", {"i": 3}, idempotency_key="retry-me"))
    await recorder.wait_all()
    async with asyncio.timeout(WAIT * 2):
        await bus.close(WAIT)
    assert sorted(c.args["i"] for _, c in recorder.entered) == [0, 1, 3]


@pytest.mark.asyncio
@pytest.mark.parametrize("bus_options", [BusOptions(workers=1, queue_size=10)])
async def test_close_finishes_accepted_commands_then_refuses(bus: Bus) -> None:
    gate = asyncio.Event()
    recorder = Recorder(expect=3, gate=gate)
    await bus.start(recorder)
    for i in range(3):
        await bus.submit(Command("c", {"i": i}))
    await recorder.wait_first()
    closing = asyncio.create_task(bus.close(WAIT))
    gate.set()
    async with asyncio.timeout(WAIT * 2):
        await closing
    # close() returned only after every accepted command had finished, not merely started.
    assert len(recorder.finished) == 3
    assert not bus.ready
    with pytest.raises(Unavailable) as info:
        await bus.submit(Command("late"))
    assert info.value.status == 503
    assert "Retry-After" in info.value.headers()


@pytest.mark.asyncio
@pytest.mark.parametrize("bus_options", [BusOptions(workers=1)])
async def test_failing_handler_does_not_kill_workers(bus: Bus) -> None:
    """With a single worker, later commands only run if the worker survived the earlier failures."""
    recorder = Recorder(expect=4)
    await bus.start(recorder)
    for args in ({"fail": True}, {"fail": True}, {"i": 1}, {"i": 2}):
        await bus.submit(Command("c", args))
    await recorder.wait_all()
    assert [c.args for _, c in recorder.entered] == [{"fail": True}, {"fail": True}, {"i": 1}, {"i": 2}]


# --- notifications ---------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_versions_increase_across_topics(bus: Bus) -> None:
    await bus.start(_noop)
    assert await bus.head() == "0"
    assert await bus.current_version("a") is None
    topics = ["a", "b", "a", "c", "b", "b", "a", "c"] * 3
    versions = [await bus.publish(t, f"{i}".encode()) for i, t in enumerate(topics)]
    assert_increasing(versions)
    assert await bus.head() == versions[-1]
    for topic in "abc":
        last = max(i for i, t in enumerate(topics) if t == topic)
        assert await bus.current_version(topic) == versions[last]
    assert await bus.current_version("never") is None


@pytest.mark.asyncio
async def test_subscribe_interleaved_topics_in_version_order(bus: Bus) -> None:
    await bus.start(_noop)
    # ``head()`` is the documented "from now" cursor.
    async with subscription(bus, ["a", "b"], after=await bus.head()) as sub:
        published = [(t, await bus.publish(t, t.encode())) for t in ["a", "c", "b", "a", "c", "b", "b"]]
        wanted = [(t, v) for t, v in published if t in ("a", "b")]
        got = await take(sub, len(wanted))
        assert [(n.topic, n.version) for n in got] == wanted
        assert [n.payload for n in got] == [t.encode() for t, _ in wanted]
        assert_increasing([n.version for n in got])
        # "c" is not delivered: after more "c" changes, the next item is the next "a".
        await bus.publish("c")
        marker = await bus.publish("a", b"marker")
        assert (await next_notification(sub)) == Notification("a", marker, b"marker")


@pytest.mark.asyncio
async def test_subscription_wakes_for_a_live_publish_from_a_command(bus: Bus) -> None:
    """The real flow: a command's handler publishes while a subscriber is already waiting."""

    async def publish_change(command_id: str, command: Command) -> None:
        await bus.publish("todos", command_id.encode())

    recorder = Recorder(expect=1, action=publish_change)
    await bus.start(recorder)
    async with subscription(bus, ["todos"], after=await bus.head()) as sub:
        command_id = await bus.submit(Command("add"))
        notification = await next_notification(sub)  # parks the subscriber; the worker then runs
        assert notification.topic == "todos"
        assert notification.payload == command_id.encode()
        assert notification.version == await bus.current_version("todos")


@pytest.mark.asyncio
async def test_subscribe_after_replays_then_continues_live(bus: Bus) -> None:
    await bus.start(_noop)
    versions = [await bus.publish("a", bytes([i])) for i in range(6)]
    await bus.publish("other")
    async with subscription(bus, ["a"], after=versions[2]) as sub:
        replayed = await take(sub, 3)
        assert [n.version for n in replayed] == versions[3:]
        assert [n.payload for n in replayed] == [bytes([i]) for i in range(3, 6)]
        live = await bus.publish("a", b"live")
        assert (await next_notification(sub)) == Notification("a", live, b"live")


@pytest.mark.asyncio
async def test_subscribe_after_zero_replays_everything(bus: Bus) -> None:
    await bus.start(_noop)
    versions = [await bus.publish(t) for t in "abab"]
    async with subscription(bus, ["a", "b"], after="0") as sub:
        assert [n.version for n in await take(sub, 4)] == versions


@pytest.mark.asyncio
async def test_history_slices(bus: Bus) -> None:
    await bus.start(_noop)
    published = [(t, await bus.publish(t, t.encode())) for t in ["a", "b", "a", "c", "b"]]
    a1, b1, a2, _c1, b2 = (v for _, v in published)

    found, gaps = await bus.history(["a", "b"], None)
    assert [n.version for n in found] == [a1, b1, a2, b2]
    assert gaps == []
    found, gaps = await bus.history(["b", "a"], a1)  # topic order does not matter, version order does
    assert [n.version for n in found] == [b1, a2, b2]
    found, _ = await bus.history(["a"], a2)
    assert found == []
    found, _ = await bus.history(["c"], None)
    assert found == [Notification("c", published[3][1], b"c")]
    assert await bus.history(["never"], None) == ([], [])
    assert await bus.history(["a", "b", "c"], await bus.head()) == ([], [])


@pytest.mark.asyncio
@pytest.mark.parametrize("bus_options", [BusOptions(history=3)])
async def test_evicted_history_yields_a_gap_first(bus: Bus) -> None:
    """A subscriber resuming from an evicted version learns it lost changes, then gets what is left."""
    await bus.start(_noop)
    versions = [await bus.publish("a", bytes([i])) for i in range(10)]
    after = versions[0]

    found, gaps = await bus.history(["a"], after)
    assert gaps == [Gap("a", after)]
    assert [n.version for n in found] == versions[-3:]

    async with subscription(bus, ["a"], after=after) as sub:
        assert (await next_item(sub)) == Gap("a", after)
        assert [n.version for n in await take(sub, 3)] == versions[-3:]
        live = await bus.publish("a")
        assert (await next_notification(sub)).version == live  # still subscribed after the gap


@pytest.mark.asyncio
@pytest.mark.parametrize("bus_options", [BusOptions(history=3)])
async def test_no_gap_when_nothing_wanted_was_evicted(bus: Bus) -> None:
    """Resuming right at the eviction boundary loses nothing, so there must be no (false) gap."""
    await bus.start(_noop)
    versions = [await bus.publish("a") for _ in range(10)]
    boundary = versions[-4]  # the newest evicted version: everything after it is still stored
    assert await bus.history(["a"], boundary) == (
        [Notification("a", v) for v in versions[-3:]],
        [],
    )
    async with subscription(bus, ["a"], after=boundary) as sub:
        assert [n.version for n in await take(sub, 3)] == versions[-3:]


@pytest.mark.asyncio
@pytest.mark.parametrize("bus_options", [BusOptions(history=3)])
async def test_gap_is_per_topic(bus: Bus) -> None:
    await bus.start(_noop)
    first_b = await bus.publish("b")
    a_versions = [await bus.publish("a") for _ in range(5)]
    found, gaps = await bus.history(["a", "b"], "0")
    assert gaps == [Gap("a", None)]  # from the very start: nothing to name as "after"
    assert [n.version for n in found] == [first_b, *a_versions[-3:]]


@pytest.mark.asyncio
async def test_subscription_ends_when_the_bus_closes(bus: Bus) -> None:
    """A closing gateway must not leave subscribers hanging on a bus that will never publish again."""
    await bus.start(_noop)
    async with subscription(bus, ["a"], after=await bus.head()) as sub:
        pending = asyncio.ensure_future(sub.__anext__())
        async with asyncio.timeout(WAIT * 2):
            await bus.close(WAIT)
        with pytest.raises(StopAsyncIteration):
            async with asyncio.timeout(WAIT):
                await pending
