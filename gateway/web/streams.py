"""The per-connection SSE responder: mailbox -> encoder -> ASGI ``send``, with a write deadline.

Each stream is one task (the ASGI request) plus a tiny watcher task that reads ``receive()`` to learn about the
client going away: Hypercorn reports a disconnect there, not by failing ``send``. The writer sleeps on one
``asyncio.Event`` that fan-out, the watcher, the heartbeat clock and a drain all set, so a stream with nothing to
say costs no CPU.

Every frame goes through the connection's encoder with a flush, so each event (and each heartbeat) is decodable by
the client the moment it arrives. A write that takes longer than ``sse.write_timeout`` ends the stream: a client
that does not read must not hold memory hostage.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from gateway.core.errors import BadRequest, GatewayError, Unavailable
from gateway.core.mailbox import BoundedMailbox, ConflatingMailbox, Limits
from gateway.core.sse import Event, comment, parse_last_event_id, retry_frame
from gateway.core.stream_state import State, StreamStateMachine, Transition
from gateway.core.versions import VersionKey, try_version_key
from gateway.web.asgi_util import Receive, Scope, Send, StreamRequest, send_error
from gateway.web.compression import Lease, RouteState
from gateway.web.direct import HIGH_WATER, chunk, h1_transport
from gateway.web.fanout import Frame, Subscriber, ViewChannel, hub_event_id, hub_frame
from gateway.web.runtime import HUB_ROUTE, Runtime, ViewSpec

log = logging.getLogger("gateway.streams")

_HEARTBEAT = comment("")
# Reasons to end a stream that deserve a goodbye frame, and the comment it carries.
_GRACEFUL = {"drain": "draining", "slow_consumer": "slow consumer: reconnect with Last-Event-ID",
             "lifetime": "stream lifetime reached: reconnect"}


class StreamClosed(Exception):
    """The stream cannot continue (client gone, write deadline passed)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(eq=False)
