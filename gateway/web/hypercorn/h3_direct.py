"""Fan-out's direct writes to HTTP/3 streams: DATA frames made by aioquic's own H3 state, one flush per connection
and round.

Why: an event sent through ASGI on h3 wakes the stream's task and goes through ``HTTPStream.app_send``, the
``H3Protocol.stream_send`` of three corrections (``h3_disconnects``, ``h3_backpressure``) and Hypercorn's own,
each an awaited coroutine, before aioquic's ``H3Connection.send_data`` puts the bytes in the QUIC stream's buffer:
measured ~43 µs of the 46 µs of server CPU an event cost in a burst to 1,000 h3 streams (HTTP/1.1: 4 µs). Here
fan-out appends each ready stream's DATA frame to its QUIC stream's send buffer itself, the bytes
``H3Connection.send_data`` would append (so aioquic's stream states and flow control stay the only truth; with a QUIC
logger, ``send_data`` is called to log it), and once the connection's streams of the round are written has
``h3_send_coalescing`` flush the connection, which builds the packets of all of them together
(``H3Link.flush``). Measured with ``python -m
benchmarks --quick --peers gateway --scenarios burst,broadcast --protocols h1,h3`` (one run each, before and after,
a 2-core VM shared with other work): burst to 100 and 300 h3 streams 37 and 35 -> 28 and 28.5 µs of server CPU per
delivered event (HTTP/1.1 in the same runs: 9-11.5 and 5-7 µs), broadcast to 1,000 h3 streams 156 -> 72 µs and p99
196 -> 100 ms (HTTP/1.1: 20 µs, 44-60 ms); nothing lost. At full size (1,000 publishes): burst to 100 h3 streams
50 -> 45.5 µs and p99 2.5 s -> 366 ms, to 1,000 h3 streams 60 -> 39 µs and p99 62 -> 29 s (the server cannot keep
up: HTTP/1.1 4.4 µs, 203 ms). What remains is mostly aioquic building, protecting and
accounting the packets (``h3_send_coalescing``).

When a stream may take a direct write (``H3Writer.ready``), and why each condition:

- its ``HTTPStream`` is not closed and is still its ``H3Protocol``'s stream of that id, and the protocol's QUIC
  connection has not ended: ``h3_disconnects`` pops the stream on a RESET_STREAM or STOP_SENDING and marks the
  protocol on CONNECTION_CLOSE, so a write never reaches a stream the client gave up;
- the QUIC connection is ``CONNECTED`` with no close pending (a server-side close, a drain);
- its QUIC stream's sender is not finished, not reset (aioquic resets it on STOP_SENDING) and has no FIN queued:
  a stream that is ending keeps the task path (its goodbye, the end of the body);
- the sender holds fewer than ``high_water`` bytes not yet acknowledged (unsent ones included): a client that
  stops reading (a small flow-control window) leaves its bytes there, the stream stops being ready, fan-out feeds
  its mailbox, and its task's sends wait in ``h3_backpressure`` under the write deadline, so it is cut by its
  slow-client rules exactly as on the task path.

``Stream.direct_ready`` adds that the stream's task sleeps with nothing queued. On HTTP/3 a task-path send puts its
bytes in aioquic before it awaits anything, and the task is not idle until that send returned: a direct write
never overtakes bytes of the task path.

Flow control and everything on the wire are aioquic's: the bytes are appended to the stream's send buffer as
``H3Protocol.stream_send`` appends them, and packets carry them as MAX_STREAM_DATA, MAX_DATA, congestion control
and pacing allow, in the flush that ``h3_send_coalescing`` runs once fan-out wrote the connection's streams of
the round (``flush_now``), or in the one a task-path write asks for after the round. Nothing of Hypercorn's
state changes: its ``HTTPStream`` keeps its state, and a later task-path write, a reset or a close meets the same
objects as if the task had sent the event.

It relies on these parts of Hypercorn 0.18.0 and aioquic 1.7.2, none of them public API (each checked by type in
``h3_writer``, which answers None when any differs, and only once ``gateway.web.hypercorn.install`` found every
server package verified and installed ``h3_disconnects``, ``h3_backpressure`` and ``h3_send_coalescing``):

- ``send`` is the bound ``HTTPStream.app_send``: ``__self__`` is the ``HTTPStream`` (``closed``, ``state``,
  ``stream_id``), whose ``send`` is the bound ``H3Protocol.stream_send``;
- ``H3Protocol``: ``connection`` (aioquic's ``H3Connection``), ``streams``, and ``send``, a ``functools.partial``
  of ``QuicProtocol.send_all`` bound to the protocol's ``_Connection`` (``quic``, ``h3``, ``cids``);
- aioquic: ``H3Connection._quic`` (the ``QuicConnection``), ``_quic_logger`` and ``_stream``
  (``H3Stream.headers_send_state``), and that ``send_data`` appends ``encode_frame(DATA, data)`` to the stream's
  sender and changes no other state of the H3 connection;
  ``QuicConnection._state``, ``_close_pending`` and ``_streams``; ``QuicStream.sender`` (``is_finished``,
  ``_reset_error_code``, ``_buffer_fin``, ``_buffer``).
"""

