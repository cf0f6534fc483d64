"""The Redis bus: many gateway processes and machines, one command queue and one notification order.

Commands are appended to a Stream *before* ``submit`` returns (so the 204 survives a crash of the process that
gave it) and read by a consumer group shared by every process: each command goes to one process, which acknowledges
and deletes it after its handler ran. A process renews the lease of the commands it is running; a command whose
lease ran out (its process died) is claimed by another process and run there; one that keeps dying with its
processes is buried in a dead-letter Stream after ``MAX_DELIVERIES``. Handling is therefore at least once: a
process that dies *after* its handler but before the acknowledgement leaves the command to be run again, and the
handler gets the command id to recognise it.

Notifications go to one capped Stream per topic, stamped by one script with a version that increases across all
topics (``gateway.bus.redis_layout``); each subscription tails the Streams of its topics with ``XREAD BLOCK``.

Faults: every call is bounded by ``timeout``. A failed call or health check marks the bus down: ``ready`` turns
False (``/readyz`` 503), ``submit`` and ``publish`` raise ``Unavailable`` (503 with ``Retry-After``), never a
silent drop. A monitor reconnects with jittered exponential backoff; subscriptions wait, then resume from their
cursors and yield a ``Gap`` for any topic that may have lost notifications meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from functools import partial
from typing import Any, TypeVar

import orjson
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.bus.base import Command, CommandHandler, Gap, Notification
from gateway.bus.redis_layout import (
    BURY,
    FINISH,
    MARK_BORN,
    PUBLISH,
    SUBMIT,
    Keys,
    RedisTarget,
    exclusive,
    gap_topics,
    horizon,
    is_start,
    parse_url,
    stream_id,
    text,
)
from gateway.core.errors import Unavailable
from gateway.core.versions import ZERO, VersionKey, version_key

log = logging.getLogger("gateway.bus")

T = TypeVar("T")

ERRORS = (RedisConnectionError, RedisTimeoutError, TimeoutError, OSError)
BLOCK = 5.0  # seconds one XREAD waits at most (then it is simply repeated)
COMMAND_BLOCK = 1.0  # the command reader's wait: also how soon it notices a drain
HEALTH_INTERVAL = 1.0  # seconds between health checks while Redis answers
BACKOFF = (0.1, 2.0)  # reconnect delay: first, largest (jittered, doubling)
RETRY_AFTER = 2  # seconds a client is told to wait while Redis is unreachable
MAX_DELIVERIES = 5  # a command delivered this often (its processes died each time) goes to the dead Stream

HealthListener = Callable[[bool], None]


def _clients(target: RedisTarget, timeout: float) -> tuple[Any, Any]:
    """A client for short calls (every reply within ``timeout``) and one for blocking reads (no socket timeout;
    the caller bounds each read itself).

    Typed ``Any`` on purpose: redis-py's annotations describe every reply shape of every protocol version at once;
    this module asks for RESP2 and reads the replies it documents.
    """
    common: dict[str, Any] = {"protocol": 2, "retry": Retry(NoBackoff(), 0), "socket_connect_timeout": timeout}
    if target.cluster:
        nodes = [ClusterNode(host, port) for host, port in target.cluster]
        auth: dict[str, Any] = {"username": target.username, "password": target.password}
        return (RedisCluster(startup_nodes=nodes, socket_timeout=timeout, **auth, **common),
                RedisCluster(startup_nodes=list(nodes), socket_timeout=None, **auth, **common))
    if target.sentinels:
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            list(target.sentinels),
            sentinel_kwargs={"socket_timeout": timeout, "socket_connect_timeout": timeout},
            password=target.password, username=target.username)
        return (sentinel.master_for(target.service, db=target.db, socket_timeout=timeout, **common),
                sentinel.master_for(target.service, db=target.db, socket_timeout=None, **common))
    return (Redis.from_url(target.url, socket_timeout=timeout, **common),
            Redis.from_url(target.url, socket_timeout=None, **common))


async def _drop_connections(client: Any, *, busy_too: bool) -> None:
    """Close a client's pooled connections (``busy_too``: also those in use, which ends their pending reads)."""
    with contextlib.suppress(*ERRORS):
        if isinstance(client, RedisCluster):
            for node in client.get_nodes():
                await (node.disconnect() if busy_too else node.disconnect_free_connections())
        else:
            await client.connection_pool.disconnect(inuse_connections=busy_too)


