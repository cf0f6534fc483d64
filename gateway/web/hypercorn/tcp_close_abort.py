"""A closed TCP connection lives on while its peer does not read (Hypercorn 0.18.0).

Defect: ``TCPServer._close`` awaits ``wait_closed()``, and asyncio only closes a transport once its write buffer is
flushed, which never happens for a client that stopped reading. A stream the gateway cut off (slow consumer, write
deadline) kept its socket, file descriptor and buffers until the client went away (measured in the benchmark: 1,008
descriptors still open 15 s after 100 cut-offs).

Correction: abort the transport (dropping the unsendable rest) when a close has not completed within
``CLOSE_GRACE`` seconds.

Upstream: no Hypercorn issue reports the plain-TCP case. pgjones/hypercorn#342 (open, for pgjones/hypercorn#202)
aborts the transport when a TLS close times out, and pgjones/hypercorn#170 reports sockets left ESTABLISHED after a
close. The upstream fix: ``TCPServer._close`` bounds ``wait_closed()`` with a timeout and then calls
``transport.abort()``.

Test that fails without it: ``tests/test_limits_and_drain.py::test_slow_consumer_is_cut_off_after_the_grace_period``
(its descriptor count is only released by the abort).

Remove it when a Hypercorn release bounds the close of a connection whose peer does not read: pin it, delete this
module, and the test above must still pass.
"""

from __future__ import annotations

import asyncio
from typing import Any

CLOSE_GRACE = 3.0  # seconds a closing TCP connection may take to flush before it is aborted


def install() -> None:
    from hypercorn.asyncio.tcp_server import TCPServer

    original = TCPServer._close

    async def _close(self: Any) -> None:
        transport = self.writer.transport
        timer = asyncio.get_running_loop().call_later(CLOSE_GRACE, transport.abort)
        try:
            await original(self)
        finally:
            timer.cancel()

    TCPServer._close = _close  # type: ignore[method-assign]
