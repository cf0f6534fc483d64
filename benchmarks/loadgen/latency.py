"""End-to-end latency of published events, measured on one clock: the default sink of a fleet.

The publisher and the streams live in the same process, so the publisher stamps each event with
``time.perf_counter_ns()`` just before it sends it (``stamp``), and the stream side subtracts that from the
``perf_counter_ns()`` its read began with. No clock sync, no NTP error: the number is publish-to-delivery through
the server, plus the generator's own scheduling delay (which is why its CPU must stay low).
"""

from __future__ import annotations

import asyncio
import math
import time
from array import array
from typing import NamedTuple, TypedDict

import orjson

from benchmarks.loadgen.sse import SSEEvent
from benchmarks.loadgen.stream import StreamState

__all__ = ["LANE_BITS", "LatencyRecorder", "LatencySummary", "StreamStats", "stamp"]

_CACHE_MAX = 4096
#: Concurrent publishers number their events in lanes: ``seq = lane << LANE_BITS | n``. The order of one lane is
#: checked; lanes interleave freely, since which of two concurrent publishes the server accepts first is its call.
LANE_BITS = 32


def stamp(seq: int, *, pad: int = 0) -> str:
    """The event data a recorder understands: ``{"seq": seq, "t": now_ns}``, plus ``pad`` filler characters
    (for payload-size runs). Call it right before sending, so ``t`` is the moment of publishing."""
    if pad:
        return orjson.dumps({"seq": seq, "t": time.perf_counter_ns(), "pad": "x" * pad}).decode()
    return orjson.dumps({"seq": seq, "t": time.perf_counter_ns()}).decode()


class StreamStats(NamedTuple):
    received: int  # stamped events received
    last_seq: int  # the seq of the last one (-1: none yet)
    out_of_order: int  # events whose seq was not above the previous one: reordered or duplicated


class LatencySummary(TypedDict):
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    mean_ms: float
    delivered: int
    expected: int
    out_of_order: int
    unparsed: int


class LatencyRecorder:
    """A sink: ``fleet = Fleet(..., sink=recorder)``; ``recorder.expect(n_events * n_streams)``, publish, then
    ``await recorder.wait_all(timeout)``.

    Per event it costs one latency in a compact ``array('q')`` and a per-stream ``[count, last_seq,
    out_of_order]`` update. Every stream receives the same event text, so the JSON of each is parsed once and
    looked up afterwards (a small cache keyed by the text): at 10,000 streams the recorder would otherwise spend
    more time in ``orjson.loads`` than the rest of the generator together.
    """

    def __init__(self) -> None:
        self.latencies_ns = array("q")
        self.delivered = 0
        self.expected = 0
        self.unparsed = 0  # events whose data was not a stamp (a gap notice, another publisher's event...)
        self._streams: dict[int, list[int]] = {}
        self._lanes: dict[int, dict[int, int]] = {}  # per stream: the last seq of each lane
        self._cache: dict[str, tuple[int, int]] = {}
        self._done = asyncio.Event()

    def __call__(self, stream: StreamState, events: list[SSEEvent], t_ns: int) -> None:
        cache = self._cache
        append = self.latencies_ns.append
        slot = self._streams.get(stream.id)
        if slot is None:
            slot = self._streams[stream.id] = [0, -1, 0]
            lanes = self._lanes[stream.id] = {}
        else:
            lanes = self._lanes[stream.id]
        for event in events:
            data = event.data
            parsed = cache.get(data)
            if parsed is None:
                try:
                    body = orjson.loads(data)
                    parsed = (int(body["seq"]), int(body["t"]))
                except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                    self.unparsed += 1
                    continue
                if len(cache) >= _CACHE_MAX:
                    cache.clear()
                cache[data] = parsed
            seq, t = parsed
            append(t_ns - t)
            slot[0] += 1
            lane = seq >> LANE_BITS
            previous = lanes.get(lane)
            if previous is not None and seq <= previous:
                slot[2] += 1
            else:
                lanes[lane] = slot[1] = seq
            self.delivered += 1
        if self.expected and self.delivered >= self.expected:
            self._done.set()

    def expect(self, total: int) -> None:
        """The number of deliveries (events x streams, counted since the last ``reset``) that ends ``wait_all``."""
        self.expected = total
        if total and self.delivered >= total:
            self._done.set()
        else:
            self._done.clear()

    async def wait_all(self, timeout: float) -> bool:
        """Wait until the expected total arrived; False on timeout (``delivered`` then says how far it got)."""
        try:
            async with asyncio.timeout(timeout):
                await self._done.wait()
        except TimeoutError:
            return False
        return True

    def reset(self) -> None:
        """Forget every latency and count (after a warm-up, say); the streams' seq order is kept."""
        self.latencies_ns = array("q")
        self.delivered = self.expected = self.unparsed = 0
        for slot in self._streams.values():
            slot[0] = slot[2] = 0
        self._done.clear()

    def stream_stats(self, stream: StreamState) -> StreamStats:
        slot = self._streams.get(stream.id, [0, -1, 0])
        return StreamStats(slot[0], slot[1], slot[2])

    @property
    def out_of_order(self) -> int:
        return sum(slot[2] for slot in self._streams.values())

    def percentiles(self) -> LatencySummary:
        """Nearest-rank percentiles in milliseconds (NaN when nothing was received)."""
        values = sorted(self.latencies_ns)
        n = len(values)

        def rank(p: float) -> float:
            if not n:
                return math.nan
            return values[min(n - 1, max(0, math.ceil(p / 100 * n) - 1))] / 1e6

        return LatencySummary(
            p50_ms=rank(50), p90_ms=rank(90), p99_ms=rank(99), p999_ms=rank(99.9),
            max_ms=values[-1] / 1e6 if n else math.nan,
            mean_ms=sum(values) / n / 1e6 if n else math.nan,
            delivered=self.delivered, expected=self.expected, out_of_order=self.out_of_order,
            unparsed=self.unparsed,
        )
