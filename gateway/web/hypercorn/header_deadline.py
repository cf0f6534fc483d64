"""An HTTP/1.1 request head may take 75 s, and then the connection is closed without a word (Hypercorn 0.18.0).

Defect: Hypercorn has no deadline for reading a request head. ``read_timeout`` (off here: it would kill SSE
streams, which never send again after their head) is a between-reads timeout that a dribbler beats with one byte
per interval, and the only other clock is ``keep_alive_timeout``. Measured before this module: a client sending one
byte of its head every second was held 75 s and then closed silently, with no status; 500 of them held 500
connections for those 75 s.

Correction: an HTTP/1.1 connection must complete a request head within ``limits.header_timeout`` of being
accepted, and a later request on it within ``header_timeout`` of its first byte (the idle time between requests
stays ``keep_alive_timeout``'s), as nginx's ``client_header_timeout`` does; the first byte of a pipelined request,
read before the response to the one ahead of it was out, counts from the moment that response is done. Past it, a
connection that sent part of a head gets ``408`` with the JSON error body and ``Connection: close``; one that sent
nothing is closed silently (there is no request to answer, and browsers retry an idle pre-connection). Counted in
``gateway_request_deadlines_total{stage="header"|"connect"}``. A connection that turns into h2 (prior knowledge or
``Upgrade: h2c``) leaves the deadline behind: an h2 HEADERS frame arrives whole, and a connection that never sends
one is idle, governed by ``keep_alive_timeout``. An SSE response is never touched: the deadline ends at the head.

Upstream: no Hypercorn issue; the upstream fix would be a ``header_timeout`` config in ``H11Protocol`` armed on
connection and on the first byte of a request, cleared by ``h11.Request``.

Tests that fail without it: ``tests/test_trust_boundary.py::test_slow_headers_and_bodies_are_cut_by_deadlines``
and, for the pipelined head, ``::test_a_pipelined_head_is_cut_by_the_deadline``.

Remove it when Hypercorn has a request-head deadline: map ``limits.header_timeout`` onto it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

_BODY = b'{"error":"request_timeout","detail":"the request head did not arrive in time"}'
RESPONSE_408 = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\ncache-control: no-store\r\n"
                b"connection: close\r\ncontent-length: " + str(len(_BODY)).encode() + b"\r\n\r\n" + _BODY)

_timeout: float | None = None
_observers: list[Callable[[str], None]] = []  # the last configured gateway's


def configure(header_timeout: float | None, on_deadline: Callable[[str], None] | None = None) -> None:
    """Set the deadline (process-wide); ``on_deadline`` is told ``"header"`` or ``"connect"`` on every cut."""
    global _timeout
    _timeout = header_timeout
    _observers[:] = [on_deadline] if on_deadline is not None else []


def disarm(protocol: Any) -> None:
    """Cancel the connection's head deadline: a whole request head has arrived (``h11_post_lane`` serves one
    without h11's ``Request`` event)."""
    timer = getattr(protocol, "_head_timer", None)
    if timer is not None:
        timer.cancel()
        protocol._head_timer = None


def install() -> None:
    import h11
    from hypercorn.protocol.h11 import H2CProtocolRequiredError, H2ProtocolAssumedError, H11Protocol

    original_initiate = H11Protocol.initiate
    original_handle = H11Protocol.handle
    original_create = H11Protocol._create_stream

    def arm(self: Any, spoke: bool) -> None:
        if _timeout is not None and getattr(self, "_head_timer", None) is None:
            self._head_spoke = spoke
            self._head_timer = asyncio.get_running_loop().call_later(_timeout, expired, self)

    def expired(self: Any) -> None:
        self._head_timer = None
        if self.connection.their_state is h11.IDLE and self.connection.our_state is h11.IDLE:
            self.task_group.spawn(cut, self)

    async def cut(self: Any) -> None:
        from hypercorn.events import Closed, RawData

        spoke = self._head_spoke or bool(self.connection.trailing_data[0])
        for observer in _observers:
            observer("header" if spoke else "connect")
        if spoke:
            await self.send(RawData(data=RESPONSE_408))
        await self.send(Closed())

    async def initiate(self: Any) -> None:
        await original_initiate(self)
        arm(self, spoke=False)

    async def handle(self: Any, event: Any) -> None:
        from hypercorn.events import Closed, RawData

        if isinstance(event, RawData) and event.data and isinstance(self.connection, h11.Connection):
            if self.connection.their_state is h11.IDLE:
                if getattr(self, "_head_timer", None) is None:
                    arm(self, spoke=True)
                else:
                    self._head_spoke = True
        elif isinstance(event, Closed):
            disarm(self)
        try:
            await original_handle(self, event)
        except (H2ProtocolAssumedError, H2CProtocolRequiredError):
            disarm(self)  # the connection is h2 from here on
            raise
        if isinstance(event, RawData) and pipelined_head(self):
            arm(self, spoke=True)

    def pipelined_head(self: Any) -> bool:
        """A new cycle began with part of the next head already read. Pipelined bytes are read with the request
        before them, and ``handle`` returns only once that request's response is out; the cycle then starts with
        them buffered and no new read to arm the deadline, so a client could send one request and the start of
        another, then dribble or say nothing, and be held until ``keep_alive_timeout``."""
        connection = self.connection
        return (getattr(self, "_head_timer", None) is None and isinstance(connection, h11.Connection)
                and connection.their_state is h11.IDLE and connection.our_state is h11.IDLE
                and bool(connection.trailing_data[0]))

    async def _create_stream(self: Any, request: Any) -> None:
        disarm(self)
        await original_create(self, request)

    H11Protocol.initiate = initiate  # type: ignore[method-assign]
    H11Protocol.handle = handle  # type: ignore[method-assign]
    H11Protocol._create_stream = _create_stream  # type: ignore[method-assign]
