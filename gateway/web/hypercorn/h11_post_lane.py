"""HTTP/1.1 command and hub-publish POSTs served from the connection's own read loop (Hypercorn 0.18.0, h11 0.16.0).

Why: a hub publish through Hypercorn's HTTP/1.1 layers costs several times what the gateway itself does with it.
h11 parses the head into events, ``H11Protocol`` tells the connection's idle timer to stop (cancelling its task),
``HTTPStream`` builds the scope and spawns a task for the app, the app's two ``send`` calls go through
``HTTPStream.app_send``, ``H11Protocol.stream_send``, h11's state machine and serializer, and ``TCPServer``'s
locked, drained ``protocol_send``; then the stream is closed, h11 starts its next cycle and the idle timer gets a
new task. Measured on the 2-core benchmark VM, 8 keep-alive publishers to a topic nobody reads: ~370 µs of server
CPU per publish, of which the gateway's own work (guard, authorization, JSON checks, the bus) is about a fifth;
nchan, on the same machine, 19 µs.

What the lane does: when a read holds exactly one whole, plainly framed POST to a route the app says the lane may
take (``LaneApp.lane_route``: the gateway's exact command paths and ``/hub/publish``), the read loop awaits the
app's ``lane_post`` with the parsed request and writes the answer to the transport in one piece. No task, no h11
events, no idle-timer task churn, and no ASGI either: a scope, ``receive`` and ``send`` closures and their message
dicts were ~24 of the ~39 µs a publish took in process (measured on the benchmark VM with the demo app, no
subscribers). ``lane_post`` is the function the app's ASGI path calls once it has read a body: every check, error
body, metric and bus hand-off is the one Hypercorn's path runs.

Anything else goes to ``H11Protocol`` untouched, so h11 stays the only judge of what is malformed:

- the connection is plain HTTP/1.1 between requests: h11 ``IDLE`` on both sides with nothing buffered, no stream,
  not draining (``terminated``), below ``keep_alive_max_requests``, no ``max_requests`` worker recycling;
- the read is exactly one request: ``POST``, an origin-form target of plain characters (no ``%``: the path needs no
  decoding), ``HTTP/1.1``; at most ``MAX_HEADERS`` headers in ``MAX_HEAD`` bytes, every name a token and every
  value free of control characters (a folded line, a space before the colon or a stray CR is not a token); one
  ``Host``; one ``Content-Length`` of at most ``MAX_BODY`` bytes, and exactly that many bytes after the head; no
  ``Transfer-Encoding``, ``Expect`` or ``Upgrade``; a ``Connection`` header only ``keep-alive``;
- Hypercorn logs no access lines and checks no ``server_names`` (its path does both per request);
- the app is found behind Hypercorn's ``ASGIWrapper`` and answers ``lane_route(path)`` True (the gateway says no
  before it has started, while tracing, with its access log or with ``server.post_lane`` off).

What the lane keeps as Hypercorn does: the request's fields as a scope has them (headers lowercased, values
stripped, the peer's address, the scheme), the response's ``date``, ``server`` and ``alt-svc`` headers
(``Config.response_headers``, the date computed once a second), the status line h11 writes (no reason phrase),
``keep_alive_requests`` counted, an app error logged as "Error in ASGI Framework" and answered 500 with
``connection: close``, response headers checked as h11 checks them (a bad one is the app's error). A response with
a body and no ``content-length`` gets one (h11 would chunk it; the client reads the same body). The request-head
deadline (``header_deadline``) is disarmed, as a complete head disarms it there. The keep-alive idle timer is not
restarted per request: ``TCPServer._idle_timeout`` is replaced by one that, when it expires, looks at when the
lane last served the connection and waits out the rest of ``keep_alive_timeout`` from then.

Backpressure: the response goes straight to the transport while its write buffer is under ``HIGH_WATER``; past
that (a client that pipelines without reading) it goes through ``TCPServer.protocol_send``, which waits for the
buffer to drain, and the read loop with it, as Hypercorn's path would.

It relies on these parts of Hypercorn 0.18.0 and h11 0.16.0 (installed only when both are verified):
``H11Protocol.connection`` (an ``h11.Connection``: ``our_state``, ``their_state``, ``trailing_data``),
``stream``, ``app`` (an ``ASGIWrapper`` with ``app``), ``config``, ``context`` (``terminated``,
``max_requests``), ``client``, ``ssl``, ``keep_alive_requests``, and ``send``,
the bound ``TCPServer.protocol_send`` (``__self__.writer``); ``TCPServer._idle_timeout`` and ``config``/
``context`` there.

Test: ``tests/test_post_lane.py`` (the lane serves plain publishes and commands with the same bytes and effects as
Hypercorn's path; every other shape of request goes to h11; the idle timer; backpressure).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

MAX_HEAD = 8 * 1024  # bytes of request line and headers the lane parses; a larger head goes to h11
MAX_HEADERS = 64
MAX_BODY = 64 * 1024  # a larger body goes to h11 (and the app's own 413 rules)
HIGH_WATER = 64 * 1024  # bytes waiting in the transport past which a response is written with drain
LANE_AT = "gateway_lane_at"  # on a TCPServer: the loop time the lane last served it

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"  # RFC 9110 token: a header name
_VALUE = rb"[\t\x20-\x7e\x80-\xff]*"  # a field value without control characters (CR, LF, NUL...)
# A header line: a token, a colon, a value, the CRLF that ends it. A head's lines are all of its bytes only when
# none is folded, none has a space before the colon and none holds a bare CR or LF (see ``parse``).
_FIELD = re.compile(rb"(" + _TOKEN + rb"):(" + _VALUE + rb")\r\n")
_FIELDS = re.compile(rb"(?:" + _TOKEN + rb":" + _VALUE + rb"\r\n)*")  # a head's lines, nothing else
# A response header as h11 sends it: a token name, a value that neither starts nor ends with whitespace.
_NAME = re.compile(_TOKEN)
_SENDABLE_VALUE = re.compile(rb"(?:[\x21-\x7e\x80-\xff](?:[\t\x20-\x7e\x80-\xff]*[\x21-\x7e\x80-\xff])?)?")
_TARGET = re.compile(rb"/[!$&'()*+,\-./0-9:;=?@A-Z_a-z~]*")  # origin-form, nothing to percent-decode
# The headers that frame a request or change its handling: each is looked at (the rest are passed on as they are).
_FRAMING = frozenset({b"content-length", b"host", b"connection", b"transfer-encoding", b"expect", b"upgrade"})

_observers: list[Callable[[], None]] = []  # the last configured gateway's
_h11: Any = None  # the h11 module, once ``install`` has verified it (imported there, not on every request)


def configure(on_served: Callable[[], None] | None) -> None:
    """``on_served`` is called for every request the lane answers (process-wide, as the lane is)."""
    _observers[:] = [on_served] if on_served is not None else []


class LaneApp(Protocol):
    """An ASGI app that says which POST routes the lane may serve, and answers the lane's requests itself."""

    def lane_route(self, path: str) -> bool: ...

    def lane_post(self, request: Request, client: tuple[str, int] | None,
                  scheme: str) -> Awaitable[tuple[int, list[tuple[bytes, bytes]], bytes]]:
        """``request`` (a POST to a path ``lane_route`` took) from ``client`` over ``scheme``: its answer,
        status, headers and body, as the app's ASGI path would send it."""
        ...


