"""Many SSE streams over one HTTP/3 (QUIC) connection, on aioquic.

A browser holds every ``EventSource`` of an origin on one QUIC connection once the server advertised HTTP/3, so
the server's cost per stream is that of QUIC streams (packet protection, ACKs, loss recovery, QPACK, one UDP socket
for everyone) rather than of TCP connections; that is what the h3 numbers must show, not a client that stalls. So,
as in ``h2``: the windows are far above anything a stream holds in flight (16 MiB per stream, 1 GiB per connection;
aioquic raises them again as data arrives, with MAX_STREAM_DATA and MAX_DATA, whether or not HTTP/3 has looked
at the bytes), and every datagram is acknowledged when aioquic's ACK timer says (1 ms), so the server never waits
for us.

``aioquic.quic`` runs QUIC (handshake, the Retry a server sends to validate our address, ACKs, loss recovery,
flow control) and ``aioquic.h3`` runs HTTP/3 (SETTINGS, QPACK, response heads, interim answers, errors). The DATA
frames of open event streams, which are nearly all of the traffic, are read beside ``aioquic.h3``
(``H3Client._fast_frames``), because its per-chunk Python costs more than the event does; ``fast_data=False``
gives every byte to ``aioquic.h3``. What aioquic has to send goes out when its timer fires, not after each
datagram (``H3Client._flush`` says why).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import socket
import ssl as _ssl
import time
from collections.abc import Iterable
from typing import cast

from aioquic.h3.connection import H3_ALPN, ErrorCode, H3Connection
from aioquic.h3.events import DataReceived, H3Event, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import NetworkAddress, QuicConnection
from aioquic.quic.events import ConnectionTerminated, HandshakeCompleted, StreamDataReceived, StreamReset
from aioquic.quic.stream import QuicStream

from benchmarks.loadgen.stream import StreamState

__all__ = [
    "DEFAULT_CONNECTION_WINDOW",
    "DEFAULT_STREAM_WINDOW",
    "H3Client",
    "client_quic_configuration",
    "datagrams_to_send",
    "open_h3_connection",
]

DEFAULT_STREAM_WINDOW = 16 * 1024 * 1024
DEFAULT_CONNECTION_WINDOW = 1024 * 1024 * 1024
IDLE_TIMEOUT = 300.0  # seconds; the server's own idle timeout, if shorter, is the one that applies
RECEIVE_BUFFER = 4 * 1024 * 1024  # SO_RCVBUF asked for (the kernel caps it at net.core.rmem_max)
_DATA = 0x0  # HTTP/3 frame type of DATA (RFC 9114 §7.2.1)


def client_quic_configuration(
    *,
    cafile: str | None = None,
    verify: bool = True,
    server_name: str | None = None,
    stream_window: int = DEFAULT_STREAM_WINDOW,
    connection_window: int = DEFAULT_CONNECTION_WINDOW,
) -> QuicConfiguration:
    """The client side of every connection of a fleet (ALPN h3); ``verify=False`` accepts any certificate.

    One configuration may serve many connections: aioquic only reads it.
    """
    configuration = QuicConfiguration(
        is_client=True, alpn_protocols=H3_ALPN, server_name=server_name, idle_timeout=IDLE_TIMEOUT,
        max_data=connection_window, max_stream_data=stream_window,
    )
    if not verify:
        configuration.verify_mode = _ssl.CERT_NONE
    elif cafile is not None:
        configuration.load_verify_locations(cafile=cafile)
    return configuration


# Below this many streams on a connection, a flush shows aioquic all of them (the view costs more than it saves).
_STREAMS_WORTH_A_VIEW = 8


def _has_work(stream: QuicStream) -> bool:
    """Whether aioquic's packet loop would do anything for ``stream`` (see ``datagrams_to_send``)."""
    local = stream.max_stream_data_local
    sender = stream.sender
    return (not sender.buffer_is_empty or sender.reset_pending or stream.receiver.stop_pending
            or stream.is_finished or stream.max_stream_data_local_sent != local
            or (bool(local) and stream.receiver.highest_offset * 2 > local))


