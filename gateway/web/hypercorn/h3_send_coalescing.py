"""HTTP/3 builds packets after every write, walking every stream each time (Hypercorn 0.18.0, aioquic 1.7.2).

Defect: Hypercorn's ``H3Protocol`` follows every write of a stream (a response head, a body chunk, the end) with
``QuicProtocol.send_all``, which asks aioquic for datagrams (``datagrams_to_send``) and then replaces the
connection's timer task: it cancels the task, waits for it to end and creates a new one. ``datagrams_to_send``
visits every stream of the connection for every packet it builds (``_write_application``: MAX_STREAM_DATA for
each, then each stream of the send queue). So when an event reaches the 100 SSE streams sharing a QUIC
connection, their 100 writes build packets 100 times and each build walks 100 streams, and 100 timer tasks are made:
measured with the load generator (``benchmarks/loadgen/h3.py``), a burst to 1,000 streams over ten connections cost
150-360 µs of server CPU per delivered event (HTTP/1.1: 5-14 µs), two thirds of it in ``datagrams_to_send``.

Correction:

- ``QuicProtocol.send_all`` only asks for a flush of the connection; the flush runs once, after the current round
  of callbacks (``call_soon``), so every write made in one loop iteration (fan-out wakes all the streams of an event
  in the same one) leaves in the same packets, and a lone write waits for nothing; fan-out's direct writes
  (``h3_direct``) flush a connection at once (``flush_now``) when its streams of the round are written;
- the flush builds datagrams in one ``datagrams_to_send`` call, aioquic's own packet loop, showing aioquic only
  the streams it must handle itself (a MAX_STREAM_DATA to raise or send, a RESET_STREAM or STOP_SENDING pending,
  finished and to be discarded) and one stand-in stream; when aioquic asks for the stand-in's STREAM frame, the
  frames of the streams with data waiting are written into that packet, in send-queue order, until it is full
  (``Service``); then the connection gets back its streams, those not served ahead of those served (aioquic's
  rotation). A frame that carries a stream's one pending range, or its head where the packet ends, with no FIN
  and no qlog, is written by ``Service.fill`` with the sender's state moved exactly as
  ``QuicStreamSender.get_frame`` moves it and a delivery handler doing what aioquic's ``on_data_delivery`` does
  (``delivered``); every other frame (a retransmission among other ranges, a FIN, a frame that flow control
  cuts) is aioquic's ``_write_stream_frame``;
- a flush that served every busy stream whole and left none for aioquic marks its connection quiet (``QUIET``);
  its next flush shows aioquic no stream at all (ACKs, control frames and probes are aioquic's as ever) unless
  something could have given one of that connection's streams work since: a write
  (``QuicConnection.send_stream_data``, ``h3_direct``'s own), a reset or STOP_SENDING asked for, a delivery aioquic
  handles itself that leaves a stream something to do (a loss of data, a reset, a STOP_SENDING or a
  MAX_STREAM_DATA; a FIN or a reset acknowledged: a stream to discard) or an ack-eliciting packet from the client
  (any frame but ACK, PADDING and CONNECTION_CLOSE: data, a credit, a reset, a new stream). ``track_changes``
  marks the connection concerned, not every connection: during a broadcast each client ACK asks for a flush of
  its connection while fan-out writes to the others, and an ACK, in order or not, gives a stream nothing to send;
- the datagrams go to the UDP transport at once (``UDPServer.protocol_send`` does only that);
- the connection's timer is one ``TimerHandle``, moved only when aioquic's ``get_timer`` changes; when it fires, a
  task runs ``handle_timer`` and the connection's events, as Hypercorn's timer task did.

Measured on the 2-core benchmark machine (server and load generator each on one core, 100 streams a connection,
~180-byte events): a burst of 200 events to 1,000 streams went from 151 to 46 µs of server CPU per delivered event
(HTTP/1.1: 4-5), and a broadcast to 1,000 streams from 428 µs and a p99 of 14.2 s to 114 µs and 358 ms (HTTP/1.1:
22 µs, 74 ms). Building a connection's packets inside one ``datagrams_to_send`` call, with the whole-range frames
and their delivery handler, instead of one call a packet that stopped at a full packet and with aioquic's own
``_write_stream_frame``: a broadcast to 10,000 streams (100 a connection, ~180-byte events, 0.5 s apart) went from
40.0 to 31.1 µs per delivered event, p99 507 to 462 ms (medians of four interleaved runs on a slower 2-core machine,
busy at times with other work; HTTP/1.1 in the same runs: 17.6-18.4 µs, p99 257-268 ms); in memory (an aioquic
client and server, 100 streams, 190-byte events) the send side went from ~21 to ~9 µs an event and the ACKs'
processing from ~2.7 to ~1.7. Skipping the streams of quiet connections: 27.65 to 25.55 µs (medians of three
interleaved runs). Marking the connection concerned instead of counting changes for all of them at once (any
write, or an ACK of a frame aioquic wrote itself, made every connection's next flush visit its streams): of the
~24,000 flushes of a broadcast of 20 events to 10,000 streams, those that sorted the streams went from ~23,600 to
~6,500 (of which ~3,100 could send nothing: pacing or the congestion window held the data back). What remains
is aioquic building, protecting and accounting each packet (~6 events a packet) and processing each ACK, the
sort of every stream in the flushes that do send, and fan-out.

QUIC's own rules are untouched: aioquic still builds every packet, with its ACK and control frames first, within
flow control (each frame's offset limit is the one aioquic computes from MAX_DATA and MAX_STREAM_DATA, and the
connection's credit is counted in its ``_remote_max_data_used``), congestion control and pacing; loss recovery
reschedules what a lost packet carried through the delivery handlers each frame registered; each stream's bytes are
in aioquic's buffer, in order, from the moment it was written; resets, STOP_SENDING and CONNECTION_CLOSE are sent by
aioquic on the next flush, which a write or a received datagram schedules, as before. A connection that ended
(Hypercorn empties its ``cids``) arms no timer.

Upstream: pgjones/hypercorn#201 (an open draft rewriting H3) reports the cost of Hypercorn's per-send timer tasks
("much of the time spent seems related to task scheduling"), and pgjones/hypercorn#350 (an open pull request)
batches H3 sends; neither is released. aioquic has no issue for ``_write_application`` visiting every stream per
packet, nor for the objects and range bookkeeping each STREAM frame and its acknowledgement cost. The upstream fix:
Hypercorn transmits a QUIC connection once per batch of writes and keeps one timer; aioquic's send loop visits only
the streams with something to send, stops at a full packet, and writes and releases a whole pending range without
per-frame objects.

Test that fails without it: ``tests/test_h3_send_coalescing.py::test_one_event_to_many_streams_is_one_flush``
(and the measurement in the module's commit: burst and broadcast over h3 in ``python -m benchmarks``);
``tests/test_h3_packet_service.py`` holds the packet building to QUIC's rules (tiny windows, losses, a reset
mid-burst, rotation) between two aioquic connections in memory.

Remove it when Hypercorn flushes a QUIC connection once per batch of writes with one timer, and aioquic builds
packets without visiting idle streams and without per-frame objects: pin both, delete this module, and the first
test above must still pass (``tests/support/quicpair.py`` then sends with ``datagrams_to_send`` itself).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aioquic.quic.packet_builder import QuicDeliveryState
from aioquic.quic.stream import QuicStream

PENDING = "gateway_flush_pending"  # set on a Hypercorn ``_Connection`` while a flush of it is scheduled
TIMER = "gateway_timer"  # the connection's ``asyncio.TimerHandle``, or None
SENDTO = "gateway_sendto"  # on a ``QuicProtocol``: its UDP transport's ``sendto``, once found
FEW_STREAMS = 8  # with this many streams or fewer, aioquic's own walk costs no more than choosing the busy ones
STREAM = 0x0A  # a STREAM frame with a length (RFC 9000, 19.8), as aioquic writes it: no offset (0), no FIN
STREAM_WITH_OFFSET = 0x0E  # and with an offset
ACKED = QuicDeliveryState.ACKED
MAX_PACKETS = 4096  # packets one flush builds at most (~5 MiB); congestion control stops it long before

# On a QuicConnection: True while its last flush left every stream with nothing to do and nothing has come to one
# of its streams since; anything that may give one of them something to do sets it to False (``track_changes``).
QUIET = "gateway_quiet"

SendTo = Callable[[bytes, Any], None]

# Bumped by every delivery that can give a stream something to do that aioquic handles itself (a loss, a FIN or a
# reset acknowledged, an ACK out of order): it has no way back to its connection, so the connection's methods that
# process deliveries (``receive_datagram``, ``handle_timer``) compare it before and after and mark their own
# connection. A connection marked ``QUIET`` has no stream to visit: its flush builds only what aioquic sends for
# the connection (ACKs, control frames, probes).
DELIVERIES = [0]
_tracked = [False]  # whether ``track_changes`` is installed: without it, every flush visits the streams

_request: Callable[[Any, Any], None] | None = None  # ``install``'s ``request``, once installed
_flush: Callable[[Any, Any], None] | None = None  # ``install``'s ``flush_at_once``, once installed


def flush_soon(protocol: Any, connection: Any) -> bool:
    """Ask for one flush of ``connection`` (a Hypercorn ``_Connection`` of the ``QuicProtocol`` ``protocol``)
    after the current round, as ``send_all`` does; False when the correction is not installed. The seam through
    which fan-out's direct HTTP/3 writes (``h3_direct``) leave with the round's other writes."""
    if _request is None:
        return False
    _request(protocol, connection)
    return True


def flush_now(protocol: Any, connection: Any) -> bool:
    """Flush ``connection`` at once (its packets built and handed to the UDP transport); False when the correction
    is not installed. Fan-out's direct HTTP/3 writes (``h3_direct``) flush each connection as soon as its streams
    of the round are written, so that its packets leave while fan-out writes the other connections' streams rather
    than after all of them. A flush already asked for still runs (and finds what was written since, if anything)."""
    if _flush is None:
        return False
    _flush(protocol, connection)
    return True


def datagrams(quic: Any, now: float) -> tuple[list[tuple[bytes, Any]], bool]:
    """What ``quic.datagrams_to_send(now)`` returns, built at a cost that grows with the streams that have
    something to send rather than with the streams times the packets; True when ``MAX_PACKETS`` cut it short.

    aioquic's ``_write_application`` visits, for every packet, every stream for MAX_STREAM_DATA and every stream
    of its send queue, also once the packet is full. So it is shown only the streams it must see itself (to
    raise their MAX_STREAM_DATA, discard them once finished, send STOP_SENDING or RESET_STREAM: rare), plus one
    stand-in stream, ``Service.driver``; when aioquic asks to write the stand-in's STREAM frame, ``Service``
    writes the frames of the streams with data or a FIN waiting, in their queue order, until the packet is full,
    and returns; aioquic ends the packet and, pacing and
    congestion control permitting, starts the next one and asks again. See ``Service``."""
    streams: dict[int, Any] = quic._streams
    queue: list[Any] = quic._streams_queue
    if len(streams) <= FEW_STREAMS or len(queue) != len(streams):  # (aioquic keeps every stream in both)
        return list(quic.datagrams_to_send(now=now)), False
    state = quic.__dict__
    if _tracked[0] and state.get(QUIET):  # nothing came to a stream since a flush left them all with nothing to do
        quic._streams, quic._streams_queue = {}, []
        try:
            return list(quic.datagrams_to_send(now=now)), False
        finally:
            quic._streams, quic._streams_queue = streams, queue
    service = Service(quic, queue)
    quic._streams, quic._streams_queue = service.view, service.window
    quic._write_stream_frame = service.write
    state[QUIET] = False
    deliveries = DELIVERIES[0]
    try:
        return list(quic.datagrams_to_send(now=now)), service.more
    finally:
        del quic._write_stream_frame
        service.restore(streams)
        if service.done() and DELIVERIES[0] == deliveries:
            state[QUIET] = True


def delivered(delivery: QuicDeliveryState, sender: Any, start: int, stop: int) -> None:
    """The delivery handler of the frames ``Service.fill`` writes: ``QuicStreamSender.on_data_delivery(delivery, start,
    stop, False)``, whose common case, the oldest bytes not yet acknowledged acknowledged in order, is done here
    with the same state changes (the buffer's acknowledged head released; the sender finished if that reaches an
    acknowledged FIN) and without its range bookkeeping; a loss, an ACK out of order or a reset stream is
    aioquic's own method."""
    if (delivery is ACKED and start == sender._buffer_start and not sender._acked._RangeSet__ranges
            and sender._reset_error_code is None):
        sender._buffer_start = stop
        del sender._buffer[:stop - start]
        if stop == sender._buffer_fin and sender._acked_fin:
            sender.is_finished = True
            DELIVERIES[0] += 1  # a finished stream: aioquic discards it at the next flush
    else:
        sender.on_data_delivery(delivery, start, stop, False)  # (counted when it leaves work: ``track_changes``)


