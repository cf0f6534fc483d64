"""Every HTTP/1.1 connection holds an ``asyncio.Event`` it rarely waits on, ~860 bytes (Hypercorn 0.18.0).

Defect: Hypercorn's asyncio worker makes its events with ``WorkerContext.event_class``, an ``EventWrapper`` around
an ``asyncio.Event``, whose deque of waiters is a 64-slot block from the start. ``H11Protocol`` makes one per
connection (``can_read``, waited on only while a pipelining client sends faster than its responses go out), so an
open SSE stream keeps it for its whole life. Measured with ``benchmarks.idle_breakdown`` (10,000 idle HTTP/1.1 SSE
streams): 856 bytes and 4 blocks per stream.

Correction: ``H11Protocol.can_read`` is a ``LightEvent``: the same four methods (``set``, ``clear`` and ``wait``
as coroutines, ``is_set``) and the same semantics (``set`` wakes every waiter, a waiter woken before a ``clear``
still returns), with a flag and a list of waiters that exists only while someone waits. The worker's other events
stay ``EventWrapper``s: HTTP/2's stream buffers are read through their ``asyncio.Event`` by ``h2_direct``.

Upstream: no Hypercorn issue reports it (``hypercorn/asyncio/worker_context.py``). The upstream fix: an event whose
waiters are made on the first wait, or ``can_read`` made when a pipelined request first needs it.

Test that fails without it: ``tests/test_app_queue.py::test_an_http1_connection_holds_a_light_can_read``.

Remove it when Hypercorn's asyncio events cost nothing until waited on: pin it, delete this module, and the test
above must still pass.
"""

from __future__ import annotations

import asyncio
from typing import Any


class LightEvent:
    """An ``asyncio.Event`` behind Hypercorn's ``Event`` protocol, with no waiter list until one waits."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = False
        self._waiters: list[asyncio.Future[None]] | None = None

    async def clear(self) -> None:
        self._set = False

    async def wait(self) -> None:
        if self._set:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters = self._waiters
        if waiters is None:
            waiters = self._waiters = []
        waiters.append(waiter)
        try:
            await waiter
        finally:
            waiters.remove(waiter)
            if not waiters and self._waiters is waiters:
                self._waiters = None

    async def set(self) -> None:
        self._set = True
        for waiter in self._waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def is_set(self) -> bool:
        return self._set


def install() -> None:
    from hypercorn.protocol.h11 import H11Protocol

    original_init = H11Protocol.__init__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        self.can_read = LightEvent()

    H11Protocol.__init__ = __init__  # type: ignore[method-assign]
