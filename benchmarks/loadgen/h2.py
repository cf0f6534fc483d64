"""Many SSE streams over one HTTP/2 connection (h2c with prior knowledge, or TLS with ALPN h2), on ``h2``.

This is how browsers hold SSE over HTTP/2: every ``EventSource`` of an origin shares one connection. What the
server pays per stream then differs from HTTP/1.1 (HPACK, DATA frames, flow control), and that is what the h2
numbers must show, not a client that stalls on flow control: the windows are raised far above anything a stream
holds in flight (16 MiB per stream, 1 GiB per connection) and received data is given back at once, so the server
is never waiting on us.

``h2`` runs the protocol (preface, SETTINGS, HPACK, stream states, PING, RST_STREAM, GOAWAY); the plain DATA frames
of open event streams, which are nearly all of the traffic, are read beside it (``H2Client._split``), because h2's
per-frame Python costs several times what the event itself does. ``fast_data=False`` gives every frame to h2.
"""

from __future__ import annotations

import asyncio
import ssl as _ssl
import struct
import time
from collections.abc import Iterable
from typing import cast

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RemoteSettingsChanged,
    ResponseReceived,
    StreamEnded,
    StreamReset,
)
from h2.exceptions import H2Error
from h2.settings import SettingCodes, Settings

from benchmarks.loadgen.stream import READ_BUFFER, StreamState

__all__ = ["DEFAULT_STREAM_WINDOW", "H2Client", "open_h2_connection"]

DEFAULT_STREAM_WINDOW = 16 * 1024 * 1024
DEFAULT_CONNECTION_WINDOW = 1024 * 1024 * 1024
_MAX_FRAME = 1024 * 1024  # fewer, larger DATA frames when the server has a lot to send at once
_ACK_EVERY = 1024 * 1024  # window given back per stream and per connection for DATA read outside h2


def _window_update(stream_id: int, increment: int) -> bytes:
    """A WINDOW_UPDATE frame: length 4, type 0x8, no flags."""
    return struct.pack(">BHBBII", 0, 4, 0x8, 0, stream_id, increment)


def _code(code: ErrorCodes | int | None) -> str:
    try:
        return ErrorCodes(code or 0).name
    except ValueError:
        return str(code)


def _text(value: bytes | str) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else value


