"""The I/O of one SSE response: it moves the bytes a ``gateway.core.stream.SSEStream`` decides on.

Every rule of a stream's life (what to write next, heartbeats, the write deadline, conflation and cut-offs, the
goodbye, close reasons) is in the sans-IO ``SSEStream``. This module only does what needs the event loop: one task
per stream (the ASGI request) that sleeps until woken and writes through ASGI ``send`` under the stream's
deadline; the disconnect, which Hypercorn reports through ``receive()`` and not by failing ``send``, heard by a
listener on Hypercorn's request queue (``gateway.web.hypercorn.app_queue``) or, without it, by a watcher task that
reads ``receive()``; one re-armed timer for the next heartbeat or the end of the lifetime; and, for an idle
stream, fan-out's direct write (``gateway.web.direct``): into the transport on HTTP/1.1, into the connection's h2
state on HTTP/2 and into aioquic's H3 state on HTTP/3, which fan-out flushes once per connection and round.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import random
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import Any

import orjson

from gateway.commands import validate_path_values
from gateway.core import hub
from gateway.core.cohort import SHAREABLE, Cohort, Seat
from gateway.core.datastar import encode_rendered
from gateway.core.errors import BadRequest, GatewayError, Unavailable
from gateway.core.mailbox import BoundedMailbox, ConflatingMailbox, Limits
from gateway.core.sse import Event, parse_last_event_id, retry_frame
from gateway.core.stream import IDLE, CloseReason, End, Feed, Frame, SSEStream, Timing, Wait, Write
from gateway.core.topics import check_topic, hub_key
from gateway.core.versions import VersionKey, try_version_key
from gateway.web.asgi_util import Message, Receive, Scope, Send, StreamRequest, send_error
from gateway.web.auth import run_hook
from gateway.web.compression import Lease, RouteState
from gateway.web.context import HUB_ROUTE, AppContext, ViewSpec
from gateway.web.direct import HIGH_WATER, H2Link, H2Writer, H3Link, H3Writer, chunk, h1_transport, h2_writer, h3_writer
from gateway.web.fanout import ViewChannel, hub_frame
from gateway.web.hypercorn.app_queue import listen
from gateway.web.hypercorn.transport import request_headers_unread

log = logging.getLogger("gateway.streams")

NO_CAP = 1 << 62  # the cap on bytes behind of a stream that has none: no buffer ever reaches it

_HEAD = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-store"),
         (b"x-accel-buffering", b"no"), (b"vary", b"accept-encoding")]


# The context every stream's timer runs its callback in (``_on_timer`` reads no context variable): ``call_at`` would
# otherwise copy the current one for each timer, an object (~64 bytes) every idle stream holds with its timer.
_TIMER_CONTEXT = contextvars.Context()


class StreamClosed(Exception):
    """A write could not complete (client gone, deadline passed): the stream's reason says why."""


PROTOCOLS = {"1.0": "h1", "1.1": "h1", "2": "h2", "3": "h3"}  # ASGI http_version: the protocol label


