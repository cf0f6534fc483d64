"""A closed client connection keeps its socket until the keep-alive timeout ends (Hypercorn 0.18.0).

Defect: ``TCPServer.run`` reads inside a task group that also holds the keep-alive idle task. When the client
closes (EOF or reset) while the connection is idle, ``_read_data`` returns, but the task group waits for the idle
task, which only ends after ``keep_alive_timeout`` (75 s in the gateway): the socket sits in CLOSE-WAIT with its
descriptor, transport and protocol objects until then. Measured on the gateway from loopback: 700 plain
connect/close pairs left 700 descriptors held; ~270 connect/close pairs per second took every descriptor, and the
accept loop then spun (see ``accept_backoff``) while plain and TLS ``/healthz`` timed out.

Correction: once ``_read_data`` has returned (the peer is gone), stop the idle task, so the task group ends and
``_close`` releases the socket at once. The idle task only exists to close a connection nobody uses; a request in
flight keeps its own tasks, which the task group still waits for.

Upstream: no Hypercorn issue reports it (pgjones/hypercorn#170 reports sockets left open after a close). The upstream
fix: in ``TCPServer.run``, stop ``self.idle_task`` right after ``await self._read_data()``.

Test that fails without it: ``tests/test_connection_churn.py::test_closed_connections_release_their_descriptors``.

Remove it when a Hypercorn release ends the idle task when the peer closes: pin it, delete this module, and the test
above must still pass.
"""

from __future__ import annotations

from typing import Any


def install() -> None:
    from hypercorn.asyncio.tcp_server import TCPServer

    original = TCPServer._read_data

    async def _read_data(self: Any) -> None:
        try:
            await original(self)
        finally:
            await self.idle_task.stop()  # the peer is gone: nothing left to keep alive

    TCPServer._read_data = _read_data  # type: ignore[method-assign]
