"""The compression engine of a running gateway: per-route policy and window sizing, one memory budget.

The decisions themselves are the sans-IO ``gateway.core.compression``; this module adds what needs a process:
the per-route state, the log lines an operator needs ("renders of /x outgrew the window"), and the metrics.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from gateway.config import Settings
from gateway.core.compression import Decision, MemoryBudget, RouteCompression, WindowCaps, WindowSizer
from gateway.core.encoder_memory import window_bytes
from gateway.core.encoders import CodecSettings, StreamEncoder, acceptable, create_encoder, negotiate
from gateway.metrics import Metrics

log = logging.getLogger("gateway.compression")

MEMINFO = Path("/proc/meminfo")
# cgroup v2's limit of this process's group as seen from inside a container, then v1's.
CGROUP_LIMITS = (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"))


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


@dataclass(eq=False, slots=True)
class Lease:
    """A connection's encoder and the memory it is accounted for (slotted: every open stream holds one)."""

    encoder: StreamEncoder
    decision: Decision
    route: RouteState
    client: str = ""
    released: bool = False


class CompressionEngine:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        c = settings.compression
        self.base = c.codec()
        self.preference = tuple(c.encodings)
        self.caps = WindowCaps(c.max_brotli_lgwin, c.max_zstd_window_log)
        budget = c.memory_budget or budget_from_host(c.memory_fraction)
        self.budget = MemoryBudget(budget, min_brotli_quality=c.min_brotli_quality, client_share=c.client_share)
        self.metrics = metrics
        self.routes: dict[str, RouteState] = {}
        metrics.compression_budget.set(budget)

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
        if not route.sizer.observe(size):
            return  # the largest recent size is what it was: so are the windows
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

    def open(self, route: RouteState, accept_encoding: str | None, client: str = "") -> Lease:
        """Negotiate, size and account the encoder of a new connection of ``client`` on ``route``."""
        name = negotiate(accept_encoding, route.preference)
        accepted = acceptable(accept_encoding, route.preference)
        needed = 0 if route.policy.pin_window else route.sizer.needed_bytes()
        decision = self.budget.choose(name, route.current(), accepted, needed, client)
        if decision.downgrade is not None:
            self.metrics.downgrades.labels(route.path, decision.downgrade).inc()
        self.metrics.compression_memory.set(self.budget.in_use)
        return Lease(create_encoder(decision.name, decision.settings), decision, route, client)

    def release(self, lease: Lease) -> None:
        if not lease.released:
            lease.released = True
            self.budget.release(lease.decision.estimate, lease.client)
            self.metrics.compression_memory.set(self.budget.in_use)


def host_memory(meminfo: Path = MEMINFO, cgroup_limits: tuple[Path, ...] = CGROUP_LIMITS) -> int:
    """Bytes of memory this process's host gives it: the cgroup limit when one is set, else ``MemTotal``."""
    total = 0
    for line in meminfo.read_text(encoding="ascii").splitlines():
        name, _, value = line.partition(":")
        if name == "MemTotal":
            number, _, unit = value.strip().partition(" ")
            total = int(number) * (1024 if unit.strip().lower() == "kb" else 1)
            break
    if total <= 0:
        raise ValueError(f"no MemTotal in {meminfo}")
    for path in cgroup_limits:
        try:
            text = path.read_text(encoding="ascii").strip()
        except OSError:
            continue
        if text.isdigit():  # "max" (v2) is no limit; v1 writes a huge number for none, min() takes care of it
            total = min(total, int(text))
    return total


def budget_from_host(fraction: float, meminfo: Path = MEMINFO,
                     cgroup_limits: tuple[Path, ...] = CGROUP_LIMITS) -> int:
    """The default compression budget: ``fraction`` of ``host_memory``, or 1 GiB where that cannot be read."""
    try:
        return int(host_memory(meminfo, cgroup_limits) * fraction)
    except (OSError, ValueError) as exc:
        log.warning("cannot read the host's memory (%s): compression budget 1 GiB; set compression.memory_budget",
                    exc)
        return 1 << 30


def timed_encode(encoder: StreamEncoder, data: bytes) -> tuple[bytes, float]:
    """``encoder.encode_flush(data)`` and the seconds it took (for the encode-time metric)."""
    started = time.perf_counter()
    out = encoder.encode_flush(data)
    return out, time.perf_counter() - started
