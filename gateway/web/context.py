"""What the web layer is handed by the app API: the parts a running gateway shares between its routes.

The API (``gateway.api.Gateway``) assembles them (bus, fan-out, admission, compression engine, the registries of
commands and views) and runs the life cycle (start-up, drain, shutdown, the command runner); the web layer reads
them and never imports upward. Imports point api -> web -> bus -> core.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import pydantic

from gateway.bus import Bus
from gateway.commands import CommandSpec
from gateway.config import Settings
from gateway.core.admission import Admission
from gateway.core.clientaddr import client_address, parse_networks
from gateway.core.compression import RouteCompression
from gateway.core.datastar import Rendered
from gateway.core.mailbox import Limits
from gateway.core.quic_admission import RetryMode
from gateway.core.slowclient import HubLimits, Overflow, SlowClientPolicy, ViewLimits, hub_limits, view_limits
from gateway.core.stream import CloseReason
from gateway.metrics import Metrics
from gateway.tracing import NO_TRACING, Tracing
from gateway.web.asgi_util import StreamRequest
from gateway.web.auth import Authenticator, AuthorizeHook
from gateway.web.compression import CompressionEngine
from gateway.web.fanout import Fanout
from gateway.web.gcpolicy import GCPolicy
from gateway.web.guard import Guard
from gateway.web.hypercorn import connection_limits, h11_post_lane, header_deadline, quic_retry, syn_filter

HUB_ROUTE = "/hub/subscribe"
HUB_PUBLISH_ROUTE = "/hub/publish"

SharedRender = Callable[[], Awaitable[Rendered]]
RequestRender = Callable[[StreamRequest], Awaitable[Rendered]]


@dataclass(frozen=True, slots=True)
class ViewSpec:
    """A persistent query: re-rendered on changes of ``topics``; shared unless it needs the request."""

    path: str
    topics: tuple[str, ...]
    shared_render: SharedRender | None = None
    per_request_render: RequestRender | None = None
    compression: RouteCompression = field(default_factory=RouteCompression)
    path_model: type[pydantic.BaseModel] | None = None  # the typed path values the render declares, if any
    slow_client: SlowClientPolicy | None = None  # None: the settings' limits (gateway.core.slowclient)

    def __post_init__(self) -> None:
        if (self.shared_render is None) == (self.per_request_render is None):
            raise ValueError("a view renders either once for everybody or once per request")
        if not self.topics:
            raise ValueError(f"view {self.path} must name at least one topic")
        if self.slow_client is not None:
            try:
                self.slow_client.check_view()
            except ValueError as exc:
                raise ValueError(f"view {self.path}: slow_client {exc}") from None


class OpenStream(Protocol):
    """An open stream as the life cycle sees it: something a drain can end."""

    def end(self, reason: CloseReason) -> None: ...


@dataclass(eq=False)
class AppContext:
    settings: Settings
    bus: Bus
    metrics: Metrics = field(default_factory=Metrics)
    commands: dict[str, CommandSpec] = field(default_factory=dict)
    views: dict[str, ViewSpec] = field(default_factory=dict)
    authorizers: dict[str, AuthorizeHook] = field(default_factory=dict)  # by path: the app's authorize hooks
    hub_compression: RouteCompression = field(default_factory=RouteCompression)
    tracing: Tracing = NO_TRACING  # gateway.tracing: every hook is behind ``tracing.on``
    streams: set[OpenStream] = field(default_factory=set)
    draining: bool = False
    started: bool = False
    streams_gone: asyncio.Event = field(default_factory=asyncio.Event)
    _fanout: Fanout | None = None

    def __post_init__(self) -> None:
        limits = self.settings.limits
        sse, hub = self.settings.sse, self.settings.hub
        overflow: Overflow = "drop-oldest" if hub.overflow_policy == "drop-oldest" else "disconnect"
        self.hub_defaults = HubLimits(Limits(hub.max_buffered_events, hub.max_buffered_bytes, overflow),
                                    sse.slow_client_grace)
        self._view_limits: dict[str, ViewLimits] = {}
        self.compression = CompressionEngine(self.settings, self.metrics)
        self.trusted_proxies = parse_networks(limits.trusted_proxies)
        self.admission = Admission(limits.max_streams, limits.max_streams_per_client)
        self.guard = Guard(self.settings, self.metrics, self.trusted_proxies)
        self.gc = GCPolicy(enabled=self.settings.server.gc_freeze)
        self.auth = Authenticator(self.settings.auth)
        connection_limits.configure(limits.max_connections, limits.max_connections_per_address, self.trusted_proxies,
                                    lambda reason: self.metrics.connections_refused.labels(reason.value).inc())
        connection_limits.configure_penalties(limits.abuse_strikes, limits.abuse_cooldown)
        syn_filter.configure(limits.abuse_kernel_filter, self.metrics.penalty_box.set)
        header_deadline.configure(limits.header_timeout, lambda stage: self.metrics.deadlines.labels(stage).inc())
        h11_post_lane.configure(self.metrics.post_lane.inc)
        quic_retry.configure(RetryMode(limits.quic_retry), limits.max_quic_connections,
                             lambda reason: self.metrics.quic_refused.labels(reason.value).inc(),
                             self.metrics.quic_retries.inc)

    def admit(self, request: StreamRequest) -> str:
        """Count a new stream against the limits (the open rate, then the open streams); returns the client
        address it is charged to."""
        client = client_address(request.client, request.headers.get("x-forwarded-for"), self.trusted_proxies)
        self.guard.take("stream", client)
        self.admission.admit(client)
        return client

    def release_client(self, client: str) -> None:
        self.admission.release(client)

    def limits_of_hub(self, topics: tuple[str, ...]) -> HubLimits:
        """The slow-client limits of a subscription to ``topics`` (not cached: clients choose the topics)."""
        return hub_limits(topics, self.settings.hub.slow_clients, self.hub_defaults)

    def limits_of_view(self, spec: ViewSpec) -> ViewLimits:
        """The slow-client limits of a view, decided once per view."""
        found = self._view_limits.get(spec.path)
        if found is None:
            base = ViewLimits(self.settings.sse.slow_client_grace)
            found = view_limits(spec.path, spec.slow_client, self.settings.sse.view_slow_clients, base)
            self._view_limits[spec.path] = found
        return found

    @property
    def fanout(self) -> Fanout:
        if self._fanout is None:
            raise RuntimeError("the gateway has not started (the ASGI lifespan startup did not run)")
        return self._fanout

    @fanout.setter
    def fanout(self, fanout: Fanout) -> None:
        self._fanout = fanout

    @property
    def ready(self) -> bool:
        return self.started and not self.draining and self.bus.ready

    def stream_opened(self, stream: OpenStream) -> None:
        self.streams.add(stream)
        self.gc.opened()

    def stream_closed(self, stream: OpenStream) -> None:
        self.streams.discard(stream)
        self.gc.closed(len(self.streams))
        if not self.streams:
            self.streams_gone.set()
