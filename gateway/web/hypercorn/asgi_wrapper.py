"""Every request keeps a coroutine frame whose only work is to forward the call to the app, ~260 bytes for the
whole life of an SSE stream (Hypercorn 0.18.0).

Defect: Hypercorn calls an ASGI app through ``ASGIWrapper.__call__``, a coroutine that awaits
``self.app(scope, receive, send)`` and drops the two extra arguments Hypercorn's own apps take. Its frame lives as
long as the request does, one more link in the chain of coroutines an idle stream holds. Measured with
``benchmarks.idle_breakdown`` (10,000 idle HTTP/1.1 SSE streams): 256 bytes and 1 block per stream.

Correction: ``ASGIWrapper.__call__`` is a plain method that returns the app's own awaitable: whoever awaits the
wrapper (the request task, the lifespan task) awaits the app directly, with the same arguments, the same result and
the same exceptions.

Upstream: no Hypercorn issue reports it (``hypercorn/app_wrappers.py``). The upstream fix: the same, ``return
self.app(scope, receive, send)`` from a ``def``.

Test that fails without it: ``tests/test_idle_memory.py::test_an_idle_stream_holds_only_the_coroutines_it_needs``.

Remove it when Hypercorn's ``ASGIWrapper`` keeps no frame of its own: pin it, delete this module, and the test above
must still pass.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any


def install() -> None:
    from hypercorn.app_wrappers import ASGIWrapper

    def __call__(self: Any, scope: Any, receive: Any, send: Any, sync_spawn: Any, call_soon: Any) -> Awaitable[None]:
        awaitable: Awaitable[None] = self.app(scope, receive, send)
        return awaitable

    ASGIWrapper.__call__ = __call__  # type: ignore[assignment,method-assign]
