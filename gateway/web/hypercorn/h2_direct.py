"""Fan-out's direct writes to HTTP/2 streams: DATA frames made by h2's own state, one transport write per round.

Why: an event sent through ASGI on h2 wakes the stream's task, goes through ``HTTPStream``, Hypercorn's
``StreamBuffer`` and its per-connection send task, which frames one DATA frame and writes it under the connection's
send lock: measured 43 µs of server CPU per event when 10,000 streams share 100 connections, against 6.8 µs on
HTTP/1.1's direct path. Here fan-out asks h2's ``H2Connection.send_data`` itself to frame the event of every ready
stream of a connection (so h2's stream states and flow-control windows stay the only truth), and once the round's
streams of that connection are framed writes what ``data_to_send`` holds for it with one ``transport.write``
(``H2Link.flush``; fan-out takes a round connection by connection).
h2's framing costs about what HTTP/1.1's ``send`` per stream does, and one system call carries a hundred events.
Measured with ``python -m benchmarks.h2direct`` (medians, a 2-core VM shared with other work): broadcast to 10,000
streams, 21 µs per event and p99 674 ms, against 95 µs and 4.8 s on the task path and 15.6 µs and 616 ms on
HTTP/1.1; a burst to 1,000 streams, 4.5 µs per event against 37 µs and 3.6 µs. An event waits for the other
streams of its connection in the round to be framed (100 on that benchmark), not for the whole round.

When a stream may take a direct write (``H2Writer.ready``), and why each condition:

- its ``HTTPStream`` is not closed, and its response head is out (``ASGIHTTPState.RESPONSE``);
- its ``StreamBuffer`` is empty and not complete: nothing the task path sent is still queued, so nothing is
  overtaken, and a stream that is ending keeps the task path (its goodbye, ``END_STREAM``);
- its h2 stream may still send DATA (``OPEN`` or ``HALF_CLOSED_REMOTE``; a RST_STREAM from the client closes it)
  and the connection is not closed (a GOAWAY closes it);
- the connection's send lock is free: Hypercorn takes bytes from h2 (``_flush``) and writes them under
  ``TCPServer.send_lock`` without yielding when it is free, so a free lock without waiters means no bytes taken
  from h2 are still waiting to be written and a direct write cannot overtake them;
- the transport is open and holds less than ``high_water`` bytes (a slow client keeps the task path and its write
  deadline, as on HTTP/1.1).

Flow control: the bytes go out only when the stream's and the connection's windows cover them (``H2Writer.room``,
with a margin for what a compressor may add) and the connection's window keeps ``RESERVE`` after them, so the
streams whose data waits in Hypercorn's buffers for the window (its send task serves them in turn) are never
starved by fan-out. Otherwise the frames go to the stream's mailbox and its task sends them: the window too small,
a stream closing, heartbeats and the goodbye all keep Hypercorn's path. Should an encoder ever exceed the margin,
what the window does not take is appended to the stream's ``StreamBuffer`` exactly as ``H2Protocol.stream_send``
would, and Hypercorn's send task sends it when the window opens (the stream is then not ready until it has).

Hypercorn's own bookkeeping stays as it was: the stream's buffer is untouched (so its flow-control wait events are
too), its scheduler (``h2_rapid_reset.RoundRobin``, which ignores priorities) still finds the stream blocked or
blocks it on its next empty turn, the connection is never idle while a stream is open, so the keep-alive timer is
not involved, and a later task-path write or a RST_STREAM meets the same states as if the task had sent the event.

It relies on these parts of Hypercorn 0.18.0 and h2 4.4.1, none of them public API (each checked by type in
``h2_writer``, which answers None when any differs, and only once ``gateway.web.hypercorn.install`` found every
server package verified):

- ``send`` is the bound ``HTTPStream.app_send``: ``__self__`` is the ``HTTPStream`` (``closed``, ``state``,
  ``stream_id``), whose ``send`` is the bound ``H2Protocol.stream_send``;
- ``H2Protocol``: ``connection`` (the ``h2.connection.H2Connection``), ``closed``, ``stream_buffers`` (one
  ``StreamBuffer`` per stream: ``buffer``, ``_complete``, ``_is_empty``), ``has_data``, ``priority``,
  ``task_group``, ``_flush``, and ``send``, the bound ``TCPServer.protocol_send``;
- ``TCPServer``: ``send_lock`` (an ``asyncio.Lock``; its ``_waiters`` are CPython's) and ``writer.transport``;
- the asyncio worker's ``EventWrapper`` holds an ``asyncio.Event`` in ``_event``;
- h2: ``H2Connection.streams``, ``state_machine.state``, ``outbound_flow_control_window``,
  ``max_outbound_frame_size``; ``H2Stream.state_machine.state`` and ``outbound_flow_control_window``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h2.connection
from h2.connection import ConnectionState
from h2.stream import H2Stream, StreamState
from hypercorn.asyncio.tcp_server import TCPServer
from hypercorn.asyncio.worker_context import EventWrapper
from hypercorn.protocol.h2 import H2Protocol, StreamBuffer
from hypercorn.protocol.http_stream import ASGIHTTPState, HTTPStream

from gateway.web.hypercorn import direct_writes_trusted

__all__ = ["RESERVE", "H2Link", "H2Writer", "h2_writer", "margin"]

# Bytes of the connection's flow-control window a direct write leaves for the streams Hypercorn's send task serves:
# one default-sized DATA frame, so a stream waiting in its buffer always gets a frame's worth at its turn.
RESERVE = 16 * 1024
_SENDING = (StreamState.OPEN, StreamState.HALF_CLOSED_REMOTE)
_CLOSED = ConnectionState.CLOSED  # (an enum member read per ready stream: a module name is ~6x cheaper on 3.11)


def margin(size: int) -> int:
    """Bytes a flushed Brotli, zstd or gzip chunk may add to ``size`` bytes of input: stored blocks' headers (at
    most 5 bytes per 16 KiB) and the flush's own few bytes, with room to spare (random input of 0 B to 1 MiB, each
    codec: at least 54 bytes under it). Identity adds nothing."""
    return 64 + size // 1024


class H2Link:
    """One HTTP/2 connection's side of direct writes: its streams frame their events into h2 during fan-out's
    round, and ``flush`` writes what h2 holds once they are all framed."""

    __slots__ = ("connection", "has_data", "high_water", "lock", "protocol", "transport")

    def __init__(self, protocol: H2Protocol, has_data: EventWrapper, lock: asyncio.Lock,
                 transport: asyncio.WriteTransport, high_water: int) -> None:
        self.protocol = protocol
        self.connection: h2.connection.H2Connection = protocol.connection
        self.has_data = has_data._event  # what wakes Hypercorn's send task
        self.lock = lock
        self.transport = transport
        self.high_water = high_water

    def idle(self) -> bool:
        """No bytes Hypercorn took from h2 wait for the send lock, the connection is open and its transport
        holds little."""
        lock, transport = self.lock, self.transport
        return (not lock.locked() and not lock._waiters and not self.protocol.closed
                and not transport.is_closing() and transport.get_write_buffer_size() < self.high_water
                and self.connection.state_machine.state is not _CLOSED)

    def flush(self) -> None:
        """Write everything h2 holds for the connection in one transport write. Fan-out's round never yields
        between a stream's ``ready`` and this, so the lock is still free; should it not be, Hypercorn's own
        ``_flush`` takes the bytes in a task of the connection's, behind the bytes already waiting."""
        if self.transport.is_closing():
            return  # the connection is going: what h2 holds goes nowhere either way
        if self.lock.locked() or self.lock._waiters:
            self.protocol.task_group.spawn(self.protocol._flush)
            return
        data = self.connection.data_to_send()
        if data:
            self.transport.write(data)


