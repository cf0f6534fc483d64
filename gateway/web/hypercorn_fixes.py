"""Corrections to Hypercorn defects that hurt a streaming gateway, applied once at start-up, version-guarded.

Each fix names the defect, the versions it was verified against, and is skipped (with a warning) on any other
version, so an upgrade cannot silently combine a changed upstream with a stale patch.

1. **QUIC listener blocks shutdown** (0.18.0): ``UDPServer.run`` loops ``while not terminated or not idle`` but
   sleeps in ``protocol_queue.get()``; once the worker is terminated nothing wakes it unless a datagram happens
   to arrive, so every shutdown with ``quic_bind`` waits out the whole ``graceful_timeout``. The fix puts an
   empty datagram on the queue when termination is signalled, and every 100 ms after until the loop ends (QUIC
   connections close on timers, outside the loop); the QUIC protocol discards it as an unparsable header.
2. **HTTP/3 disconnects never reach the app** (0.18.0 with aioquic 1.x): ``H3Protocol.handle`` hands
   ``ConnectionTerminated``, ``StreamReset`` and ``StopSendingReceived`` to aioquic's H3 layer, which turns them
   into no HTTP event, so the ASGI app never receives ``http.disconnect``: when a browser tab closes, its
   streams, their tasks and their mailboxes live on. The fix closes the affected Hypercorn streams (which sends
   ``http.disconnect``) and drops later sends to them instead of writing into a dead connection.
3. **h2 connection torn down by an early response** (0.18.0): when the app answers before reading the whole
   request body (every 404, 405, 413 or 415), a DATA frame that arrives afterwards hits a stream Hypercorn has
   already forgotten; ``KeyError`` escapes and the *whole connection* dies, with every SSE stream the browser
   multiplexed on it. Hypercorn guards ``StreamEnded`` for exactly this case but not ``DataReceived``. The fix
   acknowledges such data (so the connection's flow-control window is not leaked) and drops it.
4. **h2 buffers grow without bound for a client that grants no window** (0.18.0): ``StreamBuffer.pop`` releases
   a paused producer when the *popped chunk* is short, and with a zero flow-control window Hypercorn pops zero
   bytes on every push, so the producer is never paused and the buffer grows by every event the app sends. The
   fix releases the producer only when the *buffer* has drained below the low-water mark, so a stalled h2 client
   blocks the app's ``send`` (and the gateway's write deadline then closes the stream).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from importlib.metadata import version
from typing import Any

log = logging.getLogger("gateway.hypercorn")

VERIFIED = ("0.18.0",)
_applied = False


def apply() -> list[str]:
    """Install the fixes for this Hypercorn version; returns the names of those applied."""
    global _applied
    current = version("hypercorn")
    if current not in VERIFIED:
        log.warning("hypercorn %s is not one the gateway's fixes were verified on (%s); not applying them",
                    current, ", ".join(VERIFIED))
        return []
    names = ["quic_shutdown_wake", "h3_disconnects", "h2_late_data", "h2_buffer_backpressure"]
    if _applied:
        return names
    _fix_quic_shutdown()
    _fix_h3_disconnects()
    _fix_h2_late_data()
    _fix_h2_buffer_backpressure()
    _applied = True
    return names


def _fix_quic_shutdown() -> None:
    from hypercorn.asyncio.udp_server import UDPServer
    from hypercorn.events import RawData

    original = UDPServer.run

    async def run(self: Any) -> None:
        async def wake_on_terminate() -> None:
            await self.context.terminated.wait()
            # QUIC connections also end on timers, outside this loop: keep waking it until it sees them gone.
            while True:
                # A full queue means the loop is busy and will re-check its condition anyway.
                with contextlib.suppress(asyncio.QueueFull):
                    self.protocol_queue.put_nowait(RawData(data=b"", address=("0.0.0.0", 0)))
                await asyncio.sleep(0.1)

        waker = asyncio.ensure_future(wake_on_terminate())
        try:
            await original(self)
        finally:
            waker.cancel()

    UDPServer.run = run  # type: ignore[method-assign]


def _fix_h3_disconnects() -> None:
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
            self.gateway_terminated = True
            for stream_id in list(self.streams):
                await close_stream(self, stream_id)
            return
        if isinstance(quic_event, (StreamReset, StopSendingReceived)):
            await close_stream(self, quic_event.stream_id)
        await original_handle(self, quic_event)

    async def stream_send(self: Any, event: Any) -> None:
        if isinstance(event, outgoing) and (
            getattr(self, "gateway_terminated", False) or event.stream_id not in self.streams
        ):
            return  # the peer is gone: nothing to write to
        await original_send(self, event)

    H3Protocol.handle = handle  # type: ignore[method-assign]
    H3Protocol.stream_send = stream_send  # type: ignore[method-assign]


def _fix_h2_late_data() -> None:
    import h2.events
    from hypercorn.protocol.h2 import H2Protocol

    original = H2Protocol._handle_events

    async def _handle_events(self: Any, events: list[Any]) -> None:
        # Whether a stream is known can only be judged after the events before it in the batch were handled
        # (HEADERS and DATA of one request often arrive together), so the batch is cut at each DATA frame.
        pending: list[Any] = []
        for event in events:
            if isinstance(event, h2.events.DataReceived):
                if pending:
                    await original(self, pending)
                    pending = []
                if event.stream_id not in self.streams:
                    # Response already sent: give the window back and forget the data.
                    self.connection.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    continue
            pending.append(event)
        await original(self, pending)

    H2Protocol._handle_events = _handle_events  # type: ignore[method-assign]


def _fix_h2_buffer_backpressure() -> None:
    from hypercorn.protocol import h2 as hypercorn_h2

    low_water = hypercorn_h2.BUFFER_LOW_WATER

    async def pop(self: Any, max_length: int) -> bytes:
        length = min(len(self.buffer), max_length)
        data = bytes(self.buffer[:length])
        del self.buffer[:length]
        if len(self.buffer) < low_water:  # the buffer, not the chunk: a zero window pops nothing
            await self._paused.set()
        if len(self.buffer) == 0:
            await self._is_empty.set()
        return data

    hypercorn_h2.StreamBuffer.pop = pop  # type: ignore[method-assign]
