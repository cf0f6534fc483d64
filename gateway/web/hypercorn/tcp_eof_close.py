"""A closed client connection keeps its socket until the keep-alive timeout ends (Hypercorn 0.18.0).

Defect: ``TCPServer.run`` reads inside a task group that also holds the keep-alive idle task. When the client
closes (EOF or reset) while the connection is idle, ``_read_data`` returns, but the task group waits for the idle
task, which only ends after ``keep_alive_timeout`` (75 s in the gateway): the socket sits in CLOSE-WAIT with its
descriptor, transport and protocol objects until then. Measured on the gateway from loopback: 700 plain
connect/close pairs left 700 descriptors held; ~270 connect/close pairs per second took every descriptor, and the
accept loop then spun (see ``accept_backoff``) while plain and TLS ``/healthz`` timed out.

Correction: once the connection's read loop (``_read_data``) ends (the peer is gone), stop the idle task, so the
task group ends and ``_close`` releases the socket at once. The idle task only exists to close a connection nobody
uses; a request in flight keeps its own tasks, which the task group still waits for.

``_read_data`` is replaced by a loop that does the same (read up to ``MAX_RECV`` bytes until EOF or a connection
error, hand each read and then ``Closed`` to the protocol) and stops the idle task at its end, rather than wrapped
in a coroutine that awaits Hypercorn's: every open connection waits in that loop for its whole life, and a wrapper's
frame (~240 bytes) would wait with it. For the same reason a read is awaited directly when there is no
``read_timeout`` (the gateway's setting): Hypercorn wraps each one in ``asyncio.wait_for``, whose coroutine (~270
bytes) only awaits the read when the timeout is None, and the bytes of the last read (the request, ~200 bytes) are
let go once the protocol has them.

Upstream: no Hypercorn issue reports it (pgjones/hypercorn#170 reports sockets left open after a close). The upstream
fix: in ``TCPServer.run``, stop ``self.idle_task`` right after ``await self._read_data()``.

Test that fails without it: ``tests/test_connection_churn.py::test_closed_connections_release_their_descriptors``.

Remove it when a Hypercorn release ends the idle task when the peer closes: pin it, delete this module, and the test
above must still pass.
"""

from __future__ import annotations

import asyncio
from typing import Any


def install() -> None:
    from hypercorn.asyncio.tcp_server import MAX_RECV, TCPServer
    from hypercorn.events import Closed, RawData

    async def _read_data(self: Any) -> None:
        reader = self.reader
        try:
            while not reader.at_eof():
                timeout = self.config.read_timeout
                try:
                    if timeout is None:
                        data = await reader.read(MAX_RECV)
                    else:
                        data = await asyncio.wait_for(reader.read(MAX_RECV), timeout)
                except (OSError, TimeoutError):  # a reset, a TLS error (both OSErrors) or read_timeout: the end
                    break
                await self.protocol.handle(RawData(data))
                del data  # h11 has its copy: the request's bytes are not held while the connection waits
            await self.protocol.handle(Closed())
        finally:
            await self.idle_task.stop()  # the peer is gone: nothing left to keep alive

    TCPServer._read_data = _read_data  # type: ignore[method-assign]