class H2Writer:
    """One h2 stream's direct writes."""

    __slots__ = ("buffer", "h2", "is_empty", "link", "stream", "stream_id")

    def __init__(self, link: H2Link, stream: HTTPStream, h2_stream: H2Stream, buffer: StreamBuffer,
                 is_empty: EventWrapper) -> None:
        self.link = link
        self.stream = stream
        self.stream_id: int = stream.stream_id
        self.h2 = h2_stream  # h2's state of the stream: the same object until it closes (then CLOSED)
        self.buffer = buffer
        self.is_empty = is_empty._event  # what Hypercorn's ``drain`` of the buffer waits for

    def ready(self) -> bool:
        """A write now would overtake nothing, reach a stream that can still take DATA, and pile up nothing."""
        buffer = self.buffer
        return (not buffer.buffer and not buffer._complete and not self.stream.closed
                and self.h2.state_machine.state in _SENDING and self.link.idle())

    def room(self, size: int) -> bool:
        """Whether the windows take ``size`` bytes of input once encoded, leaving the connection its reserve."""
        need = size + margin(size)
        return (self.h2.outbound_flow_control_window >= need
                and self.link.connection.outbound_flow_control_window >= need + RESERVE)

    def write(self, data: bytes) -> H2Link:
        """Frame ``data`` as DATA frames in h2 (the caller checked ``ready`` and ``room``); the link to flush
        when the round is over. Whatever the windows do not take (an encoder beyond ``margin``) waits in the
        stream's Hypercorn buffer, in order, for its send task."""
        link = self.link
        connection, stream_id = link.connection, self.stream_id
        size = len(data)
        step = connection.max_outbound_frame_size
        window = min(self.h2.outbound_flow_control_window, connection.outbound_flow_control_window)
        if size <= step and size <= window:
            connection.send_data(stream_id, data)
            return link
        fits = min(size, window)
        for at in range(0, fits, step):
            connection.send_data(stream_id, data[at:min(at + step, fits)])
        if fits < size:
            self._defer(data[fits:])
        return link

    def _defer(self, rest: bytes) -> None:
        """Queue ``rest`` for Hypercorn's send task as ``H2Protocol.stream_send`` queues a body (without waiting
        for room: the buffer's next producer, the stream's task, waits for it)."""
        protocol = self.link.protocol
        self.buffer.buffer.extend(rest)
        self.is_empty.clear()
        protocol.priority.unblock(self.stream_id)
        self.link.has_data.set()