class Service:
    """One flush of a connection's streams inside aioquic's own packet loop (``datagrams``).

    ``sort`` splits the send queue once: ``busy``, the streams with data or a FIN waiting and nothing else for
    aioquic to do; ``window``, the streams aioquic handles itself, then ``driver``; ``idle``, the rest; ``view``,
    what aioquic's ``_streams`` holds meanwhile: the streams whose MAX_STREAM_DATA is due and the finished ones,
    which aioquic pops. ``write`` stands in for ``QuicConnection._write_stream_frame``: for ``driver`` it fills the
    packet from ``busy`` in order, each frame made by ``fill`` (a pending range, or its head where the packet ends)
    or aioquic's own method, with the offset limit aioquic computes (MAX_DATA and MAX_STREAM_DATA); a stream that
    sent and still has something waiting goes to the back (aioquic's rotation), one that flow control holds waits
    for the next flush (nothing this flush builds can lift its limit). A packet is full when the next stream's
    frame header and one byte no longer fit: its stream opens the next packet."""

    __slots__ = ("busy", "cursor", "driver", "finished", "idle", "more", "packets", "queue", "quic", "real", "sent",
                 "view", "whole", "window")

    def __init__(self, quic: Any, queue: list[Any]) -> None:
        self.quic = quic
        self.queue = queue
        self.real = quic._write_stream_frame
        self.whole = quic._quic_logger is None  # with qlog, every frame is aioquic's (it logs them)
        self.driver = QuicStream()  # never in ``_streams``: only in ``window``, while the flush runs
        self.driver.sender.buffer_is_empty = False  # so that aioquic asks to write its frame, packet after packet
        self.busy: list[Any] = []
        self.idle: list[Any] = []
        self.window: list[Any] = []
        self.view: dict[int, Any] = {}
        self.finished: list[int] = []  # ids of the finished streams in ``view``: aioquic discards them
        self.sent: list[Any] = []  # served streams, in the order they last sent
        self.cursor = 0
        self.packets = 0
        self.more = False
        self.sort(queue)

    def sort(self, queue: list[Any]) -> None:
        busy, idle, window, view = self.busy, self.idle, self.window, self.view
        for stream in queue:
            sender = stream.sender
            if sender.is_finished and stream.is_finished:
                window.append(stream)
                view[stream.stream_id] = stream
                self.finished.append(stream.stream_id)
                continue
            if sender.reset_pending or stream.receiver.stop_pending or stream.is_blocked:
                window.append(stream)
            elif sender.buffer_is_empty:
                idle.append(stream)
            else:
                busy.append(stream)
            local = stream.max_stream_data_local
            if (local and stream.receiver.highest_offset * 2 > local) or stream.max_stream_data_local_sent != local:
                view[stream.stream_id] = stream
        window.append(self.driver)

    def write(self, builder: Any, space: Any, stream: Any, max_offset: int) -> int:
        if stream is not self.driver:
            return self.real(builder=builder, space=space, stream=stream, max_offset=max_offset)  # type: ignore[no-any-return]
        self.packets += 1
        if self.packets > MAX_PACKETS:
            self.more = self.cursor < len(self.busy)
            return 0
        self.fill(builder, space)
        return 0

    def fill(self, builder: Any, space: Any) -> None:
        """Frames of ``busy`` from ``cursor`` on, until the packet is full or every stream was served.

        A stream with one pending range and no FIN gets the STREAM frame of that range, or of its head when the
        packet's room ends first, as aioquic's ``_write_stream_frame`` and ``QuicStreamSender.get_frame`` would make
        it and with the sender's state moved as they move it (the range's start, ``buffer_is_empty``, the highest
        offset sent) and the connection's credit used as they count it. The room is checked here within the
        congestion window (aioquic's ``remaining_flight_space``, never more than its ``remaining_buffer_space``),
        so the frame is begun as ``QuicPacketBuilder.start_frame`` begins a STREAM frame that fits, without its
        checks: the type, the packet marked ack-eliciting and in flight, the delivery handler (``delivered``)
        registered. Written here, not in a function per frame: this loop runs once per stream and event."""
        busy, quic, sent = self.busy, self.quic, self.sent
        whole = self.whole
        buf = builder._buffer
        packet = builder._packet
        handlers = packet.delivery_handlers
        # ``remaining_flight_space`` is this less the buffer's position (the capacity is set per packet)
        capacity = builder._flight_capacity - builder._packet_crypto.aead_tag_size
        position = buf.tell()
        credit = quic._remote_max_data - quic._remote_max_data_used  # MAX_DATA left: what new offsets may use
        cursor = self.cursor
        try:
            while cursor < len(busy):
                stream = busy[cursor]
                sender = stream.sender
                if sender.buffer_is_empty:  # (served whole earlier in this flush)
                    cursor += 1
                    continue
                ranges = sender._pending._RangeSet__ranges  # (its list of ranges: read without a method call)
                offset = ranges[0].start if ranges else sender._buffer_stop  # (``next_offset``)
                stream_id = stream.stream_id
                # type, id and offset as varints (RFC 9000, 16), a two-byte length
                overhead = (4 if stream_id < 0x40 else 5 if stream_id < 0x4000 else 7 if stream_id < 0x40000000
                            else 11)
                if offset:
                    overhead += 1 if offset < 0x40 else 2 if offset < 0x4000 else 4 if offset < 0x40000000 else 8
                room = capacity - position - overhead
                if room < 1:
                    return
                cursor += 1
                highest = sender.highest_offset
                limit = min(highest + credit, stream.max_stream_data_remote)
                if whole and len(ranges) == 1 and sender._buffer_fin is None:
                    stop = ranges[0].stop
                    end = stop if stop - offset <= room else offset + room
                    if end <= limit:
                        buf.push_uint8(STREAM_WITH_OFFSET if offset else STREAM)
                        packet.is_ack_eliciting = True
                        packet.in_flight = True
                        handlers.append((delivered, (sender, offset, end)))
                        base = sender._buffer_start
                        buf.push_uint_var(stream_id)
                        if offset:
                            buf.push_uint_var(offset)
                        buf.push_uint16((end - offset) | 0x4000)
                        buf.push_bytes(bytes(sender._buffer[offset - base:end - base]))
                        position += overhead + end - offset
                        if end > highest:
                            sender.highest_offset = end
                            credit -= end - highest
                        sent.append(stream)
                        if end == stop:
                            del ranges[0]  # the range sent: nothing pending, no FIN (``RangeSet.shift``)
                            sender.buffer_is_empty = True
                            continue
                        ranges[0] = range(end, stop)  # its head sent (``RangeSet.subtract``): the rest waits,
                        busy.append(stream)  # behind every other stream (aioquic's rotation)
                        return  # (the packet is full)
                self.cursor = cursor
                quic._remote_max_data_used = quic._remote_max_data - credit
                self.part(builder, space, stream, sender, offset, limit)
                position = buf.tell()
                credit = quic._remote_max_data - quic._remote_max_data_used
        finally:
            self.cursor = cursor
            quic._remote_max_data_used = quic._remote_max_data - credit

    def part(self, builder: Any, space: Any, stream: Any, sender: Any, offset: int, limit: int) -> None:
        """What ``fill``'s whole frame does not cover (part of the data, a retransmission, a FIN, qlog): aioquic's
        own ``_write_stream_frame``."""
        fin = sender._pending_eof
        self.quic._remote_max_data_used += self.real(builder=builder, space=space, stream=stream, max_offset=limit)
        after = sender.next_offset
        if after != offset or sender._pending_eof != fin:  # it sent
            self.sent.append(stream)
            if after < sender._buffer_stop or sender._pending_eof:  # and has more waiting
                self.busy.append(stream)

    def done(self) -> bool:
        """Whether this flush left no stream anything to do: every busy stream sent all it had, and none needed
        aioquic itself (limits, resets, STOP_SENDING, finished) - the idle ones had nothing to begin with."""
        return (not self.more and len(self.window) == 1 and not self.view
                and all(stream.sender.buffer_is_empty for stream in self.busy))

    def restore(self, streams: dict[int, Any]) -> None:
        """Give the connection back its streams: finished ones aioquic discarded gone, the send queue in aioquic's
        order (the idle, those not served, then the served in the order they last sent)."""
        quic = self.quic
        for stream_id in self.finished:
            if stream_id not in self.view:  # discarded: aioquic popped it
                del streams[stream_id]
        quic._streams = streams
        if not self.sent and len(self.window) == 1:  # nothing sent, nothing for aioquic: the queue as it was
            quic._streams_queue = self.queue
            return
        served = set(self.sent)
        latest = list(dict.fromkeys(reversed(self.sent)))[::-1]
        waiting = [stream for stream in dict.fromkeys(self.busy) if stream not in served]
        kept = [stream for stream in quic._streams_queue if stream is not self.driver]
        quic._streams_queue = self.idle + kept + waiting + latest