class H2Client(asyncio.BufferedProtocol):
    """One HTTP/2 connection; ``open_stream`` adds an SSE stream to it.

    ``ready`` resolves once the server's first SETTINGS arrived (so its MAX_CONCURRENT_STREAMS is known:
    ``capacity``), or with an error string when the connection failed before that (``None`` on success).
    """

    def __init__(
        self,
        authority: str,
        *,
        scheme: str = "http",
        stream_window: int = DEFAULT_STREAM_WINDOW,
        connection_window: int = DEFAULT_CONNECTION_WINDOW,
        fast_data: bool = True,
    ) -> None:
        self.fast_data = fast_data  # read plain DATA frames outside h2 (see ``_split``)
        self._buf = b""  # the start of a frame not complete yet (fast path)
        self._unacked: dict[int, int] = {}  # DATA bytes read outside h2 and not yet given back, per stream
        # Streams whose DATA may bypass h2: the head is in, and without Content-Length (h2 checks the body's
        # length against it at the end, so it must see that body: error answers go through h2, SSE never does).
        self._fast: set[int] = set()
        self._conn_unacked = 0
        self._updates: list[bytes] = []  # our WINDOW_UPDATE frames, written with h2's output
        self.authority = authority.encode()
        self.scheme = scheme.encode()
        self.conn = H2Connection(H2Configuration(
            client_side=True, header_encoding=None, validate_inbound_headers=False, normalize_inbound_headers=False,
        ))
        self.stream_window = stream_window
        self.connection_window = connection_window
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, StreamState] = {}
        loop = asyncio.get_running_loop()
        self.ready: asyncio.Future[str | None] = loop.create_future()
        self.lost: asyncio.Future[None] = loop.create_future()  # the transport closed
        self.error: str | None = None
        self.received_bytes = 0
        self.closing = False

    @property
    def capacity(self) -> int:
        """How many more streams the server lets this connection open now."""
        limit = self.conn.remote_settings.max_concurrent_streams
        return max(0, limit - self.conn.open_outbound_streams)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)  # (uvloop's are not subclasses)
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None and ssl_object.selected_alpn_protocol() != "h2":
            self._fail(f"TLS ALPN selected {ssl_object.selected_alpn_protocol()!r}, not 'h2'")
            transport.close()
            return
        conn = self.conn
        # Our settings go in the connection preface's SETTINGS frame: the server never sees the small defaults.
        conn.local_settings = Settings(client=True, initial_values={
            SettingCodes.MAX_CONCURRENT_STREAMS: 100,  # (streams the server may open to us: push, unused)
            SettingCodes.INITIAL_WINDOW_SIZE: self.stream_window,
            SettingCodes.MAX_FRAME_SIZE: _MAX_FRAME,
            SettingCodes.ENABLE_PUSH: 0,
        })
        conn.max_inbound_frame_size = _MAX_FRAME
        conn.initiate_connection()
        extra = self.connection_window - conn.inbound_flow_control_window
        if extra > 0:
            conn.increment_flow_control_window(extra)
        transport.write(conn.data_to_send())

    def open_stream(
        self,
        state: StreamState,
        path: str,
        *,
        accept_encoding: str = "identity",
        last_event_id: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
    ) -> int:
        """Send the GET of one SSE stream; its head and events reach ``state``. Returns the stream id.

        Raises ``h2.exceptions.TooManyStreamsError`` past the server's MAX_CONCURRENT_STREAMS (see ``capacity``).
        """
        if self.transport is None or self.transport.is_closing():
            raise ConnectionError(self.error or "the HTTP/2 connection is closed")
        fields = [
            (b":method", b"GET"),
            (b":scheme", self.scheme),
            (b":authority", self.authority),
            (b":path", path.encode()),
            (b"accept", b"text/event-stream"),
            (b"accept-encoding", accept_encoding.encode()),
            (b"cache-control", b"no-cache"),
        ]
        if last_event_id is not None:
            fields.append((b"last-event-id", last_event_id.encode()))
        fields.extend((name.lower().encode(), value.encode()) for name, value in headers)
        stream_id = self.conn.get_next_available_stream_id()
        self.conn.send_headers(stream_id, fields, end_stream=True)
        self.streams[stream_id] = state
        self.transport.write(self.conn.data_to_send())
        return stream_id

    def get_buffer(self, sizehint: int) -> memoryview:
        return READ_BUFFER

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(READ_BUFFER[:nbytes]))

    def data_received(self, data: bytes) -> None:
        t_ns = time.perf_counter_ns()  # once per read: every event completed by this read arrived now
        self.received_bytes += len(data)
        touched: list[StreamState] = []
        ok = self._split(data, touched, t_ns) if self.fast_data else self._to_h2(data, touched, t_ns)
        for state in touched:
            state.deliver(t_ns)
        if ok and self.transport is not None:
            out = self.conn.data_to_send()
            if self._updates:
                out += b"".join(self._updates)
                self._updates.clear()
            if out:
                self.transport.write(out)

    def _split(self, data: bytes, touched: list[StreamState], t_ns: int) -> bool:
        """Cut the bytes into frames: DATA frames of open streams are read here, every other frame goes to h2.

        Why: h2 spends ~20 µs of Python on each DATA frame (frame objects, their ``repr`` for a debug log that is
        off, the stream state machine, two window managers), several times what parsing the event costs. A plain
        DATA frame (no END_STREAM, no padding) on a stream whose response head h2 already gave us changes no
        protocol state, so it is read here and credited with our own WINDOW_UPDATEs; h2 never sees those bytes,
        neither as data nor as window, so its accounting of everything else stays exact. HEADERS, SETTINGS, PING,
        RST_STREAM, GOAWAY, a DATA frame ending a stream or padded: h2, in wire order.
        """
        buf = self._buf + data if self._buf else data
        streams = self.streams
        pos, n = 0, len(buf)
        slow = -1  # where a run of frames for h2 starts
        while n - pos >= 9:
            length = int.from_bytes(buf[pos:pos + 3], "big")
            if length > _MAX_FRAME:  # over what we allowed: h2 says what is wrong (FRAME_SIZE_ERROR)
                slow = pos if slow < 0 else slow
                pos = n
                break
            end = pos + 9 + length
            if end > n:
                break
            if buf[pos + 3] == 0 and not buf[pos + 4] & 0x09:  # DATA without END_STREAM (0x1) or PADDED (0x8)
                stream_id = int.from_bytes(buf[pos + 5:pos + 9], "big") & 0x7FFFFFFF
                if slow >= 0 and stream_id in streams:  # frames before this one go first, in order
                    if not self._to_h2(buf[slow:pos], touched, t_ns):
                        return False
                    slow = -1
                state = streams.get(stream_id)
                if state is not None and stream_id in self._fast:
                    if length:
                        state.body(buf[pos + 9:end])
                        touched.append(state)
                        self._credit(stream_id, length)
                    pos = end
                    continue
            if slow < 0:
                slow = pos
            pos = end
        self._buf = buf[pos:]
        if slow >= 0:
            return self._to_h2(buf[slow:pos], touched, t_ns)
        return True

    def _credit(self, stream_id: int, size: int) -> None:
        """Give back flow-control window for bytes read outside h2, once per ``_ACK_EVERY`` bytes.

        The windows are 16 MiB per stream and 1 GiB per connection, so the server always has at least
        15 MiB of room on every stream: it never waits for us.
        """
        unacked = self._unacked.get(stream_id, 0) + size
        if unacked >= _ACK_EVERY:
            self._updates.append(_window_update(stream_id, unacked))
            unacked = 0
        self._unacked[stream_id] = unacked
        self._conn_unacked += size
        if self._conn_unacked >= _ACK_EVERY:
            self._updates.append(_window_update(0, self._conn_unacked))
            self._conn_unacked = 0

    def _to_h2(self, data: bytes, touched: list[StreamState], t_ns: int) -> bool:
        """Let h2 process ``data``; act on its events. False when the connection failed."""
        conn = self.conn
        try:
            events = conn.receive_data(data)
        except H2Error as exc:
            self._fail(f"HTTP/2 protocol error: {exc!r}")
            if self.transport is not None:
                self.transport.write(conn.data_to_send())
                self.transport.close()
            return False
        streams = self.streams
        for event in events:
            if type(event) is DataReceived:
                stream_id = event.stream_id
                if event.flow_controlled_length:
                    conn.acknowledge_received_data(event.flow_controlled_length, stream_id)
                state = streams.get(stream_id)
                if state is not None:
                    state.body(event.data)
                    touched.append(state)
            elif type(event) is ResponseReceived:
                state = streams.get(event.stream_id)
                if state is not None:
                    self._head(state, event)
                    if "content-length" not in state.headers:
                        self._fast.add(event.stream_id)
            elif type(event) is StreamEnded:
                state = streams.pop(event.stream_id, None)
                if state is not None:
                    self._unacked.pop(event.stream_id, None)
                    self._fast.discard(event.stream_id)
                    state.deliver(t_ns)
                    state.close("end")
            elif type(event) is StreamReset:
                state = streams.pop(event.stream_id, None)
                if state is not None:
                    self._unacked.pop(event.stream_id, None)
                    self._fast.discard(event.stream_id)
                    state.deliver(t_ns)
                    state.close("reset", f"stream reset by the server: {_code(event.error_code)}")
            elif type(event) is RemoteSettingsChanged:
                if not self.ready.done():
                    self.ready.set_result(None)
            elif type(event) is ConnectionTerminated:
                self._goaway(event.last_stream_id, event.error_code)
        return True

    @staticmethod
    def _head(state: StreamState, event: ResponseReceived) -> None:
        status = 0
        fields: dict[str, str] = {}
        for name, value in event.headers:
            key = _text(name)
            if key == ":status":
                status = int(value)
            elif not key.startswith(":"):
                fields[key] = f"{fields[key]}, {_text(value)}" if key in fields else _text(value)
        state.head(status, fields)

    def _goaway(self, last_stream_id: int | None, error_code: ErrorCodes | int | None) -> None:
        """GOAWAY: streams above ``last_stream_id`` were never processed; the others may still finish."""
        self.closing = True
        reason = f"GOAWAY {_code(error_code)}"
        if last_stream_id is None:
            last_stream_id = 0
        for stream_id in [sid for sid in self.streams if sid > last_stream_id]:
            self.streams.pop(stream_id).close("goaway", reason)
        if not self.ready.done():
            self.ready.set_result(reason)

    def _fail(self, error: str) -> None:
        self.error = self.error or error
        if not self.ready.done():
            self.ready.set_result(error)

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            self._fail(f"{type(exc).__name__}: {exc}")
        elif not self.ready.done():
            self._fail("connection closed before the server's SETTINGS")
        streams, self.streams = self.streams, {}
        for state in streams.values():
            if exc is None:
                state.close("eof", None if self.closing else "connection closed mid-response")
            else:
                state.close("error", f"{type(exc).__name__}: {exc}")
        if not self.lost.done():
            self.lost.set_result(None)

    def reset(self, stream_id: int) -> None:
        """Leave one stream (RST_STREAM CANCEL), as a browser does when a page closes one ``EventSource``."""
        state = self.streams.pop(stream_id, None)
        self._fast.discard(stream_id)
        if state is None or self.transport is None or self.transport.is_closing():
            return
        self.conn.reset_stream(stream_id, ErrorCodes.CANCEL)
        self.transport.write(self.conn.data_to_send())
        state.close("closed")

    def close(self) -> None:
        """GOAWAY then close: every stream on the connection ends at once."""
        self.closing = True
        if self.transport is not None and not self.transport.is_closing():
            streams, self.streams = self.streams, {}
            for state in streams.values():
                state.close("closed")
            try:
                self.conn.close_connection()
                self.transport.write(self.conn.data_to_send())
            except H2Error:
                pass
            self.transport.close()