class RedisBus:
    """``Bus`` on Redis Streams (Redis 6.2 or newer)."""

    def __init__(self, url: str, *, history: int = 1000, workers: int = 4, queue_size: int = 10_000,
                 idempotency_ttl: float = 300.0, lease: float = 30.0, timeout: float = 2.0,
                 on_health: HealthListener | None = None) -> None:
        if history < 1 or workers < 1 or queue_size < 1 or lease <= 0 or timeout <= 0:
            raise ValueError("history, workers, queue_size, lease and timeout must be positive")
        self._target = parse_url(url)
        self._keys = Keys(self._target.namespace)
        self._client, self._blocking = _clients(self._target, timeout)
        self._publish = self._client.register_script(PUBLISH)
        self._submit = self._client.register_script(SUBMIT)
        self._finish_script = self._client.register_script(FINISH)
        self._bury = self._client.register_script(BURY)
        self._mark_born = self._client.register_script(MARK_BORN)
        self._history = history
        self._workers = workers
        self._queue_size = queue_size
        self._ttl_ms = max(1, int(idempotency_ttl * 1000))
        self._lease = lease
        self._timeout = timeout
        self._on_health = on_health
        self._consumer = f"{socket.gethostname()}-{os.getpid()}-{random.getrandbits(32):08x}"
        self._handler: CommandHandler | None = None
        self._running: dict[str, asyncio.Task[None]] = {}
        self._slot_free = asyncio.Event()
        self._slot_free.set()
        self._tasks: list[asyncio.Task[None]] = []
        self._burying: set[asyncio.Task[None]] = set()
        self._reader: asyncio.Task[None] | None = None
        self._drain_until: VersionKey | None = None
        self._draining = False
        self._accepting = False
        self._closed = False
        self._up = False
        self._up_event = asyncio.Event()
        self._check_now = asyncio.Event()
        self._seen = ZERO  # the newest version this process knows of: "from now" for a subscription
        self._seen_known = False  # whether ``_seen`` came from Redis (a head read or a publish) at all
        self.outages = 0

    # -- health ---------------------------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._accepting and self._up

    def _failed(self, exc: BaseException) -> None:
        if self._up:
            self._up = False
            self.outages += 1
            self._up_event.clear()
            log.warning("Redis bus unreachable (%s: %s); refusing commands until it is back", type(exc).__name__, exc)
            if self._on_health is not None:
                self._on_health(False)
        self._check_now.set()

    def _recovered(self) -> None:
        if not self._up:
            self._up = True
            self._up_event.set()
            log.info("Redis bus reachable")
            if self._on_health is not None:
                self._on_health(True)

    async def _io(self, call: Callable[[], Awaitable[T]]) -> T:
        """One bounded Redis call; a connection failure marks the bus down and becomes ``Unavailable``."""
        try:
            async with asyncio.timeout(self._timeout):
                result = await call()
        except ERRORS as exc:
            self._failed(exc)
            raise Unavailable(f"the Redis bus is unreachable ({type(exc).__name__})", RETRY_AFTER) from exc
        return result

    async def _monitor(self) -> None:
        """Health checks: every ``HEALTH_INTERVAL`` while up; with jittered, doubling delays while down."""
        delay = BACKOFF[0]
        while True:
            try:
                async with asyncio.timeout(self._timeout):
                    await self._client.ping()
            except ERRORS as exc:
                self._failed(exc)
                wait = delay * random.uniform(0.5, 1.0)
                delay = min(delay * 2, BACKOFF[1])
                # Blocked reads may sit on dead connections: drop them so their loops see the failure now.
                await _drop_connections(self._blocking, busy_too=True)
            else:
                if not self._up:
                    # Pooled connections idle since before the outage point at a server that may have restarted.
                    for client in (self._client, self._blocking):
                        await _drop_connections(client, busy_too=False)
                    with contextlib.suppress(Unavailable, ResponseError):
                        await self._ensure_group()
                        await self._io(lambda: self._mark_born(keys=[self._keys.born, self._keys.last]))
                self._recovered()
                delay = BACKOFF[0]
                wait = HEALTH_INTERVAL
            self._check_now.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._check_now.wait()

    async def _wait_up(self) -> bool:
        """Until Redis is reachable again (True) or the bus closes (False)."""
        while not self._closed:
            if self._up:
                return True
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(BACKOFF[1]):
                    await self._up_event.wait()
        return False

    # -- lifecycle ------------------------------------------------------------------------------------------------

    async def start(self, handler: CommandHandler) -> None:
        self._handler = handler
        self._up = True  # until the first call says otherwise: unreachable at start counts as an outage
        try:
            await self._ensure_group()
            await self._io(lambda: self._mark_born(keys=[self._keys.born, self._keys.last]))
            self._seen = await self.head()
            self._recovered()
        except Unavailable:
            log.warning("Redis bus unreachable at start; serving not-ready until it is back")
        self._accepting = True
        self._tasks = [asyncio.create_task(self._monitor(), name="gateway-redis-monitor"),
                       asyncio.create_task(self._leases(), name="gateway-redis-leases")]
        self._reader = asyncio.create_task(self._read_commands(), name="gateway-redis-commands")

    async def close(self, timeout: float) -> None:
        """Refuse new commands, run what was accepted before (up to ``timeout``), end subscriptions."""
        if self._closed:
            return
        self._accepting = False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if self._reader is not None:
            with contextlib.suppress(Unavailable, ResponseError):
                info = await self._io(lambda: self._client.xinfo_stream(self._keys.commands))
                self._drain_until = version_key(text(info["last-generated-id"]))
            self._draining = True
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, deadline - loop.time())):
                    await self._reader
            running = list(self._running.values())
            if running:
                await asyncio.wait(running, timeout=max(0.0, deadline - loop.time()))
        self._closed = True
        self._up_event.set()  # wakes waiters, who see ``_closed``
        leftovers = [*self._tasks, *self._burying, *self._running.values()]
        if self._reader is not None:
            leftovers.append(self._reader)
        for task in leftovers:
            task.cancel()
        # Closing the connections also ends any read a cancelled task is still unwinding from.
        for client in (self._blocking, self._client):
            with contextlib.suppress(*ERRORS):
                await client.aclose()
            await _drop_connections(client, busy_too=True)
        if leftovers:
            _done, stuck = await asyncio.wait(leftovers, timeout=2.0)
            for task in stuck:
                log.warning("Redis bus task %s did not stop within 2 s of the close", task.get_name())

    # -- commands -------------------------------------------------------------------------------------------------

    async def _ensure_group(self) -> None:
        try:
            await self._io(lambda: self._client.xgroup_create(self._keys.commands, self._keys.group, id="0",
                                                              mkstream=True))
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def submit(self, command: Command) -> str:
        if not self._accepting:
            raise Unavailable("the gateway is not accepting commands (starting or shutting down)", 2)
        if not self._up:
            raise Unavailable("the Redis bus is unreachable", RETRY_AFTER)
        key = command.idempotency_key or ""
        keys = [self._keys.commands, self._keys.idempotency(key) if key else self._keys.commands]
        args = [command.name, orjson.dumps(dict(command.args)), key, self._ttl_ms, self._queue_size,
                self._keys.group]
        status, value = await self._io(lambda: self._submit(keys=keys, args=args))
        if int(status) == 2:
            raise Unavailable(f"the command queue is full ({text(value)} waiting)", 1)
        return text(value)

    async def _read_commands(self) -> None:
        """Take commands from the group as workers come free; in a drain, only up to the last one accepted."""
        group, consumer, stream = self._keys.group, self._consumer, self._keys.commands
        while True:
            await self._slot_free.wait()
            if self._draining and (self._drain_until is None or not self._up):
                return
            if not await self._wait_up():
                return
            free = self._workers - len(self._running)
            block = None if self._draining else int(COMMAND_BLOCK * 1000)
            try:
                async with asyncio.timeout(COMMAND_BLOCK + self._timeout):
                    reply = await self._blocking.xreadgroup(group, consumer, {stream: ">"}, count=free, block=block)
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                with contextlib.suppress(Unavailable, ResponseError):  # Redis lost its data: start a new group
                    await self._ensure_group()
                continue
            except ERRORS as exc:
                if self._draining:
                    return
                self._failed(exc)
                continue
            entries = reply[0][1] if reply else []
            for entry_id, fields in entries:
                self._run(text(entry_id), fields)
            if self._draining:
                last = version_key(text(entries[-1][0])) if entries else None
                assert self._drain_until is not None
                if last is None or last >= self._drain_until:
                    return

    def _run(self, command_id: str, fields: dict[bytes, bytes]) -> None:
        if command_id in self._running:
            return
        try:
            command = Command(text(fields[b"n"]), orjson.loads(fields[b"a"]), text(fields.get(b"k", b"")) or None)
        except (KeyError, ValueError, orjson.JSONDecodeError):
            log.error("command %s is malformed; moving it to %s", command_id, self._keys.dead)
            task = asyncio.create_task(self._bury_later(command_id, 0))
            self._burying.add(task)
            task.add_done_callback(self._burying.discard)
            return
        self._running[command_id] = asyncio.create_task(self._handle(command_id, command),
                                                        name=f"gateway-command-{command_id}")
        if len(self._running) >= self._workers:
            self._slot_free.clear()

    async def _handle(self, command_id: str, command: Command) -> None:
        assert self._handler is not None
        try:
            try:
                await self._handler(command_id, command)
            except asyncio.CancelledError:
                raise  # not acknowledged: its lease runs out and another process runs it
            except Exception:  # the handler wrapper logs; this guards the worker itself
                log.exception("command %s (%s) failed", command_id, command.name)
            await self._acknowledge(command_id)
        finally:
            self._running.pop(command_id, None)
            self._slot_free.set()

    async def _acknowledge(self, command_id: str) -> None:
        """Ack and delete, retried while Redis is away for up to one lease (after that the command is run again
        elsewhere anyway)."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self._lease
        while True:
            try:
                await self._io(lambda: self._finish_script(keys=[self._keys.commands],
                                                           args=[self._keys.group, command_id]))
                return
            except Unavailable:
                if loop.time() > give_up or not await self._wait_up():
                    log.error("command %s ran but could not be acknowledged; it will run again", command_id)
                    return

    async def _bury_later(self, command_id: str, deliveries: int) -> None:
        with contextlib.suppress(Unavailable):
            await self._io(lambda: self._bury(keys=[self._keys.commands, self._keys.dead],
                                              args=[self._keys.group, command_id, deliveries]))

    async def _leases(self) -> None:
        """Renew the leases of running commands; claim the commands whose lease ran out elsewhere."""
        interval = self._lease / 3
        stream, group, consumer = self._keys.commands, self._keys.group, self._consumer
        while True:
            await asyncio.sleep(interval)
            if not self._up:
                continue
            try:
                running = list(self._running)
                if running:  # JUSTID: resets the idle time without counting a delivery
                    await self._io(partial(self._client.xclaim, stream, group, consumer, 0, running, justid=True))
                free = self._workers - len(self._running)
                if free <= 0 or self._draining:
                    continue
                reply = await self._io(partial(self._client.xautoclaim, stream, group, consumer,
                                               int(self._lease * 1000), "0-0", count=free))
                for entry_id, fields in reply[1]:
                    command_id = text(entry_id)
                    if command_id in self._running or not fields:
                        continue
                    pending = await self._io(partial(self._client.xpending_range, stream, group, command_id,
                                                     command_id, 1))
                    deliveries = int(pending[0]["times_delivered"]) if pending else 1
                    if deliveries > MAX_DELIVERIES:
                        log.error("command %s was delivered %d times without finishing; moving it to %s",
                                  command_id, deliveries, self._keys.dead)
                        await self._bury_later(command_id, deliveries)
                        continue
                    log.warning("command %s: its process stopped before finishing it; running it here",
                                command_id)
                    self._run(command_id, fields)
            except Unavailable:
                continue
            except ResponseError as exc:
                log.warning("lease upkeep failed: %s", exc)

    # -- notifications ------------------------------------------------------------------------------------------

    def _note(self, version: str) -> None:
        self._seen_known = True
        if version_key(version) > version_key(self._seen):
            self._seen = version

    async def publish(self, topic: str, payload: bytes = b"") -> str:
        if not self._up:
            raise Unavailable("the Redis bus is unreachable", RETRY_AFTER)
        keys = [self._keys.last, self._keys.born, self._keys.evicted, self._keys.topic(topic)]
        version = text(await self._io(lambda: self._publish(keys=keys, args=[topic, payload, self._history])))
        self._note(version)
        return version

    async def head(self) -> str:
        last = await self._io(lambda: self._client.get(self._keys.last))
        version = text(last) if last is not None else ZERO
        self._note(version)
        return version

    async def current_version(self, topic: str) -> str | None:
        top = await self._io(lambda: self._client.xrevrange(self._keys.topic(topic), "+", "-", count=1))
        return text(top[0][0]) if top else None

    async def history(self, topics: Sequence[str], after: str | None) -> tuple[list[Notification], list[Gap]]:
        if not topics:
            return [], []
        start = version_key(after) if after is not None else (0, 0)
        start_id = "-" if is_start(start) else exclusive(after or ZERO)

        async def read() -> list[Any]:
            async with self._client.pipeline(transaction=True) as pipe:  # one snapshot: entries and trim marks agree
                for topic in topics:
                    pipe.xrange(self._keys.topic(topic), start_id, "+")
                pipe.hmget(self._keys.evicted, list(topics))
                pipe.get(self._keys.born)
                return await pipe.execute()  # type: ignore[no-any-return]

        replies = await self._io(read)
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
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.hmget(self._keys.evicted, topics)
                pipe.get(self._keys.born)
                return await pipe.execute()  # type: ignore[no-any-return]

        evicted, born = await self._io(read)
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
                if not await self._wait_up():
                    return
        names = {self._keys.topic(t): t for t in topics}
        cursors = dict.fromkeys(topics, stream_id(after))
        check: list[str] = list(topics)  # topics whose trim marks must be checked before the next delivery
        while not self._closed:
            if check:
                checked = {t: cursors[t] for t in check}
                try:
                    gaps = await self._gaps(checked)
                except Unavailable:
                    if not await self._wait_up():
                        return
                    continue
                check = []
                cursors.update(checked)
                for gap in gaps:
                    yield gap
            streams = {key: cursors[topic] for key, topic in names.items()}
            try:
                async with asyncio.timeout(BLOCK + self._timeout):
                    reply = await self._blocking.xread(streams, count=self._history, block=int(BLOCK * 1000))
            except ERRORS as exc:
                if self._closed:
                    return
                self._failed(exc)
                if not await self._wait_up():
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
