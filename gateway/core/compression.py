"""Choosing each connection's compressor: per-route policy, windows that follow the data, a memory budget.

Three rules, all without I/O:

1. **A route's policy** (``RouteCompression``) may restrict the codecs (``encodings=()`` never compresses, for
   streams that mix secrets with attacker-influenced text: BREACH), and set each codec's quality and window.
2. **The window follows the data** (``WindowSizer``): a streaming compressor only turns a re-render into its diff
   when the previous render is still inside its window. The sizer tracks the largest recent render of a route and
   raises the window of *new* connections to hold one render plus headroom, up to a cap, unless the route pins
   its window.
3. **A global memory budget** (``MemoryBudget``): every live compressor's memory is estimated and accounted. When
   a new connection would overdraw the budget it gets a cheaper encoder instead of a refusal, in this order:
   a smaller window (never smaller than one render: below that the ratio collapses to a proxy's), a lower
   quality (never below the quality that still uses the window), gzip, identity. Identity costs nothing, so no
   connection is ever refused for compression reasons.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

from gateway.core.encoder_memory import WINDOW_PARAM, estimate_bytes, window_bytes
from gateway.core.encoders import ENCODERS, CodecSettings

HEADROOM_NUM, HEADROOM_DEN = 5, 4  # the window holds 1.25 renders: the previous one plus room for growth
HEADROOM_BYTES = 1024


@dataclass(frozen=True, slots=True)
class RouteCompression:
    """A route's compression policy; ``None`` fields fall back to the gateway's ``[compression]`` settings.

    ``encodings`` restricts the codecs the route may use (``()``: identity only, the BREACH-safe choice for
    streams mixing secrets with user-supplied text); ``pin_window`` keeps the configured window whatever the
    render size.
    """

    encodings: tuple[str, ...] | None = None
    brotli_quality: int | None = None
    brotli_lgwin: int | None = None
    gzip_level: int | None = None
    gzip_wbits: int | None = None
    zstd_level: int | None = None
    zstd_window_log: int | None = None
    pin_window: bool = False

    def __post_init__(self) -> None:
        if self.encodings is not None:
            unknown = [e for e in self.encodings if e not in ENCODERS]
            if unknown:
                raise ValueError(f"unknown encodings {unknown}; available: {', '.join(sorted(ENCODERS))}")
        self.resolve(CodecSettings())  # range checks at declaration time, not on the first client

    def resolve(self, base: CodecSettings) -> CodecSettings:
        """The codec settings of this route: its own values over the gateway's."""
        changes = {f.name: getattr(self, f.name) for f in dataclasses.fields(CodecSettings)
                   if getattr(self, f.name) is not None}
        return dataclasses.replace(base, **changes) if changes else base

    def allowed(self, preference: tuple[str, ...]) -> tuple[str, ...]:
        """The server preference order restricted to this route's codecs (identity always stays possible)."""
        if self.encodings is None:
            return preference
        return tuple(e for e in preference if e in self.encodings) + (
            ("identity",) if "identity" not in self.encodings else ()
        )


@dataclass(frozen=True, slots=True)
class WindowCaps:
    """How far the sizer may grow windows."""

    max_brotli_lgwin: int = 22
    max_zstd_window_log: int = 23


def _log2_at_least(n: int) -> int:
    return max(0, math.ceil(math.log2(max(1, n))))


class WindowSizer:
    """Tracks a route's recent render sizes and the window that holds one render."""

    __slots__ = ("_largest", "_sizes")

    def __init__(self, memory: int = 32) -> None:
        self._sizes: deque[int] = deque(maxlen=memory)
        self._largest = 0

    def observe(self, size: int) -> bool:
        """Remember one more size; True when the largest recent size changed (only then can a window need
        resizing: a hub observes every event, and refitting each time was a measurable share of small fan-outs)."""
        sizes = self._sizes
        evicted = sizes[0] if len(sizes) == sizes.maxlen else -1
        sizes.append(size)
        if size > self._largest:
            self._largest = size
            return True
        if evicted == self._largest and size < evicted:
            self._largest = max(sizes)
            return self._largest != evicted
        return False

    @property
    def largest(self) -> int:
        return self._largest

    def needed_bytes(self) -> int:
        """Window bytes that hold the largest recent render with headroom (0 before any render)."""
        largest = self.largest
        return largest * HEADROOM_NUM // HEADROOM_DEN + HEADROOM_BYTES if largest else 0

    def fit(self, settings: CodecSettings, caps: WindowCaps) -> CodecSettings:
        """``settings`` with windows raised (never lowered) to hold a render, within ``caps``."""
        needed = self.needed_bytes()
        if not needed:
            return settings
        lgwin = min(max(settings.brotli_lgwin, _log2_at_least(needed + 16)), caps.max_brotli_lgwin)
        wlog = min(max(settings.zstd_window_log, _log2_at_least(needed)), caps.max_zstd_window_log)
        wbits = min(max(settings.gzip_wbits, _log2_at_least(needed)), 15)
        return dataclasses.replace(settings, brotli_lgwin=lgwin, zstd_window_log=wlog, gzip_wbits=wbits)


