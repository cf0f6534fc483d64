"""Every asyncio stream connection holds a deque of drain waiters it rarely uses, 760 bytes (CPython 3.11 ``asyncio``,
under Hypercorn).

Defect: ``asyncio.streams.FlowControlMixin.__init__`` gives every protocol behind a ``StreamReader``/``StreamWriter``
pair (Hypercorn serves TCP with ``asyncio.start_server``, so every connection has one) a ``collections.deque`` for
the tasks waiting in ``StreamWriter.drain``, a 64-slot block from the start. It only ever holds a waiter while the
transport is paused (its write buffer above the high-water mark) and a ``drain`` waits, so an open SSE stream keeps
an empty block for its whole life. Measured with ``benchmarks.idle_breakdown`` (10,000 idle HTTP/1.1 SSE streams):
760 bytes and 2 blocks per stream, the largest single allocation site.

Correction: after asyncio's own ``__init__``, the waiters are a ``list``: the mixin only appends a waiter, removes
that waiter and iterates over them (``resume_writing``, ``connection_lost``), which a list does the same way, and an
empty list holds no item block. Only Python 3.11 is corrected (the asyncio this was read on).

Upstream: no CPython issue reports it (``Lib/asyncio/streams.py``, a deque since 3.10's rewrite of the drain
waiters for several writers). The upstream fix: a list, or the deque made on the first pause.

Test that fails without it: ``tests/test_idle_memory.py::test_a_stream_connection_holds_no_deque_of_drain_waiters``.

Remove it when the supported Python makes no container of drain waiters until one waits: delete this module, and
the test above must still pass.
"""

from __future__ import annotations

from typing import Any

from gateway.web.hypercorn.python_version import verified

VERIFIED_PYTHON = (3, 11)  # asyncio's private FlowControlMixin this relies on


def install() -> None:
    from asyncio.streams import FlowControlMixin

    if not verified(VERIFIED_PYTHON, "the light drain waiters"):
        return
    original = FlowControlMixin.__init__

    def __init__(self: Any, loop: Any = None) -> None:
        original(self, loop)
        self._drain_waiters = []

    FlowControlMixin.__init__ = __init__  # type: ignore[method-assign]