def datagrams_to_send(quic: QuicConnection, now: float) -> list[tuple[bytes, NetworkAddress]]:
    """``quic.datagrams_to_send(now)``, with aioquic shown only the streams that have something for it to do.

    aioquic looks at every stream of the connection for each packet it builds (a MAX_STREAM_DATA to raise, a
    frame to send, a stream to discard), and nearly every packet a subscriber sends is an ACK of a connection
    whose 100 streams have nothing to say: that look was a sixth of the generator's CPU in an HTTP/3
    broadcast, and the generator's CPU is what bounds its tail latencies. A stream is left out only when each
    of aioquic's checks would pass it by: nothing buffered to send, no reset or STOP_SENDING pending, not
    finished, and a receive window that aioquic would neither raise nor announce (the very test of its
    ``_write_stream_limits``). The streams left out go back afterwards in their place in the send queue.
    """
    streams = quic._streams
    if len(streams) < _STREAMS_WORTH_A_VIEW:
        return quic.datagrams_to_send(now=now)
    view = {stream_id: stream for stream_id, stream in streams.items() if _has_work(stream)}
    if len(view) == len(streams):
        return quic.datagrams_to_send(now=now)
    queue = quic._streams_queue
    quic._streams = view
    quic._streams_queue = [stream for stream in queue if stream.stream_id in view]
    try:
        return quic.datagrams_to_send(now=now)
    finally:
        for stream_id in [stream_id for stream_id in view if stream_id not in quic._streams]:
            del streams[stream_id]  # finished: aioquic discarded it
        served = quic._streams_queue  # aioquic's new order of the streams it saw (those that sent last)
        quic._streams = streams
        quic._streams_queue = [stream for stream in queue if stream.stream_id not in view] + served


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """A QUIC variable-length integer at ``pos``: (value, end), or (-1, pos) when ``data`` ends inside it."""
    first = data[pos]
    size = 1 << (first >> 6)
    end = pos + size
    if end > len(data):
        return -1, pos
    value = first & 0x3F
    for byte in data[pos + 1:end]:
        value = value << 8 | byte
    return value, end


class _FastStream:
    """Where the reading of one event stream's DATA frames stands, outside ``aioquic.h3``."""

    __slots__ = ("partial", "remaining", "state")

    def __init__(self, state: StreamState) -> None:
        self.state = state
        self.remaining = 0  # payload bytes of the current DATA frame still to come
        self.partial = b""  # the start of a frame header that the last chunk cut


