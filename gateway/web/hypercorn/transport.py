"""The asyncio transport under an HTTP/1.1 response, found from the ASGI ``send`` Hypercorn handed the app.

This is the gateway's one seam into Hypercorn's connection objects (fan-out's direct writes, ``gateway.web.direct``,
use it). It relies on these parts of Hypercorn 0.18.0 and h11 0.16.0, none of them public API:

- ``send`` is the bound method ``HTTPStream.app_send``: its ``__self__`` is the ``HTTPStream``, whose ``closed``
  says whether the client is gone;
- ``HTTPStream.send`` is the bound ``H11Protocol.stream_send``: its ``__self__`` is the ``H11Protocol``, whose
  ``connection`` is the ``h11.Connection`` that frames the body;
- h11 frames a chunked body with ``h11._writers.ChunkedWriter``, held in the private ``Connection._writer`` while
  ``our_state`` is ``SEND_BODY``; so once the head is out, a body chunk is ``<hex length>\\r\\n<bytes>\\r\\n``;
- ``H11Protocol.send`` is the bound ``TCPServer.protocol_send``: its ``__self__`` is the ``TCPServer``, whose
  ``writer.transport`` is the connection's transport (asyncio's or uvloop's, which does not derive from asyncio's
  classes).

``request_headers_unread`` relies on one more: ``HTTPStream.config.log.access_logger`` is None when Hypercorn writes
no access line, and that line (written when the response ends) is the only reader of ``scope["headers"]`` once the
response has started, on HTTP/1.1, h2 and HTTP/3 alike (its server push reads them too; the gateway never pushes).

Every step is checked by type, and the walk is only made once ``gateway.web.hypercorn.install`` found every
server package at its verified version (``direct_writes_trusted``); otherwise, or when any step differs, the answer
is None and the stream stays on the ASGI path.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
from h11._writers import ChunkedWriter
from hypercorn.asyncio.tcp_server import TCPServer
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.protocol.http_stream import HTTPStream

from gateway.web.hypercorn import direct_writes_trusted


def h1_transport(send: Any) -> asyncio.WriteTransport | None:
    """The transport of the HTTP/1.1 response behind ``send`` if its body is chunked and its head already sent.

    ``send`` is what Hypercorn handed the application. None for h2, HTTP/3, an HTTP/1.0 client (close-delimited
    body), unverified server packages (or corrections not installed), or a stream already closed.
    """
    if not direct_writes_trusted():
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
    if not isinstance(getattr(connection, "_writer", None), ChunkedWriter):
        return None
    server = getattr(protocol.send, "__self__", None)
    if not isinstance(server, TCPServer):
        return None
    transport: asyncio.WriteTransport | None = server.writer.transport
    if transport is None or transport.is_closing():
        return None
    return transport


def request_headers_unread(send: Any) -> bool:
    """Whether the server behind ``send`` reads its request's headers off the scope no more, now that the response
    has started: Hypercorn (verified) writing no access line. False for anything else."""
    if not direct_writes_trusted():
        return False
    stream = getattr(send, "__self__", None)
    return isinstance(stream, HTTPStream) and stream.config.log.access_logger is None
