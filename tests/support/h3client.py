"""An asyncio HTTP/3 client for tests, built on aioquic.

httpx and the other Python clients stop at HTTP/1.1 and h2, yet the gateway has to be proven over HTTP/3
as well, SSE streams included. This client gives tests exactly what they need to do that:

- the raw DATA bytes of a response as they arrive, still compressed, so a test can check that every event is
  flushed on its own (a client that decompressed or buffered would hide exactly the bugs we look for);
- several requests multiplexed on one QUIC connection, as a browser does (a POST while a stream is open);
- cancelling one stream, and dropping the whole connection, loudly or silently, to test disconnect handling.

Every wait is bounded by the client's ``timeout`` and ends in the builtin ``TimeoutError``; nothing here
can hang a test run. The errors of the client itself carry the protocol's numbers::

    H3Error                  base class of everything raised here
    ├── H3ConnectionClosed   the QUIC connection ended: error_code, reason
    └── H3StreamReset        the server reset one request stream: stream_id, error_code
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Self, TypeAlias

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, ErrorCode, H3Connection
from aioquic.h3.events import DataReceived, H3Event, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import ConnectionTerminated, QuicEvent, StreamReset

__all__ = [
    "DEFAULT_TIMEOUT",
    "H3Client",
    "H3ConnectionClosed",
    "H3Error",
    "H3Response",
    "H3Stream",
    "H3StreamReset",
    "HeaderInput",
]

SECONDS: Final = 1.0
DEFAULT_TIMEOUT: Final = 10 * SECONDS

HeaderInput: TypeAlias = Mapping[str, str] | Iterable[tuple[str, str]]
"""Request headers: a mapping, or pairs when a name must repeat. Names are lowercased, as HTTP/3 requires."""

_RawHeaders: TypeAlias = list[tuple[bytes, bytes]]


class H3Error(Exception):
    """Base class of the errors this client raises itself (timeouts stay the builtin ``TimeoutError``)."""


class H3ConnectionClosed(H3Error):
    """The QUIC connection ended while a request needed it.

    Carries the CONNECTION_CLOSE error code and reason so a failing test says *why* (a TLS alert, an idle
    timeout, the server's shutdown) instead of just "closed".
    """

    def __init__(self, error_code: int, reason: str) -> None:
        reason_text = reason or "no reason given"
        super().__init__(f"QUIC connection closed: error code {error_code:#x} ({reason_text})")
        self.error_code = error_code
        self.reason = reason


class H3StreamReset(H3Error):
    """The server reset a request stream (RESET_STREAM) before finishing it."""

    def __init__(self, stream_id: int, error_code: int) -> None:
        super().__init__(f"stream {stream_id} reset by the server with error code {error_code:#x}")
        self.stream_id = stream_id
        self.error_code = error_code


@asynccontextmanager
async def _deadline(seconds: float, what: str) -> AsyncIterator[None]:
    """``asyncio.timeout`` whose error says what was awaited, so a failing test explains itself.

    Only our own expiry is reworded; a TimeoutError from an inner, shorter deadline passes through unchanged.
    """
    timeout = asyncio.timeout(seconds)
    try:
        async with timeout:
            yield
    except TimeoutError:
        if timeout.expired():
            raise TimeoutError(f"{what} within {seconds}s") from None
        raise


def _header_value(headers: list[tuple[str, str]], name: str) -> str | None:
    """Return the first value of ``name``; shared by responses and streams so lookups behave the same."""
    wanted = name.lower()
    return next((value for key, value in headers if key == wanted), None)


@dataclass(frozen=True)
class H3Response:
    """A complete response: what ``H3Client.request`` returns once the server ended the stream."""

    status: int
    headers: list[tuple[str, str]]
    """Lowercase names in arrival order, pseudo-headers left out; repeated names stay repeated."""
    body: bytes
    """The body exactly as sent: a ``content-encoding`` is *not* undone."""

    def header(self, name: str) -> str | None:
        """Return the first value of a header, or None; ``name`` is matched case-insensitively."""
        return _header_value(self.headers, name)


class _EndOfStream:
    """Queue marker for the server's FIN, so the reader can tell "ended" from "nothing yet"."""


_END: Final = _EndOfStream()
_Item: TypeAlias = bytes | _EndOfStream | H3Error


class _Exchange:
    """The receiving side of one request stream: fed by the protocol's callbacks, drained by the caller.

    Callbacks must never block, so everything goes through a future (the response head) and an unbounded
    queue (body chunks, then the end marker or an error). Unbounded is fine for tests: QUIC flow control
    already limits what the server may send ahead.
    """

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id
        self.head: asyncio.Future[tuple[int, _RawHeaders]] = asyncio.get_running_loop().create_future()
        self.items: asyncio.Queue[_Item] = asyncio.Queue()
        self.trailers: _RawHeaders = []
        self.ended = False

    def on_headers(self, headers: _RawHeaders, stream_ended: bool) -> None:
        """Take the final response head; skip 1xx interim heads; a later HEADERS frame holds trailers."""
        if not self.head.done():
            status = next((value for key, value in headers if key == b":status"), None)
            if status is None or not status.isdigit():
                self.fail(H3Error(f"stream {self.stream_id}: response HEADERS without a valid :status"))
                return
            if 100 <= int(status) < 200:
                return
            self.head.set_result((int(status), [(k, v) for k, v in headers if not k.startswith(b":")]))
        else:
            self.trailers.extend(headers)
        if stream_ended:
            self.finish()

    def on_data(self, data: bytes, stream_ended: bool) -> None:
        """Queue one DATA payload; empty payloads (a bare FIN) are not worth waking the reader for."""
        if data:
            self.items.put_nowait(data)
        if stream_ended:
            self.finish()

    def finish(self) -> None:
        """Record the server's FIN."""
        if not self.ended:
            self.ended = True
            self.items.put_nowait(_END)

    def fail(self, error: H3Error) -> None:
        """End the exchange with an error that both a head waiter and a body reader will see."""
        if self.ended:
            return
        self.ended = True
        if not self.head.done():
            self.head.set_exception(error)
            # Mark it retrieved: nobody may be waiting for the head any more, and asyncio would log a warning.
            self.head.exception()
        self.items.put_nowait(error)


def _retrieve_outcome(future: asyncio.Future[None]) -> None:
    """Mark a future's exception as seen, for futures whose outcome no longer matters."""
    if not future.cancelled():
        future.exception()


class _H3Protocol(QuicConnectionProtocol):
    """Routes the HTTP/3 events of one connection to the exchange waiting on each stream.

    ``abandoned`` turns the protocol mute: no datagram leaves any more and ``wait_closed`` returns at once,
    so an abrupt close (see ``H3Client.close``) neither waits out the QUIC draining period nor sends more.
    """

    def __init__(self, quic: QuicConnection, *args: Any, **kwargs: Any) -> None:
        super().__init__(quic, *args, **kwargs)
        self.http = H3Connection(quic)
        self.exchanges: dict[int, _Exchange] = {}
        self.closed_error: H3ConnectionClosed | None = None
        self.abandoned = False
        self.datagram_transport: asyncio.BaseTransport | None = None

    # QuicConnectionProtocol hooks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport so an abandoned connection can drop its socket by itself."""
        super().connection_made(transport)
        self.datagram_transport = transport

    def quic_event_received(self, event: QuicEvent) -> None:
        """Translate QUIC events; aioquic's H3Connection reports neither the connection's end nor resets."""
        if isinstance(event, ConnectionTerminated):
            self._fail_all(H3ConnectionClosed(event.error_code, event.reason_phrase))
            return
        if isinstance(event, StreamReset) and event.stream_id in self.exchanges:
            self.exchanges[event.stream_id].fail(H3StreamReset(event.stream_id, event.error_code))
        for http_event in self.http.handle_event(event):
            self._route(http_event)

    async def wait_connected(self) -> None:
        """Wait for the handshake; on cancellation (our timeout) keep aioquic's waiter from logging noise.

        aioquic shields its waiter future, so a cancelled wait leaves it pending; the ConnectionTerminated that
        follows sets a ConnectionError nobody retrieves, and asyncio logs "exception was never retrieved".
        """
        try:
            await super().wait_connected()
        except asyncio.CancelledError:
            if self._connected_waiter is not None:
                self._connected_waiter.add_done_callback(_retrieve_outcome)
            raise

    def transmit(self) -> None:
        """Send nothing once abandoned: a vanished client must stay silent."""
        if not self.abandoned:
            super().transmit()

    async def wait_closed(self) -> None:
        """Return at once when abandoned, so closing does not wait for the draining period."""
        if not self.abandoned:
            await super().wait_closed()

    # used by H3Client

    def open_exchange(self, headers: _RawHeaders, body: bytes) -> _Exchange:
        """Send a request on a new stream and return the exchange that will receive the response."""
        self.raise_if_closed()
        stream_id = self._quic.get_next_available_stream_id()
        exchange = _Exchange(stream_id)
        self.exchanges[stream_id] = exchange
        self.http.send_headers(stream_id, headers, end_stream=not body)
        if body:
            self.http.send_data(stream_id, body, end_stream=True)
        self.transmit()
        return exchange

    def release_exchange(self, exchange: _Exchange, error_code: int = ErrorCode.H3_REQUEST_CANCELLED) -> None:
        """Forget an exchange; if the server has not finished it, cancel it in both directions.

        RESET_STREAM stops our request body (if any is still going out) and STOP_SENDING asks the server to
        stop the response: together they are what a browser does when a page drops a fetch or an EventSource.
        """
        self.exchanges.pop(exchange.stream_id, None)
        if exchange.ended or self.closed_error is not None:
            return
        exchange.fail(H3Error(f"stream {exchange.stream_id} was cancelled by the client ({error_code:#x})"))
        self._quic.reset_stream(exchange.stream_id, error_code)
        self._quic.stop_stream(exchange.stream_id, error_code)
        self.transmit()

    def abandon(self, error_code: int, *, silent: bool) -> None:
        """Drop the connection now: CONNECTION_CLOSE unless ``silent``, then go mute and close the socket."""
        if not silent:
            self.close(error_code=error_code, reason_phrase="client closed the connection abruptly")
        self.abandoned = True
        self._fail_all(H3ConnectionClosed(error_code, "closed by the client"))
        if self.datagram_transport is not None:
            self.datagram_transport.close()

    def raise_if_closed(self) -> None:
        """Raise a fresh H3ConnectionClosed (one per call, so tracebacks do not pile up on one object)."""
        if self.closed_error is not None:
            raise H3ConnectionClosed(self.closed_error.error_code, self.closed_error.reason)

    def _route(self, event: H3Event) -> None:
        """Hand one HTTP/3 event to its exchange; events for forgotten streams are dropped."""
        if isinstance(event, HeadersReceived | DataReceived) and event.push_id is None:
            exchange = self.exchanges.get(event.stream_id)
            if exchange is None:
                return
            if isinstance(event, HeadersReceived):
                exchange.on_headers(event.headers, event.stream_ended)
            else:
                exchange.on_data(event.data, event.stream_ended)

    def _fail_all(self, error: H3ConnectionClosed) -> None:
        """Record why the connection is gone and fail every open exchange with it."""
        if self.closed_error is None:
            self.closed_error = error
        for exchange in self.exchanges.values():
            exchange.fail(error)


class H3Stream:
    """A response read while it arrives; made by ``H3Client.stream`` once the response HEADERS frame is in.

    ``status`` and ``headers`` are final when the object exists. The body comes from ``aiter_raw`` (or
    ``aread``), which yields each DATA payload as received, so SSE framing and compression can be checked
    chunk by chunk.
    """

    def __init__(
        self, protocol: _H3Protocol, exchange: _Exchange, status: int, headers: _RawHeaders, timeout: float
    ) -> None:
        self._protocol = protocol
        self._exchange = exchange
        self._timeout = timeout
        self._outcome: _EndOfStream | H3Error | None = None
        self.stream_id = exchange.stream_id
        self.status = status
        self.headers = _decode_headers(headers)
        """Lowercase names in arrival order, pseudo-headers left out."""

    @property
    def ended(self) -> bool:
        """True once the server finished the stream, reset it, or the connection went away."""
        return self._exchange.ended

    @property
    def trailers(self) -> list[tuple[str, str]]:
        """Trailer fields, if the server sent any (complete only once the stream ended)."""
        return _decode_headers(self._exchange.trailers)

    def header(self, name: str) -> str | None:
        """Return the first value of a response header, or None; ``name`` is matched case-insensitively."""
        return _header_value(self.headers, name)

    async def aiter_raw(self, *, idle_timeout: float | None = None) -> AsyncIterator[bytes]:
        """Yield DATA payloads as they arrive, undecoded; stop when the server ends the stream.

        Each wait for the next chunk is bounded by ``idle_timeout`` (default: the client's timeout) and
        raises ``TimeoutError`` past it, so an SSE stream that never ends cannot hang a test. A server reset
        raises ``H3StreamReset``, a lost connection ``H3ConnectionClosed``. Iterating again after the end
        yields nothing (or raises the same error again).
        """
        limit = self._timeout if idle_timeout is None else idle_timeout
        while True:
            if isinstance(self._outcome, H3Error):
                raise self._outcome
            if self._outcome is not None:
                return
            async with _deadline(limit, f"stream {self.stream_id}: no data"):
                item = await self._exchange.items.get()
            if isinstance(item, bytes):
                yield item
            else:
                self._outcome = item

    async def aread(self) -> bytes:
        """Read the rest of the body until the server ends it (each chunk wait bounded as in aiter_raw)."""
        return b"".join([chunk async for chunk in self.aiter_raw()])

    def cancel(self, error_code: int = ErrorCode.H3_REQUEST_CANCELLED) -> None:
        """Cancel the stream now (RESET_STREAM + STOP_SENDING), as a browser dropping an EventSource would."""
        self._protocol.release_exchange(self._exchange, error_code)


def _decode_headers(headers: _RawHeaders) -> list[tuple[str, str]]:
    """Decode header pairs; latin-1 never fails, so odd bytes reach the assertion instead of crashing here."""
    return [(name.decode("latin-1").lower(), value.decode("latin-1")) for name, value in headers]


class H3Client:
    """One HTTP/3 connection to ``host:port`` (UDP), used as ``async with H3Client(...) as client``.

    ``verify=False`` accepts any certificate (the tests' self-signed ones); a string is a CA bundle to verify
    against. ``server_name`` sets the TLS SNI (default: ``host``). ``timeout`` bounds the handshake, each
    wait for response headers, a whole ``request`` and each chunk wait of a stream. Leaving the ``async with``
    closes the connection cleanly (CONNECTION_CLOSE with H3_NO_ERROR); ``close`` drops it abruptly instead.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        verify: bool | str = True,
        server_name: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.host = host
        self.port = port
        self.authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        """The ``:authority`` sent with every request: ``host:port`` as a browser would send it."""
        self._verify = verify
        self._server_name = server_name
        self._timeout = timeout
        self._stack = AsyncExitStack()
        self._protocol: _H3Protocol | None = None

    async def __aenter__(self) -> Self:
        """Open the QUIC connection and finish the handshake (ALPN h3), within the timeout."""
        if self._protocol is not None:
            raise RuntimeError("H3Client cannot be entered twice; make a new client per connection")
        configuration = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, server_name=self._server_name)
        if self._verify is False:
            configuration.verify_mode = ssl.CERT_NONE
        elif isinstance(self._verify, str):
            configuration.load_verify_locations(cafile=self._verify)

        def create_protocol(quic: QuicConnection, *args: Any, **kwargs: Any) -> _H3Protocol:
            self._protocol = _H3Protocol(quic, *args, **kwargs)
            return self._protocol

        try:
            async with _deadline(self._timeout, f"no QUIC handshake with {self.authority}"):
                connection = connect(self.host, self.port, configuration=configuration, create_protocol=create_protocol)
                await self._stack.enter_async_context(connection)
        except ConnectionError as exc:
            # aioquic raises a bare ConnectionError; the CONNECTION_CLOSE we recorded says what went wrong.
            closed = self._protocol.closed_error if self._protocol is not None else None
            raise (closed or H3ConnectionClosed(0, "handshake failed")) from exc
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Close cleanly: CONNECTION_CLOSE with H3_NO_ERROR, then wait (bounded) for the draining period."""
        protocol = self._protocol
        if protocol is None or protocol.abandoned:
            return
        protocol.close(error_code=ErrorCode.H3_NO_ERROR)
        try:
            async with _deadline(self._timeout, f"QUIC connection to {self.authority} did not close"):
                await self._stack.aclose()
        except TimeoutError:
            protocol.abandon(ErrorCode.H3_NO_ERROR, silent=True)
            raise

    async def close(self, *, error_code: int = ErrorCode.H3_NO_ERROR, silent: bool = False) -> None:
        """Drop the connection at once, without finishing open streams: a client that goes away mid-stream.

        By default a CONNECTION_CLOSE frame tells the server immediately, like a browser tab being closed.
        With ``silent=True`` nothing is sent and the UDP socket just closes, like a client losing its network:
        the server can only notice through its idle timeout or failed writes. Open streams fail with
        ``H3ConnectionClosed``; leaving the ``async with`` afterwards does nothing more.
        """
        protocol = self._protocol
        if protocol is None:
            raise RuntimeError("H3Client is not connected: use it as `async with H3Client(...) as client`")
        if not protocol.abandoned:
            protocol.abandon(error_code, silent=silent)
            await self._stack.aclose()

    async def request(
        self, method: str, path: str, *, headers: HeaderInput | None = None, body: bytes = b""
    ) -> H3Response:
        """Send a request and read the whole response, all within the client's timeout.

        The body is returned raw (no decompression). Any number of requests and streams may run concurrently
        on the one connection, each on its own QUIC stream.
        """
        protocol = self._require_protocol()
        exchange = protocol.open_exchange(self._request_headers(method, path, headers, body), body)
        try:
            async with _deadline(self._timeout, f"{method} {path}: no complete response"):
                status, raw_headers = await exchange.head
                stream = H3Stream(protocol, exchange, status, raw_headers, self._timeout)
                content = await stream.aread()
        finally:
            protocol.release_exchange(exchange)
        return H3Response(status=status, headers=stream.headers, body=content)

    @asynccontextmanager
    async def stream(
        self, method: str, path: str, *, headers: HeaderInput | None = None, body: bytes = b""
    ) -> AsyncIterator[H3Stream]:
        """Send a request; yield the response as soon as its HEADERS frame arrived (bounded by the timeout).

        Leaving the block cancels the stream (RESET_STREAM + STOP_SENDING, H3_REQUEST_CANCELLED) if the server
        has not ended it, so an endless SSE stream can simply be abandoned.
        """
        protocol = self._require_protocol()
        exchange = protocol.open_exchange(self._request_headers(method, path, headers, body), body)
        try:
            async with _deadline(self._timeout, f"{method} {path}: no response headers"):
                status, raw_headers = await exchange.head
            yield H3Stream(protocol, exchange, status, raw_headers, self._timeout)
        finally:
            protocol.release_exchange(exchange)

    def _require_protocol(self) -> _H3Protocol:
        """Return the live protocol, or say clearly that the client is not connected (any more)."""
        if self._protocol is None:
            raise RuntimeError("H3Client is not connected: use it as `async with H3Client(...) as client`")
        self._protocol.raise_if_closed()
        return self._protocol

    def _request_headers(self, method: str, path: str, headers: HeaderInput | None, body: bytes) -> _RawHeaders:
        """Build the header list: pseudo-headers first (a given ``:name`` overrides ours), then the fields.

        ``content-length`` is added for a body unless given, as browsers do; names are lowercased because
        HTTP/3 forbids uppercase ones.
        """
        pseudo = {":method": method.upper(), ":scheme": "https", ":authority": self.authority, ":path": path}
        pairs = list(headers.items() if isinstance(headers, Mapping) else headers or [])
        fields: list[tuple[str, str]] = []
        for name, value in pairs:
            lowered = name.lower()
            if lowered.startswith(":"):
                pseudo[lowered] = value
            else:
                fields.append((lowered, value))
        if body and all(name != "content-length" for name, _ in fields):
            fields.append(("content-length", str(len(body))))
        return [(name.encode(), value.encode("latin-1")) for name, value in [*pseudo.items(), *fields]]