from __future__ import annotations

from functools import partial
from typing import Any

from aioquic.buffer import encode_uint_var
from aioquic.h3.connection import H3Connection, HeadersState
from aioquic.quic.connection import QuicConnection, QuicConnectionState
from aioquic.quic.stream import QuicStream, QuicStreamSender
from hypercorn.protocol.h3 import H3Protocol
from hypercorn.protocol.http_stream import ASGIHTTPState, HTTPStream
from hypercorn.protocol.quic import QuicProtocol, _Connection

from gateway.web.hypercorn import direct_writes_trusted, installed
from gateway.web.hypercorn.h3_disconnects import terminated
from gateway.web.hypercorn.h3_send_coalescing import QUIET, flush_now

__all__ = ["H3Link", "H3Writer", "append_data_frame", "data_frame", "h3_writer"]

LINK = "gateway_h3_link"  # the ``H3Link`` kept on an ``H3Protocol`` once one of its streams wrote directly
# What direct writes read and rely on: the stream's closing, backpressure and the connection's one flush.
NEEDS = ("h3_disconnects", "h3_backpressure", "h3_send_coalescing")
_CONNECTED = QuicConnectionState.CONNECTED  # (an enum member read per ready stream: a module name is cheaper)


def data_frame(data: bytes) -> bytes:
    """An HTTP/3 DATA frame of ``data`` (RFC 9114, 7.2.1: type 0x00, the length as a QUIC varint, the payload).
    The one- and two-byte lengths (every event under 16 KiB) are written here: aioquic's ``encode_uint_var`` builds
    a ``Buffer`` for each (2.5% of the server's CPU in a broadcast to 10,000 h3 streams)."""
    size = len(data)
    if size < 0x40:
        return bytes((0, size)) + data
    if size < 0x4000:
        return bytes((0, 0x40 | size >> 8, size & 0xFF)) + data
    return b"\x00" + encode_uint_var(size) + data


def append_data_frame(sender: QuicStreamSender, data: bytes) -> None:
    """``sender.write(data_frame(data))`` for a sender with no FIN queued and not reset (``H3Writer.ready``), with
    the same state changes and without its method calls: the frame's bytes appended to the send buffer, their range
    added to what is pending (merged with the last pending range when it ends where they begin, as
    ``RangeSet.add`` merges it: nothing pending lies past the end of the buffer)."""
    frame = data_frame(data)
    start = sender._buffer_stop
    stop = start + len(frame)
    ranges = sender._pending._RangeSet__ranges  # type: ignore[attr-defined]
    if ranges and ranges[-1].stop == start:
        ranges[-1] = range(ranges[-1].start, stop)
    else:
        ranges.append(range(start, stop))
    sender._buffer += frame
    sender._buffer_stop = stop
    sender.buffer_is_empty = False


class H3Link:
    """One QUIC connection's side of direct writes: its streams put their events in aioquic during fan-out's
    round, and ``flush`` sends the connection's packets once its streams of the round are written."""

    __slots__ = ("connection", "h3", "logged", "marks", "protocol", "quic")

    def __init__(self, protocol: QuicProtocol, connection: _Connection, h3: H3Protocol, quic: QuicConnection) -> None:
        self.protocol = protocol
        self.connection = connection
        self.h3 = h3
        self.quic = quic
        self.marks: dict[str, Any] = quic.__dict__  # where ``h3_send_coalescing`` marks the connection
        # With qlog the frames go through aioquic's H3 to be logged (and through it if the attribute is missing).
        self.logged = getattr(h3.connection, "_quic_logger", True) is not None

    def open(self) -> bool:
        """The QUIC connection is established, not closing, and Hypercorn has not seen it end."""
        quic = self.quic
        return quic._state is _CONNECTED and not quic._close_pending and not terminated(self.h3)

    def flush(self) -> None:
        """Have ``h3_send_coalescing`` send the connection's packets now: fan-out calls this once per connection
        and round, as soon as the round's streams of the connection are written, so the first connections' packets
        leave while fan-out writes the others' (a flush after the round held every connection's packets until all
        10,000 streams of a broadcast were written)."""
        flush_now(self.protocol, self.connection)


