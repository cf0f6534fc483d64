"""HTTP/3 disconnects never reach the app (Hypercorn 0.18.0 with aioquic 1.x).

Defect: ``H3Protocol.handle`` hands ``ConnectionTerminated``, ``StreamReset`` and ``StopSendingReceived`` to
aioquic's H3 layer, which turns them into no HTTP event, so the ASGI app never receives ``http.disconnect``: when a
browser tab closes, its streams, their tasks and their mailboxes live on until the process stops. A send to such a
stream then writes into a reset stream (aioquic asserts: "cannot call write() after reset()").

Correction: close the affected Hypercorn streams (which sends ``http.disconnect``) and drop later sends to them,
or to a terminated connection, instead of writing into a dead connection.

Upstream: pgjones/hypercorn#352 and pgjones/hypercorn#296 report the symptom of the dropped events
(``AssertionError: cannot call write() after reset()`` from a send to a stream the peer reset); no issue reports
the missing ``http.disconnect`` itself. The upstream fix: ``H3Protocol.handle`` turns these three QUIC events into
``StreamClosed`` for the streams concerned, and ``stream_send`` ignores streams that are gone.

Test that fails without it: ``tests/test_lifecycle.py::test_http3_client_going_away_ends_its_streams``.

Remove it when a Hypercorn release delivers ``http.disconnect`` for a closed QUIC connection, a ``RESET_STREAM``
and a ``STOP_SENDING``: pin it, delete this module (and the ``terminated`` check ``h3_backpressure`` takes from it),
and the test above must still pass.
"""

from __future__ import annotations

from typing import Any

TERMINATED = "gateway_terminated"  # set on an ``H3Protocol`` whose QUIC connection has ended


def terminated(protocol: Any) -> bool:
    """Whether this ``H3Protocol``'s QUIC connection has ended (the correction marks it)."""
    return bool(getattr(protocol, TERMINATED, False))


def install() -> None:
    from aioquic.quic.events import ConnectionTerminated, StopSendingReceived, StreamReset
    from hypercorn.protocol import events as hev
    from hypercorn.protocol.h3 import H3Protocol

    original_handle = H3Protocol.handle
    original_send = H3Protocol.stream_send
    outgoing = (hev.Response, hev.InformationalResponse, hev.Body, hev.Data, hev.EndBody, hev.EndData,
                hev.Trailers)

    async def close_stream(self: Any, stream_id: int) -> None:
        stream = self.streams.pop(stream_id, None)
        if stream is not None:
            await stream.handle(hev.StreamClosed(stream_id=stream_id))

    async def handle(self: Any, quic_event: Any) -> None:
        if isinstance(quic_event, ConnectionTerminated):
            setattr(self, TERMINATED, True)
            for stream_id in list(self.streams):
                await close_stream(self, stream_id)
            return
        if isinstance(quic_event, (StreamReset, StopSendingReceived)):
            await close_stream(self, quic_event.stream_id)
        await original_handle(self, quic_event)

    async def stream_send(self: Any, event: Any) -> None:
        if isinstance(event, outgoing) and (terminated(self) or event.stream_id not in self.streams):
            return  # the peer is gone: nothing to write to
        await original_send(self, event)

    H3Protocol.handle = handle  # type: ignore[method-assign]
    H3Protocol.stream_send = stream_send  # type: ignore[method-assign]
