"""The Redis bus: many gateway processes and machines, one command queue and one notification order.

Commands are appended to a Stream *before* ``submit`` returns (so the 204 survives a crash of the process that
gave it) and consumed by a group shared by every process (``gateway.bus.redis_commands``: leases, reclaim, dead
letters). Handling is therefore at least once: a process that dies *after* its handler but before the
acknowledgement leaves the command to be run again, and the handler gets the command id to recognise it.

Notifications go to one capped Stream per topic, stamped by one script with a version that increases across all
topics (``gateway.bus.redis_layout``); each subscription tails the Streams of its topics with ``XREAD BLOCK``.

Faults (``gateway.bus.redis_link``): every call is bounded by ``timeout``. A failed call or health check marks the
bus down: ``ready`` turns False (``/readyz`` 503), ``submit`` and ``publish`` raise ``Unavailable`` (503 with
``Retry-After``), never a silent drop. A monitor reconnects with jittered exponential backoff; subscriptions wait,
then resume from their cursors and yield a ``Gap`` for any topic that may have lost notifications meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import orjson

from gateway.bus.base import Command, CommandHandler, Gap, Notification
from gateway.bus.redis_commands import MAX_DELIVERIES, CommandConsumer
from gateway.bus.redis_layout import (
    MARK_BORN,
    PUBLISH,
    SUBMIT,
    Keys,
    exclusive,
    gap_topics,
    horizon,
    is_start,
    parse_url,
    stream_id,
    text,
)
from gateway.bus.redis_link import ERRORS, RETRY_AFTER, HealthListener, RedisLink, stop_requested
from gateway.core.errors import Unavailable
from gateway.core.versions import ZERO, version_key

__all__ = ["MAX_DELIVERIES", "RedisBus"]

log = logging.getLogger("gateway.bus")

BLOCK = 5.0  # seconds one XREAD waits at most (then it is simply repeated)


class RedisBus:
    """``Bus`` on Redis Streams (Redis 6.2 or newer; plain, Sentinel or Cluster)."""

    def __init__(self, url: str, *, history: int = 1000, workers: int = 4, queue_size: int = 10_000,
                 idempotency_ttl: float = 300.0, lease: float = 30.0, timeout: float = 2.0,
                 on_health: HealthListener | None = None) -> None:
        if history < 1 or workers < 1 or queue_size < 1 or lease <= 0 or timeout <= 0:
            raise ValueError("history, workers, queue_size, lease and timeout must be positive")
        self._keys = Keys(parse_url(url).namespace)
        self._link = RedisLink(parse_url(url), timeout, on_health)
        self._link.on_reconnect = self._prepare
        self._publish = self._link.client.register_script(PUBLISH)
        self._submit = self._link.client.register_script(SUBMIT)
        self._mark_born = self._link.client.register_script(MARK_BORN)
        self._history = history
        self._workers = workers
        self._queue_size = queue_size
        self._ttl_ms = max(1, int(idempotency_ttl * 1000))
        self._lease = lease
        self._consumer: CommandConsumer | None = None
        self._accepting = False
        self._seen = ZERO  # the newest version this process knows of: "from now" for a subscription
        self._seen_known = False  # whether ``_seen`` came from Redis (a head read or a publish) at all

    @property
    def ready(self) -> bool:
        return self._accepting and self._link.up

    @property
    def outages(self) -> int:
        return self._link.outages

    async def _prepare(self) -> None:
        """What Redis must hold before serving (again): the consumer group and the data's lifetime mark."""
        if self._consumer is not None:
            await self._consumer.ensure_group()
        await self._link.io(lambda: self._mark_born(keys=[self._keys.born, self._keys.last]))

    async def start(self, handler: CommandHandler) -> None:
        self._consumer = CommandConsumer(self._link, self._keys, handler, workers=self._workers, lease=self._lease)
        try:
            await self._prepare()
            await self.head()
        except Unavailable:
            log.warning("Redis bus unreachable at start; serving not-ready until it is back")
        self._accepting = True
        self._link.start_monitor()
        self._consumer.start()

    async def close(self, timeout: float) -> list[str]:
        """Refuse new commands, run what was accepted before (up to ``timeout``), end subscriptions. A command
        still running at the deadline is cancelled unacknowledged: it stays in the Stream and another process
        claims it once its lease runs out, so nothing accepted is lost (the returned list is empty)."""
        if self._link.closed:
            return []
        self._accepting = False
        leftovers = await self._consumer.stop(timeout) if self._consumer is not None else []
        for task in leftovers:
            task.cancel()
        await self._link.close()  # closing the connections also ends reads a cancelled task is unwinding from
        if leftovers:
            _done, stuck = await asyncio.wait(leftovers, timeout=2.0)
            for task in stuck:
                log.warning("Redis bus task %s did not stop within 2 s of the close", task.get_name())
        return []

    async def submit(self, command: Command) -> str:
        if not self._accepting:
            raise Unavailable("the gateway is not accepting commands (starting or shutting down)", 2)
        if not self._link.up:
            raise Unavailable("the Redis bus is unreachable", RETRY_AFTER)
        key = command.idempotency_key or ""
        keys = [self._keys.commands, self._keys.idempotency(key) if key else self._keys.commands]
        args = [command.name, orjson.dumps(dict(command.args)), key, self._ttl_ms, self._queue_size,
                self._keys.group, orjson.dumps(dict(command.context))]
        status, value = await self._link.io(lambda: self._submit(keys=keys, args=args))
        if int(status) == 2:
            raise Unavailable(f"the command queue is full ({text(value)} waiting)", 1)
        return text(value)

    # -- notifications ------------------------------------------------------------------------------------------

    def _note(self, version: str) -> None:
        self._seen_known = True
        if version_key(version) > version_key(self._seen):
            self._seen = version

    async def publish(self, topic: str, payload: bytes = b"") -> str:
        if not self._link.up:
            raise Unavailable("the Redis bus is unreachable", RETRY_AFTER)
        keys = [self._keys.last, self._keys.born, self._keys.evicted, self._keys.topic(topic)]
        version = text(await self._link.io(lambda: self._publish(keys=keys, args=[topic, payload, self._history])))
        self._note(version)
        return version

    async def head(self) -> str:
        last = await self._link.io(lambda: self._link.client.get(self._keys.last))
        version = text(last) if last is not None else ZERO
        self._note(version)
        return version

    async def current_version(self, topic: str) -> str | None:
        top = await self._link.io(lambda: self._link.client.xrevrange(self._keys.topic(topic), "+", "-", count=1))
        return text(top[0][0]) if top else None

    async def history(self, topics: Sequence[str], after: str | None) -> tuple[list[Notification], list[Gap]]:
        if not topics:
            return [], []
        start = version_key(after) if after is not None else (0, 0)
        start_id = "-" if is_start(start) else exclusive(after or ZERO)

        async def read() -> list[Any]:  # one transaction: the entries and the trim marks describe the same moment
            async with self._link.client.pipeline(transaction=True) as pipe:
                for topic in topics:
                    pipe.xrange(self._keys.topic(topic), start_id, "+")
                pipe.hmget(self._keys.evicted, list(topics))
                pipe.get(self._keys.born)
                return await pipe.execute()  # type: ignore[no-any-return]

        replies = await self._link.io(read)
        found = [Notification(topic, text(entry_id), fields.get(b"p", b""))
                 for topic, entries in zip(topics, replies, strict=False) for entry_id, fields in entries]
        found.sort(key=lambda n: version_key(n.version))
        lost = gap_topics([(t, start) for t in topics], replies[-2], replies[-1])
        return found, [Gap(t, None if is_start(start) else after) for t, _ in lost]

    def subscribe(self, topics: Sequence[str], after: str | None = None) -> AsyncIterator[Notification | Gap]:
        """History after ``after``, then live. Without ``after``: from the newest version this process has seen
        (its own publishes included), which is this call's moment for everything this process did before it;
        before this process ever reached Redis, from the head it reads once Redis answers (nothing can have been
        published by this process before that)."""
        start = after if after is not None else self._seen if self._seen_known else None
        return self._follow(list(topics), start)

    async def _gaps(self, cursors: dict[str, str]) -> list[Gap]:
        """Gaps of these topics after their cursors; a trimmed topic's cursor moves to its trim watermark."""
        topics = list(cursors)

        async def read() -> list[Any]:
            async with self._link.client.pipeline(transaction=True) as pipe:
                pipe.hmget(self._keys.evicted, topics)
                pipe.get(self._keys.born)
                return await pipe.execute()  # type: ignore[no-any-return]

        evicted, born = await self._link.io(read)
        keyed = [(t, version_key(cursors[t])) for t in topics]
        gaps = []
        for topic, resume in gap_topics(keyed, evicted, born):
            before = cursors[topic]
            gaps.append(Gap(topic, None if is_start(version_key(before)) else before))
            if resume is not None:
                cursors[topic] = resume
        return gaps

    async def _follow(self, topics: list[str], after: str | None) -> AsyncIterator[Notification | Gap]:
        if not topics:
            return
        while after is None:
            try:
                after = await self.head()
            except Unavailable:
                if not await self._link.wait_up():
                    return
        names = {self._keys.topic(t): t for t in topics}
        cursors = dict.fromkeys(topics, stream_id(after))
        check: list[str] = list(topics)  # topics whose trim marks must be checked before the next delivery
        while not self._link.closed and not stop_requested():  # (a cancel lost in redis-py still ends it)
            if check:
                checked = {t: cursors[t] for t in check}
                try:
                    gaps = await self._gaps(checked)
                except Unavailable:
                    if not await self._link.wait_up():
                        return
                    continue
                check = []
                cursors.update(checked)
                for gap in gaps:
                    yield gap
            streams = {key: cursors[topic] for key, topic in names.items()}
            try:
                async with self._link.read_bound(BLOCK + self._link.timeout):  # a close ends it at once
                    reply = await self._link.blocking.xread(streams, count=self._history, block=int(BLOCK * 1000))
            except ERRORS as exc:
                if self._link.closed:
                    return
                self._link.failed(exc)
                if not await self._link.wait_up():
                    return
                check = list(topics)  # whatever happened meanwhile, it is checked before going on
                continue
            if not reply:
                continue
            batches = {}
            for key, entries in reply:
                topic = names[text(key)]
                batches[topic] = [(version_key(text(i)), text(i), fields.get(b"p", b"")) for i, fields in entries]
                if len(entries) >= self._history:
                    check.append(topic)  # the whole capped Stream came back: what was before it may be trimmed
            if check:
                checked = {t: cursors[t] for t in check}
                try:
                    gaps = await self._gaps(checked)
                except Unavailable:
                    continue  # retried from the same cursors once Redis is back
                check = []
                for gap in gaps:
                    yield gap  # what this read returned is still delivered: it was read before the trim
                cursors.update(checked)
            limit = horizon(batches, self._history)
            ready = [(key, topic, version, payload) for topic, entries in batches.items()
                     for key, version, payload in entries if limit is None or key <= limit]
            ready.sort()
            for key, topic, version, payload in ready:
                if key > version_key(cursors[topic]):
                    cursors[topic] = version
                yield Notification(topic, version, payload)
            if ready:
                self._note(ready[-1][2])
