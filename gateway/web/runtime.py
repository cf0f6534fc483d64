"""Everything a running gateway shares between its routes: settings, bus, fan-out, metrics, registries, state.

The app API (``gateway.api.Gateway``) fills the registries; the web layer only reads them, so imports keep
pointing downward (api -> web -> bus/core).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

from gateway.bus import Bus, Command, create_bus
from gateway.bus.redis_layout import redacted
from gateway.commands import CommandSpec
from gateway.config import Settings
from gateway.core.clientaddr import client_address, parse_networks
from gateway.core.compression import RouteCompression
from gateway.core.errors import TooManyRequests, Unavailable
from gateway.metrics import Metrics
from gateway.web.asgi_util import StreamRequest
from gateway.web.compression import CompressionEngine
from gateway.web.fanout import Fanout
from gateway.web.gcpolicy import GCPolicy

if TYPE_CHECKING:
    from gateway.web.streams import Stream

log = logging.getLogger("gateway")

HUB_ROUTE = "/hub/subscribe"
HUB_PUBLISH_ROUTE = "/hub/publish"

SharedRender = Callable[[], Awaitable[str]]
RequestRender = Callable[[StreamRequest], Awaitable[str]]


@dataclass(frozen=True, slots=True)
class ViewSpec:
    """A persistent query: re-rendered on changes of ``topics``; shared unless it needs the request."""

    path: str
    topics: tuple[str, ...]
    shared_render: SharedRender | None = None
    per_request_render: RequestRender | None = None
    compression: RouteCompression = field(default_factory=RouteCompression)

    def __post_init__(self) -> None:
        if (self.shared_render is None) == (self.per_request_render is None):
            raise ValueError("a view renders either once for everybody or once per request")
        if not self.topics:
            raise ValueError(f"view {self.path} must name at least one topic")


@dataclass(eq=False)
class Runtime:
    settings: Settings
    metrics: Metrics = field(default_factory=Metrics)
    commands: dict[str, CommandSpec] = field(default_factory=dict)
    views: dict[str, ViewSpec] = field(default_factory=dict)
    streams: set[Stream] = field(default_factory=set)
    hub_compression: RouteCompression = field(default_factory=RouteCompression)
    draining: bool = False
    started: bool = False
    streams_gone: asyncio.Event = field(default_factory=asyncio.Event)
    _bus: Bus | None = None
    _fanout: Fanout | None = None

    def __post_init__(self) -> None:
        self.compression = CompressionEngine(self.settings, self.metrics)
        self.trusted_proxies = parse_networks(self.settings.limits.trusted_proxies)
        self.admitted = 0
        self.clients: Counter[str] = Counter()
        self.gc = GCPolicy(enabled=self.settings.server.gc_freeze)

    def admit(self, request: StreamRequest) -> str:
        """Count a new stream against the limits; returns the client address it is charged to."""
        limits = self.settings.limits
        client = client_address(request.client, request.headers.get("x-forwarded-for"), self.trusted_proxies)
        if self.admitted >= limits.max_streams:
            raise Unavailable(f"this gateway holds its maximum of {limits.max_streams} streams; retry later", 5)
        if limits.max_streams_per_client and self.clients[client] >= limits.max_streams_per_client:
            raise TooManyRequests(
                f"{client} already holds {limits.max_streams_per_client} streams, the most one client may", 5)
        self.admitted += 1
        self.clients[client] += 1
        return client

    def release_client(self, client: str) -> None:
        self.admitted -= 1
        self.clients[client] -= 1
        if self.clients[client] <= 0:
            del self.clients[client]

    @property
    def bus(self) -> Bus:
        if self._bus is None:
            s = self.settings
            self._bus = create_bus(s.bus.url, history=s.bus.history, workers=s.commands.workers,
                                   queue_size=s.commands.queue_size, idempotency_ttl=s.commands.idempotency_ttl,
                                   lease=s.bus.lease, timeout=s.bus.timeout, on_health=self.metrics.bus_health)
        return self._bus

    @property
    def fanout(self) -> Fanout:
        if self._fanout is None:
            raise RuntimeError("the gateway has not started (the ASGI lifespan startup did not run)")
        return self._fanout

    async def bus_head(self) -> str:
        return await self.bus.head()

    @property
    def ready(self) -> bool:
        return self.started and not self.draining and self.bus.ready

    async def startup(self) -> None:
        hub_route = self.compression.route(HUB_ROUTE, self.hub_compression)
        fanout = Fanout(self.bus, self.metrics, lambda size: self.compression.observe(hub_route, size),
                        self.metrics.report_tallies)
        for spec in self.views.values():
            fanout.add_view(spec.path, spec.topics, spec.shared_render,
                            partial(self.compression.observe, self.compression.route(spec.path, spec.compression)))
        self._fanout = fanout
        await self.bus.start(self._handle)
        await fanout.start()
        self.started = True
        log.info("gateway started: %d commands, %d views, bus %s", len(self.commands), len(self.views),
                 redacted(self.settings.bus.url))

    async def _handle(self, command_id: str, command: Command) -> None:
        """Run one accepted command; a failing handler is logged and counted, never fatal."""
        spec = self.commands.get(command.name)
        if spec is None:
            log.error("command %s: no handler for %s in this process", command_id, command.name)
            return
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            await spec.run(dict(command.args))
        except asyncio.CancelledError:
            raise
        except Exception:
            self.metrics.commands_handled.labels(command.name, "error").inc()
            log.exception("command %s (%s) failed", command_id, command.name)
        else:
            self.metrics.commands_handled.labels(command.name, "ok").inc()
        finally:
            self.metrics.command_seconds.labels(command.name).observe(loop.time() - started)

    async def drain(self, timeout: float) -> None:
        """Readiness off, streams told to reconnect elsewhere, accepted commands finished."""
        if self.draining:
            return
        self.draining = True
        loop = asyncio.get_running_loop()
        # Close streams spread over the first half of the window, so that their reconnects (to other instances)
        # spread out too, instead of arriving all at once.
        spread = timeout / 2
        log.info("draining: %d open streams closed over %.1f s", len(self.streams), spread)
        for stream in list(self.streams):
            loop.call_later(random.uniform(0, spread), stream.begin_drain)
        deadline = loop.time() + timeout
        if self.streams:
            self.streams_gone.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.streams_gone.wait(), timeout)
        await self.bus.close(max(0.0, deadline - loop.time()))

    def stream_opened(self, stream: Stream) -> None:
        self.streams.add(stream)
        self.gc.opened()

    def stream_closed(self, stream: Stream) -> None:
        self.streams.discard(stream)
        self.gc.closed(len(self.streams))
        if not self.streams:
            self.streams_gone.set()

    async def shutdown(self) -> None:
        self.gc.close()
        if self._fanout is not None:
            await self._fanout.close()
        if not self.draining:
            self.draining = True
            await self.bus.close(self.settings.server.drain_timeout)