def h2_writer(send: Any, high_water: int) -> H2Writer | None:
    """The direct writer of the h2 response behind ``send`` (what Hypercorn handed the application) once its head
    is out; None for HTTP/1.1, HTTP/3, unverified server packages, or a stream or connection already closed."""
    if not direct_writes_trusted():
        return None
    stream = getattr(send, "__self__", None)
    if not isinstance(stream, HTTPStream) or stream.closed or stream.state is not ASGIHTTPState.RESPONSE:
        return None
    protocol = getattr(stream.send, "__self__", None)
    if not isinstance(protocol, H2Protocol) or protocol.closed:
        return None
    buffer = protocol.stream_buffers.get(stream.stream_id)
    is_empty, has_data = getattr(buffer, "_is_empty", None), protocol.has_data
    if not (isinstance(buffer, StreamBuffer) and isinstance(is_empty, EventWrapper)
            and isinstance(has_data, EventWrapper) and isinstance(protocol.connection, h2.connection.H2Connection)):
        return None
    h2_stream = protocol.connection.streams.get(stream.stream_id)
    if not isinstance(h2_stream, H2Stream) or h2_stream.state_machine.state not in _SENDING:
        return None
    link = getattr(protocol, "gateway_link", None)
    if not isinstance(link, H2Link):
        server = getattr(protocol.send, "__self__", None)
        if not (isinstance(server, TCPServer) and isinstance(server.send_lock, asyncio.Lock)
                and hasattr(server.send_lock, "_waiters")):
            return None
        transport: asyncio.WriteTransport | None = server.writer.transport
        if transport is None or transport.is_closing():
            return None
        link = H2Link(protocol, has_data, server.send_lock, transport, high_water)
        protocol.gateway_link = link  # type: ignore[attr-defined]
    return H2Writer(link, stream, h2_stream, buffer, is_empty)
