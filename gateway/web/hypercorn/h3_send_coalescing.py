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
  in the same one) leaves in the same packets, and a lone write waits for nothing;
- the flush builds datagrams with aioquic showing it only the streams that have something to do (data or a FIN
  to send, a RESET_STREAM or STOP_SENDING pending, a MAX_STREAM_DATA to raise or send, or finished and to be
  discarded: exactly the cases ``_write_application`` acts on), then gives the connection back its other streams,
  in their order, ahead of those just served (aioquic's own rotation);
- the datagrams go to the UDP transport at once (``UDPServer.protocol_send`` does only that);
- the connection's timer is one ``TimerHandle``, moved only when aioquic's ``get_timer`` changes; when it fires, a
  task runs ``handle_timer`` and the connection's events, as Hypercorn's timer task did.

Measured on the 2-core benchmark machine (server and load generator each on one core, 100 streams a connection,
~180-byte events): a burst of 200 events to 1,000 streams went from 151 to 46 µs of server CPU per delivered event
(HTTP/1.1: 4-5), and a broadcast to 1,000 streams from 428 µs and a p99 of 14.2 s to 114 µs and 358 ms (HTTP/1.1:
22 µs, 74 ms). What remains is mostly aioquic building, protecting and accounting each packet (~30 µs of an event
at ~6 events a packet) and the streams' own write path through Hypercorn's HTTPStream and H3Protocol.

QUIC's own rules are untouched: aioquic still decides what goes into every packet, within flow control, congestion
control and pacing; each stream's bytes are in aioquic's buffer, in order, from the moment it was written; resets,
STOP_SENDING and CONNECTION_CLOSE are sent by aioquic on the next flush, which a write or a received datagram
schedules, as before. A connection that ended (Hypercorn empties its ``cids``) arms no timer.

Upstream: pgjones/hypercorn#201 (an open draft rewriting H3) reports the cost of Hypercorn's per-send timer tasks
("much of the time spent seems related to task scheduling"), and pgjones/hypercorn#350 (an open pull request)
batches H3 sends; neither is released. aioquic has no issue for ``_write_application`` visiting every stream per
packet. The upstream fix: Hypercorn transmits a QUIC connection once per batch of writes and keeps one timer;
aioquic's send loop visits only the streams with something to send and stops at a full packet.

Test that fails without it: ``tests/test_h3_send_coalescing.py::test_one_event_to_many_streams_is_one_flush``
(and the measurement in the module's commit: burst and broadcast over h3 in ``python -m benchmarks``).

Remove it when Hypercorn flushes a QUIC connection once per batch of writes with one timer, and aioquic builds
packets without visiting idle streams: pin both, delete this module, and the test above must still pass.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

PENDING = "gateway_flush_pending"  # set on a Hypercorn ``_Connection`` while a flush of it is scheduled
TIMER = "gateway_timer"  # the connection's ``asyncio.TimerHandle``, or None
SENDTO = "gateway_sendto"  # on a ``QuicProtocol``: its UDP transport's ``sendto``, once found
FEW_STREAMS = 8  # with this many streams or fewer, aioquic's own walk costs no more than choosing the busy ones
STREAM_FRAME_MIN = 4  # bytes: type, stream id and length, without which no STREAM frame (not even a FIN) fits
MAX_PACKETS = 4096  # packets one flush builds at most (~5 MiB); congestion control stops it long before

SendTo = Callable[[bytes, Any], None]

_request: Callable[[Any, Any], None] | None = None  # ``install``'s ``request``, once installed


def flush_soon(protocol: Any, connection: Any) -> bool:
    """Ask for one flush of ``connection`` (a Hypercorn ``_Connection`` of the ``QuicProtocol`` ``protocol``)
    after the current round, as ``send_all`` does; False when the correction is not installed. The seam through
    which fan-out's direct HTTP/3 writes (``h3_direct``) leave with the round's other writes."""
    if _request is None:
        return False
    _request(protocol, connection)
    return True


def limits_due(stream: Any) -> bool:
    """Whether aioquic would raise or send this stream's MAX_STREAM_DATA (``_write_stream_limits``)."""
    local = stream.max_stream_data_local
    return bool((local and stream.receiver.highest_offset * 2 > local) or stream.max_stream_data_local_sent != local)


def queued(stream: Any) -> bool:
    """Whether aioquic's send loop would do anything with this stream: discard it once finished, send
    STOP_SENDING, RESET_STREAM, data or a FIN."""
    sender = stream.sender
    return bool(not sender.buffer_is_empty or sender.reset_pending or stream.receiver.stop_pending
                or stream.is_finished)


def datagrams(quic: Any, now: float) -> tuple[list[tuple[bytes, Any]], bool]:
    """What ``quic.datagrams_to_send(now)`` returns, built at a cost that grows with the streams that have
    something to send rather than with the streams times the packets; True when ``MAX_PACKETS`` cut it short.

    aioquic's ``_write_application`` visits, for every packet, every stream for MAX_STREAM_DATA and every stream
    of its send queue, also once the packet is full. So aioquic is shown only the streams that have something
    to do (``limits_due``, ``queued``), and once a packet has no room left for any STREAM frame the build stops
    there, as aioquic stops when a frame does not fit (``QuicPacketBuilderStop``), and starts again at once with
    a new packet, charging the pacer for the finished one as aioquic does after each packet. The streams it
    was not shown are put back in front of those it rotated, as aioquic keeps unserved streams ahead of served
    ones."""
    from aioquic.quic.packet_builder import QuicPacketBuilderStop

    streams: dict[int, Any] = quic._streams
    queue: list[Any] = quic._streams_queue
    if len(streams) <= FEW_STREAMS or len(queue) != len(streams):  # (aioquic keeps every stream in both)
        return list(quic.datagrams_to_send(now=now)), False
    waiting: list[Any] = []
    view: dict[int, Any] = {}  # what aioquic's ``_streams`` holds meanwhile: those it may pop or raise limits of
    for stream in queue:
        if queued(stream):
            waiting.append(stream)
            if stream.is_finished:
                view[stream.stream_id] = stream
        if limits_due(stream):
            view[stream.stream_id] = stream
    shown = {stream.stream_id for stream in waiting}
    write_stream_frame = quic._write_stream_frame
    full = [False]

    def one_packet(builder: Any, space: Any, stream: Any, max_offset: int) -> int:
        if builder.remaining_flight_space < STREAM_FRAME_MIN and not builder.packet_is_empty:
            full[0] = True
            raise QuicPacketBuilderStop
        return write_stream_frame(builder=builder, space=space, stream=stream, max_offset=max_offset)  # type: ignore[no-any-return]

    in_view = dict(view)
    quic._streams, quic._streams_queue = view, waiting
    quic._write_stream_frame = one_packet
    out: list[tuple[bytes, Any]] = []
    try:
        for _ in range(MAX_PACKETS):
            full[0] = False
            out += quic.datagrams_to_send(now=now)
            if not full[0]:
                return out, False
            quic._loss._pacer.update_after_send(now=now)
        return out, True
    finally:
        del quic._write_stream_frame
        for stream_id in in_view.keys() - view.keys():  # finished streams aioquic discarded
            del streams[stream_id]
        rotated = quic._streams_queue
        quic._streams = streams
        quic._streams_queue = [stream for stream in queue if stream.stream_id not in shown] + rotated


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

    global _request
    _request = request
    QuicProtocol.send_all = send_all  # type: ignore[method-assign]
