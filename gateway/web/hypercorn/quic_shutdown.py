"""The QUIC listener and idle QUIC connections hold up shutdown (Hypercorn 0.18.0, aioquic 1.7.2).

Defect: ``UDPServer.run`` loops ``while not terminated or not idle`` but sleeps in ``protocol_queue.get()``; once
the worker is terminated nothing wakes it unless a datagram happens to arrive, so every shutdown with
``quic_bind`` waits out the whole ``graceful_timeout``. And Hypercorn never closes QUIC connections on shutdown,
so one idle browser connection kept the process alive just as long (measured: 35 s; 15.2 s in the test, 1.1 s with
this correction).

Correction: once the worker is terminated (which is after the gateway's drain), close every QUIC connection
(``H3_NO_ERROR``, as h2 sends GOAWAY) and put an empty datagram on the queue then and every 100 ms until the loop
ends (connections close on timers, outside the loop); the QUIC protocol discards it as an unparsable header.

Upstream: no Hypercorn issue or pull request reports the listener loop or the connections left open (the nearest
are pgjones/hypercorn#145, a shutdown that waits for one last request, and pgjones/hypercorn#373, which closes the
datagram transports after the graceful phase). The upstream fix: ``UDPServer.run`` waits on ``terminated``
alongside ``protocol_queue.get()``, and ``QuicProtocol`` closes its connections when the server shuts down.

Test that fails without it: ``tests/test_lifecycle.py::test_idle_http3_connection_does_not_hold_up_shutdown``
(and the HTTP/3 part of ``test_sigterm_drains_streams_on_every_protocol_and_exits_0``).

Remove it when a Hypercorn release wakes the UDP loop on termination and closes QUIC connections on shutdown: pin
that release, delete this module, and the test above must still pass.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

WAKE_INTERVAL = 0.1  # seconds between wake-ups of the terminated UDP loop


def install() -> None:
    from aioquic.h3.connection import ErrorCode as H3ErrorCode
    from hypercorn.asyncio.udp_server import UDPServer
    from hypercorn.events import RawData

    original = UDPServer.run

    async def run(self: Any) -> None:
        async def wake_on_terminate() -> None:
            await self.context.terminated.wait()
            # The gateway has drained its streams by now, but idle QUIC connections (browsers keep them open)
            # would hold the listener, and the process, until graceful_timeout: close them, as h2 sends GOAWAY.
            protocol = getattr(self, "protocol", None)
            if protocol is not None:
                for connection in {id(c): c for c in protocol.connections.values()}.values():
                    with contextlib.suppress(Exception):
                        connection.quic.close(error_code=H3ErrorCode.H3_NO_ERROR, reason_phrase="shutting down")
                        await protocol.send_all(connection)
            # QUIC connections end on timers, outside this loop: keep waking it until it sees them gone.
            while True:
                # A full queue means the loop is busy and will re-check its condition anyway.
                with contextlib.suppress(asyncio.QueueFull):
                    self.protocol_queue.put_nowait(RawData(data=b"", address=("0.0.0.0", 0)))
                await asyncio.sleep(WAKE_INTERVAL)

        waker = asyncio.ensure_future(wake_on_terminate())
        try:
            await original(self)
        finally:
            waker.cancel()

    UDPServer.run = run  # type: ignore[method-assign]