class Stream:
    """One open SSE response: the socket side of an ``SSEStream``, and fan-out's ``Sink`` for it."""

    __slots__ = ("_behind", "_cap", "_cors", "_deadline", "_delivery", "_h2", "_h3", "_loop", "_socket", "_timer",
                 "_waiter", "_watcher", "_woken", "bytes_out", "client", "core", "events", "kind", "last_event_id",
                 "lease", "policy", "protocol", "route", "runtime", "send", "transport")

    def __init__(self, runtime: AppContext, kind: str, request: StreamRequest, send: Send, lease: Lease,
                 client: str, core: SSEStream, policy: str, cap: int | None) -> None:
        self.runtime = runtime
        self.kind = kind
        # What the stream needs of its request, taken now: the parsed request is not kept for the stream's life.
        self.protocol = PROTOCOLS.get(request.http_version, "h1")
        self.last_event_id = parse_last_event_id(request.headers.get("last-event-id") or request.arg("lastEventId"))
        self._cors: list[tuple[bytes, bytes]] | None = runtime.guard.cors_headers(request.headers)  # until start
        self.send = send
        self.lease = lease
        self.route = lease.route.path
        self.client = client
        self.core = core
        self.policy = policy  # what a full mailbox does (disconnect, drop-oldest, conflate): a metric label
        self.transport: Any = None  # set when fan-out may write to this stream directly
        self._socket: Any = None  # the HTTP/1.1 transport, when known: its write buffer counts as bytes behind
        self._h2: H2Writer | None = None  # set when fan-out may frame this h2 stream's events itself
        self._h3: H3Writer | None = None  # the same for an h3 stream
        self._cap = NO_CAP if cap is None else cap  # bytes behind past which the stream is cut off
        self._behind = runtime.metrics.behind(kind)
        self._delivery = runtime.metrics.delivered(self.route, self.protocol)
        self._loop = asyncio.get_running_loop()
        # The task's wake-up: a flag, and a future only while the task sleeps. An ``asyncio.Event`` does the same
        # with a deque of waiters (~760 bytes) that every idle stream would hold for its whole life.
        self._woken = False
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._deadline: asyncio.Timeout | None = None
        # This stream's own totals, for its access line (the core's counts are shared by the route's streams).
        self.bytes_out = 0
        self.events = 0

    @classmethod
    def open(cls, runtime: AppContext, kind: str, route: RouteState, request: StreamRequest, send: Send,
             mailbox: ConflatingMailbox[Frame] | BoundedMailbox[Frame], grace: float,
             cap: int | None = None, valid_for: float | None = None) -> Stream:
        """Admit a new stream (limits: 503 per process, 429 per client) and give it its encoder; ``grace`` and
        ``cap`` are its slow-client limits (``gateway.core.slowclient``); ``valid_for``: the seconds the token it
        was authorized with stays valid (``Authenticator.valid_for``), None without one that expires."""
        client = runtime.admit(request)
        try:
            lease = runtime.compression.open(route, request.headers.get("accept-encoding"), client)
        except BaseException:
            runtime.release_client(client)
            raise
        sse = runtime.settings.sse
        now = asyncio.get_running_loop().time()
        lifetime = now + sse.max_lifetime * random.uniform(0.9, 1.1) if sse.max_lifetime > 0 else None
        ends = CloseReason.LIFETIME
        if valid_for is not None and (lifetime is None or now + valid_for < lifetime):
            # A stream lives no longer than its authorization: the reconnect must bring a token that verifies.
            lifetime, ends = now + valid_for, CloseReason.TOKEN_EXPIRED
        timing = Timing(sse.heartbeat, sse.write_timeout, grace, lifetime, ends)
        counts = runtime.metrics.tally(kind, route.path, lease.encoder.name).counts
        core = SSEStream(mailbox, lease.encoder, timing, now, counts=counts)
        policy = mailbox.limits.policy if isinstance(mailbox, BoundedMailbox) else "conflate"
        return cls(runtime, kind, request, send, lease, client, core, policy, cap)

    # -- fan-out's side (never awaits) ---------------------------------------------------------------------------

    def feed(self, frame: Frame, now: float) -> None:
        size = len(frame.data or b"")
        result = self.core.feed(frame, size, now)
        if result is Feed.WAKE:
            self._wake()
        elif result is Feed.CONFLATED:
            self.runtime.metrics.conflated.labels(self.route).inc()
        elif result is Feed.DROPPED_OLDEST:
            self.runtime.metrics.events_dropped.labels(self.kind).inc()
        elif result is Feed.CUT:
            self._cut(self._behind_by(size))
            return
        if self._cap is not NO_CAP and result is not Feed.IGNORED:
            behind = self._behind_by(size)
            # Never before the start (a stream ended with its head unsent could not start): a later feed decides.
            if behind > self._cap and self.core.started_at is not None and self.core.end(CloseReason.SLOW_CONSUMER):
                self._cut(behind)

    def _behind_by(self, size: int) -> int:
        """The bytes this stream has been handed and not delivered: its mailbox's (a view's holds the frame of
        ``size`` bytes just put) and its socket buffer's. The kernel's own send queue is not counted: asking for
        it is a system call."""
        box, socket = self.core.mailbox, self._socket
        queued = box.bytes if isinstance(box, BoundedMailbox) else size
        return queued + socket.get_write_buffer_size() if socket is not None else queued

    def _cut(self, behind: int) -> None:
        """The stream was just ended as a slow consumer, ``behind`` bytes behind (its peak: observed): count it
        now (its close may wait for the goodbye) and give up a write stuck on this client now rather than at its
        deadline."""
        self._behind.observe(behind)
        self.runtime.metrics.slow_consumers_cut.labels(self.kind, self.policy).inc()
        if self._deadline is not None:
            self._deadline.reschedule(self._loop.time())
        self._wake()

    def direct_ready(self) -> bool:
        """The task sleeps with nothing queued (nothing can be overtaken, the encoder is free) and the socket
        holds little (the write cannot pile up memory); on h2 and h3, see ``H2Writer.ready``, ``H3Writer.ready``."""
        transport = self.transport
        if transport is None:
            h2 = self._h2 or self._h3
            return h2 is not None and self.core.state is IDLE and h2.ready()
        return (self.core.state is IDLE
                and transport.get_write_buffer_size() < HIGH_WATER and not transport.is_closing())

    def direct_offer(self) -> bool:
        """``direct_ready``; on h3 only that the task sleeps with nothing queued. Fan-out checks ``direct_ready``
        again at the write, after the round, and the h3 conditions (``H3Writer.ready``: ten reads through
        Hypercorn's and aioquic's objects) were a tenth of the server's CPU in a broadcast when checked twice."""
        if self._h3 is not None:
            return self.core.state is IDLE
        return self.direct_ready()

    def direct_write(self, frames: list[Frame], now: float) -> H2Link | H3Link | None:
        """Encode ``frames`` with one flush and write them as one chunk, without waking the task. On h2 and h3
        the chunk is framed into the connection's h2 or H3 state and the link returned, for fan-out to flush once
        per round."""
        writer = self._h2 or self._h3
        if writer is not None:
            return self._h2_write(writer, frames, now)
        data = self.core.write_direct(frames, now)
        if data is None:
            return None
        transport = self.transport
        try:
            transport.write(chunk(data))
        except Exception:
            self._direct_failed()
            return None
        self._delivered_in_round(frames)
        self.bytes_out += len(data)
        self.events += len(frames)
        behind = transport.get_write_buffer_size()  # what the socket could not send (the mailbox is empty)
        if not behind:
            self._behind.zeros += 1  # the common case, counted without a call (metrics.Spread)
        elif behind > self._cap and self.core.end(CloseReason.SLOW_CONSUMER):
            self._cut(behind)
        else:
            self._behind.observe(behind)
        return None

    def direct_link(self) -> H2Link | H3Link | None:
        """The h2 or h3 connection this stream's direct writes gather in; None on HTTP/1.1 (or no direct path)."""
        writer = self._h2 or self._h3
        return None if writer is None else writer.link

    def _h2_write(self, h2: H2Writer | H3Writer, frames: list[Frame], now: float) -> H2Link | H3Link | None:
        """The h2 (or h3) direct write: on h2, when the flow-control windows are too small for ``frames`` they go to
        the mailbox (the task's path, with its write deadline), in order, before anything is encoded; on h3 aioquic
        buffers past the window, bounded by ``H3Writer.ready``."""
        if isinstance(h2, H2Writer) and not h2.room(sum(len(f.data or b"") for f in frames)):
            for frame in frames:
                self.feed(frame, now)
            return None
        data = self.core.write_direct(frames, now)
        if data is None:
            return None
        try:
            link = h2.write(data)
        except Exception:
            self._direct_failed()
            return None
        self._delivered_in_round(frames)
        self.bytes_out += len(data)
        self.events += len(frames)
        self._behind.zeros += 1  # the gateway holds nothing: the bytes are h2's and the socket's (metrics.Spread)
        return link

    def _direct_failed(self) -> None:
        """A direct write (h1, h2 or h3) raised: its encoder may hold half a write, so nothing more goes to this
        stream directly; it is ended and its client resumes."""
        log.exception("direct write failed: the stream is ended and its client resumes")
        self.transport = self._h2 = self._h3 = None
        self.core.write_failed(CloseReason.SEND_FAILED)
        self._wake()

    def _delivered_in_round(self, frames: list[Frame]) -> None:
        """``_delivered`` for fan-out's direct writes: the frames' deliveries are counted under their origins and
        observed when the round of writes is over (``metrics.Latency``), a few microseconds later."""
        self._delivery.rounds.append(frames)
        tracing = self.runtime.tracing
        if tracing.on:  # (frames carry a trace only then)
            for frame in frames:
                if frame.trace is not None:  # a traced version: its first delivery here is a span
                    tracing.delivered(frame.trace, self.kind)

    def _delivered(self, frames: list[Frame]) -> None:
        """Each frame's delivery latency: from when its change began (``Frame.origin``) to now, its bytes handed
        to the socket (wall clock; a clock stepped back counts as 0)."""
        now = time.time()
        observe = self._delivery.observe
        for frame in frames:
            if frame.origin is not None:
                observe(max(0.0, now - frame.origin))
            if frame.trace is not None:  # a traced version: its first delivery here is a span (gateway.tracing)
                self.runtime.tracing.delivered(frame.trace, self.kind)

    def end(self, reason: CloseReason) -> None:
        """End the stream from outside its task (a drain): the task finishes the write in flight, if any, then
        sees the reason and says goodbye."""
        self.core.end(reason)
        self._wake()

    # -- the task's side -----------------------------------------------------------------------------------------

    async def start(self, receive: Receive, first: bytes, events: int = 0, raw: int = -1) -> None:
        """Send the headers and the first frames (``events`` of them: the state, or a replay) together, then watch
        for the client leaving (``raw``: the uncompressed size of a cohort member's ``first``, compressed
        already)."""
        headers = list(_HEAD) + (self._cors or [])
        self._cors = None
        if self.lease.encoder.name != "identity":
            headers.append((b"content-encoding", self.lease.encoder.name.encode()))
        encoded = self.core.start(first, self._loop.time(), raw)
        metrics = self.runtime.metrics
        metrics.streams_opened.labels(self.kind, self.lease.encoder.name).inc()
        metrics.streams_active.labels(self.kind).inc()
        self.runtime.stream_opened(self)
        if not listen(receive, self._on_message):  # no task needed where Hypercorn's queue can tell us
            self._watcher = asyncio.create_task(self._watch(receive), name="gateway-stream-watch")
        await self._send({"type": "http.response.start", "status": 200, "headers": headers})
        self._socket = h1_transport(self.send)  # the head is out: from the first body on, its buffer is measured
        sse = self.runtime.settings.sse
        if self._socket is None and sse.direct_writes and sse.h2_direct_writes:
            self._h2 = h2_writer(self.send, HIGH_WATER)
        if self._socket is None and self._h2 is None and sse.direct_writes and sse.h3_direct_writes:
            self._h3 = h3_writer(self.send, HIGH_WATER)
        await self._send({"type": "http.response.body", "body": encoded, "more_body": True})
        self.bytes_out += len(encoded)
        self.events += events
        self.core.written(None, self._loop.time())
        if self.runtime.settings.sse.direct_writes:
            self.transport = self._socket

    async def _watch(self, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self._client_left()
                return

    def _on_message(self, message: Message) -> None:
        """A message of the request after the response started, as Hypercorn puts it: only ``http.disconnect``
        matters, and it is taken after the current step, as a watcher task would (Hypercorn puts it inside the
        stream's own last send, whose close reason must stay the one it was sent for)."""
        if message["type"] == "http.disconnect":
            self._loop.call_soon(self._client_left)

    def _client_left(self) -> None:
        self.core.end(CloseReason.CLIENT_CLOSED)
        self._wake()

    async def _send(self, message: dict[str, object]) -> None:
        deadline = self.core.write_deadline
        if deadline is None:
            deadline = self._loop.time() + self.core.timing.write_timeout
        try:
            async with asyncio.timeout_at(deadline) as cm:
                self._deadline = cm
                await self.send(message)
        except TimeoutError:
            self.core.write_failed(CloseReason.WRITE_TIMEOUT)
            raise StreamClosed from None
        except (OSError, RuntimeError) as exc:  # the transport is gone under us
            self.core.write_failed(CloseReason.SEND_FAILED)
            raise StreamClosed from exc
        finally:
            self._deadline = None

    def next_write(self) -> Write | asyncio.Future[None] | None:
        """What the task does next: a ``Write``; None when the stream must end; or a future to sleep on, after which
        it asks again.

        One event wakes the task for everything: fan-out, the disconnect watcher, a drain, a cut-off, and the one
        timer, armed for the next heartbeat or the end of the lifetime. The timer is not moved on every write
        (``call_at`` and ``cancel`` on each event cost more than the rest of a direct write): when a write has
        pushed the heartbeat later, the timer fires early, finds nothing due and is armed again, once per
        heartbeat interval at most. A plain method that hands the future out rather than a coroutine awaiting it:
        an idle stream's task then sleeps on the future alone, without a frame (~240 bytes) of this method."""
        core = self.core
        if self._waiter is not None:  # back from the sleep handed out last time: what woke it is seen below
            self._waiter = None
            self._woken = False
        while True:
            step = core.poll(self._loop.time())
            if isinstance(step, Write):
                return step
            if isinstance(step, End):
                return None
            assert isinstance(step, Wait)
            timer = self._timer
            if timer is None or timer.when() > step.until:
                if timer is not None:
                    timer.cancel()
                self._timer = self._loop.call_at(step.until, self._on_timer, context=_TIMER_CONTEXT)
            if not self._woken:
                self._waiter = self._loop.create_future()
                return self._waiter
            self._woken = False

    def _wake(self) -> None:
        """Wake the task (or have its next sleep return at once)."""
        self._woken = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _on_timer(self) -> None:
        self._timer = None
        self._wake()

    async def write(self, step: Write, frames: list[Frame]) -> None:
        """Write one step: its prefix and ``frames`` (rendered), with one encoder flush and one ``send``."""
        data = step.prefix + b"".join(f.data or b"" for f in frames) if frames else step.prefix
        if not data:  # a per-request render failed: nothing to send, the next change tries again
            self.core.written(None, self._loop.time())
            return
        events = len(frames) + (1 if step.prefix and not step.heartbeat else 0)
        if events:  # bytes behind: what it takes from the mailbox, and what its socket still holds
            socket = self._socket
            self._behind.observe(len(data) + socket.get_write_buffer_size() if socket is not None else len(data))
        encoded = self.core.encode(data, events, frames)
        await self._send({"type": "http.response.body", "body": encoded, "more_body": True})
        self.bytes_out += len(encoded)
        self.events += events
        if frames:
            self._delivered(frames)
        self.core.written(frames[-1].key if frames else None, self._loop.time())
        if step.heartbeat:
            self.runtime.metrics.heartbeats_sent.inc()

    async def finish(self, cancelled: bool) -> None:
        """Close the response: a graceful end first tells the client when to come back (jittered, so that
        reconnects spread out); a stream whose client is gone, or whose write failed, is just released."""
        if cancelled:
            self.core.end(CloseReason.CANCELLED)  # nothing more is written
        elif self.core.live:
            self.core.end(CloseReason.CLIENT_CLOSED)
        base = self.runtime.settings.sse.retry
        goodbye = None if cancelled else self.core.goodbye(int(base + random.uniform(0, base)))
        if goodbye is not None:
            with contextlib.suppress(StreamClosed):
                await self._send({"type": "http.response.body", "body": goodbye, "more_body": False})
                self.bytes_out += len(goodbye)
        self.close()

    def close(self) -> None:
        """Release the stream's resources once; a disconnect and a server-side end can race."""
        core = self.core
        if not core.close():
            return
        self.runtime.compression.release(self.lease)
        self.runtime.release_client(self.client)
        self.transport = self._socket = self._h2 = self._h3 = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._watcher is not None:
            self._watcher.cancel()
        if core.started_at is not None:
            reason = core.reason or CloseReason.CLIENT_CLOSED
            self.runtime.stream_closed(self)
            self.runtime.metrics.streams_active.labels(self.kind).dec()
            self.runtime.metrics.streams_closed.labels(self.kind, reason.value).inc()
            if self.runtime.settings.server.access_log:
                self._log_close(reason)

    def _log_close(self, reason: CloseReason) -> None:
        """The stream's access line, once, when it closes: how long it lived, why it ended, what it carried
        (bytes on the wire, after compression). Fields in ``extra`` for server.log_format = json."""
        started = self.core.started_at
        duration_ms = round((self._loop.time() - started) * 1000, 3) if started is not None else 0.0
        encoding = self.lease.encoder.name
        log.info("%s stream %s closed: %s after %.1f ms (%s, %s, %d bytes, %d events)", self.kind, self.route,
                 reason.value, duration_ms, self.protocol, encoding, self.bytes_out, self.events,
                 extra={"kind": self.kind, "route": self.route, "reason": reason.value, "duration_ms": duration_ms,
                        "protocol": self.protocol, "encoding": encoding, "bytes_out": self.bytes_out,
                        "events": self.events})


async def _refuse_if_draining(runtime: AppContext, kind: str, send: Send) -> bool:
    if runtime.draining:
        runtime.metrics.streams_refused.labels(kind, "draining").inc()
        await send_error(send, Unavailable("the gateway is shutting down; reconnect elsewhere", 2))
        return True
    return False


async def serve_view(runtime: AppContext, spec: ViewSpec, scope: Scope, receive: Receive, send: Send) -> None:
    """A persistent query: the complete state now, then the latest state after every change."""
    if await _refuse_if_draining(runtime, "view", send):
        return
    channel: ViewChannel = runtime.fanout.views[spec.path]
    identity = None
    try:
        request = StreamRequest.from_scope(scope)
        if (hook := runtime.authorizers.get(spec.path)) is not None:  # before anything is admitted or rendered
            identity = runtime.auth.identify(request.headers)
            await run_hook(hook, identity, request)
        if spec.path_model is not None:  # 422 naming a bad path value, before the stream opens
            validate_path_values(spec.path_model, scope.get("path_params", {}))
        limits = runtime.limits_of_view(spec)
        stream = Stream.open(runtime, "view", runtime.compression.route(spec.path), request, send,
                             ConflatingMailbox(), limits.grace, limits.max_bytes, runtime.auth.valid_for(identity))
    except GatewayError as exc:
        runtime.metrics.streams_refused.labels("view", exc.code).inc()
        await send_error(send, exc)
        return
    runtime.fanout.attach_view(channel, stream)
    cancelled = False
    try:
        try:
            frame = await channel.snapshot(runtime.metrics)
            if frame.data is None:
                frame = await _render_for(spec, request, frame, runtime)
        except Exception:
            runtime.metrics.streams_refused.labels("view", "render_failed").inc()
            await send_error(send, GatewayError(f"the view {spec.path} failed to render; see the server log"))
            return
        first = retry_frame(runtime.settings.sse.retry)
        if stream.last_event_id != frame.version:
            first += frame.data or b""
            events = 1
        else:
            events = 0  # the client already holds this version: nothing until the next change
        stream.core.last_key = frame.key
        if scope.get("method") == "HEAD":
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/event-stream; charset=utf-8")]})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        raw = -1
        if (events and channel.render is not None and runtime.settings.compression.cohorts
                and stream.lease.encoder.name in SHAREABLE):
            first, raw = _join_cohort(runtime, channel, stream, frame, limits.max_bytes)
        await stream.start(receive, first, events, raw)
        _drop_request_headers(scope, send)
        if events:
            runtime.metrics.events_sent.labels("view").inc()
        await _view_loop(runtime, spec, stream, request)
    except StreamClosed:
        pass
    except asyncio.CancelledError:
        cancelled = True
        raise
    finally:
        runtime.fanout.detach_view(channel, stream)
        await stream.finish(cancelled)


def _join_cohort(runtime: AppContext, channel: ViewChannel, stream: Stream, frame: Frame,
                 cap: int | None) -> tuple[bytes, int]:
    """Make ``stream`` a member of a compression cohort of its view (``gateway.core.cohort``): the cohort's
    opening replaces its first bytes, and its own encoder is either the new cohort's or given back at once. Returns
    the (compressed) first bytes and their uncompressed size. No await: nothing can be rendered in between."""
    current = channel.current
    if current is not None and current.data is not None and current.key >= frame.key:
        frame = current  # a newer render went out while this stream waited for its snapshot: open on it
    assert frame.data is not None
    opening = retry_frame(runtime.settings.sse.retry) + frame.data
    limit = Limits(max_items=10_000, max_bytes=cap or 4 * 1024 * 1024)
    return _enter_cohort(runtime, stream, opening, partial(runtime.fanout.join_cohort, channel, stream, frame),
                         limit), len(opening)


def _enter_cohort(runtime: AppContext, stream: Stream, opening: bytes, join: Callable[..., tuple[Cohort, bool]],
                  limit: Limits) -> bytes:
    """The stream's side of joining a cohort (``join``: fan-out's, given the opening, the stream's encoder and
    settings, how to release its lease and where to count encode time): its encoder becomes a ``Seat`` (its own is
    the new cohort's, or given back at once), its mailbox an ordered one within ``limit``. Returns the compressed
    first bytes: the cohort's output so far."""
    lease, engine, counts = stream.lease, runtime.compression, stream.core.counts

    def encode_seconds(seconds: float) -> None:
        counts.encode_seconds += seconds

    seat = Seat(lease.encoder.name)
    cohort, _ = join(opening, lease.encoder, lease.decision.settings, lambda: engine.release(lease), encode_seconds)
    seat.check, seat.length = cohort.check, cohort.length  # what its first bytes (the cohort's so far) carry
    stream.lease = replace(lease, encoder=seat, released=True)  # the cohort accounts for its encoder now
    stream.core.join(seat, BoundedMailbox(limit), (cohort.position - 1, 0))
    stream.policy = limit.policy
    return cohort.opened()


async def _render_for(spec: ViewSpec, request: StreamRequest, frame: Frame, runtime: AppContext) -> Frame:
    """Render a per-request view (it receives the request) for ``frame.version``."""
    assert spec.per_request_render is not None
    try:
        rendered = await spec.per_request_render(request)
        data = encode_rendered(rendered, frame.version)
    except Exception:
        runtime.metrics.renders.labels(spec.path, "error").inc()
        log.exception("view %s failed to render for a request", spec.path)
        raise
    runtime.metrics.renders.labels(spec.path, "ok").inc()
    runtime.compression.observe(runtime.compression.route(spec.path), len(data))
    return Frame(frame.key, frame.version, data)


async def _view_loop(runtime: AppContext, spec: ViewSpec, stream: Stream, request: StreamRequest) -> None:
    depth = runtime.metrics.mailbox_depth.labels("view")
    while (step := stream.next_write()) is not None:
        if not isinstance(step, Write):
            await step  # asleep until woken
            continue
        frames = step.frames
        if frames:
            depth.observe(1)
            if frames[0].data is None:
                try:
                    frames = [await _render_for(spec, request, frames[0], runtime)]
                except Exception:
                    frames = []  # keep the stream; the next change tries again
        await stream.write(step, frames)


async def serve_hub(runtime: AppContext, scope: Scope, receive: Receive, send: Send) -> None:
    """``GET /hub/subscribe?topic=a&topic=b``: published events, with replay after Last-Event-ID.

    This frame lives as long as the stream: what only its opening needs (the parsed request, the replay, the first
    bytes) lives in ``_open_hub`` and ``_start_hub``, whose frames are gone once it streams."""
    if await _refuse_if_draining(runtime, "hub", send):
        return
    try:
        stream, topics = _open_hub(runtime, scope, send)
    except GatewayError as exc:
        runtime.metrics.streams_refused.labels("hub", exc.code).inc()
        await send_error(send, exc)
        return
    runtime.fanout.attach_hub(topics, stream)
    cancelled = False
    try:
        await _start_hub(runtime, stream, topics, receive)
        _drop_request_headers(scope, send)
        metrics = runtime.metrics
        depth, queued = metrics.mailbox_depth.labels("hub"), metrics.mailbox_bytes.labels("hub")
        while (step := stream.next_write()) is not None:
            if not isinstance(step, Write):
                await step  # asleep until woken
                continue
            if step.frames:
                depth.observe(len(step.frames))
                queued.observe(sum(len(f.data or b"") for f in step.frames))
            await stream.write(step, step.frames)  # everything pending in one write: one flush, one send
        _log_cut_off(stream)
    except StreamClosed:
        pass
    except asyncio.CancelledError:
        cancelled = True
        raise
    finally:
        runtime.fanout.detach_hub(topics, stream)
        await stream.finish(cancelled)


def _open_hub(runtime: AppContext, scope: Scope, send: Send) -> tuple[Stream, tuple[str, ...]]:
    """Admit a subscription (its topics, its token, the limits), or refuse it with a ``GatewayError``."""
    request = StreamRequest.from_scope(scope)
    topics = _topics(request, runtime.settings.hub.max_topics)
    # Before the stream exists, so before any replay: history is authorized exactly like live events.
    identity = runtime.auth.authorize_subscribe(request.headers, topics, runtime.settings.hub.public_topics)
    limits = runtime.limits_of_hub(topics)
    stream = Stream.open(runtime, "hub", runtime.compression.route(HUB_ROUTE), request, send,
                         BoundedMailbox(limits.mailbox), limits.grace, valid_for=runtime.auth.valid_for(identity))
    return stream, topics


async def _start_hub(runtime: AppContext, stream: Stream, topics: tuple[str, ...], receive: Receive) -> None:
    """Send the head and the first bytes: the retry hint and the replay after Last-Event-ID, if any."""
    box = stream.core.mailbox
    assert isinstance(box, BoundedMailbox)
    first = retry_frame(runtime.settings.sse.retry)
    replayed = 0
    last_id = stream.last_event_id
    if last_id is not None:
        (replay, replayed), stream.core.last_key = await _replay(runtime, topics, last_id)
        first += replay
    else:
        stream.core.last_key = try_version_key(await runtime.bus.head())
    raw = -1
    after = stream.core.last_key
    if (last_id is None and after is not None and runtime.settings.compression.cohorts
            and stream.lease.encoder.name in SHAREABLE and box.limits.policy == "disconnect" and not len(box)):
        # Nothing replayed, nothing queued: it is to write exactly the events after ``after``, as the cohort.
        raw = len(first)
        first = _enter_cohort(runtime, stream, first, partial(runtime.fanout.join_hub_cohort, topics, stream, after),
                              box.limits)
    await stream.start(receive, first, replayed, raw)
    if replayed:
        runtime.metrics.events_sent.labels("hub").inc(replayed)


def _topics(request: StreamRequest, limit: int) -> tuple[str, ...]:
    topics = tuple(dict.fromkeys(request.query.get("topic", [])))
    if not topics:
        raise BadRequest("name at least one topic: /hub/subscribe?topic=NAME")
    if len(topics) > limit:
        raise BadRequest(f"at most {limit} topics per subscription, got {len(topics)}")
    for topic in topics:
        try:
            check_topic(topic)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
    return topics


async def _replay(
    runtime: AppContext, topics: tuple[str, ...], last_id: str
) -> tuple[tuple[bytes, int], VersionKey]:
    """Frames after ``last_id`` from the history, preceded by a ``gap`` event when some are gone."""
    keys = [hub_key(t) for t in topics]
    after_key = try_version_key(last_id)
    found, gaps = await runtime.bus.history(keys, None)
    after: str | None = None
    reason: str | None = None
    # A publisher-chosen id is found by looking it up; a bus version is used as it is.
    for item in found:
        if hub.event_id(item.payload, item.version) == last_id:
            after = item.version
            break
    head_key = try_version_key(await runtime.bus.head())
    if after is None and after_key is not None and head_key is not None and after_key <= head_key:
        after = last_id
        found, gaps = await runtime.bus.history(keys, after)
        if gaps:
            reason = "history_evicted"
    elif after is None:
        # Not an id of this bus: malformed, or ahead of it (the bus was reset). Everything kept is replayed.
        reason = "unknown_last_event_id"
    else:
        found, gaps = await runtime.bus.history(keys, after)
    frames: list[bytes] = []
    if reason is not None:
        data = orjson.dumps({"reason": reason, "lastEventId": last_id}).decode()
        frames.append(Event(data=data, event="gap").encode())
    last_key = try_version_key(after) or (0, 0)
    for item in found:
        try:
            frame = hub_frame(item)
        except ValueError:
            runtime.metrics.notifications_skipped.labels("payload").inc()
            continue
        frames.append(frame.data or b"")
        last_key = max(last_key, frame.key)
    if not found:
        head = try_version_key(await runtime.bus.head())
        last_key = max(last_key, head or (0, 0))
    return (b"".join(frames), len(frames)), last_key


def _drop_request_headers(scope: Scope, send: Send) -> None:
    """Once a stream has started nobody reads its request's headers (the stream took what it needs of them when it
    opened) unless the server logs them: drop them from the scope, which the server keeps for the response's whole
    life (~800 bytes for a few short headers; a browser's, with its cookies, are often several KB)."""
    if request_headers_unread(send):
        scope["headers"] = ()


def _log_cut_off(stream: Stream) -> None:
    """Say why a hub subscriber that could not keep up was cut off, once its stream has ended."""
    box = stream.core.mailbox
    if stream.core.reason is CloseReason.SLOW_CONSUMER and isinstance(box, BoundedMailbox):
        limits = box.limits
        log.info("hub subscriber %s cut off: %d events, %d bytes queued (%s at %d events or %d bytes, grace %g s)",
                 stream.client, len(box), box.bytes, limits.policy, limits.max_items, limits.max_bytes,
                 stream.core.timing.grace)