@dataclass(frozen=True, slots=True)
class Decision:
    """The encoder a new connection gets, what it is accounted at, and why it is not the first choice."""

    name: str
    settings: CodecSettings
    estimate: int
    downgrade: str | None = None  # "window", "quality", "gzip", "identity"


class MemoryBudget:
    """Accounts the estimated memory of live compressors against a budget, and each client's part of it.

    One client address may hold at most ``client_share`` of the budget: past it, its new connections go down the
    same cheaper-encoder path as when the whole budget is spent, so no one address (one host opening streams in a
    loop) can push every other client onto identity.
    """

    __slots__ = ("budget", "by_client", "client_limit", "in_use", "min_brotli_quality")

    def __init__(self, budget: int, *, min_brotli_quality: int = 2, client_share: float = 1.0) -> None:
        if budget < 0:
            raise ValueError(f"memory budget must not be negative, got {budget}")
        if not 0 < client_share <= 1:
            raise ValueError(f"client share must be in (0, 1], got {client_share}")
        self.budget = budget
        self.in_use = 0
        self.min_brotli_quality = min_brotli_quality
        self.client_limit = int(budget * client_share)
        self.by_client: dict[str, int] = {}

    def choose(self, name: str, settings: CodecSettings, accepted: frozenset[str], needed_window: int,
               client: str = "") -> Decision:
        """The first affordable candidate for a new connection of ``client``, and account it."""
        held = self.by_client.get(client, 0)
        room = min(self.budget - self.in_use, self.client_limit - held)
        for decision in self._candidates(name, settings, accepted, needed_window):
            if decision.estimate <= room:
                self.in_use += decision.estimate
                if decision.estimate:
                    self.by_client[client] = held + decision.estimate
                return decision
        raise AssertionError("identity always fits")  # pragma: no cover - identity costs 0

    def release(self, estimate: int, client: str = "") -> None:
        self.in_use = max(0, self.in_use - estimate)
        if estimate and client in self.by_client:
            left = self.by_client[client] - estimate
            if left > 0:
                self.by_client[client] = left
            else:
                del self.by_client[client]

    def _candidates(
        self, name: str, settings: CodecSettings, accepted: frozenset[str], needed_window: int
    ) -> Iterator[Decision]:
        yield Decision(name, settings, estimate_bytes(name, settings))
        if name in ("br", "zstd"):
            field = WINDOW_PARAM[name]
            current = settings
            # 1. smaller windows, but never below one render
            while getattr(current, field) > 10:
                smaller = dataclasses.replace(current, **{field: getattr(current, field) - 1})
                if needed_window and window_bytes(name, smaller) < needed_window:
                    break
                current = smaller
                yield Decision(name, current, estimate_bytes(name, current), "window")
            # 2. lower quality / level, at the smallest window that still holds a render
            if name == "br":
                for quality in range(current.brotli_quality - 1, self.min_brotli_quality - 1, -1):
                    current = dataclasses.replace(current, brotli_quality=quality)
                    yield Decision(name, current, estimate_bytes(name, current), "quality")
            else:
                for level in range(current.zstd_level - 1, 0, -1):
                    current = dataclasses.replace(current, zstd_level=level)
                    yield Decision(name, current, estimate_bytes(name, current), "quality")
        if name != "gzip" and "gzip" in accepted:
            yield Decision("gzip", settings, estimate_bytes("gzip", settings), "gzip")
            cheaper = dataclasses.replace(settings, gzip_level=1)
            yield Decision("gzip", cheaper, estimate_bytes("gzip", cheaper), "gzip")
        elif name == "gzip":
            for level in range(settings.gzip_level - 1, 0, -1):
                lower = dataclasses.replace(settings, gzip_level=level)
                yield Decision("gzip", lower, estimate_bytes("gzip", lower), "quality")
        yield Decision("identity", settings, 0, "identity" if name != "identity" else None)