class H3Client(asyncio.DatagramProtocol):
    """One HTTP/3 connection over a connected UDP socket; ``open_stream`` adds an SSE stream to it.

    ``ready`` resolves once the handshake completed with ALPN h3 (``None``), or with an error string when the
    connection failed before that; ``capacity`` then says how many more streams the server lets us open.
    """

    def __init__(self, authority: str, configuration: QuicConfiguration, *, fast_data: bool = True) -> None:
        self.fast_data = fast_data
        self.authority = authority.encode()
        self.quic = QuicConnection(configuration=configuration)
        self.http = H3Connection(self.quic)  # (its control and QPACK streams leave with the first 1-RTT packets)
        self.transport: asyncio.DatagramTransport | None = None
        self.streams: dict[int, StreamState] = {}
        self._fast: dict[int, _FastStream] = {}  # streams whose DATA frames bypass aioquic.h3
        self._headed: set[int] = set()  # heads in, waiting for aioquic.h3 to stop at a frame boundary
        self._loop = asyncio.get_running_loop()
        self._flushing = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self.ready: asyncio.Future[str | None] = self._loop.create_future()
        self.lost: asyncio.Future[None] = self._loop.create_future()  # the transport closed
        self.error: str | None = None
        self.received_bytes = 0
        self.closing = False

    @property
    def capacity(self) -> int:
        """How many more request streams the server lets this connection open (its MAX_STREAMS, less ours).

        aioquic keeps a stream past the limit blocked until the server raises it, silently; the fleet asks first.
        """
        quic = self.quic
        return max(0, quic._remote_max_streams_bidi - quic._local_next_stream_id_bidi // 4)

    # -- the socket --------------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.DatagramTransport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):  # a smaller buffer only means earlier losses, which QUIC recovers
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        peer: NetworkAddress = transport.get_extra_info("peername")
        self.quic.connect(peer, now=self._loop.time())
        self._flush()

    def datagram_received(self, data: bytes, addr: NetworkAddress) -> None:
        t_ns = time.perf_counter_ns()  # once per datagram: every event it completed arrived now
        self.received_bytes += len(data)
        self.quic.receive_datagram(data, addr, now=self._loop.time())
        self._process(t_ns)
        if self.ready.done():
            self._arm()  # (what a datagram makes us send, ACKs first, waits for aioquic's 1 ms ACK timer)
        else:
            self._schedule_flush()  # the handshake's next flight

    def error_received(self, exc: Exception) -> None:
        """An ICMP error on the socket (nothing listens on the port, say): the connection cannot go on."""
        self._fail(f"{type(exc).__name__}: {exc}")
        self._close_streams("error", f"{type(exc).__name__}: {exc}")
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            self._fail(f"{type(exc).__name__}: {exc}")
        elif not self.ready.done():
            self._fail("connection closed before the handshake completed")
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if exc is None:
            self._close_streams("eof", None if self.closing else "connection closed mid-response")
        else:
            self._close_streams("error", f"{type(exc).__name__}: {exc}")
        if not self.lost.done():
            self.lost.set_result(None)

    def _schedule_flush(self) -> None:
        """Send once per loop turn: every datagram read in this turn is acknowledged by the same flush."""
        if not self._flushing:
            self._flushing = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Send what aioquic has to send, then (re)arm its timer.

        Why not after every datagram, as aioquic's own protocol does: building packets walks every stream of the
        connection (aioquic checks each for frames and window updates), ~10 µs per stream, so a flush per
        datagram would cost more than the events. After the handshake, receiving only arms the timer: ACKs are
        due 1 ms after the first unacknowledged packet, and everything else pending (window updates, QPACK
        acknowledgements) leaves in that same flush.
        """
        self._flushing = False
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        for data, _ in datagrams_to_send(self.quic, self._loop.time()):
            transport.sendto(data)  # (a connected socket: no address)
        self._arm()

    def _arm(self) -> None:
        """Point the timer at aioquic's next deadline (ACK delay, loss detection, idle), if that moved."""
        timer_at = self.quic.get_timer()
        if timer_at != self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = timer_at
            self._timer = None if timer_at is None else self._loop.call_at(timer_at, self._on_timer)

    def _on_timer(self) -> None:
        """Loss detection, ACK delay, idle timeout, the end of closing: aioquic's timer fired."""
        self._timer = self._timer_at = None
        self.quic.handle_timer(now=self._loop.time())
        self._process(time.perf_counter_ns())
        self._flush()

    # -- QUIC and HTTP/3 events --------------------------------------------------------------------------------

    def _process(self, t_ns: int) -> None:
        """Act on every QUIC event the last datagram or timer produced; then hand the events read to the sinks."""
        quic = self.quic
        touched: list[StreamState] = []
        fast = self._fast
        event = quic.next_event()
        while event is not None:
            if type(event) is StreamDataReceived and event.stream_id in fast:
                self._fast_frames(event.stream_id, event.data, event.end_stream, touched)
            elif type(event) is HandshakeCompleted:
                self._handshake(event)
            elif type(event) is ConnectionTerminated:
                self._terminated(event)
            else:
                if type(event) is StreamReset:
                    self._reset_by_server(event)
                self._to_h3(event, touched)
            event = quic.next_event()
        for state in touched:
            state.deliver(t_ns)

    def _to_h3(self, event: StreamDataReceived | StreamReset | object, touched: list[StreamState]) -> None:
        """Let aioquic.h3 process one QUIC event; act on the HTTP/3 events it gives back."""
        for h3_event in self.http.handle_event(event):  # type: ignore[arg-type]
            self._h3_event(h3_event, touched)
        stream_id = getattr(event, "stream_id", None)
        if stream_id in self._headed:
            self._take_over(stream_id)

    def _h3_event(self, event: H3Event, touched: list[StreamState]) -> None:
        if type(event) is DataReceived:
            state = self.streams.get(event.stream_id)
            if state is not None:
                if event.data:
                    state.body(event.data)
                    touched.append(state)
                if event.stream_ended:
                    self._end(event.stream_id, "end")
        elif type(event) is HeadersReceived:
            state = self.streams.get(event.stream_id)
            if state is None:
                return
            # (_head is False for an interim 1xx answer: the real one follows)
            if (not state.status and self._head(state, event.headers) and "content-length" not in state.headers
                    and not event.stream_ended):
                self._headed.add(event.stream_id)
            if event.stream_ended:  # (a head without a body, or trailers)
                self._end(event.stream_id, "end")

    @staticmethod
    def _head(state: StreamState, headers: list[tuple[bytes, bytes]]) -> bool:
        """Give the response head to the stream; False for an interim (1xx) head."""
        status = 0
        fields: dict[str, str] = {}
        for name, value in headers:
            key = name.decode("latin-1")
            if key == ":status":
                status = int(value) if value.isdigit() else 0
            elif not key.startswith(":"):
                text = value.decode("latin-1")
                fields[key] = f"{fields[key]}, {text}" if key in fields else text
        if 100 <= status < 200:
            return False
        state.head(status, fields)
        return True

    def _take_over(self, stream_id: int) -> None:
        """Read a headed stream's DATA frames here from now on, once aioquic.h3 stands at a frame boundary.

        Why the boundary: the bytes it already buffered or half-parsed must finish with it. Past it, aioquic.h3
        never sees the stream's DATA, so its state (headers received, no content length to check) stays true.
        """
        state = self.streams.get(stream_id)
        h3_stream = self.http._stream.get(stream_id)
        if state is None or not self.fast_data:
            self._headed.discard(stream_id)
        elif h3_stream is None or (h3_stream.frame_size is None and not h3_stream.buffer and not h3_stream.blocked):
            self._headed.discard(stream_id)
            self._fast[stream_id] = _FastStream(state)

    def _fast_frames(self, stream_id: int, data: bytes, end_stream: bool, touched: list[StreamState]) -> None:
        """Read DATA frames of an event stream; any other frame, and what follows it, goes back to aioquic.h3.

        Why: aioquic.h3 spends several µs of Python per chunk (a generator-based stream lookup, a buffer object,
        a frame loop, an event object) for what is, on an event stream, a 2-byte frame header before the event.
        Trailers, unknown frame types and errors are rare and are left to it, in wire order: it stands at the
        frame boundary where this reading stopped.
        """
        fast = self._fast[stream_id]
        state = fast.state
        if fast.partial:
            data, fast.partial = fast.partial + data, b""
        pos, n = 0, len(data)
        if fast.remaining:
            take = min(fast.remaining, n)
            state.body(data[:take] if take < n else data)
            fast.remaining -= take
            pos = take
        while pos < n:
            if data[pos] != _DATA:
                del self._fast[stream_id]
                self._headed.add(stream_id)
                self._to_h3(StreamDataReceived(data=data[pos:], end_stream=end_stream, stream_id=stream_id), touched)
                touched.append(state)
                return
            if pos + 1 >= n:
                fast.partial = data[pos:]
                break
            length, start = _varint(data, pos + 1)
            if length < 0:
                fast.partial = data[pos:]
                break
            end = start + length
            if end <= n:
                state.body(data[start:end])
            else:
                state.body(data[start:])
                fast.remaining = end - n
            pos = end
        touched.append(state)
        if end_stream:
            if fast.remaining or fast.partial:
                self._end(stream_id, "error", "HTTP/3 frame truncated by the end of the stream")
            else:
                self._end(stream_id, "end")

    def _end(self, stream_id: int, reason: str, error: str | None = None) -> None:
        """The server finished (or broke) one stream: forget it everywhere, hand the last events over, close it."""
        self._fast.pop(stream_id, None)
        self._headed.discard(stream_id)
        self.http._stream.pop(stream_id, None)  # (aioquic.h3 keeps every stream otherwise)
        state = self.streams.pop(stream_id, None)
        if state is not None:
            state.deliver(time.perf_counter_ns())
            state.close(reason, error)

    def _reset_by_server(self, event: StreamReset) -> None:
        if event.stream_id in self.streams:
            self._end(event.stream_id, "reset", f"stream reset by the server: {_code(event.error_code)}")

    def _handshake(self, event: HandshakeCompleted) -> None:
        if event.alpn_protocol not in H3_ALPN:
            self._fail(f"QUIC ALPN selected {event.alpn_protocol!r}, not 'h3'")
            self.close()
            return
        if not self.ready.done():
            self.ready.set_result(None)

    def _terminated(self, event: ConnectionTerminated) -> None:
        """The connection ended (the server closed it, our close finished draining, idle timeout, a TLS alert)."""
        reason = f"QUIC connection closed: {_code(event.error_code)}" + (
            f" ({event.reason_phrase})" if event.reason_phrase else "")
        if not self.closing:
            self._fail(reason)
        self.closing = True
        self._close_streams("goaway" if event.error_code in (0, ErrorCode.H3_NO_ERROR) else "error", reason)
        if self.transport is not None:
            self.transport.close()

    def _close_streams(self, reason: str, error: str | None) -> None:
        streams, self.streams = self.streams, {}
        self._fast.clear()
        self._headed.clear()
        for state in streams.values():
            state.close(reason, error)

    def _fail(self, error: str) -> None:
        self.error = self.error or error
        if not self.ready.done():
            self.ready.set_result(error)

    # -- what the fleet does -------------------------------------------------------------------------------------

    def open_stream(
        self,
        state: StreamState,
        path: str,
        *,
        accept_encoding: str = "identity",
        last_event_id: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
    ) -> int:
        """Send the GET of one SSE stream (it leaves with this loop turn's flush); returns the stream id."""
        if self.transport is None or self.transport.is_closing() or self.closing:
            raise ConnectionError(self.error or "the HTTP/3 connection is not open")
        fields = [
            (b":method", b"GET"),
            (b":scheme", b"https"),
            (b":authority", self.authority),
            (b":path", path.encode()),
            (b"accept", b"text/event-stream"),
            (b"accept-encoding", accept_encoding.encode()),
            (b"cache-control", b"no-cache"),
        ]
        if last_event_id is not None:
            fields.append((b"last-event-id", last_event_id.encode()))
        fields.extend((name.lower().encode(), value.encode()) for name, value in headers)
        stream_id = self.quic.get_next_available_stream_id()
        self.http.send_headers(stream_id, fields, end_stream=True)
        self.streams[stream_id] = state
        self._schedule_flush()
        return stream_id

    def reset(self, stream_id: int) -> None:
        """Leave one stream (STOP_SENDING, H3_REQUEST_CANCELLED), as a browser does when a page closes one
        ``EventSource``; our side of the stream already ended with the GET."""
        state = self.streams.get(stream_id)
        if state is None:
            return
        self._end(stream_id, "closed")
        if self.transport is not None and not self.transport.is_closing():
            self.quic.stop_stream(stream_id, ErrorCode.H3_REQUEST_CANCELLED)
            self._schedule_flush()

    def close(self) -> None:
        """CONNECTION_CLOSE (H3_NO_ERROR), sent at once; then the socket closes: every stream ends together."""
        self.closing = True
        self._close_streams("closed", None)
        if self.transport is not None and not self.transport.is_closing():
            self.quic.close(error_code=ErrorCode.H3_NO_ERROR)
            self._flush()
            self.transport.close()  # (what the kernel has not sent yet is sent first)


def _code(code: int) -> str:
    """The name of an HTTP/3 error code, else the QUIC transport code in hex."""
    try:
        return ErrorCode(code).name
    except ValueError:
        return hex(code)


async def open_h3_connection(
    host: str,
    port: int,
    *,
    configuration: QuicConfiguration | None = None,
    fast_data: bool = True,
) -> H3Client:
    """Connect over UDP and complete the handshake (a Retry, if the server sends one, is answered on the way).
    Raises ``ConnectionError`` when the connection fails before that."""
    loop = asyncio.get_running_loop()
    authority = host if port == 443 else f"{host}:{port}"
    if configuration is None:
        configuration = client_quic_configuration()
    if configuration.server_name is None:  # (the SNI and the name the certificate is checked against)
        configuration = _with_server_name(configuration, host)
    client = H3Client(authority, configuration, fast_data=fast_data)
    await loop.create_datagram_endpoint(lambda: client, remote_addr=(host, port))
    try:
        error = await asyncio.shield(client.ready)
    except BaseException:  # (a timeout around us): not leaving a connection nobody holds
        client.close()
        raise
    if error is not None:
        client.close()
        raise ConnectionError(error)
    return client


def _with_server_name(configuration: QuicConfiguration, host: str) -> QuicConfiguration:
    """A copy of ``configuration`` naming ``host`` (the fleet's shared configuration stays as it is)."""
    named = copy.copy(configuration)
    named.server_name = host
    return named
