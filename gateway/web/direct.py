"""Writing events straight to the socket under an HTTP/1.1 SSE response, so fan-out need not wake idle streams.

An event sent through ASGI costs a task wake-up, the stream's bookkeeping, Hypercorn's ``HTTPStream`` and h11
layers, a send lock and a drain: about 60 µs of CPU per delivered event, whatever its size. Once the response head
is out, an HTTP/1.1 body with chunked framing is nothing more than ``<hex length>\\r\\n<bytes>\\r\\n`` pieces, and
the transport's ``write`` never blocks (it buffers). So when a stream's writer task is parked with nothing queued
and the socket's buffer is nearly empty, fan-out frames the event and writes it to the transport itself; everything
else (a busy or slow client, h2, HTTP/3, heartbeats, the goodbye) keeps the task-and-``send`` path, with its write
deadline. A reverse proxy speaks HTTP/1.1 to its upstreams, so this is the path production traffic takes.

Reaching the transport means walking Hypercorn's objects: ``h1_transport`` lives with the Hypercorn corrections
(``gateway.web.hypercorn.transport``), which say what it relies on and trust it only on the verified versions. When
anything differs it answers None and the stream simply stays on the ASGI path.
"""

from __future__ import annotations

from gateway.web.hypercorn.transport import h1_transport

__all__ = ["HIGH_WATER", "chunk", "h1_transport"]

# Bytes a transport may already hold for the client before fan-out stops writing to it directly and lets the
# stream's own task (and its write deadline) take over. Small: a healthy client drains its socket between events.
HIGH_WATER = 64 * 1024


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked HTTP/1.1 body, exactly as h11 frames it."""
    return b"%x\r\n%b\r\n" % (len(data), data)
