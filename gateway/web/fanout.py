"""In-process fan-out: one bus subscription feeds every view and hub stream of this process.

One subscription (not one per topic) keeps notifications in the bus's global version order, which is what lets a
single ``Last-Event-ID`` resume a multi-topic hub stream without holes. When a hub client names a topic nobody here
watched yet, the subscription is restarted with ``after=`` the last version seen, so nothing published meanwhile
is lost.

Views are rendered here once per version and the same frame bytes go into every subscriber's conflating mailbox;
views that depend on the request get a "changed" marker and render in their own writer. Hub events are framed once
and put into bounded mailboxes. Streams that joined a compression cohort (``gateway.core.cohort``) get the cohort's
chunk instead: the render or event is compressed here once per cohort and the same compressed bytes go, in order
and never conflated, to every member (``Members``; a hub cohort stands in its topics' sinks). Nothing here ever
awaits a client.

View and hub topics live in separate bus namespaces (``gateway.core.topics``): fan-out subscribes to the keys of
both and routes each notification by its namespace, so a hub client naming a view's topic never sees, nor
disturbs, a view change. Hub payloads are decoded without parsing JSON (``gateway.core.hub``); a notification
fan-out cannot read is counted in ``gateway_notifications_skipped_total`` and skipped.

The fast path: a stream that can take a write without its task (``Sink.direct_ready``: an idle HTTP/1.1 stream,
see ``gateway.web.direct``) gets the frame in a per-round batch instead of its mailbox. The batch is written once
the current round of callbacks is over (``call_soon``), so every event dispatched in the same loop iteration
reaches a socket in one write, and a lone event waits for nothing. A stream that stops being ready before the
write gets the batch in its mailbox, in order; so what is batched needs only ``Sink.direct_offer`` (on HTTP/3,
that the stream's task is idle), and the whole ``direct_ready`` is checked once, at the write.

Under a burst, rounds are kept apart: a flush that starts while the previous one ended less than its own duration
ago waits until that much time has passed (at most ``MAX_DEFER``). Writing to a thousand sockets takes milliseconds;
in the same milliseconds the loop accepts the next publishes, and they leave in the same write, one system call
per subscriber for several events instead of one each. Fan-out never holds the loop more than about half of a busy
period. A round to a few streams takes too little time for that to gather much: ``sse.batch_window`` (1 ms by
default) is the least a round waits after the previous one. To 100 streams under 8 publishers, it cut the server's
CPU per delivered event by about a quarter (2.1 to 1.55 µs, medians of six bursts each) for ~0.8 ms more at the
median latency and the same p99. A lone event, or one after a quiet spell as long as the window, is never held.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from gateway.bus.base import Bus, Gap, Notification
from gateway.core import hub, stamps
from gateway.core.cohort import Cohort
from gateway.core.datastar import Rendered, describe, encode_rendered
from gateway.core.encoders import StreamEncoder
from gateway.core.errors import Unavailable
from gateway.core.stream import HEARTBEAT, Frame
from gateway.core.topics import Namespace, hub_key, parse_key, view_key
from gateway.core.versions import ZERO, VersionKey, latest, version_key
from gateway.metrics import Metrics
from gateway.tracing import NO_TRACING, Tracing

log = logging.getLogger("gateway.fanout")

MAX_DEFER = 0.02  # seconds a busy fan-out may hold a round back to gather more events into its writes
SHRINK_DELAY = 1.0  # seconds after the last hub client of a topic left before the subscription drops it


class Sink(Protocol):
    """A stream's end of the fan-out (``gateway.web.streams.Stream``): fan-out hands it frames and never waits.

    ``feed`` queues a frame in the stream's mailbox (the stream decides, sans-IO, whether to wake its task, count a
    conflation or cut itself off as too slow). ``direct_ready``/``direct_write`` are the fast path: a stream whose
    task sleeps with nothing queued and whose socket holds little takes the bytes at once, without its task.
    """

    def feed(self, frame: Frame, now: float) -> None:
        """Queue ``frame`` (``now``: the loop's time)."""

    def direct_ready(self) -> bool:
        """True when a write now would neither block nor overtake anything the stream's task holds."""

    def direct_offer(self) -> bool:
        """Whether fan-out batches a frame for this stream's direct write this round rather than feeding it: the
        part of ``direct_ready`` worth checking before the write (which checks ``direct_ready`` again and feeds a
        stream no longer ready its batch, in order)."""

    def direct_write(self, frames: list[Frame], now: float) -> Flush | None:
        """Encode and write ``frames`` (oldest first) at once; ``now`` is the loop's time. An HTTP/2 or HTTP/3
        stream returns its connection, whose bytes leave together when the round is over (``Flush``)."""

    def direct_link(self) -> Flush | None:
        """The connection an HTTP/2 or HTTP/3 stream's direct writes gather in (None on HTTP/1.1): fan-out writes
        a round's streams connection by connection and flushes each as soon as its streams are framed."""


class Flush(Protocol):
    """A connection whose streams' direct writes of a round leave together (``gateway.web.hypercorn.h2_direct``,
    ``.h3_direct``)."""

    def flush(self) -> None:
        """Write what the round's direct writes left with the connection."""


Renderer = Callable[[], Awaitable[Rendered]]
Observer = Callable[[int], None]  # told the size of every frame, so windows can follow the data


@dataclass(eq=False)
class Members:
    """A compression cohort (``gateway.core.cohort``) and the streams that write its chunks. A hub cohort is
    itself the sink its topics' events go to (``feed``): each is encoded here once, then handed to every member."""

    cohort: Cohort
    sinks: set[Sink]
    release: Callable[[], None]  # gives back the memory its encoder is accounted for, when the last member leaves
    encode_seconds: Callable[[float], None]  # where the time of its encodes is counted
    fanout: Fanout | None = None  # a hub cohort's
    topics: tuple[str, ...] = ()  # a hub cohort's subscription (sorted)
    after: VersionKey | None = None  # a hub cohort's members want the events after this bus version (their head)

    def feed(self, frame: Frame, now: float) -> None:
        assert self.fanout is not None
        if self.after is not None and frame.key <= self.after:
            return  # older than what its members started after (a resubscription re-reads from fan-out's cursor)
        self.fanout._advance(self, frame, frame.data or b"", now)

    def direct_ready(self) -> bool:
        return False  # fan-out feeds it at once; its members take the direct path

    def direct_offer(self) -> bool:
        return False

    def direct_write(self, frames: list[Frame], now: float) -> Flush | None:
        raise AssertionError("a cohort is fed, never written to")

    def direct_link(self) -> Flush | None:
        return None


@dataclass(slots=True)
class _Round:
    """A hub topic's events (or a cohort's chunks) in the current round. Its sinks that take direct writes hold
    ``frames`` itself as their batch, so each later event is one append for all of them; ``others`` are its sinks
    that do not (subscribed to other topics too, not ready when the round began, or come since), each handed every
    event on its own. Valid while fan-out's ``_epoch`` (bumped whenever a topic's sinks or a cohort's members
    change) is ``epoch``."""

    frames: list[Frame]
    others: list[Sink]
    epoch: int


@dataclass(eq=False)
class ViewChannel:
    """A view's shared state: its current version and (for shared views) the rendered frame."""

    path: str
    topics: tuple[str, ...]
    render: Renderer | None  # None for per-request views
    observe: Observer | None = None
    subscribers: set[Sink] = field(default_factory=set)
    current: Frame | None = None
    stale: bool = True
    version: str = ZERO
    origin: float | None = None  # when the change of ``version`` began (wall clock), if its notification said
    trace: str | None = None  # the traceparent of the publish of ``version``, when traced (gateway.tracing)
    tracing: Tracing = NO_TRACING
    cohorts: list[Members] = field(default_factory=list)
    member_of: dict[Sink, Members] = field(default_factory=dict)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _task: asyncio.Task[None] | None = None

    async def snapshot(self, metrics: Metrics) -> Frame:
        """The current frame, rendering it first if a change came in since the last render."""
        async with self._lock:
            if self.render is None:
                return Frame(version_key(self.version), self.version, None, origin=self.origin)
            if self.stale or self.current is None:
                version, origin, trace = self.version, self.origin, self.trace
                handle = None
                try:
                    started = time.perf_counter()
                    if trace is not None and self.tracing.on:
                        with self.tracing.render_span(self.path, version, trace):
                            rendered = await self.render()
                            data = encode_rendered(rendered, version)
                            handle = self.tracing.handle(self.path)
                    else:
                        rendered = await self.render()
                        data = encode_rendered(rendered, version)
                    metrics.render_seconds.labels(self.path).observe(time.perf_counter() - started)
                except Exception:
                    metrics.renders.labels(self.path, "error").inc()
                    log.exception("view %s failed to render version %s", self.path, version)
                    if self.current is None:
                        raise
                    self.stale = False  # keep serving the last good render; the next change retries
                    return self.current
                metrics.renders.labels(self.path, "ok").inc()
                self.current = Frame(version_key(version), version, data, origin=origin, trace=handle)
                if self.observe is not None:
                    self.observe(len(self.current.data or b""))
                self.stale = self.version != version
            return self.current


class Fanout:
    """Routes bus notifications to this process's streams."""

    def __init__(self, bus: Bus, metrics: Metrics, observe_hub: Observer | None = None,
                 on_flushed: Callable[[], None] | None = None, *, shrink_delay: float = SHRINK_DELAY,
                 tracing: Tracing = NO_TRACING, heartbeat: float = 15.0, batch_window: float = 0.0) -> None:
        self._bus = bus
        self._batch_window = batch_window  # (a round never waits more than ``MAX_DEFER``, whatever this says)
        self._heartbeat = heartbeat
        self._tracing = tracing
        self._metrics = metrics
        self._hub_lag = metrics.bus_lag.labels("hub")  # observed for every hub event: looked up once
        self._observe_hub = observe_hub
        self._on_flushed = on_flushed
        self._batch: dict[Sink, list[Frame]] = {}  # direct writes of this round, per stream
        self._rounds: dict[object, _Round] = {}  # this round's frames of each hub topic (bus key) and cohort
        self._epoch = 0  # bumped when a hub topic's sinks or a cohort's members change: older ``_Round`` are stale
        self._multi: set[Sink] = set()  # hub sinks of more than one topic: never share a topic's list
        self._flushed_at = 0.0  # loop time when the last flush ended
        self._flush_cost = 0.0  # how long it took
        self.views: dict[str, ViewChannel] = {}
        self._views_by_topic: dict[str, list[ViewChannel]] = {}  # by bus key
        self._hub: dict[str, set[Sink]] = {}  # by bus key
        self._watched: frozenset[str] = frozenset()
        self._cursor: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._shrink_delay = shrink_delay
        self._restart_handle: asyncio.TimerHandle | None = None  # one pending resubscription
        self._restart_prompt = False
        self._cohorts: set[Members] = set()  # every cohort, views' and hub subscriptions' (for the heartbeats)
        self._hub_cohorts: dict[tuple[str, ...], list[Members]] = {}  # by sorted topics
        self._hub_member_of: dict[Sink, Members] = {}
        self._beat_handle: asyncio.TimerHandle | None = None

    def add_view(self, path: str, topics: tuple[str, ...], render: Renderer | None,
                 observe: Observer | None = None) -> ViewChannel:
        channel = ViewChannel(path, topics, render, observe, tracing=self._tracing)
        self.views[path] = channel
        for topic in topics:
            self._views_by_topic.setdefault(view_key(topic), []).append(channel)
        return channel

    async def start(self) -> None:
        """Views start at their topics' current versions and the subscription at the bus head. A networked bus
        that is unreachable now leaves both unknown: views start at ``0`` (the first notification re-renders
        them) and the subscription starts from the head the bus finds once it is back."""
        try:
            for channel in self.views.values():
                versions = [v for t in channel.topics if (v := await self._bus.current_version(view_key(t)))]
                channel.version = latest(versions)
            self._cursor = await self._bus.head()
        except Unavailable as exc:
            log.warning("bus unavailable at start (%s); views start unversioned", exc.detail)
            self._cursor = None
        self._restart()

    async def close(self) -> None:
        self._closed = True
        if self._restart_handle is not None:
            self._restart_handle.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for channel in self.views.values():
            if channel._task is not None:
                channel._task.cancel()
        if self._beat_handle is not None:
            self._beat_handle.cancel()

    # -- subscription management ------------------------------------------------------------------------------

    def _restart_soon(self, delay: float = 0.0) -> None:
        """Resubscribe once, after this round (new topics: every client that attached in it shares one
        resubscription) or after ``delay`` (topics nobody holds any more: mass disconnects share one)."""
        if self._restart_handle is not None:
            if delay or self._restart_prompt:
                return  # one is pending already; a prompt one drops unheld topics too
            self._restart_handle.cancel()
        self._restart_prompt = not delay
        self._restart_handle = asyncio.get_running_loop().call_later(delay, self._restart, True)

    def _restart(self, shrink: bool = False) -> None:
        self._restart_handle = None
        wanted = frozenset(self._views_by_topic) | frozenset(self._hub)
        if self._task is not None and (wanted == self._watched or (not shrink and wanted <= self._watched)):
            return
        if self._task is not None:
            self._task.cancel()
        self._watched = wanted
        if wanted and not self._closed:
            self._task = asyncio.create_task(self._pump(sorted(wanted), self._cursor), name="gateway-fanout")

    async def _pump(self, keys: list[str], after: str | None) -> None:
        while True:
            try:
                async for item in self._bus.subscribe(keys, after=after):
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
        """One notification to the views and hub streams of its topic. A notification fan-out cannot read (a
        key of no namespace, a malformed version or hub payload) is counted and skipped, never fatal."""
        kind = parse_key(item.topic)
        if kind is None:
            self._metrics.notifications_skipped.labels("namespace").inc()
            return
        if kind[0] is Namespace.VIEW:
            try:
                key = version_key(item.version)
            except ValueError:
                self._metrics.notifications_skipped.labels("version").inc()
                return
            origin, published = stamps.read(item.payload)
            if published is not None:
                self._metrics.bus_lag.labels("view").observe(max(0.0, time.time() - published))
            trace = stamps.trace(item.payload) if self._tracing.on else None
            for channel in self._views_by_topic.get(item.topic, ()):
                self._view_changed(channel, item.version, key, origin or published, trace)
            return
        sinks = self._hub.get(item.topic)
        if not sinks:
            return
        try:
            frame = hub_frame(item)
        except ValueError:
            self._metrics.notifications_skipped.labels("payload").inc()
            log.warning("skipped a notification of hub topic %s that is not an encoded hub event", kind[1])
            return
        if frame.origin is not None:
            self._hub_lag.observe(max(0.0, time.time() - frame.origin))
        if self._observe_hub is not None:
            self._observe_hub(len(frame.data or b""))
        self._share(item.topic, sinks, frame, asyncio.get_running_loop().time())

    def _share(self, key: object, sinks: set[Sink], frame: Frame, now: float) -> None:
        """``frame`` to ``sinks``, all of which get every frame of ``key`` (a hub topic's bus key, or a cohort),
        in order: the ones that hold ``key``'s list of this round get it by one append."""
        round_ = self._rounds.get(key)
        if round_ is not None and round_.epoch == self._epoch:
            round_.frames.append(frame)  # for every sink that holds the list
            others = round_.others
        else:  # (``_topic_round`` puts ``frame`` in the list)
            round_ = self._rounds[key] = self._new_round(sinks, frame, round_)
            others = round_.others
        for sink in others:
            if not self._offer(sink, frame, conflate=False):
                sink.feed(frame, now)

    def _new_round(self, sinks: set[Sink], frame: Frame, stale: _Round | None) -> _Round:
        """``frame`` is a hub topic's first event in this round, or its first since the topic's sinks changed
        (``stale``: the round's list so far). The list gets ``frame``. On a first event, each sink of this topic
        alone that fan-out may batch (``direct_offer``) takes the list; after a change, the sinks that hold it keep
        it and any other (one that came since) is handed its events on its own, as it would have been handed the
        rest had it been there: so no sink is given an event from before it came. The others are left for the
        caller."""
        batch = self._batch
        others: list[Sink] = []
        if stale is not None:
            frames = stale.frames
            frames.append(frame)
            others.extend(sink for sink in sinks if batch.get(sink) is not frames)
            return _Round(frames, others, self._epoch)
        frames = [frame]
        for sink in sinks:
            if sink not in batch and sink not in self._multi and sink.direct_offer():
                if not batch:
                    self._schedule_flush()
                batch[sink] = frames
            else:
                others.append(sink)
        return _Round(frames, others, self._epoch)

    def _unshare(self, sink: Sink) -> None:
        """``sink`` leaves a hub topic: its batch, if it holds a topic's list, becomes its own (later events of the
        topic in this round are not for it)."""
        held = self._batch.get(sink)
        if held is not None:
            self._batch[sink] = held.copy()

    # -- the direct path --------------------------------------------------------------------------------------

    def _offer(self, sink: Sink, frame: Frame, *, conflate: bool) -> bool:
        """Put ``frame`` in this round's batch if ``sink`` takes direct writes; False: use the mailbox."""
        pending = self._batch.get(sink)
        if pending is not None:  # already batched this round: later frames follow it, whatever happened since
            if conflate:
                pending[0] = frame
            else:
                pending.append(frame)
            return True
        if not sink.direct_offer():
            return False
        if not self._batch:
            self._schedule_flush()
        self._batch[sink] = [frame]
        return True

    def _schedule_flush(self) -> None:
        """The round's first batch: its flush runs once this round of callbacks is over, or later under a burst."""
        loop = asyncio.get_running_loop()
        wait = self._flushed_at + min(max(self._flush_cost, self._batch_window), MAX_DEFER) - loop.time()
        if wait > 0:
            loop.call_later(wait, self._flush)
        else:
            loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Write this round's batches; a stream no longer ready gets its batch in the mailbox instead. HTTP/1.1
        streams are written in turn; HTTP/2 and HTTP/3 streams connection by connection, each connection's bytes
        leaving in one write as soon as its streams are framed (not after the whole round: with 10,000 streams on
        100 connections, the first connection's events would otherwise wait for 9,900 other streams' framing)."""
        batch, self._batch = self._batch, {}
        self._rounds = {}
        loop = asyncio.get_running_loop()
        now = loop.time()
        shared: dict[Flush, list[tuple[Sink, list[Frame]]]] = {}
        for sink, frames in batch.items():
            link = sink.direct_link()
            if link is None:
                self._write(sink, frames, now)
            elif (members := shared.get(link)) is None:
                shared[link] = [(sink, frames)]
            else:
                members.append((sink, frames))
        for link, members in shared.items():
            wrote = False
            for sink, frames in members:
                if self._write(sink, frames, now) is not None:  # (the stream's ``direct_link``: ``link``)
                    wrote = True
            if wrote:
                try:
                    link.flush()
                except Exception:  # the connection's own tasks see it closed; the other connections still get theirs
                    log.exception("fan-out could not write a connection's events")
        if self._on_flushed is not None:
            self._on_flushed()
        self._flushed_at = loop.time()
        self._flush_cost = self._flushed_at - now

    @staticmethod
    def _write(sink: Sink, frames: list[Frame], now: float) -> Flush | None:
        """One stream's direct write, or its mailbox when it is no longer ready; the connection to flush, if any."""
        try:
            if sink.direct_ready():
                return sink.direct_write(frames, now)  # a stream whose write fails ends itself
            for frame in frames:
                sink.feed(frame, now)
        except Exception:  # one broken stream must not cost the rest of the round their events
            log.exception("fan-out could not hand a stream its events")
        return None

    # -- views ------------------------------------------------------------------------------------------------

    def _view_changed(self, channel: ViewChannel, version: str, key: VersionKey, origin: float | None,
                      trace: str | None = None) -> None:
        channel.version = version
        channel.origin = origin
        channel.trace = trace
        channel.stale = True
        if channel.render is None:
            frame = Frame(key, version, None, origin=origin)
            now = asyncio.get_running_loop().time()
            for sink in channel.subscribers:
                sink.feed(frame, now)
        elif (channel.subscribers or channel.cohorts) and (channel._task is None or channel._task.done()):
            channel._task = asyncio.create_task(self._rerender(channel), name=f"gateway-render {channel.path}")

    async def _rerender(self, channel: ViewChannel) -> None:
        """Render until the channel is no longer stale: changes during a render are folded into the next one."""
        while channel.stale and (channel.subscribers or channel.cohorts):
            try:
                frame = await channel.snapshot(self._metrics)
            except Exception:
                return  # logged and counted in snapshot; the next change retries
            now = asyncio.get_running_loop().time()
            for sink in list(channel.subscribers):
                if not self._offer(sink, frame, conflate=True):
                    sink.feed(frame, now)
            for members in list(channel.cohorts):
                cohort = members.cohort
                last = cohort.frame
                if isinstance(last, Frame) and frame.key <= last.key:
                    continue  # the cohort opened on this render (or a newer one): its members have it
                assert frame.data is not None
                self._advance(members, frame, frame.data, now)

    def attach_view(self, channel: ViewChannel, sink: Sink) -> None:
        channel.subscribers.add(sink)

    def detach_view(self, channel: ViewChannel, sink: Sink) -> None:
        channel.subscribers.discard(sink)
        members = channel.member_of.pop(sink, None)
        if members is not None and self._leave(members, sink):
            channel.cohorts.remove(members)

    # -- compression cohorts (gateway.core.cohort) --------------------------------------------------------------

    def join_cohort(self, channel: ViewChannel, sink: Sink, frame: Frame, opening: bytes, encoder: StreamEncoder,
                    settings: object, release: Callable[[], None],
                    encode_seconds: Callable[[float], None]) -> tuple[Cohort, bool]:
        """Make ``sink`` (a view stream that has written nothing yet and whose first bytes are ``opening``, the
        state ``frame``) a member of a cohort of ``channel``: one that opened on the same frame with the same codec
        settings, or a new one compressing with ``encoder``. True when a new cohort was made: it then owns
        ``encoder`` and calls ``release`` when its last member leaves (a member joining one calls its own at once).
        From now on fan-out feeds ``sink`` the cohort's chunks instead of renders."""
        channel.subscribers.discard(sink)
        members, created = self._join(channel.cohorts, sink, frame, opening, encoder, settings, release,
                                      encode_seconds)
        channel.member_of[sink] = members
        return members.cohort, created

    def join_hub_cohort(self, topics: tuple[str, ...], sink: Sink, after: VersionKey, opening: bytes,
                        encoder: StreamEncoder, settings: object, release: Callable[[], None],
                        encode_seconds: Callable[[float], None]) -> tuple[Cohort, bool]:
        """The same for a hub subscription to ``topics`` that replays nothing, has nothing queued and wants the
        events after bus version ``after``: it joins a cohort of the same topics, settings and ``after`` that has
        encoded no event yet (so both are to write exactly the same events from now on), or opens one, which takes
        its place in the topics' sinks."""
        key = tuple(sorted(topics))
        cohorts = self._hub_cohorts.setdefault(key, [])
        members, created = self._join(cohorts, sink, after, opening, encoder, settings, release, encode_seconds)
        if created:
            members.fanout, members.topics, members.after = self, key, after
        for topic in topics:
            sinks = self._hub[hub_key(topic)]  # attach_hub made it
            sinks.discard(sink)
            sinks.add(members)
        self._unshare(sink)
        self._multi.discard(sink)
        if len(key) > 1:
            self._multi.add(members)
        self._hub_member_of[sink] = members  # (``_join`` bumped the epoch)
        return members.cohort, created

    def _join(self, cohorts: list[Members], sink: Sink, frame: object, opening: bytes, encoder: StreamEncoder,
              settings: object, release: Callable[[], None],
              encode_seconds: Callable[[float], None]) -> tuple[Members, bool]:
        now = asyncio.get_running_loop().time()
        for members in cohorts:
            if members.cohort.joinable(encoder.name, settings, frame):
                release()  # the joiner's own encoder is not needed
                created = False
                break
        else:
            started = time.perf_counter()
            members = Members(Cohort(encoder, settings, frame, opening, now), set(), release, encode_seconds)
            encode_seconds(time.perf_counter() - started)
            cohorts.append(members)
            self._cohorts.add(members)
            self._metrics.cohorts.inc()
            created = True
            if self._beat_handle is None:
                self._beat_handle = asyncio.get_running_loop().call_later(self._heartbeat / 2, self._beat)
        members.sinks.add(sink)
        self._epoch += 1  # a member that joins mid-round is not handed the round's earlier chunks
        self._metrics.cohort_streams.inc()
        return members, created

    def _leave(self, members: Members, sink: Sink) -> bool:
        """``sink`` leaves its cohort; True when it was the last member (the cohort is gone, its memory given back)."""
        members.sinks.discard(sink)
        self._epoch += 1
        self._unshare(sink)
        self._metrics.cohort_streams.dec()
        if members.sinks:
            return False
        self._cohorts.discard(members)
        members.release()
        self._metrics.cohorts.dec()
        return True

    def _advance(self, members: Members, frame: Frame, data: bytes, now: float, *, heartbeat: bool = False) -> None:
        """Encode ``data`` once in the cohort and hand the chunk to every member, in the cohort's order (never
        conflated: each member must write every chunk)."""
        cohort = members.cohort
        started = time.perf_counter()
        chunk = cohort.append(data, now, heartbeat=heartbeat)
        members.encode_seconds(time.perf_counter() - started)
        if not heartbeat:
            cohort.frame = frame
        shared = Frame((cohort.position - 1, 0), frame.version, chunk, frame.id, None, frame.origin, frame.trace,
                       len(data), cohort.check)
        # Nothing here adds or removes members (a cut one leaves from its own task). A member gets nothing but its
        # cohort's chunks, so the members share the cohort's list of the round as a topic's streams do.
        self._share(members, members.sinks, shared, now)
        if heartbeat:
            self._metrics.heartbeats_sent.inc(len(members.sinks))

    def _beat(self) -> None:
        """The cohorts' heartbeats: a cohort that wrote nothing for half a heartbeat interval writes one comment,
        encoded once for all its members (so every member hears from the server at least once an interval)."""
        self._beat_handle = None
        if not self._cohorts:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        half = self._heartbeat / 2
        beat = Frame((0, 0), "", HEARTBEAT)
        for members in list(self._cohorts):
            if now - members.cohort.last_write >= half:
                self._advance(members, beat, HEARTBEAT, now, heartbeat=True)
        self._beat_handle = loop.call_later(half, self._beat)

    # -- hub --------------------------------------------------------------------------------------------------

    def attach_hub(self, topics: tuple[str, ...], sink: Sink) -> None:
        for topic in topics:
            self._hub.setdefault(hub_key(topic), set()).add(sink)
        if len(topics) > 1:
            self._multi.add(sink)
        self._epoch += 1
        if not self._watched.issuperset(hub_key(t) for t in topics):
            self._restart_soon()

    def detach_hub(self, topics: tuple[str, ...], sink: Sink) -> None:
        self._epoch += 1
        self._unshare(sink)
        self._multi.discard(sink)
        members = self._hub_member_of.pop(sink, None)
        if members is not None:
            if not self._leave(members, sink):
                return  # its topics' sinks hold the cohort, not the stream
            cohorts = self._hub_cohorts[members.topics]
            cohorts.remove(members)
            if not cohorts:
                del self._hub_cohorts[members.topics]
            sink = members  # the last member gone: the cohort leaves its topics' sinks
            self._multi.discard(members)
        for topic in topics:
            key = hub_key(topic)
            sinks = self._hub.get(key)
            if sinks is not None:
                sinks.discard(sink)
                if not sinks:
                    del self._hub[key]
                    self._restart_soon(self._shrink_delay)


def hub_frame(item: Notification) -> Frame:
    """The SSE frame of a hub notification (``ValueError`` for one that is not an encoded hub event)."""
    decoded = hub.decode(item.payload, item.version)
    return Frame(version_key(item.version), item.version, decoded.data, decoded.id, describe(decoded.data),
                 decoded.published)
