"""Per-client token buckets in a bounded table, on an injected clock.

A bucket holds up to ``burst`` tokens and refills at ``rate`` tokens per second; a request takes one token or is
refused with the seconds until the next one. A full bucket is the same as no bucket, so a client's entry matters
only while it is below ``burst``: that takes at most ``burst / rate`` seconds after its last request, and entries
idle longer are dropped. The table is an LRU of at most ``max_clients`` entries: a flood of distinct addresses
evicts the least recently seen clients (whose buckets restart full, so eviction only ever makes the limit
lenient, never refuses anyone) and cannot grow memory past the bound.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable


class TokenBuckets:
    """``take(client)`` returns 0.0 when allowed, else the seconds until a token is available."""

    __slots__ = ("_buckets", "burst", "clock", "max_clients", "rate")

    def __init__(self, rate: float, burst: int, clock: Callable[[], float], max_clients: int = 100_000) -> None:
        if rate <= 0 or burst < 1 or max_clients < 1:
            raise ValueError(f"a token bucket needs rate > 0, burst >= 1 and room for a client: rate={rate}, "
                             f"burst={burst}, max_clients={max_clients}")
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # client -> (tokens, at)

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, client: str) -> float:
        now = self.clock()
        tokens, at = self._buckets.pop(client, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + max(0.0, now - at) * self.rate)
        if tokens >= 1.0:
            tokens -= 1.0
            wait = 0.0
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[client] = (tokens, now)  # most recently seen last
        self._expire(now)
        return wait

    def retry_after(self, wait: float) -> int:
        """``Retry-After`` in whole seconds, rounded up (a client that waits that long finds a token)."""
        return max(1, math.ceil(wait))

    def _expire(self, now: float) -> None:
        buckets = self._buckets
        while len(buckets) > self.max_clients:
            buckets.popitem(last=False)
        refill = self.burst / self.rate
        while buckets:
            client, (_tokens, at) = next(iter(buckets.items()))
            if now - at < refill:
                break
            del buckets[client]  # full again: forgetting it changes nothing
