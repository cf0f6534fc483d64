"""Keep Python's cyclic garbage collector from stalling every stream at once.

A stream is a few hundred GC-tracked objects (Hypercorn's connection, h11 state, tasks, our stream), all long-
lived. At 10,000 streams a full collection walks millions of objects that are all still alive and takes 0.3-1.3 s
(measured), and CPython starts one each time the long-lived population grows by a quarter, which a broadcast's
short-lived objects surviving a young collection are enough to do. Every stream waits for it: that pause was the
broadcast's p99.

So established objects are frozen (``gc.freeze``: moved out of every generation the collector scans) a second
after streams open, in one debounced call. Frozen objects that become cyclic garbage (a closed connection's
Hypercorn objects refer to each other) are only reclaimed by a sweep, unfreeze + full collection + freeze, run
once enough streams have closed since the last one (at least ``sweep_min`` or half the open streams): the pause is
the one CPython would have taken anyway, but once per wave of departures instead of once per quarter of growth.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time

log = logging.getLogger("gateway.gc")

FREEZE_DELAY = 1.0  # seconds after a stream opens: streams opened together are frozen together


class GCPolicy:
    def __init__(self, *, enabled: bool = True, sweep_min: int = 1000) -> None:
        self.enabled = enabled
        self.sweep_min = sweep_min
        self.closed_since_sweep = 0
        self.sweeps = 0
        self._freeze: asyncio.TimerHandle | None = None

    def opened(self) -> None:
        if self.enabled and self._freeze is None:
            self._freeze = asyncio.get_running_loop().call_later(FREEZE_DELAY, self._do_freeze)

    def closed(self, still_open: int) -> None:
        if not self.enabled:
            return
        self.closed_since_sweep += 1
        if self.closed_since_sweep >= max(self.sweep_min, still_open // 2):
            self.sweep()

    def _do_freeze(self) -> None:
        self._freeze = None
        gc.freeze()

    def sweep(self) -> None:
        """Reclaim the cycles frozen objects left: one full collection over everything, then freeze again."""
        started = time.perf_counter()
        gc.unfreeze()
        found = gc.collect()
        gc.freeze()
        self.closed_since_sweep = 0
        self.sweeps += 1
        log.info("gc sweep: %d unreachable objects reclaimed in %.0f ms", found, (time.perf_counter() - started) * 1e3)

    def close(self) -> None:
        if self._freeze is not None:
            self._freeze.cancel()
            self._freeze = None