async def open_h2_connection(
    host: str,
    port: int,
    *,
    ssl: _ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    stream_window: int = DEFAULT_STREAM_WINDOW,
    connection_window: int = DEFAULT_CONNECTION_WINDOW,
    fast_data: bool = True,
) -> H2Client:
    """Connect (TLS when ``ssl`` is given: its ALPN protocols must include "h2") and wait for the server's
    SETTINGS. Raises ``ConnectionError`` when the connection fails before that."""
    loop = asyncio.get_running_loop()
    default_port = 443 if ssl is not None else 80
    authority = host if port == default_port else f"{host}:{port}"
    client = H2Client(authority, scheme="https" if ssl is not None else "http", stream_window=stream_window,
                      connection_window=connection_window, fast_data=fast_data)
    tls_name = (server_hostname or host) if ssl is not None else None
    await loop.create_connection(lambda: client, host, port, ssl=ssl, server_hostname=tls_name)
    try:
        error = await asyncio.shield(client.ready)
    except BaseException:  # (a timeout around us): not leaving a connection nobody holds
        client.close()
        raise
    if error is not None:
        client.close()
        raise ConnectionError(error)
    return client


def client_ssl_context(*, cafile: str | None = None, verify: bool = True, alpn: tuple[str, ...] = ("h2",)
                       ) -> _ssl.SSLContext:
    """A client TLS context offering ``alpn`` (``verify=False``: any certificate, for self-signed test servers)."""
    context = _ssl.create_default_context(cafile=cafile)
    if not verify:
        context.check_hostname = False
        context.verify_mode = _ssl.CERT_NONE
    context.set_alpn_protocols(list(alpn))
    return context