def install() -> None:
    from hypercorn.asyncio.udp_server import UDPServer
    from hypercorn.events import RawData
    from hypercorn.protocol.quic import QuicProtocol

    def sendto_of(protocol: Any) -> SendTo | None:
        """The UDP transport's ``sendto`` behind ``protocol.send`` (Hypercorn's ``UDPServer.protocol_send``)."""
        found = getattr(protocol, SENDTO, None)
        if found is None:
            server = getattr(protocol.send, "__self__", None)
            transport = getattr(server, "transport", None) if isinstance(server, UDPServer) else None
            if transport is None:
                return None
            found = transport.sendto
            setattr(protocol, SENDTO, found)
        return found  # type: ignore[no-any-return]

    async def send_each(protocol: Any, out: list[tuple[bytes, Any]]) -> None:
        for data, address in out:
            await protocol.send(RawData(data=data, address=address))

    def flush(protocol: Any, connection: Any) -> None:
        setattr(connection, PENDING, False)
        try:
            out, more = datagrams(connection.quic, protocol.context.time())
            if more:  # the rest in a flush of its own, after the other callbacks waiting
                request(protocol, connection)
            if out:
                sendto = sendto_of(protocol)
                if sendto is not None:
                    for data, address in out:
                        sendto(data, address)
                else:  # not Hypercorn's asyncio UDP server: its own (async) send, in order
                    protocol.task_group.spawn(send_each, protocol, out)
        finally:  # whatever happened, the connection's timers (loss, idle, close) keep running
            arm(protocol, connection)

    def arm(protocol: Any, connection: Any) -> None:
        """Keep the connection's one timer at aioquic's ``get_timer`` (none once the connection has ended)."""
        when = connection.quic.get_timer() if connection.cids else None
        handle: asyncio.TimerHandle | None = getattr(connection, TIMER, None)
        if handle is not None:
            if when is not None and handle.when() == when:
                return
            handle.cancel()
        setattr(connection, TIMER, None if when is None else
                asyncio.get_running_loop().call_at(when, fire, protocol, connection))

    def fire(protocol: Any, connection: Any) -> None:
        setattr(connection, TIMER, None)
        if connection.cids:  # (an ended connection's timer is cancelled; this one fired in the same round)
            protocol.task_group.spawn(on_timer, protocol, connection)

    async def on_timer(protocol: Any, connection: Any) -> None:
        connection.quic.handle_timer(now=protocol.context.time())
        await protocol._handle_events(connection, None)  # ends with send_all: the flush re-arms the timer

    def request(protocol: Any, connection: Any) -> None:
        if not getattr(connection, PENDING, False):
            setattr(connection, PENDING, True)
            asyncio.get_running_loop().call_soon(flush, protocol, connection)

    async def send_all(self: Any, connection: Any) -> None:
        request(self, connection)

    def flush_at_once(protocol: Any, connection: Any) -> None:
        pending = getattr(connection, PENDING, False)
        flush(protocol, connection)
        if pending:  # (its callback is still to run: a write meanwhile need not ask for another)
            setattr(connection, PENDING, True)

    global _request, _flush
    _request = request
    _flush = flush_at_once
    QuicProtocol.send_all = send_all  # type: ignore[method-assign]
    track_changes()


