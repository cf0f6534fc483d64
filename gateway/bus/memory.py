"""The embedded bus: one process, no broker. Commands run on worker tasks; notifications live in ring buffers.

Notifications are not copied into per-subscriber queues. Each topic keeps a bounded history (a deque) and every
subscription is a cursor into those histories plus an ``asyncio.Event`` to wake it: publishing is an append and a
few ``set()`` calls, so a publisher never waits on a subscriber, and a subscriber that falls behind by more than
the history learns it through a ``Gap`` instead of growing a queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Sequence

from gateway.bus.base import Command, CommandHandler, Gap, Notification
from gateway.core.errors import Unavailable
from gateway.core.versions import version_key

log = logging.getLogger("gateway.bus")


class _Topic:
    __slots__ = ("evicted_up_to", "history")

    def __init__(self, size: int) -> None:
        self.history: deque[Notification] = deque(maxlen=size)
        self.evicted_up_to = 0  # the newest version that fell out of the history (0: none)


class MemoryBus:
    """``Bus`` for a single process."""

    def __init__(
        self, *, history: int = 1000, workers: int = 4, queue_size: int = 10_000, idempotency_ttl: float = 300.0
    ) -> None:
        if history < 1 or workers < 1 or queue_size < 1:
            raise ValueError("history, workers and queue_size must be positive")
        self._history_size = history
        self._workers_count = workers
        self._queue: asyncio.Queue[tuple[str, Command]] = asyncio.Queue(maxsize=queue_size)
        # A topic has an entry here once it was published to (its history), and in ``_waiters`` while somebody
        # follows it: reading a name never creates anything that outlives the reader, so the tables are bounded
        # by the topics with history and the live subscriptions, not by every name a client ever asked for.
        self._topics: dict[str, _Topic] = {}
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._version = 0
        self._next_command = 0
        self._idempotency: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._idempotency_ttl = idempotency_ttl
        self._workers: list[asyncio.Task[None]] = []
        self._running: dict[asyncio.Task[None] | None, tuple[str, Command]] = {}  # what each worker runs now
        self._handler: CommandHandler | None = None
        self._accepting = False
        self._closed = False

    @property
    def ready(self) -> bool:
        return self._accepting

    async def start(self, handler: CommandHandler) -> None:
        self._handler = handler
        self._accepting = True
        self._workers = [
            asyncio.create_task(self._work(), name=f"gateway-command-worker-{i}")
            for i in range(self._workers_count)
        ]

    async def close(self, timeout: float) -> list[str]:
        """Refuse new commands and run the accepted ones for up to ``timeout`` seconds. Past it, the commands
        still running are cancelled and those still queued dropped; each is logged by id, and their ids are
        returned: nobody else will run them (this bus lives and dies with the process)."""
        self._accepting = False
        unrun: list[str] = []
        if self._workers:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._queue.join(), timeout)
            interrupted = list(self._running.values())
            for task in self._workers:
                task.cancel()
            await asyncio.gather(*self._workers, return_exceptions=True)
            self._workers = []
            for command_id, command in interrupted:
                log.error("command %s (%s) interrupted by the drain deadline: it may have partly run",
                          command_id, command.name)
                unrun.append(command_id)
            while not self._queue.empty():
                command_id, command = self._queue.get_nowait()
                self._queue.task_done()
                log.error("command %s (%s) not run: it was accepted, but the drain deadline came first",
                          command_id, command.name)
                unrun.append(command_id)
        self._closed = True
        for waiters in self._waiters.values():
            for waiter in waiters:
                waiter.set()
        return unrun

    # -- commands -------------------------------------------------------------------------------------------

    async def submit(self, command: Command) -> str:
        if not self._accepting:
            raise Unavailable("the gateway is not accepting commands (starting or shutting down)", 2)
        key = command.idempotency_key
        if key is not None:
            self._expire_keys()
            seen = self._idempotency.get(key)
            if seen is not None:
                return seen[0]
        self._next_command += 1
        command_id = str(self._next_command)
        try:
            self._queue.put_nowait((command_id, command))
        except asyncio.QueueFull:
            raise Unavailable(f"the command queue is full ({self._queue.maxsize} pending)", 1) from None
        if key is not None:
            self._idempotency[key] = (command_id, time.monotonic())
        return command_id

    def _expire_keys(self) -> None:
        deadline = time.monotonic() - self._idempotency_ttl
        keys = self._idempotency
        while keys:
            first = next(iter(keys.values()))
            if first[1] >= deadline and len(keys) <= 100_000:
                break
            keys.popitem(last=False)

    async def _work(self) -> None:
        assert self._handler is not None
        me = asyncio.current_task()
        while True:
            command_id, command = await self._queue.get()
            self._running[me] = (command_id, command)
            try:
                await self._handler(command_id, command)
            except asyncio.CancelledError:
                raise
            except Exception:  # the handler wrapper logs; this guards the worker itself
                log.exception("command %s (%s) failed", command_id, command.name)
            finally:
                del self._running[me]
                self._queue.task_done()

    # -- notifications -----------------------------------------------------------------------------------------

    @property
    def topic_count(self) -> int:
        """Entries in the topic tables (history and followers): what a test of their bound looks at."""
        return len(self._topics.keys() | self._waiters.keys())

    async def publish(self, topic: str, payload: bytes = b"") -> str:
        self._version += 1
        version = str(self._version)
        t = self._topics.get(topic)
        if t is None:
            t = self._topics[topic] = _Topic(self._history_size)
        if len(t.history) == t.history.maxlen:
            t.evicted_up_to = int(t.history[0].version)
        t.history.append(Notification(topic, version, payload))
        for waiter in self._waiters.get(topic, ()):
            waiter.set()
        return version

    async def head(self) -> str:
        return str(self._version)

    async def current_version(self, topic: str) -> str | None:
        t = self._topics.get(topic)
        return t.history[-1].version if t and t.history else None

    def _since(self, topics: Sequence[str], cursors: dict[str, int]) -> tuple[list[Notification], list[Gap]]:
        found: list[Notification] = []
        gaps: list[Gap] = []
        for name in topics:
            t = self._topics.get(name)
            if t is None:
                continue  # never published: no history, nothing evicted
            after = cursors[name]
            if t.evicted_up_to > after:
                gaps.append(Gap(name, str(after) if after else None))
            if t.history and int(t.history[-1].version) > after:
                # From the newest backwards: a follower is usually one or two behind, and the history is 1,000 long.
                newer = []
                for n in reversed(t.history):
                    if int(n.version) <= after:
                        break
                    newer.append(n)
                newer.reverse()
                found.extend(newer)
        found.sort(key=lambda n: int(n.version))
        return found, gaps

    async def history(self, topics: Sequence[str], after: str | None) -> tuple[list[Notification], list[Gap]]:
        start = version_key(after)[0] if after is not None else 0
        return self._since(topics, dict.fromkeys(topics, start))

    def subscribe(self, topics: Sequence[str], after: str | None = None) -> AsyncIterator[Notification | Gap]:
        """The topics' changes; replays from ``after`` first when given.

        "From now" (no ``after``) means from this call, not from the first iteration: a publish between the two
        is delivered, never silently skipped.
        """
        start = version_key(after)[0] if after is not None else self._version
        return self._follow(topics, start)

    async def _follow(self, topics: Sequence[str], start: int) -> AsyncIterator[Notification | Gap]:
        wake = asyncio.Event()
        cursors = dict.fromkeys(topics, start)
        for name in topics:
            self._waiters.setdefault(name, set()).add(wake)
        try:
            while not self._closed:
                wake.clear()
                found, gaps = self._since(topics, cursors)
                for gap in gaps:
                    cursors[gap.topic] = self._topics[gap.topic].evicted_up_to
                    yield gap
                for notification in found:
                    cursors[notification.topic] = int(notification.version)
                    yield notification
                if not found and not gaps:
                    await wake.wait()
        finally:
            for name in topics:
                waiters = self._waiters.get(name)
                if waiters is not None:
                    waiters.discard(wake)
                    if not waiters:
                        del self._waiters[name]
