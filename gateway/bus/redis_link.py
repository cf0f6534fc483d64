"""The Redis bus's connection to Redis: its clients, every call bounded in time, and whether Redis is reachable.

Two clients: one for short calls (each reply within ``timeout``) and one for blocking reads (no socket timeout; the
reader bounds each read itself). A failed call or health check marks the link down at once (``on_health(False)``,
one outage counted); a monitor then checks with jittered, doubling delays and marks it up again, after dropping
pooled connections that point at a server which may have restarted and running ``on_reconnect`` (the bus re-creates
what a Redis that lost its data no longer has).

Closing never waits for a task without a bound (``cancel_and_wait``): on Python 3.11 a cancellation can be lost
inside redis-py, and a shutdown that awaited such a task hung for ever after "draining".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.bus.redis_layout import RedisTarget
from gateway.core.errors import Unavailable

log = logging.getLogger("gateway.bus")

T = TypeVar("T")

ERRORS = (RedisConnectionError, RedisTimeoutError, TimeoutError, OSError)
HEALTH_INTERVAL = 1.0  # seconds between health checks while Redis answers
BACKOFF = (0.1, 2.0)  # reconnect delay: first, largest (jittered, doubling)
RETRY_AFTER = 2  # seconds a client is told to wait while Redis is unreachable

HealthListener = Callable[[bool], None]


def clients(target: RedisTarget, timeout: float) -> tuple[Any, Any]:
    """The short-call client and the blocking-read client for ``target`` (plain, Sentinel or Cluster).

    Typed ``Any`` on purpose: redis-py's annotations describe every reply shape of every protocol version at once;
    the bus asks for RESP2 and reads the replies it documents.
    """
    common: dict[str, Any] = {"protocol": 2, "retry": Retry(NoBackoff(), 0), "socket_connect_timeout": timeout}
    if target.cluster:
        nodes = [ClusterNode(host, port) for host, port in target.cluster]
        auth: dict[str, Any] = {"username": target.username, "password": target.password}
        return (RedisCluster(startup_nodes=nodes, socket_timeout=timeout, **auth, **common),
                RedisCluster(startup_nodes=list(nodes), socket_timeout=None, **auth, **common))
    if target.sentinels:
        sentinel = Sentinel(
            list(target.sentinels),
            sentinel_kwargs={"socket_timeout": timeout, "socket_connect_timeout": timeout},
            password=target.password, username=target.username)
        return (sentinel.master_for(target.service, db=target.db, socket_timeout=timeout, **common),
                sentinel.master_for(target.service, db=target.db, socket_timeout=None, **common))
    return (Redis.from_url(target.url, socket_timeout=timeout, **common),
            Redis.from_url(target.url, socket_timeout=None, **common))


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]], timeout: float) -> set[asyncio.Task[Any]]:
    """Cancel ``tasks`` and wait at most ``timeout`` seconds for them to end; the ones still running then.

    A bound, because a cancellation can be swallowed: on Python 3.11 ``asyncio.wait_for`` returns the result
    instead of raising when the awaited operation completes in the same loop turn as the cancel (bpo-42130, fixed
    in 3.12), and redis-py writes every command of a client with a socket timeout through it. A task cancelled just
    as such a write finished carries on as if nothing happened; awaiting it outright (as closing the link did with
    its health check, cancelled just as its next ping went out) waits for ever. The loops of the bus also end by
    themselves once the link is closed, so a task that outlives this wait still stops soon after.
    """
    pending = {task for task in tasks if not task.done()}
    if not pending:
        return set()
    for task in pending:
        task.cancel()
    _done, still = await asyncio.wait(pending, timeout=max(0.0, timeout))
    return still


def stop_requested() -> bool:
    """Whether the current task was cancelled, even if the ``CancelledError`` never reached it (a cancel lost in
    redis-py: see ``cancel_and_wait``). The bus's loops check it with their own condition, so such a task still
    ends at its next turn; ``asyncio.Runner`` awaits every task left at the loop's end without a bound, and a
    process whose serving failed (a listener that cannot bind, after the bus started) would otherwise never exit."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def drop_connections(client: Any, *, busy_too: bool) -> None:
    """Close a client's pooled connections (``busy_too``: also those in use, which ends their pending reads)."""
    with contextlib.suppress(*ERRORS):
        if isinstance(client, RedisCluster):
            for node in client.get_nodes():
                await (node.disconnect() if busy_too else node.disconnect_free_connections())
        else:
            await client.connection_pool.disconnect(inuse_connections=busy_too)