def track_changes() -> None:
    """Mark a connection not ``QUIET`` when something may have given one of its streams something to do: a write,
    a reset or a STOP_SENDING asked for (its methods), a delivery aioquic handles itself (``DELIVERIES``, counted
    while its ``receive_datagram`` or ``handle_timer`` runs), or an ack-eliciting packet received: any frame but
    ACK, PADDING and CONNECTION_CLOSE may concern a stream (data, a reset, STOP_SENDING, a credit, a new stream)."""
    from aioquic.quic.connection import QuicConnection
    from aioquic.quic.stream import QuicStreamReceiver, QuicStreamSender

    if getattr(QuicConnection._payload_received, "__wrapped__", None) is not None:
        _tracked[0] = True
        return  # installed already

    def wrap(method: Callable[..., Any], wrapper: Callable[..., Any]) -> Callable[..., Any]:
        wrapper.__wrapped__ = method  # type: ignore[attr-defined]
        wrapper.__name__ = method.__name__
        wrapper.__doc__ = method.__doc__
        return wrapper

    def marking(method: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            self.__dict__[QUIET] = False
            return method(self, *args, **kwargs)

        return wrap(method, wrapper)

    def counted(method: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            DELIVERIES[0] += 1
            return method(self, *args, **kwargs)

        return wrap(method, wrapper)

    def delivering(method: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            deliveries = DELIVERIES[0]
            try:
                return method(self, *args, **kwargs)
            finally:
                if DELIVERIES[0] != deliveries:
                    self.__dict__[QUIET] = False

        return wrap(method, wrapper)

    # The public ways to a stream (``h3_direct`` writes to a sender itself and marks its writes), a lost
    # MAX_STREAM_DATA (sent again by the next flush), the deliveries of the streams' frames that aioquic handles
    # itself, and the two methods inside which aioquic handles deliveries. Not the sender's ``write``: a wrapper
    # there costs every direct write.
    for name in ("send_stream_data", "reset_stream", "stop_stream", "_on_max_stream_data_delivery"):
        setattr(QuicConnection, name, marking(getattr(QuicConnection, name)))
    for cls, name in ((QuicStreamSender, "on_reset_delivery"), (QuicStreamReceiver, "on_stop_sending_delivery")):
        setattr(cls, name, counted(getattr(cls, name)))

    on_data_delivery = QuicStreamSender.on_data_delivery

    def data_delivered(self: Any, delivery: QuicDeliveryState, start: int, stop: int, fin: bool) -> None:
        on_data_delivery(self, delivery, start, stop, fin)
        if delivery is not ACKED or self.is_finished:  # data to send again, or a stream for aioquic to discard
            DELIVERIES[0] += 1

    QuicStreamSender.on_data_delivery = wrap(on_data_delivery, data_delivered)  # type: ignore[method-assign]
    for name in ("receive_datagram", "handle_timer"):
        setattr(QuicConnection, name, delivering(getattr(QuicConnection, name)))

    payload_received = QuicConnection._payload_received

    def _payload_received(self: Any, *args: Any, **kwargs: Any) -> tuple[bool, bool]:
        state = self.__dict__
        before = state.get(QUIET, False)
        state[QUIET] = False  # (until it is known to be only ACKs: a frame that raises counts)
        found: tuple[bool, bool] = payload_received(self, *args, **kwargs)
        if not found[0]:  # not ack-eliciting: ACKs (their deliveries are ``receive_datagram``'s), padding, a close
            state[QUIET] = before
        return found

    QuicConnection._payload_received = wrap(payload_received, _payload_received)  # type: ignore[method-assign]
    _tracked[0] = True
