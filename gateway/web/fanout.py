"""In-process fan-out: one bus subscription feeds every view and hub stream of this process.

One subscription (not one per topic) keeps notifications in the bus's global version order, which is what lets a
single ``Last-Event-ID`` resume a multi-topic hub stream without holes. When a hub client names a topic nobody here
watched yet, the subscription is restarted with ``after=`` the last version seen, so nothing published meanwhile
is lost.

Views are rendered here once per version and the same frame bytes go into every subscriber's conflating mailbox
(render once, compress per connection); views that depend on the request get a "changed" marker and render in
their own writer. Hub events are framed once and put into bounded mailboxes. Nothing here ever awaits a client.

The fast path: a subscriber whose stream can take a write without its task (``DirectTarget``: an idle HTTP/1.1
stream, see ``gateway.web.direct``) gets the frame in a per-round batch instead of its mailbox. The batch is
written once the current round of callbacks is over (``call_soon``), so every event dispatched in the same loop
iteration reaches a socket in one write, and a lone event waits for nothing. A subscriber that stops being ready
before the write gets the batch in its mailbox, in order.

Under a burst, rounds are kept apart: a flush that starts while the previous one ended less than its own duration
ago waits until that much time has passed (at most ``MAX_DEFER``). Writing to a thousand sockets takes milliseconds;
in the same milliseconds the loop accepts the next publishes, and they leave in the same write, one system call
per subscriber for several events instead of one each. Idle or lightly loaded fan-out (flushes short or far apart)
is never deferred, and fan-out never holds the loop more than about half of a busy period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import orjson

from gateway.bus.base import Bus, Gap, Notification
from gateway.core.errors import Unavailable
from gateway.core.mailbox import BoundedMailbox, ConflatingMailbox, PutResult
from gateway.core.sse import encode_message
from gateway.core.versions import ZERO, VersionKey, latest, version_key
from gateway.metrics import Metrics

log = logging.getLogger("gateway.fanout")

MAX_DEFER = 0.02  # seconds a busy fan-out may hold a round back to gather more events into its writes


@dataclass(frozen=True, slots=True)
class Frame:
    """An SSE frame ready to encode, with the version that orders it and the SSE id it carries."""

    key: VersionKey
    version: str
    data: bytes | None  # None: a per-request view must render this version itself
    id: str = ""


class DirectTarget(Protocol):
    """A stream that fan-out may write to itself, without waking the stream's task."""

    def direct_ready(self) -> bool:
        """True when a write now would neither block nor overtake anything the stream's task holds."""

    def direct_write(self, frames: list[Frame], now: float) -> None:
        """Encode and write ``frames`` (oldest first) at once; ``now`` is the loop's time."""


@dataclass(eq=False, slots=True)
class Subscriber:
    """One stream's end of the fan-out.

    ``pending_since`` is when an undelivered item was first left waiting; the writer clears it each time it takes
    the mailbox. A subscriber that keeps items waiting for longer than ``grace`` while new ones arrive is cut off
    (``cut``, set by the stream), whatever the mailbox policy: memory is bounded by the mailbox, and the time a
    slow client may hold it by the grace.
    """

    wake: asyncio.Event
    grace: float = 10.0
    view_box: ConflatingMailbox[Frame] | None = None
    hub_box: BoundedMailbox[Frame] | None = None
    cut: Callable[[str], None] | None = None
    pending_since: float | None = None
    direct: DirectTarget | None = None
    parked: bool = False  # the stream's task waits for news with nothing queued

    def notify(self) -> None:
        self.wake.set()

    def queued(self, now: float) -> None:
        """An item was put in the mailbox at ``now``."""
        if self.pending_since is None:
            self.pending_since = now
        elif now - self.pending_since > self.grace and self.cut is not None:
            self.cut("slow_consumer")


Renderer = Callable[[], Awaitable[str]]
Observer = Callable[[int], None]  # told the size of every frame, so windows can follow the data


