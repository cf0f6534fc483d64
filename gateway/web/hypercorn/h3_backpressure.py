"""HTTP/3 buffers without bound for a client that grants no flow-control credit (Hypercorn 0.18.0, aioquic 1.7.2).

Defect: ``H3Protocol.stream_send`` hands every body to aioquic and returns at once, and aioquic's
``QuicStreamSender.write`` appends it to the stream's buffer whatever the peer's ``MAX_STREAM_DATA``; a client that
stops reading (its flow-control window stays shut while it keeps acknowledging packets) has every event of the
stream kept in memory until the connection ends (measured: +210 MiB for 200 renders of 1 MiB, the stream never
closed; +7-11 MiB with this correction, closed by the write deadline after 3.4 s).

Correction: ``stream_send`` waits, after a body, while that stream's unacknowledged bytes (unsent ones included)
exceed ``H3_HIGH_WATER``; it re-checks whenever the connection processed a datagram or a timer (acknowledgements
free the buffer there), at least every second, and stops waiting when the stream or the connection is gone. A
stalled HTTP/3 client therefore blocks the app's ``send`` and the gateway's write deadline closes the stream. When
a stream's app ends without finishing the response (such a cut-off), the stream is reset (``RESET_STREAM``,
``H3_REQUEST_CANCELLED``): the client learns it ended and aioquic drops what was still buffered for it, instead of
keeping both until the connection closes. It wraps the ``stream_send`` of ``h3_disconnects`` (which drops sends to
streams and connections that are gone), so it is installed after it.

Upstream: aiortc/aioquic#328 ("Sender backpressure?", closed as stale) and aiortc/aioquic#250 (the stream writer's
``drain`` does not wait) ask for it; aioquic offers no way to wait for the send buffer, and Hypercorn has no issue
for it. The upstream fix: aioquic exposes a stream's buffered size and an event (or callback) when it falls below a
limit, and Hypercorn's ``H3Protocol.stream_send`` waits on it as its h2 ``StreamBuffer`` does.

Test that fails without it:
``tests/test_transport_faults.py::test_http3_client_granting_no_credit_costs_bounded_memory``.

Remove it when aioquic bounds or reports a stream's send buffer and Hypercorn waits on it: pin both, delete this
module, and the test above must still pass.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from gateway.web.hypercorn.h3_disconnects import terminated

H3_HIGH_WATER = 256 * 1024  # bytes an HTTP/3 stream may hold unacknowledged before the app's send waits
RECHECK = 1.0  # seconds a waiting send sleeps at most, should a wake-up ever be missed


def install() -> None:
    from aioquic.h3.connection import ErrorCode
    from hypercorn.protocol import events as hev
    from hypercorn.protocol.h3 import H3Protocol
    from hypercorn.protocol.quic import QuicProtocol

    original_send = H3Protocol.stream_send  # h3_disconnects': drops sends to streams and connections that are gone
    original_handle_events = QuicProtocol._handle_events

    async def _handle_events(self: Any, connection: Any, client: Any = None) -> None:
        try:
            await original_handle_events(self, connection, client)
        finally:
            # Acknowledgements were processed just before (datagram or timer): wake the senders waiting on them.
            h3 = connection.h3
            progress = getattr(h3, "gateway_progress", None)
            if progress is not None:
                h3.gateway_progress = None  # one event per wake-up: waiters re-check, then wait on a fresh one
                progress.set()

    def live_sender(self: Any, stream_id: int) -> Any:
        """aioquic's sender for this stream, or None once the stream or its connection is gone or reset."""
        if terminated(self) or stream_id not in self.streams:
            return None
        stream = self.connection._quic._streams.get(stream_id)
        if stream is None or stream.sender.is_finished or stream.sender._reset_error_code is not None:
            return None
        return stream.sender

    async def stream_send(self: Any, event: Any) -> None:
        await original_send(self, event)
        if isinstance(event, (hev.Body, hev.Data)):
            # Unacknowledged bytes, unsent ones included: what a client granting no credit makes pile up.
            while (sender := live_sender(self, event.stream_id)) is not None and len(sender._buffer) > H3_HIGH_WATER:
                progress = getattr(self, "gateway_progress", None)
                if progress is None:
                    progress = self.gateway_progress = asyncio.Event()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(RECHECK):
                        await progress.wait()
        elif isinstance(event, hev.StreamClosed) and not terminated(self):
            stream = self.connection._quic._streams.get(event.stream_id)
            sender = None if stream is None else stream.sender
            if (sender is not None and sender._buffer_fin is None and sender._reset_error_code is None
                    and not sender.is_finished):
                # The app ended without finishing the response (a cut-off): tell the client, free the buffer.
                self.connection._quic.reset_stream(event.stream_id, ErrorCode.H3_REQUEST_CANCELLED)
                await self.send()

    QuicProtocol._handle_events = _handle_events  # type: ignore[method-assign]
    H3Protocol.stream_send = stream_send  # type: ignore[method-assign]