class RedisLink:
    """Clients plus reachability. ``up`` starts True: the first failure, even at start, counts as an outage."""

    def __init__(self, target: RedisTarget, timeout: float, on_health: HealthListener | None = None) -> None:
        self.client, self.blocking = clients(target, timeout)
        self.timeout = timeout
        self.on_health = on_health
        self.on_reconnect: Callable[[], Awaitable[None]] | None = None
        self.up = True
        self.closed = False
        self.outages = 0
        self._up_event = asyncio.Event()
        self._up_event.set()
        self._check_now = asyncio.Event()
        self._monitor: asyncio.Task[None] | None = None
        self._reads: set[asyncio.Timeout] = set()  # the bounds of the blocking reads under way

    def failed(self, exc: BaseException) -> None:
        if self.up:
            self.up = False
            self.outages += 1
            self._up_event.clear()
            log.warning("Redis bus unreachable (%s: %s); refusing commands until it is back", type(exc).__name__, exc)
            if self.on_health is not None:
                self.on_health(False)
        self._check_now.set()

    def recovered(self) -> None:
        if not self.up:
            self.up = True
            self._up_event.set()
            log.info("Redis bus reachable")
            if self.on_health is not None:
                self.on_health(True)

    async def io(self, call: Callable[[], Awaitable[T]]) -> T:
        """One bounded call; a connection failure marks the link down and becomes ``Unavailable`` (503)."""
        try:
            async with asyncio.timeout(self.timeout):
                result = await call()
        except ERRORS as exc:
            self.failed(exc)
            raise Unavailable(f"the Redis bus is unreachable ({type(exc).__name__})", RETRY_AFTER) from exc
        return result

    @contextlib.asynccontextmanager
    async def read_bound(self, limit: float) -> AsyncIterator[None]:
        """Bounds a blocking read on ``blocking`` by ``limit`` seconds, and ends it at once (``TimeoutError``) when
        the link closes, whatever the read is doing then. Dropping the connections is not enough: a read still
        opening its connection when they are dropped opens it afterwards, and blocks for its whole limit."""
        async with asyncio.timeout(0 if self.closed else limit) as bound:
            self._reads.add(bound)
            try:
                yield
            finally:
                self._reads.discard(bound)

    async def wait_up(self) -> bool:
        """Until Redis is reachable (True) or the link closes (False; also when the waiting task was cancelled)."""
        while not self.closed and not stop_requested():
            if self.up:
                return True
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(BACKOFF[1]):
                    await self._up_event.wait()
        return False

    def start_monitor(self) -> None:
        self._monitor = asyncio.create_task(self._watch(), name="gateway-redis-monitor")

    async def _watch(self) -> None:
        """Health checks: every ``HEALTH_INTERVAL`` while up; with jittered, doubling delays while down. Until the
        link closes or the task is cancelled, whether or not the ``CancelledError`` arrives (``stop_requested``)."""
        delay = BACKOFF[0]
        while not self.closed and not stop_requested():
            try:
                async with asyncio.timeout(self.timeout):
                    await self.client.ping()
            except ERRORS as exc:
                self.failed(exc)
                wait = delay * random.uniform(0.5, 1.0)
                delay = min(delay * 2, BACKOFF[1])
                # Blocked reads may sit on dead connections: drop them so their loops see the failure now.
                await drop_connections(self.blocking, busy_too=True)
            else:
                if not self.up:
                    # Pooled connections idle since before the outage point at a server that may have restarted.
                    for client in (self.client, self.blocking):
                        await drop_connections(client, busy_too=False)
                    if self.on_reconnect is not None:
                        with contextlib.suppress(Unavailable, ResponseError):
                            await self.on_reconnect()
                self.recovered()
                delay = BACKOFF[0]
                wait = HEALTH_INTERVAL
            self._check_now.clear()
            if self.closed or stop_requested():  # (clearing undid the wake-up ``close`` sent)
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._check_now.wait()

    async def close(self) -> None:
        """Stop the monitor and close every connection (which also ends reads still pending on them), each step
        bounded by ``timeout``: a shutdown must end even when a cancel is lost or Redis does not answer."""
        self.closed = True
        self._up_event.set()  # wakes waiters, who see ``closed``
        self._check_now.set()  # ends the monitor's pause between checks: its loop sees ``closed``
        now = asyncio.get_running_loop().time()
        for bound in self._reads:
            if not bound.expired():  # (one that expired already is ending anyway, and cannot be rescheduled)
                bound.reschedule(now)  # blocking reads end now
        if self._monitor is not None and await cancel_and_wait([self._monitor], self.timeout):
            log.warning("the Redis health check did not stop within %.1f s of the close", self.timeout)
        for client in (self.blocking, self.client):
            with contextlib.suppress(*ERRORS):
                async with asyncio.timeout(self.timeout):
                    await client.aclose()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.timeout):
                    await drop_connections(client, busy_too=True)
