"""Writing events straight to the socket under an HTTP/1.1 SSE response, so fan-out need not wake idle streams.

An event sent through ASGI costs a task wake-up, the stream's bookkeeping, Hypercorn's ``HTTPStream`` and h11
layers, a send lock and a drain: about 60 µs of CPU per delivered event, whatever its size. Once the response head
is out, an HTTP/1.1 body with chunked framing is nothing more than ``<hex length>\\r\\n<bytes>\\r\\n`` pieces, and
the transport's ``write`` never blocks (it buffers). So when a stream's writer task is parked with nothing queued
and the socket's buffer is nearly empty, fan-out frames the event and writes it to the transport itself; everything
else (a busy or slow client, HTTP/3, heartbeats, the goodbye) keeps the task-and-``send`` path, with its write
deadline. A reverse proxy speaks HTTP/1.1 to its upstreams, so this is the path production traffic takes.

HTTP/2 streams share a connection, so their events are not chunks of a socket of their own: there fan-out has h2's
own connection state frame each ready stream's event as DATA, within the flow-control windows, and writes what h2
holds for the connection once per round (``h2_writer``; a window too small keeps the task path). HTTP/3 streams
likewise have aioquic's own H3 state frame the event of each ready stream, and the connection is flushed once per
round (``h3_writer``; a stream whose client does not read keeps the task path).

Reaching the transport means walking Hypercorn's objects: ``h1_transport``, ``h2_writer`` and ``h3_writer`` live with
the Hypercorn corrections (``gateway.web.hypercorn.transport``, ``.h2_direct`` and ``.h3_direct``), which say
what they rely on and trust it only on the verified versions. When anything differs they answer None and the
stream simply stays on the ASGI path.
"""

from __future__ import annotations

from gateway.web.hypercorn.h2_direct import H2Link, H2Writer, h2_writer
from gateway.web.hypercorn.h3_direct import H3Link, H3Writer, h3_writer
from gateway.web.hypercorn.transport import h1_transport

__all__ = ["HIGH_WATER", "H2Link", "H2Writer", "H3Link", "H3Writer", "chunk", "h1_transport", "h2_writer",
           "h3_writer"]

# Bytes a transport may already hold for the client before fan-out stops writing to it directly and lets the
# stream's own task (and its write deadline) take over. Small: a healthy client drains its socket between events.
HIGH_WATER = 64 * 1024


_last_chunk: list[bytes] = [b"", b"0\r\n\r\n"]  # the bytes last framed, and their chunk


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked HTTP/1.1 body, exactly as h11 frames it. The streams that share a round's events
    (and no compressor) write the very same bytes: the last chunk is kept for the next one."""
    last = _last_chunk
    if data is last[0]:
        return last[1]
    framed = last[1] = b"%x\r\n%b\r\n" % (len(data), data)
    last[0] = data
    return framed