class H3Writer:
    """One HTTP/3 stream's direct writes."""

    __slots__ = ("high_water", "link", "sender", "stream", "stream_id", "streams")
    # No ``room`` to check before a write, as h2 has: aioquic buffers what flow control does not let out yet, and
    # ``ready`` bounds that buffer (``high_water``).

    def __init__(self, link: H3Link, stream: HTTPStream, sender: QuicStreamSender, high_water: int) -> None:
        self.link = link
        self.stream = stream
        self.stream_id: int = stream.stream_id
        self.streams = link.h3.streams  # Hypercorn's streams of the connection: a reset one is popped from it
        self.sender = sender  # aioquic's sending half of the stream: the same object for the stream's whole life
        self.high_water = high_water

    def ready(self) -> bool:
        """A write now reaches a stream that can still take DATA, the client is reading, the connection is up."""
        sender = self.sender
        return (not self.stream.closed and self.streams.get(self.stream_id) is self.stream
                and not sender.is_finished and sender._reset_error_code is None and sender._buffer_fin is None
                and len(sender._buffer) < self.high_water and self.link.open())

    def write(self, data: bytes) -> H3Link:
        """Frame ``data`` as one DATA frame in aioquic (the caller checked ``ready``); the link to flush when the
        round is over. The frame goes straight into the QUIC stream's send buffer, exactly the bytes
        ``H3Connection.send_data`` appends (RFC 9114: type 0, the length as a varint, the payload) without its
        per-write checks, which ``ready`` made (the stream's head is out and its sender takes data). With a QUIC
        logger configured, ``send_data`` itself is called, so that the frame is logged."""
        link = self.link
        if link.logged:
            link.h3.connection.send_data(self.stream_id, data, False)
        else:
            append_data_frame(self.sender, data)
            link.marks[QUIET] = False  # (a stream has something to send: ``h3_send_coalescing`` visits the streams)
        return link


def h3_writer(send: Any, high_water: int) -> H3Writer | None:
    """The direct writer of the h3 response behind ``send`` (what Hypercorn handed the application) once its head
    is out; None for HTTP/1.1, HTTP/2, unverified server packages or corrections not installed, or a stream or
    connection already closed."""
    if not direct_writes_trusted() or not set(NEEDS) <= set(installed()):
        return None
    stream = getattr(send, "__self__", None)
    if not isinstance(stream, HTTPStream) or stream.closed or stream.state is not ASGIHTTPState.RESPONSE:
        return None
    h3 = getattr(stream.send, "__self__", None)
    if not isinstance(h3, H3Protocol) or terminated(h3) or h3.streams.get(stream.stream_id) is not stream:
        return None
    connection = h3.connection
    quic = getattr(connection, "_quic", None)
    if not (isinstance(connection, H3Connection) and isinstance(quic, QuicConnection)
            and isinstance(quic._state, QuicConnectionState)):
        return None
    h3_stream = connection._stream.get(stream.stream_id)
    if h3_stream is None or h3_stream.headers_send_state is not HeadersState.AFTER_HEADERS:
        return None
    quic_stream = quic._streams.get(stream.stream_id)
    sender = getattr(quic_stream, "sender", None)
    if not (isinstance(quic_stream, QuicStream) and isinstance(sender, QuicStreamSender)
            and isinstance(sender._buffer, bytearray)):
        return None
    link = getattr(h3, LINK, None)
    if not isinstance(link, H3Link):
        link = _link(h3, quic)
        if link is None:
            return None
        setattr(h3, LINK, link)
    return H3Writer(link, stream, sender, high_water)


def _link(h3: H3Protocol, quic: QuicConnection) -> H3Link | None:
    """The link of ``h3``'s connection, from what Hypercorn gave it to send with:
    ``partial(QuicProtocol.send_all, connection)``."""
    send = h3.send
    if not (isinstance(send, partial) and len(send.args) == 1 and not send.keywords):
        return None
    protocol, connection = getattr(send.func, "__self__", None), send.args[0]
    if not (isinstance(protocol, QuicProtocol) and isinstance(connection, _Connection)
            and connection.quic is quic and connection.h3 is h3):
        return None
    return H3Link(protocol, connection, h3, quic)
