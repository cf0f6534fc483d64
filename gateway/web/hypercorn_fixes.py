"""Corrections to Hypercorn defects that hurt a streaming gateway, applied once at start-up, version-guarded.

Each fix names the defect, the versions it was verified against, and is skipped (with a warning) on any other
version, so an upgrade cannot silently combine a changed upstream with a stale patch.

1. **QUIC listener blocks shutdown** (0.18.0): ``UDPServer.run`` loops ``while not terminated or not idle`` but
   sleeps in ``protocol_queue.get()``; once the worker is terminated nothing wakes it unless a datagram happens
   to arrive, so every shutdown with ``quic_bind`` waits out the whole ``graceful_timeout``; and Hypercorn never
   closes QUIC connections on shutdown, so one idle browser connection kept the process alive just as long
   (measured: 35 s). The fix closes every QUIC connection (``H3_NO_ERROR``, as h2 sends GOAWAY) once the worker
   is terminated, which is after the gateway's drain, and puts an empty datagram on the queue then and every
   100 ms until the loop ends (connections close on timers, outside the loop); the QUIC protocol discards it as
   an unparsable header.
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
5. **A send after the client is gone succeeds without yielding** (0.18.0; CPython 3.11 asyncio): when an HTTP/1.1
   client resets the connection, asyncio stores the ``ConnectionResetError`` in the ``StreamReader`` and
   ``StreamWriter.drain`` re-raises that stored exception *before* its first suspension point.
   ``TCPServer.protocol_send`` catches it, hands ``Closed`` to the protocol (which closes the ``HTTPStream`` and
   queues ``http.disconnect``) and returns normally; ``HTTPStream.app_send`` never looks at ``closed``, so every
   later ``http.response.body`` is framed by h11 and pushed into the dead transport again, raising and swallowing the
   same exception each time. The app's ``await send(...)`` returns without ever suspending: a loop whose only await
   is ``send`` (a Quart streaming response) never lets its disconnect watcher, the signal handlers or any other
   connection run again; each re-raise of the one exception object prepends traceback entries whose frames pin the
   chunk just sent (measured with a Quart response streaming 16 KiB chunks: +0.9 GB in 2 s, /healthz unanswered,
   SIGTERM ignored, asyncio's "socket.send() raised exception." logged for every send). The gateway's own SSE writer
   is spared (its ``receive()`` watcher and mailbox wait yield), losing one send. h2 (``KeyError`` swallowed in
   ``stream_send``) and HTTP/3 (fix 2) also return at once on a closed stream. The fix makes the ASGI ``send`` of a
   closed stream yield once (the queued ``http.disconnect`` reaches the app's ``receive()`` first) and then, for a
   body with ``more_body`` (the message a streaming loop repeats), raise ``ClientDisconnected``, an ``OSError`` as
   ASGI 2.4 asks; that covers the send that was in flight when the reset hit, so the dead transport is never written
   again. A response's other messages (its start, final body, trailers) are still dropped silently, as before: they
   cannot loop. An app that lets ``ClientDisconnected`` escape (Quart re-raises it from its handler task) is not
   reported as "Error in ASGI Framework": the client leaving is no server error.
6. **HTTP/3 buffers without bound for a client that grants no credit** (0.18.0 with aioquic 1.7.2):
   ``H3Protocol.stream_send`` hands every body to aioquic and returns at once, and aioquic's
   ``QuicStreamSender.write`` appends it to the stream's buffer whatever the peer's ``MAX_STREAM_DATA``; a client
   that stops reading (its flow-control window stays shut while it keeps acknowledging packets) has every event
   of the stream kept in memory until the connection ends (measured: +210 MiB for 200 renders of 1 MiB, the
   stream never closed). The fix makes ``stream_send`` wait, after a body, while that stream's unacknowledged
   bytes (unsent ones included) exceed ``H3_HIGH_WATER``; it re-checks whenever the connection processed a
   datagram or a timer (acknowledgements free the buffer there), at least every second, and stops waiting when
   the stream or the connection is gone. A stalled HTTP/3 client therefore blocks the app's ``send`` and the
   gateway's write deadline closes the stream. When a stream's app ends without finishing the response (such a
   cut-off), the stream is reset (``RESET_STREAM``, ``H3_REQUEST_CANCELLED``): the client learns it ended and
   aioquic drops what was still buffered for it, instead of keeping both until the connection closes.
8. **A closed connection lives on while its peer does not read** (0.18.0): ``TCPServer._close`` awaits
   ``wait_closed()``, and asyncio only closes a transport once its write buffer is flushed, which never happens
   for a client that stopped reading. A stream the gateway cut off (slow consumer, write deadline) kept its
   socket, file descriptor and buffers until the client went away. The fix aborts the transport (dropping the
   unsendable rest) when a close has not completed within ``CLOSE_GRACE`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
from importlib.metadata import PackageNotFoundError, version
from typing import Any

log = logging.getLogger("gateway.hypercorn")

VERIFIED = ("0.18.0",)
AIOQUIC_VERIFIED = ("1.7.2",)  # fix 6 reads aioquic's stream internals
CLOSE_GRACE = 3.0  # seconds a closing TCP connection may take to flush before it is aborted
H3_HIGH_WATER = 256 * 1024  # bytes an HTTP/3 stream may hold unacknowledged before the app's send waits
_applied = False


class ClientDisconnected(OSError):
    """The ASGI ``send`` of a response whose client is gone (ASGI 2.4: a server-specific ``OSError``)."""

    def __init__(self) -> None:
        super().__init__(errno.ECONNRESET, "the client closed the connection")


def apply() -> list[str]:
    """Install the fixes for this Hypercorn version; returns the names of those applied."""
    global _applied
    current = version("hypercorn")
    if current not in VERIFIED:
        log.warning("hypercorn %s is not one the gateway's fixes were verified on (%s); not applying them",
                    current, ", ".join(VERIFIED))
        return []
    fixes = [("quic_shutdown_wake", _fix_quic_shutdown), ("h3_disconnects", _fix_h3_disconnects),
             ("h2_late_data", _fix_h2_late_data), ("h2_buffer_backpressure", _fix_h2_buffer_backpressure),
             ("send_after_disconnect", _fix_send_after_disconnect), ("tcp_close_abort", _fix_tcp_close_abort)]
    try:
        aioquic = version("aioquic")
    except PackageNotFoundError:
        aioquic = "missing"
    if aioquic in AIOQUIC_VERIFIED:
        fixes.append(("h3_send_backpressure", _fix_h3_send_backpressure))
    else:
        log.warning("aioquic %s is not one the HTTP/3 back-pressure fix was verified on (%s); not applying it",
                    aioquic, ", ".join(AIOQUIC_VERIFIED))
    if not _applied:
        for _, fix in fixes:  # in order: fix 6 wraps the stream_send of fix 2
            fix()
        _applied = True
    return [name for name, _ in fixes]


def _fix_quic_shutdown() -> None:
    from aioquic.h3.connection import ErrorCode as H3ErrorCode
    from hypercorn.asyncio.udp_server import UDPServer
    from hypercorn.events import RawData

    original = UDPServer.run

    async def run(self: Any) -> None:
        async def wake_on_terminate() -> None:
            await self.context.terminated.wait()
            # The gateway has drained its streams by now, but idle QUIC connections (browsers keep them open)
            # would hold the listener, and the process, until graceful_timeout: close them, as h2 sends GOAWAY.
            protocol = getattr(self, "protocol", None)
            if protocol is not None:
                for connection in {id(c): c for c in protocol.connections.values()}.values():
                    with contextlib.suppress(Exception):
                        connection.quic.close(error_code=H3ErrorCode.H3_NO_ERROR, reason_phrase="shutting down")
                        await protocol.send_all(connection)
            # QUIC connections end on timers, outside this loop: keep waking it until it sees them gone.
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


def _fix_send_after_disconnect() -> None:
    from hypercorn.app_wrappers import ASGIWrapper
    from hypercorn.protocol.http_stream import ASGIHTTPState, HTTPStream

    original = HTTPStream.app_send
    original_call = ASGIWrapper.__call__

    async def app_send(self: Any, message: Any) -> None:
        if message is None or self.state is ASGIHTTPState.CLOSED:
            await original(self, message)  # the app is done, or sends after its response ended: as before
            return
        if not self.closed:
            await original(self, message)
            if not self.closed or self.state is ASGIHTTPState.CLOSED:
                return
            # The stream was closed under this very send (the write failed): it did not reach the client either.
        # Let the app's receive() take the queued http.disconnect first, whatever happens next.
        await asyncio.sleep(0)
        if message.get("type") == "http.response.body" and message.get("more_body", False):
            raise ClientDisconnected()

    async def call(self: Any, scope: Any, receive: Any, send: Any, sync_spawn: Any, call_soon: Any) -> None:
        try:
            await original_call(self, scope, receive, send, sync_spawn, call_soon)
        except* ClientDisconnected:
            pass  # an app that lets it through (Quart does) has nothing to report: the client left

    HTTPStream.app_send = app_send  # type: ignore[method-assign]
    ASGIWrapper.__call__ = call  # type: ignore[method-assign]


def _fix_h3_send_backpressure() -> None:
    from aioquic.h3.connection import ErrorCode
    from hypercorn.protocol import events as hev
    from hypercorn.protocol.h3 import H3Protocol
    from hypercorn.protocol.quic import QuicProtocol

    original_send = H3Protocol.stream_send  # fix 2's: drops sends to streams and connections that are gone
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
        if getattr(self, "gateway_terminated", False) or stream_id not in self.streams:
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
                    async with asyncio.timeout(1.0):  # a bound, should a wake-up ever be missed
                        await progress.wait()
        elif isinstance(event, hev.StreamClosed) and not getattr(self, "gateway_terminated", False):
            stream = self.connection._quic._streams.get(event.stream_id)
            sender = None if stream is None else stream.sender
            if (sender is not None and sender._buffer_fin is None and sender._reset_error_code is None
                    and not sender.is_finished):
                # The app ended without finishing the response (a cut-off): tell the client, free the buffer.
                self.connection._quic.reset_stream(event.stream_id, ErrorCode.H3_REQUEST_CANCELLED)
                await self.send()

    QuicProtocol._handle_events = _handle_events  # type: ignore[method-assign]
    H3Protocol.stream_send = stream_send  # type: ignore[method-assign]


def _fix_tcp_close_abort() -> None:
    from hypercorn.asyncio.tcp_server import TCPServer

    original = TCPServer._close

    async def _close(self: Any) -> None:
        transport = self.writer.transport
        timer = asyncio.get_running_loop().call_later(CLOSE_GRACE, transport.abort)
        try:
            await original(self)
        finally:
            timer.cancel()

    TCPServer._close = _close  # type: ignore[method-assign]
