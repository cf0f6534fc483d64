"""The socket under an HTTP/1.1 SSE response, so fan-out can write events to idle streams without waking them.

An event sent through ASGI costs a task wake-up, the stream's bookkeeping, Hypercorn's ``HTTPStream`` and h11
layers, a send lock and a drain: about 60 µs of CPU per delivered event, whatever its size. Once the response head
is out, an HTTP/1.1 body with chunked framing is nothing more than ``<hex length>\\r\\n<bytes>\\r\\n`` pieces, and
the transport's ``write`` never blocks (it buffers). So when a stream's writer task is parked with nothing queued
and the socket's buffer is nearly empty, fan-out frames the event and writes it to the transport itself; everything
else (a busy or slow client, h2, HTTP/3, heartbeats, the goodbye) keeps the task-and-``send`` path, with its write
deadline. A reverse proxy speaks HTTP/1.1 to its upstreams, so this is the path production traffic takes.

Reaching the transport means walking Hypercorn's objects (``HTTPStream`` -> ``H11Protocol`` -> ``TCPServer``); that
walk is checked attribute by attribute and only trusted on the Hypercorn versions the fixes were verified on. When
anything differs, ``h1_transport`` answers None and the stream simply stays on the ASGI path.
"""

from __future__ import annotations

import logging
from importlib.metadata import version
from typing import Any

from gateway.web.hypercorn_fixes import VERIFIED

log = logging.getLogger("gateway.direct")

# Bytes a transport may already hold for the client before fan-out stops writing to it directly and lets the
# stream's own task (and its write deadline) take over. Small: a healthy client drains its socket between events.
HIGH_WATER = 64 * 1024

_supported: bool | None = None


def _check_version() -> bool:
    global _supported
    if _supported is None:
        _supported = version("hypercorn") in VERIFIED
    return _supported


def h1_transport(send: Any) -> Any:
    """The transport of the HTTP/1.1 response behind ``send`` if its body is chunked and its head already sent.

    ``send`` is what Hypercorn handed the application: a bound ``HTTPStream.app_send``. None for h2, HTTP/3, an
    HTTP/1.0 client (close-delimited body), an unverified Hypercorn, or a stream already closed.
    """
    if not _check_version():
        return None
    try:
        import h11
        from hypercorn.asyncio.tcp_server import TCPServer
        from hypercorn.protocol.h11 import H11Protocol
        from hypercorn.protocol.http_stream import HTTPStream
    except ImportError:  # pragma: no cover - hypercorn always ships these
        return None
    stream = getattr(send, "__self__", None)
    if not isinstance(stream, HTTPStream) or stream.closed:
        return None
    protocol = getattr(stream.send, "__self__", None)
    if not isinstance(protocol, H11Protocol):
        return None
    connection = protocol.connection
    if not isinstance(connection, h11.Connection) or connection.our_state is not h11.SEND_BODY:
        return None
    if type(getattr(connection, "_writer", None)).__name__ != "ChunkedWriter":
        return None
    server = getattr(protocol.send, "__self__", None)
    if not isinstance(server, TCPServer):
        return None
    transport = server.writer.transport  # asyncio's or uvloop's (which does not derive from asyncio's classes)
    if transport is None or transport.is_closing():
        return None
    return transport


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked HTTP/1.1 body, exactly as h11 frames it."""
    return b"%x\r\n%b\r\n" % (len(data), data)
