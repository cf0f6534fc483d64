"""The compression engine of a running gateway: per-route policy and window sizing, one memory budget.

The decisions themselves are the sans-IO ``gateway.core.compression``; this module adds what needs a process:
the per-route state, the log lines an operator needs ("renders of /x outgrew the window"), and the metrics.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from gateway.config import Settings
from gateway.core.compression import Decision, MemoryBudget, RouteCompression, WindowCaps, WindowSizer
from gateway.core.encoder_memory import window_bytes
from gateway.core.encoders import CodecSettings, StreamEncoder, acceptable, create_encoder, negotiate
from gateway.metrics import Metrics

log = logging.getLogger("gateway.compression")


@dataclass(eq=False)
class RouteState:
    """One route's policy, resolved settings and render-size history."""

    path: str
    policy: RouteCompression
    settings: CodecSettings
    preference: tuple[str, ...]
    sizer: WindowSizer = field(default_factory=WindowSizer)
    fitted: CodecSettings | None = None
    warned_pinned: bool = False

    def current(self) -> CodecSettings:
        return self.fitted or self.settings


@dataclass(eq=False)
class Lease:
    """A connection's encoder and the memory it is accounted for."""

    encoder: StreamEncoder
    decision: Decision
    route: RouteState
    released: bool = False


class CompressionEngine:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        c = settings.compression
        self.base = c.codec()
        self.preference = tuple(c.encodings)
        self.caps = WindowCaps(c.max_brotli_lgwin, c.max_zstd_window_log)
        self.budget = MemoryBudget(c.memory_budget, min_brotli_quality=c.min_brotli_quality)
        self.metrics = metrics
        self.routes: dict[str, RouteState] = {}
        metrics.compression_budget.set(c.memory_budget)

    def route(self, path: str, policy: RouteCompression | None = None) -> RouteState:
        """Register (or fetch) a route's compression state."""
        state = self.routes.get(path)
        if state is None:
            policy = policy or RouteCompression()
            state = self.routes[path] = RouteState(path, policy, policy.resolve(self.base),
                                                   policy.allowed(self.preference))
        return state

    def observe(self, route: RouteState, size: int) -> None:
        """A render (or event) of ``size`` bytes went out on ``route``: grow the window of new connections."""
        route.sizer.observe(size)
        if route.policy.pin_window:
            if not route.warned_pinned and route.sizer.needed_bytes() > window_bytes("br", route.settings):
                route.warned_pinned = True
                log.warning("renders of %s reach %d bytes but its window is pinned at %d bytes: re-renders will "
                            "compress poorly", route.path, size, window_bytes("br", route.settings))
            return
        before = route.current()
        after = route.sizer.fit(route.settings, self.caps)
        if after == before:
            return
        route.fitted = after
        for name, attr in (("br", "brotli_lgwin"), ("zstd", "zstd_window_log"), ("gzip", "gzip_wbits")):
            old, new = getattr(before, attr), getattr(after, attr)
            if new > old:
                self.metrics.window_grown.labels(route.path, name).inc()
                log.info("renders of %s reach %d bytes: new %s connections get %s=%d (was %d)",
                         route.path, size, name, attr, new, old)

    def open(self, route: RouteState, accept_encoding: str | None) -> Lease:
        """Negotiate, size and account the encoder of a new connection on ``route``."""
        name = negotiate(accept_encoding, route.preference)
        accepted = acceptable(accept_encoding, route.preference)
        needed = 0 if route.policy.pin_window else route.sizer.needed_bytes()
        decision = self.budget.choose(name, route.current(), accepted, needed)
        if decision.downgrade is not None:
            self.metrics.downgrades.labels(route.path, decision.downgrade).inc()
        self.metrics.compression_memory.set(self.budget.in_use)
        return Lease(create_encoder(decision.name, decision.settings), decision, route)

    def release(self, lease: Lease) -> None:
        if not lease.released:
            lease.released = True
            self.budget.release(lease.decision.estimate)
            self.metrics.compression_memory.set(self.budget.in_use)


def timed_encode(encoder: StreamEncoder, data: bytes) -> tuple[bytes, float]:
    """``encoder.encode_flush(data)`` and the seconds it took (for the encode-time metric)."""
    started = time.perf_counter()
    out = encoder.encode_flush(data)
    return out, time.perf_counter() - started