@dataclass(eq=False)
class ViewChannel:
    """A view's shared state: its current version and (for shared views) the rendered frame."""

    path: str
    topics: tuple[str, ...]
    render: Renderer | None  # None for per-request views
    observe: Observer | None = None
    subscribers: set[Subscriber] = field(default_factory=set)
    current: Frame | None = None
    stale: bool = True
    version: str = ZERO
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _task: asyncio.Task[None] | None = None

    async def snapshot(self, metrics: Metrics) -> Frame:
        """The current frame, rendering it first if a change came in since the last render."""
        async with self._lock:
            if self.render is None:
                return Frame(version_key(self.version), self.version, None)
            if self.stale or self.current is None:
                version = self.version
                try:
                    html = await self.render()
                except Exception:
                    metrics.renders.labels(self.path, "error").inc()
                    log.exception("view %s failed to render version %s", self.path, version)
                    if self.current is None:
                        raise
                    self.stale = False  # keep serving the last good render; the next change retries
                    return self.current
                metrics.renders.labels(self.path, "ok").inc()
                self.current = Frame(version_key(version), version, encode_message(html, id=version))
                if self.observe is not None:
                    self.observe(len(self.current.data or b""))
                self.stale = self.version != version
            return self.current


class Fanout:
    """Routes bus notifications to this process's streams."""

    def __init__(self, bus: Bus, metrics: Metrics, observe_hub: Observer | None = None,
                 on_flushed: Callable[[], None] | None = None) -> None:
        self._bus = bus
        self._metrics = metrics
        self._observe_hub = observe_hub
        self._on_flushed = on_flushed
        self._batch: dict[Subscriber, list[Frame]] = {}  # direct writes of this round, per subscriber
        self._flushed_at = 0.0  # loop time when the last flush ended
        self._flush_cost = 0.0  # how long it took
        self.views: dict[str, ViewChannel] = {}
        self._views_by_topic: dict[str, list[ViewChannel]] = {}
        self._hub: dict[str, set[Subscriber]] = {}
        self._watched: frozenset[str] = frozenset()
        self._cursor: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def add_view(self, path: str, topics: tuple[str, ...], render: Renderer | None,
                 observe: Observer | None = None) -> ViewChannel:
        channel = ViewChannel(path, topics, render, observe)
        self.views[path] = channel
        for topic in topics:
            self._views_by_topic.setdefault(topic, []).append(channel)
        return channel

    async def start(self) -> None:
        """Views start at their topics' current versions and the subscription at the bus head. A networked bus
        that is unreachable now leaves both unknown: views start at ``0`` (the first notification re-renders
        them) and the subscription starts from the head the bus finds once it is back."""
        try:
            for channel in self.views.values():
                versions = [v for t in channel.topics if (v := await self._bus.current_version(t)) is not None]
                channel.version = latest(versions)
            self._cursor = await self._bus.head()
        except Unavailable as exc:
            log.warning("bus unavailable at start (%s); views start unversioned", exc.detail)
            self._cursor = None
        self._restart()

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for channel in self.views.values():
            if channel._task is not None:
                channel._task.cancel()

    # -- subscription management ------------------------------------------------------------------------------

    def _restart(self) -> None:
        wanted = frozenset(self._views_by_topic) | frozenset(t for t, subs in self._hub.items() if subs)
        if self._task is not None and wanted <= self._watched:
            return
        if self._task is not None:
            self._task.cancel()
        self._watched = wanted
        if wanted and not self._closed:
            self._task = asyncio.create_task(self._pump(sorted(wanted), self._cursor), name="gateway-fanout")

    async def _pump(self, topics: list[str], after: str | None) -> None:
        while True:
            try:
                async for item in self._bus.subscribe(topics, after=after):
                    if isinstance(item, Gap):
                        self._metrics.bus_gaps.inc()
                        log.warning("fan-out fell behind the history of topic %s", item.topic)
                        continue
                    after = self._cursor = item.version
                    self._metrics.notifications.inc()
                    self._dispatch(item)
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("bus subscription failed; resubscribing")
                await asyncio.sleep(0.5)

    def _dispatch(self, item: Notification) -> None:
        for channel in self._views_by_topic.get(item.topic, ()):
            self._view_changed(channel, item.version)
        subscribers = self._hub.get(item.topic)
        if subscribers:
            frame = hub_frame(item)
            size = len(frame.data or b"")
            if self._observe_hub is not None:
                self._observe_hub(size)
            now = time.monotonic()
            for sub in subscribers:
                if not self._offer(sub, frame, conflate=False):
                    self._put_hub(sub, frame, size, now)

    def _put_hub(self, sub: Subscriber, frame: Frame, size: int, now: float) -> None:
        assert sub.hub_box is not None
        result = sub.hub_box.put(frame, size)
        if result is PutResult.OVERFLOW and sub.cut is not None:
            sub.cut("slow_consumer")
        elif result is PutResult.DROPPED_OLDEST:
            self._metrics.events_dropped.labels("hub").inc()
        sub.queued(now)
        sub.notify()

    # -- the direct path --------------------------------------------------------------------------------------

    def _offer(self, sub: Subscriber, frame: Frame, *, conflate: bool) -> bool:
        """Put ``frame`` in this round's batch if ``sub`` takes direct writes; False: use the mailbox."""
        pending = self._batch.get(sub)
        if pending is not None:  # already batched this round: later frames follow it, whatever happened since
            if conflate:
                pending[0] = frame
            else:
                pending.append(frame)
            return True
        target = sub.direct
        if target is None or not target.direct_ready():
            return False
        if not self._batch:
            loop = asyncio.get_running_loop()
            wait = self._flushed_at + min(self._flush_cost, MAX_DEFER) - loop.time()
            if wait > 0:
                loop.call_later(wait, self._flush)
            else:
                loop.call_soon(self._flush)
        self._batch[sub] = [frame]
        return True

    def _flush(self) -> None:
        """Write this round's batches; a subscriber no longer ready gets its batch in the mailbox instead."""
        batch, self._batch = self._batch, {}
        loop = asyncio.get_running_loop()
        now, loop_now = time.monotonic(), loop.time()
        for sub, frames in batch.items():
            target = sub.direct
            if target is not None and target.direct_ready():
                try:
                    target.direct_write(frames, loop_now)
                except Exception:  # one broken stream must not cost the rest of the round their events
                    log.exception("direct write failed: the stream is ended and its client resumes")
                    sub.direct = None  # its encoder may hold half a write: nothing more goes to it
                    if sub.cut is not None:
                        sub.cut("send_failed")
                continue
            if sub.view_box is not None:
                sub.view_box.put(frames[-1])
                sub.queued(now)
                sub.notify()
            else:
                for frame in frames:
                    self._put_hub(sub, frame, len(frame.data or b""), now)
        if self._on_flushed is not None:
            self._on_flushed()
        self._flushed_at = loop.time()
        self._flush_cost = self._flushed_at - loop_now

    # -- views ------------------------------------------------------------------------------------------------

    def _view_changed(self, channel: ViewChannel, version: str) -> None:
        channel.version = version
        channel.stale = True
        if channel.render is None:
            frame = Frame(version_key(version), version, None)
            for sub in channel.subscribers:
                self._put_view(channel, sub, frame)
        elif channel.subscribers and (channel._task is None or channel._task.done()):
            channel._task = asyncio.create_task(self._rerender(channel), name=f"gateway-render {channel.path}")

    async def _rerender(self, channel: ViewChannel) -> None:
        """Render until the channel is no longer stale: changes during a render are folded into the next one."""
        while channel.stale and channel.subscribers:
            try:
                frame = await channel.snapshot(self._metrics)
            except Exception:
                return  # logged and counted in snapshot; the next change retries
            for sub in list(channel.subscribers):
                self._put_view(channel, sub, frame)

    def _put_view(self, channel: ViewChannel, sub: Subscriber, frame: Frame) -> None:
        assert sub.view_box is not None
        if frame.data is not None and self._offer(sub, frame, conflate=True):
            return
        if sub.view_box.put(frame) is PutResult.REPLACED:
            self._metrics.conflated.labels(channel.path).inc()
        sub.queued(time.monotonic())
        sub.notify()

    def attach_view(self, channel: ViewChannel, sub: Subscriber) -> None:
        channel.subscribers.add(sub)

    def detach_view(self, channel: ViewChannel, sub: Subscriber) -> None:
        channel.subscribers.discard(sub)

    # -- hub --------------------------------------------------------------------------------------------------

    def attach_hub(self, topics: tuple[str, ...], sub: Subscriber) -> None:
        for topic in topics:
            self._hub.setdefault(topic, set()).add(sub)
        self._restart()

    def detach_hub(self, topics: tuple[str, ...], sub: Subscriber) -> None:
        for topic in topics:
            subs = self._hub.get(topic)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._hub[topic]


def hub_payload(data: str, event: str | None, event_id: str | None) -> bytes:
    """What a hub publish puts on the bus (JSON, so any backend can carry it)."""
    return orjson.dumps({"data": data, "event": event, "id": event_id})


def hub_frame(item: Notification) -> Frame:
    """The SSE frame of a hub notification: the publisher's id if it gave one, else the bus version."""
    body = orjson.loads(item.payload)
    event_id = body.get("id") or item.version
    frame = encode_message(body["data"], event=body.get("event"), id=event_id)
    return Frame(version_key(item.version), item.version, frame, event_id)


def hub_event_id(item: Notification) -> str:
    """The SSE id a hub notification was sent with."""
    return str(orjson.loads(item.payload).get("id") or item.version)
