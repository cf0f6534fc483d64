"""Many SSE streams over one HTTP/2 connection (h2c with prior knowledge, or TLS with ALPN h2), on ``h2``.

This is how browsers hold SSE over HTTP/2: every ``EventSource`` of an origin shares one connection. What the
server pays per stream then differs from HTTP/1.1 (HPACK, DATA frames, flow control), and that is what the h2
numbers must show, not a client that stalls on flow control: the windows are raised far above anything a stream
holds in flight and received data is acknowledged at once (``h2`` batches the WINDOW_UPDATEs itself, at half a
window), so the server is never waiting on us.
"""

from __future__ import annotations

import asyncio
import ssl as _ssl
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
    ) -> None:
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
        conn = self.conn
        try:
            events = conn.receive_data(data)
        except H2Error as exc:
            self._fail(f"HTTP/2 protocol error: {exc!r}")
            if self.transport is not None:
                self.transport.write(conn.data_to_send())
                self.transport.close()
            return
        streams = self.streams
        touched: list[StreamState] = []
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
            elif type(event) is StreamEnded:
                state = streams.pop(event.stream_id, None)
                if state is not None:
                    state.deliver(t_ns)
                    state.close("end")
            elif type(event) is StreamReset:
                state = streams.pop(event.stream_id, None)
                if state is not None:
                    state.deliver(t_ns)
                    state.close("reset", f"stream reset by the server: {_code(event.error_code)}")
            elif type(event) is RemoteSettingsChanged:
                if not self.ready.done():
                    self.ready.set_result(None)
            elif type(event) is ConnectionTerminated:
                self._goaway(event.last_stream_id, event.error_code)
        for state in touched:
            state.deliver(t_ns)
        out = conn.data_to_send()
        if out and self.transport is not None:
            self.transport.write(out)

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
) -> H2Client:
    """Connect (TLS when ``ssl`` is given: its ALPN protocols must include "h2") and wait for the server's
    SETTINGS. Raises ``ConnectionError`` when the connection fails before that."""
    loop = asyncio.get_running_loop()
    default_port = 443 if ssl is not None else 80
    authority = host if port == default_port else f"{host}:{port}"
    client = H2Client(authority, scheme="https" if ssl is not None else "http", stream_window=stream_window,
                      connection_window=connection_window)
    tls_name = (server_hostname or host) if ssl is not None else None
    await loop.create_connection(lambda: client, host, port, ssl=ssl, server_hostname=tls_name)
    error = await client.ready
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