class Request:
    """One plainly framed POST, parsed."""

    __slots__ = ("body", "headers", "path", "query")

    def __init__(self, path: bytes, query: bytes, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body


def parse(data: bytes) -> Request | None:
    """``data`` as exactly one POST of the shape the lane serves, or None (h11 then reads it)."""
    if not data.startswith(b"POST /"):
        return None
    end = data.find(b"\r\n\r\n", 0, MAX_HEAD)
    first = data.find(b"\r\n", 0, end)
    if end < 0 or first < 0 or not data.endswith(b" HTTP/1.1", 0, first) or len(data) - end - 4 > MAX_BODY:
        return None
    target = data[5:first - 9]
    if _TARGET.fullmatch(target) is None:
        return None
    # Every byte between the request line and the blank line is in a header line (``findall`` alone would skip
    # what does not match).
    if _FIELDS.fullmatch(data, first + 2, end + 2) is None:
        return None
    fields = _FIELD.findall(data, first + 2, end + 2)
    if len(fields) > MAX_HEADERS:
        return None
    headers = [(name.lower(), value.strip(b" \t")) for name, value in fields]
    length = -1
    host = False
    for name, value in headers:
        if name in _FRAMING:
            if name == b"content-length":
                if length >= 0 or not value.isdigit() or len(value) > 7:
                    return None
                length = int(value)
            elif name == b"host":
                if host:
                    return None
                host = True
            elif name != b"connection" or value.lower() != b"keep-alive":
                return None  # Transfer-Encoding, Expect, Upgrade, or a Connection other than keep-alive
    if not host or len(data) != end + 4 + length:
        return None
    path, _, query = target.partition(b"?")
    return Request(path, query, headers, data[end + 4:])


def response_bytes(status: int, headers: list[tuple[bytes, bytes]], body: bytes, server_headers: bytes) -> bytes | None:
    """The response as h11 would frame it, or None when a header is not one h11 would send. ``server_headers``:
    Hypercorn's own lines, framed (``_ServerHeaders``)."""
    try:
        status_line = b"HTTP/1.1 %d \r\n" % status
        for name, value in headers:
            if _NAME.fullmatch(name) is None or _SENDABLE_VALUE.fullmatch(value) is None:
                return None
        lines = b"".join([b"%s: %s\r\n" % header for header in headers])
    except TypeError:  # a status that is not a number, a header that is not a pair of bytes
        return None
    if body and not any(name.lower() == b"content-length" for name, _ in headers):
        lines += b"content-length: %d\r\n" % len(body)
    return b"".join((status_line, lines, server_headers, b"\r\n", body))


class _ServerHeaders:
    """``Config.response_headers("h11")`` (the date is formatted each time there) framed once a second."""

    def __init__(self) -> None:
        self._second = -1
        self._config: Any = None
        self._lines = b""

    def of(self, config: Any) -> bytes:
        second = int(time.time())
        if second != self._second or config is not self._config:
            self._lines = b"".join(b"%s: %s\r\n" % header for header in config.response_headers("h11"))
            self._second, self._config = second, config
        return self._lines


_server_headers = _ServerHeaders()


def lane_app(protocol: Any) -> LaneApp | None:
    """The gateway app behind the connection's ``ASGIWrapper``, when it offers the lane."""
    app = getattr(protocol.app, "app", None)
    offers = callable(getattr(app, "lane_route", None)) and callable(getattr(app, "lane_post", None))
    return app if offers else None


async def serve(protocol: Any, app: LaneApp, request: Request) -> None:
    """Have ``app`` answer ``request`` in the read loop and write its answer."""
    protocol.keep_alive_requests += 1
    for observer in _observers:
        observer()
    server_headers = _server_headers.of(protocol.config)
    framed = None
    try:
        status, headers, body = await app.lane_post(request, protocol.client, "https" if protocol.ssl else "http")
    except Exception:
        await protocol.config.log.exception("Error in ASGI Framework")
    else:
        framed = response_bytes(status, headers, body, server_headers)
        if framed is None:
            path = request.path.decode("ascii")
            await protocol.config.log.error(f"Error in ASGI Framework: a response header h11 refuses, on {path}")
    tcp = protocol.send.__self__
    setattr(tcp, LANE_AT, asyncio.get_running_loop().time())
    if framed is None:  # as Hypercorn answers an app that failed before responding: 500, and the connection ends
        from hypercorn.events import Closed, RawData

        failed = b"HTTP/1.1 500 \r\ncontent-length: 0\r\nconnection: close\r\n"
        await protocol.send(RawData(data=failed + server_headers + b"\r\n"))
        await protocol.send(Closed())
        return
    transport = tcp.writer.transport
    if transport.is_closing():
        return  # the client is gone; the read loop learns it next
    if transport.get_write_buffer_size() < HIGH_WATER:
        transport.write(framed)
    else:
        from hypercorn.events import RawData

        await protocol.send(RawData(data=framed))  # waits while the client does not read its responses


def ready(protocol: Any) -> bool:
    """Whether the connection is plain HTTP/1.1 between requests, with nothing buffered (see the module)."""
    connection = protocol.connection
    return (type(connection) is _h11.Connection and connection.our_state is _h11.IDLE
            and connection.their_state is _h11.IDLE and protocol.stream is None
            and not connection.trailing_data[0] and not connection.trailing_data[1]
            and protocol.keep_alive_requests + 1 < protocol.config.keep_alive_max_requests
            and protocol.context.max_requests is None and not protocol.context.terminated.is_set()
            and not protocol.config.server_names and protocol.config.log.access_logger is None)


def install() -> None:
    global _h11
    import h11
    from hypercorn.asyncio.tcp_server import TCPServer
    from hypercorn.events import RawData
    from hypercorn.protocol.h11 import H11Protocol

    from gateway.web.hypercorn import header_deadline

    _h11 = h11
    original_handle: Callable[[Any, Any], Awaitable[None]] = H11Protocol.handle

    async def handle(self: Any, event: Any) -> None:
        if type(event) is RawData and ready(self):
            request = parse(event.data)
            if request is not None:
                app = lane_app(self)
                if app is not None and app.lane_route(request.path.decode("ascii")):
                    header_deadline.disarm(self)  # a whole head arrived, as ``_create_stream`` disarms it
                    await serve(self, app, request)
                    return
        await original_handle(self, event)

    async def _idle_timeout(self: Any) -> None:
        """Hypercorn's: close the connection after ``keep_alive_timeout`` idle, or at once when the worker
        terminates; idle counted from the later of this timer's start and the lane's last request."""
        loop = asyncio.get_running_loop()
        timeout = self.config.keep_alive_timeout
        started = loop.time()
        wait = timeout
        while True:
            try:
                await asyncio.wait_for(self.context.terminated.wait(), wait)
                break
            except TimeoutError:
                last = getattr(self, LANE_AT, None)
                wait = max(started, last if last is not None else started) + timeout - loop.time()
                if wait <= 0:
                    break
        await asyncio.shield(self._initiate_server_close())

    H11Protocol.handle = handle  # type: ignore[method-assign]
    TCPServer._idle_timeout = _idle_timeout  # type: ignore[method-assign]
