"""The state of one SSE stream, whatever carries it (an HTTP/1.1 connection or an HTTP/2 stream).

Both transports hand this object the response head, then the body bytes as they come off the wire, then the end;
it decodes, parses, counts, and gives completed events to the sink. Keeping it transport-free is what makes h1 and
h2 numbers comparable: the same decoder, parser and counters measure both.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable

from benchmarks.loadgen.decoders import Decoder, IdentityDecoder, make_decoder
from benchmarks.loadgen.sse import SSEEvent, SSEParser

__all__ = ["READ_BUFFER", "Head", "Sink", "StreamState"]

#: ``(status, headers)`` of a response; headers lower-cased, repeated ones joined with ", ". Status 0: no response.
Head = tuple[int, dict[str, str]]

#: Called with the events one read completed and the ``perf_counter_ns()`` taken when that read began.
Sink = Callable[["StreamState", list[SSEEvent], int], None]

_ids = itertools.count()

#: The one receive buffer of every connection (h1 and h2 protocols are ``BufferedProtocol``s).
#:
#: Why: a plain ``asyncio.Protocol`` makes the transport call ``sock.recv(262144)`` on every read, which allocates
#: and then shrinks a 256 KiB ``bytes`` each time: measured with 2,000 sockets, a read of one small event cost about
#: 25 µs that way against 10 µs with ``recv_into`` this buffer (then one copy of the bytes read), more than all the
#: decoding, parsing and recording the generator does with it.
#: Sharing it is safe: the transports (asyncio's, its SSL layer's and uvloop's) call ``get_buffer`` and
#: ``buffer_updated`` back to back for one read, with nothing in between (one event loop per process, here).
READ_BUFFER = memoryview(bytearray(256 * 1024))


def _no_sink(stream: StreamState, events: list[SSEEvent], t_ns: int) -> None:
    """The sink of a stream nobody listens to: events are still parsed and counted."""


class StreamState:
    """Decoder + parser + counters + the ``opened``/``closed`` futures of one stream.

    ``opened`` resolves with the response head (status 0 when none came: the reason is in ``error``) and
    ``closed`` with the reason the stream ended; neither ever holds an exception, because nothing may have to
    await them (10,000 streams, most never looked at one by one) and an unretrieved exception is noise.
    """

    __slots__ = (
        "_decode",
        "_feed",
        "_pending",
        "closed",
        "decoded_bytes",
        "decoder",
        "error",
        "error_body",
        "events",
        "headers",
        "id",
        "index",
        "opened",
        "parser",
        "sink",
        "status",
        "wire_bytes",
    )

    def __init__(self, index: int = 0, sink: Sink | None = None) -> None:
        loop = asyncio.get_running_loop()
        self.id = next(_ids)  # unique in the process: recorders shared by several fleets key on it
        self.index = index  # the position in its fleet
        self.sink: Sink = sink or _no_sink
        self.status = 0
        self.headers: dict[str, str] = {}
        self.error: str | None = None
        self.error_body = b""  # the (start of the) body of a non-200 answer
        self.parser = SSEParser()
        self.decoder: Decoder | None = None
        self.wire_bytes = 0  # body bytes as received (still content-coded; no chunk or frame overhead)
        self.decoded_bytes = 0  # body bytes after content decoding
        self.events = 0
        self.opened: asyncio.Future[Head] = loop.create_future()
        self.closed: asyncio.Future[str] = loop.create_future()
        self._decode: Callable[[bytes], bytes] | None = None
        self._feed: Callable[[bytes], list[SSEEvent]] = self._keep_error_body  # the parser's, once a 200 came
        self._pending: list[SSEEvent] = []

    @property
    def ok(self) -> bool:
        """The stream was answered 200, has not failed and has not ended."""
        return self.status == 200 and self.error is None and not self.closed.done()

    def head(self, status: int, headers: dict[str, str]) -> None:
        """The response head arrived. A 200 with an unknown content coding is recorded as an error."""
        self.status, self.headers = status, headers
        if status == 200:
            try:
                self.decoder = make_decoder(headers.get("content-encoding"))
            except ValueError as exc:
                self.error = str(exc)
            else:
                self._decode = None if isinstance(self.decoder, IdentityDecoder) else self.decoder.decode
                self._feed = self.parser.feed
        elif self.error is None:
            self.error = f"status {status}"
        if not self.opened.done():
            self.opened.set_result((status, headers))

    def _keep_error_body(self, data: bytes) -> list[SSEEvent]:
        """The ``_feed`` of an answer that is not an event stream: a little of it is kept for the report."""
        if len(self.error_body) < 4096:
            self.error_body += data[: 4096 - len(self.error_body)]
        return []

    def _decoded(self, data: bytes) -> bytes:
        self.wire_bytes += len(data)
        if self._decode is not None:
            try:
                data = self._decode(data)
            except Exception as exc:
                data = self._decode_failed(exc)
        self.decoded_bytes += len(data)
        return data

    def _decode_failed(self, exc: Exception) -> bytes:
        """Corrupt compressed data: this stream is done (recorded as an error), the connection is not."""
        self.error = self.error or f"decoder: {exc!r}"
        self._decode = None
        self.decoder = None
        self._feed = self._keep_error_body
        return b""

    def receive(self, data: bytes, t_ns: int) -> None:
        """The body bytes of one read, delivered at once: ``body(data); deliver(t_ns)`` in one call (hot path)."""
        events = self._feed(self._decoded(data))
        if self._pending:
            events = self._pending + events
            self._pending = []
        if events:
            self.events += len(events)
            self.sink(self, events, t_ns)

    def body(self, data: bytes) -> None:
        """Body bytes off the wire: decode, parse, keep the completed events until ``deliver``."""
        events = self._feed(self._decoded(data))
        if events:
            if self._pending:
                self._pending.extend(events)
            else:
                self._pending = events

    def deliver(self, t_ns: int) -> None:
        """Hand what the last read completed to the sink, in one call (a no-op when it completed nothing)."""
        events = self._pending
        if events:
            self._pending = []
            self.events += len(events)
            self.sink(self, events, t_ns)

    def close(self, reason: str, error: str | None = None) -> None:
        """The stream ended (``reason``: "end", "reset", "eof", "closed", ...); idempotent."""
        if self.closed.done():
            return
        if error is not None and self.error is None:
            self.error = error
        if self.decoder is not None:
            try:
                tail = self.decoder.flush()
            except Exception as exc:  # a truncated stream: worth recording, never worth raising in the loop
                tail = b""
                self.error = self.error or f"decoder: {exc!r}"
            if tail:
                self.decoded_bytes += len(tail)
                self._pending.extend(self._feed(tail))
            self.deliver(time.perf_counter_ns())
        if not self.opened.done():
            self.opened.set_result((self.status, self.headers))
        self.closed.set_result(reason)