class Stream:
    """One open SSE response."""

    runtime: Runtime
    kind: str
    request: StreamRequest
    send: Send
    lease: Lease
    sub: Subscriber
    client: str
    state: StreamStateMachine = field(default_factory=StreamStateMachine)
    disconnected: bool = False
    drain_requested: bool = False
    cut_reason: str | None = None
    interrupted: bool = False  # a write was abandoned half-way: nothing more may be written
    last_key: VersionKey | None = None
    heartbeat_at: float = 0.0
    lifetime_at: float | None = None
    transport: asyncio.WriteTransport | None = None  # set when fan-out may write to this stream directly
    _watcher: asyncio.Task[None] | None = None
    _deadline: asyncio.Timeout | None = None
    _timer: asyncio.TimerHandle | None = None
    _counters: tuple[Any, ...] = field(init=False, default=())

    def __post_init__(self) -> None:
        self.encoder = self.lease.encoder
        self._identity = self.encoder.name == "identity"
        # Label lookups resolved once per stream, not once per event.
        m, route, name = self.runtime.metrics, self.lease.route.path, self.encoder.name
        self._counters = (m.bytes_in.labels(route, name), m.bytes_out.labels(route, name),
                          m.events_sent.labels(self.kind), m.encode_seconds.labels(route, name),
                          m.stream_writes.labels(self.kind, "task"))
        self._tally = m.tally(self.kind, route, name)
        sse = self.runtime.settings.sse
        self._heartbeat = sse.heartbeat
        # Every deadline of the stream is on the loop's clock, the one its timers run on.
        self._loop = asyncio.get_running_loop()
        now = self._loop.time()
        self.heartbeat_at = now + sse.heartbeat
        if sse.max_lifetime > 0:
            self.lifetime_at = now + sse.max_lifetime * random.uniform(0.9, 1.1)
        self.sub.grace = sse.slow_client_grace
        self.sub.cut = self.cut

    @classmethod
    def open(cls, runtime: Runtime, kind: str, route: RouteState, scope: Scope, send: Send) -> Stream:
        """Admit a new stream (limits: 503 per process, 429 per client) and give it its encoder."""
        request = StreamRequest.from_scope(scope)
        client = runtime.admit(request)
        try:
            lease = runtime.compression.open(route, request.headers.get("accept-encoding"))
        except BaseException:
            runtime.release_client(client)
            raise
        return cls(runtime, kind, request, send, lease, Subscriber(asyncio.Event()), client)

    def cut(self, reason: str) -> None:
        """End the stream from outside its task (slow consumer): abandon a write that is stuck, then wake it."""
        if self.cut_reason is None:
            self.cut_reason = reason
        if self._deadline is not None:
            self._deadline.reschedule(asyncio.get_running_loop().time())
        self.sub.notify()

    def begin_drain(self) -> None:
        self.drain_requested = True
        self.sub.notify()

    @property
    def last_event_id(self) -> str | None:
        return parse_last_event_id(
            self.request.headers.get("last-event-id") or self.request.arg("lastEventId")
        )

    async def start(self, receive: Receive, first: bytes) -> None:
        """Send the headers and the first frames together, then watch for the client leaving."""
        headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-store"),
            (b"x-accel-buffering", b"no"),
            (b"vary", b"accept-encoding"),
        ]
        if self.encoder.name != "identity":
            headers.append((b"content-encoding", self.encoder.name.encode()))
        self.state.handle(Transition.START)
        metrics = self.runtime.metrics
        metrics.streams_opened.labels(self.kind, self.encoder.name).inc()
        metrics.streams_active.labels(self.kind).inc()
        self.runtime.stream_opened(self)
        self._watcher = asyncio.create_task(self._watch(receive), name="gateway-stream-watch")
        await self._send({"type": "http.response.start", "status": 200, "headers": headers})
        await self.write(first, events=0)
        if self.runtime.settings.sse.direct_writes:
            self.transport = h1_transport(self.send)
            self.sub.direct = self if self.transport is not None else None

    def direct_ready(self) -> bool:
        """Fan-out may write now: the task is parked with nothing queued (so nothing can be overtaken, and the
        encoder is not in use) and the socket holds little (so the write cannot pile up memory)."""
        transport = self.transport
        return (transport is not None and self.sub.parked and not self.sub.wake.is_set()
                and transport.get_write_buffer_size() < HIGH_WATER and not transport.is_closing())

    def direct_write(self, frames: list[Frame], now: float) -> None:
        """Encode ``frames`` with one flush and write them as one chunk, from fan-out, without awaiting."""
        last = self.last_key
        if last is not None and frames[0].key <= last:
            frames = [f for f in frames if f.key > last]
            if not frames:
                return
        data = frames[0].data or b"" if len(frames) == 1 else b"".join(f.data or b"" for f in frames)
        tally = self._tally
        if self._identity:
            encoded = data
        else:
            started = time.perf_counter()
            encoded = self.encoder.encode_flush(data)
            tally.seconds += time.perf_counter() - started
        assert self.transport is not None
        self.transport.write(chunk(encoded))
        self.last_key = frames[-1].key
        self.heartbeat_at = now + self._heartbeat
        tally.n_in += len(data)
        tally.n_out += len(encoded)
        tally.n_events += len(frames)
        tally.n_writes += 1

    async def _watch(self, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.disconnected = True
                self.sub.notify()
                return

    async def _send(self, message: dict[str, object]) -> None:
        try:
            async with asyncio.timeout(self.runtime.settings.sse.write_timeout) as deadline:
                self._deadline = deadline
                await self.send(message)
        except TimeoutError:
            self.interrupted = True
            raise StreamClosed(self.cut_reason or "write_timeout") from None
        except (OSError, RuntimeError) as exc:  # the transport is gone under us
            self.interrupted = True
            raise StreamClosed("send_failed") from exc
        finally:
            self._deadline = None

    async def write(self, frames: bytes, *, events: int) -> None:
        counters = self._counters
        if self._identity:
            encoded = frames
        else:
            started = time.perf_counter()
            encoded = self.encoder.encode_flush(frames)
            counters[3].inc(time.perf_counter() - started)
        await self._send({"type": "http.response.body", "body": encoded, "more_body": True})
        self.heartbeat_at = self._loop.time() + self._heartbeat
        counters[0].inc(len(frames))
        counters[1].inc(len(encoded))
        counters[4].inc()
        if events:
            counters[2].inc(events)

    async def next_batch(self) -> str | None:
        """Sleep until the mailbox has news (None), writing heartbeats meanwhile, or until the stream must end
        (the reason). One event wakes the writer for everything: fan-out, the disconnect watcher, a drain, a
        cut-off, and the one timer, armed for the next heartbeat or the end of the lifetime.

        The timer is not moved on every write (``call_at`` and ``cancel`` on each event cost more than the rest of
        a direct write): when a write has pushed the heartbeat later, the timer fires early, finds nothing due and
        is armed again, once per heartbeat interval at most."""
        wake, sub = self.sub.wake, self.sub
        while True:
            if self.disconnected:
                return "client_closed"
            if self.cut_reason is not None:
                return self.cut_reason
            if self.drain_requested:
                return "drain"
            now = self._loop.time()
            if self.lifetime_at is not None and now >= self.lifetime_at:
                return "lifetime"
            if wake.is_set():
                wake.clear()
                return None
            if now >= self.heartbeat_at:
                await self.heartbeat()  # a failed heartbeat write ends the stream: liveness check
                continue
            until = self.heartbeat_at if self.lifetime_at is None else min(self.heartbeat_at, self.lifetime_at)
            timer = self._timer
            if timer is None or timer.when() > until:
                if timer is not None:
                    timer.cancel()
                self._timer = self._loop.call_at(until, self._on_timer)
            sub.parked = True
            try:
                await wake.wait()
            finally:
                sub.parked = False

    def _on_timer(self) -> None:
        self._timer = None
        self.sub.wake.set()

    async def heartbeat(self) -> None:
        await self.write(_HEARTBEAT, events=0)
        self.runtime.metrics.heartbeats_sent.inc()

    async def end(self, reason: str) -> None:
        """Close the response. A drain or a cut-off first tells the client when to come back, jittered so that
        reconnects spread out; a stream whose client is gone, or whose write failed, is just released."""
        if (reason in _GRACEFUL and self.state.state is State.STREAMING and not self.disconnected
                and not self.interrupted):
            self.state.handle(Transition.DRAIN)
            base = self.runtime.settings.sse.retry
            goodbye = retry_frame(int(base + random.uniform(0, base))) + comment(_GRACEFUL[reason])
            with contextlib.suppress(StreamClosed):
                await self.write(goodbye, events=0)
                await self._send({"type": "http.response.body", "body": self.encoder.finish(), "more_body": False})
        self.close("client_closed" if self.disconnected else reason)

    def close(self, reason: str) -> None:
        """Release the stream's resources; idempotent, because a disconnect and a server-side end can race."""
        if self.state.state is State.CLOSED:
            return
        started = self.state.state in (State.STREAMING, State.DRAINING)
        self.state.handle(Transition.CLOSE)
        self.runtime.compression.release(self.lease)
        self.runtime.release_client(self.client)
        self.sub.cut = None
        self.sub.direct = None
        self.transport = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._watcher is not None:
            self._watcher.cancel()
        if started:
            self.runtime.stream_closed(self)
            self.runtime.metrics.streams_active.labels(self.kind).dec()
            self.runtime.metrics.streams_closed.labels(self.kind, reason).inc()


async def _refuse_if_draining(runtime: Runtime, kind: str, send: Send) -> bool:
    if runtime.draining:
        runtime.metrics.streams_refused.labels(kind, "draining").inc()
        await send_error(send, Unavailable("the gateway is shutting down; reconnect elsewhere", 2))
        return True
    return False


async def serve_view(runtime: Runtime, spec: ViewSpec, scope: Scope, receive: Receive, send: Send) -> None:
    """A persistent query: the complete state now, then the latest state after every change."""
    if await _refuse_if_draining(runtime, "view", send):
        return
    channel: ViewChannel = runtime.fanout.views[spec.path]
    try:
        stream = Stream.open(runtime, "view", runtime.compression.route(spec.path), scope, send)
    except GatewayError as exc:
        runtime.metrics.streams_refused.labels("view", exc.code).inc()
        await send_error(send, exc)
        return
    stream.sub.view_box = ConflatingMailbox()
    runtime.fanout.attach_view(channel, stream.sub)
    reason = "client_closed"
    try:
        try:
            frame = await channel.snapshot(runtime.metrics)
            if frame.data is None:
                frame = await _render_for(spec, stream.request, frame, runtime)
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
        stream.last_key = frame.key
        if scope.get("method") == "HEAD":
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/event-stream; charset=utf-8")]})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        await stream.start(receive, first)
        if events:
            runtime.metrics.events_sent.labels("view").inc()
        reason = await _view_loop(runtime, spec, stream)
    except StreamClosed as exc:
        reason = exc.reason
    except asyncio.CancelledError:
        reason = "cancelled"  # not graceful: nothing more is written
        raise
    finally:
        runtime.fanout.detach_view(channel, stream.sub)
        await stream.end(reason)


async def _render_for(spec: ViewSpec, request: StreamRequest, frame: Frame, runtime: Runtime) -> Frame:
    """Render a per-request view (it receives the request) for ``frame.version``."""
    assert spec.per_request_render is not None
    try:
        html = await spec.per_request_render(request)
    except Exception:
        runtime.metrics.renders.labels(spec.path, "error").inc()
        log.exception("view %s failed to render for a request", spec.path)
        raise
    runtime.metrics.renders.labels(spec.path, "ok").inc()
    data = Event(data=html, id=frame.version).encode()
    runtime.compression.observe(runtime.compression.route(spec.path), len(data))
    return Frame(frame.key, frame.version, data)


async def _view_loop(runtime: Runtime, spec: ViewSpec, stream: Stream) -> str:
    box = stream.sub.view_box
    assert box is not None
    depth = runtime.metrics.mailbox_depth.labels("view")
    while (reason := await stream.next_batch()) is None:
        frame = box.take()
        stream.sub.pending_since = None
        if frame is None or (stream.last_key is not None and frame.key <= stream.last_key):
            continue  # an older version than the one already sent: converge, never go back
        depth.observe(1)
        if frame.data is None:
            try:
                frame = await _render_for(spec, stream.request, frame, runtime)
            except Exception:
                continue  # keep the stream; the next change tries again
        await stream.write(frame.data or b"", events=1)
        stream.last_key = frame.key
    return reason


async def serve_hub(runtime: Runtime, scope: Scope, receive: Receive, send: Send) -> None:
    """``GET /hub/subscribe?topic=a&topic=b``: published events, with replay after Last-Event-ID."""
    if await _refuse_if_draining(runtime, "hub", send):
        return
    try:
        topics = _topics(StreamRequest.from_scope(scope), runtime.settings.hub.max_topics)
    except GatewayError as exc:
        runtime.metrics.streams_refused.labels("hub", exc.code).inc()
        await send_error(send, exc)
        return
    try:
        stream = Stream.open(runtime, "hub", runtime.compression.route(HUB_ROUTE), scope, send)
    except GatewayError as exc:
        runtime.metrics.streams_refused.labels("hub", exc.code).inc()
        await send_error(send, exc)
        return
    hub = runtime.settings.hub
    policy: Literal["disconnect", "drop-oldest"] = "drop-oldest" if hub.overflow_policy == "drop-oldest" else (
        "disconnect")
    box: BoundedMailbox[Frame] = BoundedMailbox(Limits(hub.max_buffered_events, hub.max_buffered_bytes, policy))
    stream.sub.hub_box = box
    runtime.fanout.attach_hub(topics, stream.sub)
    reason = "client_closed"
    try:
        first = retry_frame(runtime.settings.sse.retry)
        replayed = 0
        last_id = stream.last_event_id
        if last_id is not None:
            replay, stream.last_key = await _replay(runtime, topics, last_id)
            first += replay[0]
            replayed = replay[1]
        else:
            head = await runtime.bus_head()
            stream.last_key = try_version_key(head)
        await stream.start(receive, first)
        if replayed:
            runtime.metrics.events_sent.labels("hub").inc(replayed)
        reason = await _hub_loop(runtime, stream, box)
    except StreamClosed as exc:
        reason = exc.reason
    except asyncio.CancelledError:
        reason = "cancelled"  # not graceful: nothing more is written
        raise
    finally:
        runtime.fanout.detach_hub(topics, stream.sub)
        await stream.end(reason)


def _topics(request: StreamRequest, limit: int) -> tuple[str, ...]:
    topics = tuple(dict.fromkeys(request.query.get("topic", [])))
    if not topics:
        raise BadRequest("name at least one topic: /hub/subscribe?topic=NAME")
    if len(topics) > limit:
        raise BadRequest(f"at most {limit} topics per subscription, got {len(topics)}")
    for topic in topics:
        check_topic(topic)
    return topics


def check_topic(topic: str) -> None:
    """Topics are 1-256 visible ASCII characters (they become bus keys and must never inject anything)."""
    if not 1 <= len(topic) <= 256 or not all(33 <= ord(ch) <= 126 for ch in topic):
        raise BadRequest(f"invalid topic {topic!r}: use 1-256 visible ASCII characters")


async def _replay(
    runtime: Runtime, topics: tuple[str, ...], last_id: str
) -> tuple[tuple[bytes, int], VersionKey]:
    """Frames after ``last_id`` from the history, preceded by a ``gap`` event when some are gone."""
    after_key = try_version_key(last_id)
    found, gaps = await runtime.bus.history(topics, None)
    after: str | None = None
    reason: str | None = None
    # A publisher-chosen id is found by looking it up; a bus version is used as it is.
    for item in found:
        if hub_event_id(item) == last_id:
            after = item.version
            break
    head_key = try_version_key(await runtime.bus_head())
    if after is None and after_key is not None and head_key is not None and after_key <= head_key:
        after = last_id
        found, gaps = await runtime.bus.history(topics, after)
        if gaps:
            reason = "history_evicted"
    elif after is None:
        # Not an id of this bus: malformed, or ahead of it (the bus was reset). Everything kept is replayed.
        reason = "unknown_last_event_id"
    else:
        found, gaps = await runtime.bus.history(topics, after)
    frames: list[bytes] = []
    if reason is not None:
        data = orjson.dumps({"reason": reason, "lastEventId": last_id}).decode()
        frames.append(Event(data=data, event="gap").encode())
    last_key = try_version_key(after) or (0, 0)
    for item in found:
        frame = hub_frame(item)
        frames.append(frame.data or b"")
        last_key = max(last_key, frame.key)
    if not found:
        head = try_version_key(await runtime.bus_head())
        last_key = max(last_key, head or (0, 0))
    return (b"".join(frames), len(frames)), last_key


async def _hub_loop(runtime: Runtime, stream: Stream, box: BoundedMailbox[Frame]) -> str:
    metrics = runtime.metrics
    depth, queued = metrics.mailbox_depth.labels("hub"), metrics.mailbox_bytes.labels("hub")
    while (reason := await stream.next_batch()) is None:
        if len(box):
            depth.observe(len(box))
            queued.observe(box.bytes)
        lost = box.take_gap()
        frames = [f for f in box.take_all() if stream.last_key is None or f.key > stream.last_key]
        stream.sub.pending_since = None
        out = []
        if lost is not None:  # policy drop-oldest: say what was lost, never a silent hole
            data = orjson.dumps({"reason": "dropped", "firstLostId": lost.id}).decode()
            out.append(Event(data=data, event="gap").encode())
        if not frames and not out:
            continue
        # Coalesce everything pending into one write: one encoder flush and one send for the batch.
        out.extend(f.data or b"" for f in frames)
        await stream.write(b"".join(out), events=len(out))
        if frames:
            stream.last_key = frames[-1].key
    if reason == "slow_consumer":
        log.info("hub subscriber %s cut off: %d events, %d bytes queued", stream.client, len(box), box.bytes)
    return reason
