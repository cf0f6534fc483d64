"""Prometheus metrics of one gateway, on a registry of its own.

A registry per ``Gateway`` (not the process-global default) keeps two gateways in one process (tests, embedding)
from colliding. Label sets are small and bounded: stream kind, encoding, command path, view path, and a fixed list
of reasons. Topics are never labels: their number is up to the clients.
"""

from __future__ import annotations

import collections
import gc
import os
import platform
import time
import weakref
from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector

from gateway.core.stream import Counts

MULTIPROCESS_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")

__all__ = ["CONTENT_TYPE_LATEST", "Metrics", "Tally"]


@dataclass(eq=False, slots=True)
class Tally:
    """Stream write counters for one (kind, route, encoding): every stream of them adds to one shared
    ``Counts`` as plain numbers on the per-event path.

    A Prometheus ``inc`` takes a lock (about 0.5 µs); ``report()`` moves the sums into the counters once per
    fan-out round and before every exposition, so a scrape lags by one loop iteration at most.
    """

    bytes_in: Any
    bytes_out: Any
    events: Any
    encode_seconds: Any
    task_writes: Any
    direct_writes: Any
    patches_superseded: Any = None
    patches_merged: Any = None
    counts: Counts = field(default_factory=Counts)

    def report(self) -> None:
        c = self.counts
        if c.patches_superseded or c.patches_merged:  # fed, not written: counted apart from the writes
            if self.patches_superseded is not None:
                self.patches_superseded.inc(c.patches_superseded)
                self.patches_merged.inc(c.patches_merged)
            c.patches_superseded = c.patches_merged = 0
        if c.writes or c.direct_writes:
            self.bytes_in.inc(c.bytes_in)
            self.bytes_out.inc(c.bytes_out)
            if c.events:
                self.events.inc(c.events)
            if c.writes:
                self.task_writes.inc(c.writes)
            if c.direct_writes:
                self.direct_writes.inc(c.direct_writes)
            if c.encode_seconds:
                self.encode_seconds.inc(c.encode_seconds)
            c.bytes_in = c.bytes_out = c.events = c.writes = c.direct_writes = 0
            c.encode_seconds = 0.0


# Bytes a stream holds undelivered: 0 is a stream whose socket took everything; 64 KiB is where fan-out stops
# writing to an HTTP/1.1 socket directly (gateway.web.direct.HIGH_WATER); 4 MiB is hub.max_buffered_bytes' default.
BYTES_BEHIND_BUCKETS = (0, 1024, 4096, 16_384, 65_536, 262_144, 1_048_576, 4_194_304, 16_777_216)


class Spread:
    """Observations of one histogram child, counted as plain numbers on the per-event path like ``Tally``'s.

    ``Histogram.observe`` takes a lock and walks the buckets (about 0.9 µs); a bisect into a list costs a fifth of
    that, and a caller whose most common value is 0 counts those in ``zeros`` itself, without a call (fan-out's
    direct writes: measured 0.15 µs a write in all instead of 0.6). ``report()`` adds the counts to the
    histogram's own values once per fan-out round and before every exposition, which reaches into attributes
    prometheus-client keeps private (``_upper_bounds``, ``_buckets``, ``_sum``; the values behind them are
    multiprocess-aware): they are checked here, and a release without them gets the histogram's own ``observe``
    instead. ``tests/test_slow_client_core.py`` holds it to ``observe``.
    """

    __slots__ = ("_bounds", "_buckets", "_child", "_sum", "counts", "observe", "total", "zeros")

    def __init__(self, child: Any) -> None:
        self._child = child
        self._bounds: tuple[float, ...] = tuple(getattr(child, "_upper_bounds", ()))
        buckets = getattr(child, "_buckets", None)
        self._sum: Any = getattr(child, "_sum", None)
        batched = isinstance(buckets, list) and self._sum is not None and len(buckets) == len(self._bounds) > 0
        self._buckets: list[Any] = buckets if batched and buckets is not None else []
        self.counts = [0] * len(self._buckets)
        self.total = 0.0
        self.zeros = 0
        self.observe: Callable[[float], None] = self._count if batched else child.observe

    def _count(self, value: float) -> None:
        self.counts[bisect_left(self._bounds, value)] += 1  # the first bucket whose bound is >= value, as observe
        self.total += value

    def report(self) -> None:
        zeros, self.zeros = self.zeros, 0
        if not self._buckets:
            for _ in range(zeros):
                self._child.observe(0)
            return
        counts = self.counts
        counts[bisect_left(self._bounds, 0)] += zeros
        if not any(counts):
            return
        for index, count in enumerate(counts):
            if count:
                self._buckets[index].inc(count)
                counts[index] = 0
        self._sum.inc(self.total)
        self.total = 0.0


class Latency(Spread):
    """A ``Spread`` of delivery latencies that fan-out's direct writes feed by origin: ``pending[origin]`` counts
    the deliveries of a change that began at ``origin`` (wall clock). ``report()``, run when fan-out's round of
    writes is over, turns each into one observation of ``now - origin`` per delivery. A round hands the same frames
    to hundreds of streams: one dictionary increment each, instead of a clock read and a bucket search each
    (the metric was 17% of the server's samples in a burst to 1,000 streams).

    A direct write hands over its whole list of frames (``rounds``: one append per stream); the streams of a hub
    topic share one list in a round, so ``report()`` counts each list once, times the streams that wrote it."""

    __slots__ = ("pending", "rounds")

    def __init__(self, child: Any) -> None:
        super().__init__(child)
        self.pending: dict[float, int] = {}
        self.rounds: list[Sequence[Any]] = []  # frames (each with an ``origin``) written by one stream each

    def report(self) -> None:
        rounds = self.rounds
        if rounds:
            self.rounds = []
            pending = self.pending
            lists = dict(zip(map(id, rounds), rounds, strict=True))
            for key, streams in collections.Counter(map(id, rounds)).items():
                for frame in lists[key]:
                    if (origin := frame.origin) is not None:
                        pending[origin] = pending.get(origin, 0) + streams
        pending = self.pending
        if pending:
            now = time.time()
            batched = self.observe == self._count
            for origin, count in pending.items():
                value = max(0.0, now - origin)
                if batched:
                    self.counts[bisect_left(self._bounds, value)] += count
                    self.total += value * count
                else:
                    for _ in range(count):
                        self.observe(value)
            pending.clear()
        super().report()


# A counter's ``_created`` series doubles every counter's series count and no dashboard or alert reads it.
disable_created_metrics()  # type: ignore[no-untyped-call]

# GC pauses of CPython's collector: from a tenth of a millisecond (a young generation) to half a second.
GC_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)


class ProcessStats:
    """This process's CPU, memory, descriptors and GC pauses, the same series with one worker or many.

    With one process, prometheus-client's ``ProcessCollector`` reads ``/proc`` at each scrape. Under ``--workers``
    it cannot (a scrape reaches one worker, which aggregates the others from files), so each worker copies its own
    numbers into multiprocess gauges of the same names every few seconds (``sample``), kept per worker (a ``pid``
    label, mode ``liveall``: a dead worker's series go when the supervisor marks it dead). ``sum without (pid)``
    gives the group's total either way.

    GC pauses are timed by a ``gc.callbacks`` hook. It must not take a lock (a collection can start while the
    thread holds the histogram's), so it counts into a ``Spread`` that is reported with the other batched counts.
    """

    _FROM_COLLECTOR = ("process_virtual_memory_bytes", "process_resident_memory_bytes", "process_start_time_seconds",
                       "process_cpu_seconds_total", "process_open_fds", "process_max_fds")

    def __init__(self, registry: CollectorRegistry, multiprocess: bool) -> None:
        self._collector: ProcessCollector | None = None
        self._gauges: dict[str, Gauge] = {}
        if multiprocess:
            self._collector = ProcessCollector(registry=None)
            for name in self._FROM_COLLECTOR:
                self._gauges[name] = Gauge(name, f"{name} of each worker (see gateway.metrics.ProcessStats).",
                                           registry=registry, multiprocess_mode="liveall")
        else:
            ProcessCollector(registry=registry)
        self.gc_pauses = Histogram(
            "gateway_gc_pause_seconds", "Pauses of CPython's garbage collector, by generation: the loop serves "
            "nobody meanwhile.", ["generation"], registry=registry, buckets=GC_BUCKETS)
        self._spreads = [Spread(self.gc_pauses.labels(str(generation))) for generation in range(3)]
        _GC_WATCHERS.add(self)
        if _on_gc not in gc.callbacks:
            gc.callbacks.append(_on_gc)

    def gc_paused(self, generation: int, seconds: float) -> None:
        if 0 <= generation < 3:
            self._spreads[generation].observe(seconds)

    def sample(self) -> None:
        """Copy this worker's numbers into its gauges (under ``--workers``; nothing to do otherwise)."""
        if self._collector is None:
            return
        for family in self._collector.collect():
            for sample in family.samples:
                gauge = self._gauges.get(sample.name)
                if gauge is not None:
                    gauge.set(sample.value)

    def report(self) -> None:
        for spread in self._spreads:
            spread.report()

    def close(self) -> None:
        _GC_WATCHERS.discard(self)


# One gc callback for the process, whatever the number of gateways in it (tests hold hundreds), telling each.
_GC_WATCHERS: weakref.WeakSet[ProcessStats] = weakref.WeakSet()
_gc_started = 0.0


def _on_gc(phase: str, info: dict[str, int]) -> None:
    global _gc_started
    if phase == "start":
        _gc_started = time.perf_counter()
    elif _gc_started:
        took = time.perf_counter() - _gc_started
        _gc_started = 0.0
        for watcher in list(_GC_WATCHERS):
            watcher.gc_paused(info.get("generation", 0), took)


# 1 ms to 10 s, about three buckets per decade: what a delivery, a render or the bus may take, from fast to broken.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """All metric families, created once per gateway."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self._tallies: dict[tuple[str, str, str], Tally] = {}
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.streams_active = Gauge(
            "gateway_streams_active", "Open SSE streams.", ["kind"], registry=r, multiprocess_mode="livesum")
        self.streams_opened = Counter(
            "gateway_streams_opened", "SSE streams opened, by kind and negotiated encoding.",
            ["kind", "encoding"], registry=r)
        self.streams_closed = Counter(
            "gateway_streams_closed", "SSE streams closed, by kind and reason.", ["kind", "reason"], registry=r)
        self.streams_refused = Counter(
            "gateway_streams_refused", "Stream requests refused before streaming, by reason.",
            ["kind", "reason"], registry=r)
        self.events_sent = Counter(
            "gateway_events_sent", "SSE events written to clients.", ["kind"], registry=r)
        self.patches_folded = Counter(
            "gateway_patches_folded", "Datastar patches a slow client's queue folded away before they were sent: "
            "elements (a newer patch of the same element replaced it), signals (merged into a newer signal "
            "patch).", ["kind", "patch"], registry=r)
        self.stream_writes = Counter(
            "gateway_stream_writes", "Writes to SSE streams, by kind and path: direct (fan-out wrote to an idle "
            "HTTP/1.1 socket or framed an idle h2 or h3 stream's DATA itself) or task (the stream's own task sent "
            "through ASGI).", ["kind", "path"],
            registry=r)
        self.heartbeats_sent = Counter(
            "gateway_heartbeats_sent", "Heartbeat comments written to clients.", registry=r)
        self.bytes_in = Counter(
            "gateway_stream_bytes_uncompressed", "SSE bytes before compression, by route and encoding.",
            ["route", "encoding"], registry=r)
        self.bytes_out = Counter(
            "gateway_stream_bytes_sent", "SSE bytes on the wire after compression, by route and encoding.",
            ["route", "encoding"], registry=r)
        self.encode_seconds = Counter(
            "gateway_encode_seconds", "CPU time spent compressing stream frames.", ["route", "encoding"],
            registry=r)
        self.compression_memory = Gauge(
            "gateway_compression_memory_bytes", "Estimated memory of all live compressors.", registry=r,
            multiprocess_mode="livesum")
        self.cohorts = Gauge(
            "gateway_compression_cohorts", "Compression cohorts: shared encoders, each compressing a view's renders "
            "once for all its member streams.", registry=r, multiprocess_mode="livesum")
        self.cohort_streams = Gauge(
            "gateway_compression_cohort_streams", "View streams writing a cohort's chunks instead of compressing "
            "their own.", registry=r, multiprocess_mode="livesum")
        self.compression_budget = Gauge(
            "gateway_compression_memory_budget_bytes", "The compressor memory budget.", registry=r,
            multiprocess_mode="livesum")
        self.downgrades = Counter(
            "gateway_compression_downgrades", "Connections given a cheaper encoder to stay within the budget, "
            "by route and reason (window, quality, gzip, identity).", ["route", "reason"], registry=r)
        self.connections_refused = Counter(
            "gateway_connections_refused", "Connections refused as soon as they were accepted, by reason: global "
            "(limits.max_connections), address (limits.max_connections_per_address), abuse (the address is in the "
            "penalty box: limits.abuse_strikes).", ["reason"],
            registry=r)
        self.penalty_box = Gauge(
            "gateway_penalty_box_addresses", "Addresses in the penalty box whose connection attempts the kernel "
            "drops (limits.abuse_kernel_filter).", registry=r, multiprocess_mode="livesum")
        self.window_grown = Counter(
            "gateway_compression_window_grown", "Times a route's renders outgrew its window and new connections "
            "got a larger one.", ["route", "encoding"], registry=r)
        self.commands = Counter(
            "gateway_commands", "Command requests by outcome (accepted or the refusal's error code).",
            ["route", "outcome"], registry=r)
        self.commands_handled = Counter(
            "gateway_commands_handled", "Commands whose handler ran, by result (ok or error).",
            ["route", "result"], registry=r)
        self.command_seconds = Histogram(
            "gateway_command_handler_seconds", "Time spent in command handlers.", ["route"], registry=r,
            buckets=(0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5))
        self.renders = Counter(
            "gateway_view_renders", "View renders, by view and result (ok or error).", ["route", "result"],
            registry=r)
        self.render_seconds = Histogram(
            "gateway_view_render_seconds", "Time a view's render took (a shared view renders once per version, a "
            "per-request view once per stream and version).", ["route"], registry=r, buckets=LATENCY_BUCKETS)
        self.bus_lag = Histogram(
            "gateway_bus_lag_seconds", "From a notification's publication (in whichever process) to this process's "
            "fan-out reading it, by kind (view or hub); wall clocks, so across machines it includes their offset.",
            ["kind"], registry=r, buckets=LATENCY_BUCKETS)
        self.conflated = Counter(
            "gateway_view_versions_conflated", "View versions a slow client skipped (latest wins).", ["route"],
            registry=r)
        self.events_dropped = Counter(
            "gateway_events_dropped", "Events dropped for slow subscribers (hub policy drop-oldest).", ["kind"],
            registry=r)
        self.mailbox_depth = Histogram(
            "gateway_mailbox_depth", "Events waiting in a stream's mailbox when its writer takes them.", ["kind"],
            registry=r, buckets=(1, 2, 5, 10, 50, 100, 500, 1000, 10_000))
        self.mailbox_bytes = Histogram(
            "gateway_mailbox_bytes", "Bytes waiting in a stream's mailbox when its writer takes them.", ["kind"],
            registry=r, buckets=(256, 1024, 4096, 16_384, 65_536, 262_144, 1_048_576, 4_194_304))
        self.deadlines = Counter(
            "gateway_request_deadlines", "Requests cut by a read deadline, by stage: connect (nothing sent within "
            "limits.header_timeout: closed), header (a head not complete within it: 408), body (408).", ["stage"],
            registry=r)
        self.post_lane = Counter(
            "gateway_post_lane_requests", "HTTP/1.1 command and hub publish POSTs served from their connection's read "
            "loop (server.post_lane), without Hypercorn's per-request task; the others went through Hypercorn.",
            registry=r)
        self.quic_refused = Counter(
            "gateway_quic_refused", "New HTTP/3 (QUIC) connections refused at their first Initial, by reason: cap "
            "(limits.max_quic_connections), bad_token (a Retry token not minted for that address, or expired).",
            ["reason"], registry=r)
        self.quic_retries = Counter(
            "gateway_quic_retries", "Retry packets sent to validate a new HTTP/3 client's address "
            "(limits.quic_retry).", registry=r)
        self.cross_site_refused = Counter(
            "gateway_cross_site_refused", "Commands and hub publishes refused as cross-site browser requests, by "
            "kind (command, publish) and reason (origin_not_allowed, same_site, cross_site).", ["kind", "reason"],
            registry=r)
        self.rate_limited = Counter(
            "gateway_rate_limited", "Requests refused with 429 by a per-client rate limit, by kind (command, "
            "publish, stream).", ["kind"], registry=r)
        self.hub_published = Counter(
            "gateway_hub_published", "Events accepted by POST /hub/publish.", registry=r)
        self.notifications = Counter(
            "gateway_bus_notifications", "Notifications received from the bus by the fan-out.", registry=r)
        self.notifications_skipped = Counter(
            "gateway_bus_notifications_skipped",
            "Notifications the fan-out could not read and skipped: a key of no topic namespace, a malformed version "
            "or hub payload.", ["reason"], registry=r)
        self.bus_gaps = Counter(
            "gateway_bus_gaps", "Times the fan-out fell behind the bus history.", registry=r)
        self.bus_outages = Counter(
            "gateway_bus_outages", "Times the bus backend (Redis) became unreachable.", registry=r)
        self.bus_up = Gauge(
            "gateway_bus_up", "1 while the bus backend is reachable, 0 while it is not.", registry=r,
            multiprocess_mode="livemin")
        self.bus_up.set(1)
        self.ready = Gauge(
            "gateway_ready", "1 while this process answers /readyz with 200 (bus reachable, not draining), else 0; "
            "the lowest of the workers under --workers.", registry=r, multiprocess_mode="livemin")
        self.build_info = Gauge(
            "gateway_build_info", "Always 1; the labels say what runs.", ["version", "python", "hypercorn"],
            registry=r, multiprocess_mode="max")
        self.build_info.labels(_version("gateway"), platform.python_version(), _version("hypercorn")).set(1)
        self.process = ProcessStats(r, bool(MULTIPROCESS_DIR))
        self.bytes_behind = Histogram(
            "gateway_stream_bytes_behind", "Bytes a stream had been handed but not delivered (its mailbox and, on "
            "HTTP/1.1, its socket's write buffer), observed at each write of events (direct: what the socket kept; "
            "by its task: what it took from the mailbox and what the socket holds) and at a cut-off.", ["kind"],
            registry=r, buckets=BYTES_BEHIND_BUCKETS)
        self.slow_consumers_cut = Counter(
            "gateway_slow_consumers_cut", "Streams cut off as too slow (counted when decided; the close follows "
            "their goodbye), by kind and the overflow policy that applied to them (disconnect, drop-oldest; "
            "conflate for views).", ["kind", "policy"], registry=r)
        self._spreads: dict[str, Spread] = {}
        self.delivery = Histogram(
            "gateway_delivery_seconds", "From the moment a change began (its command accepted, or its hub event "
            "published, in whichever process) to its bytes handed to a client's socket, per route and protocol "
            "(h1, h2, h3); live deliveries only, not a connect's first state nor a replay. Wall clocks: across "
            "machines it includes their offset.", ["route", "protocol"], registry=r, buckets=LATENCY_BUCKETS)
        self._deliveries: dict[tuple[str, str], Latency] = {}

    def bus_health(self, up: bool) -> None:
        """The bus reports reachability changes here (an outage is counted when it begins)."""
        self.bus_up.set(1 if up else 0)
        if not up:
            self.bus_outages.inc()

    def tally(self, kind: str, route: str, encoding: str) -> Tally:
        """The shared write counters of every stream of this kind, route and encoding."""
        key = (kind, route, encoding)
        found = self._tallies.get(key)
        if found is None:
            found = self._tallies[key] = Tally(self.bytes_in.labels(route, encoding),
                                               self.bytes_out.labels(route, encoding),
                                               self.events_sent.labels(kind),
                                               self.encode_seconds.labels(route, encoding),
                                               self.stream_writes.labels(kind, "task"),
                                               self.stream_writes.labels(kind, "direct"),
                                               self.patches_folded.labels(kind, "elements"),
                                               self.patches_folded.labels(kind, "signals"))
        return found

    def delivered(self, route: str, protocol: str) -> Latency:
        """The batched ``gateway_delivery_seconds`` of one route and protocol."""
        found = self._deliveries.get((route, protocol))
        if found is None:
            found = self._deliveries[route, protocol] = Latency(self.delivery.labels(route, protocol))
        return found

    def behind(self, kind: str) -> Spread:
        """The batched ``gateway_stream_bytes_behind`` of one stream kind."""
        found = self._spreads.get(kind)
        if found is None:
            found = self._spreads[kind] = Spread(self.bytes_behind.labels(kind))
        return found

    def report_tallies(self) -> None:
        for tally in self._tallies.values():
            tally.report()
        for spread in self._spreads.values():
            spread.report()
        for spread in self._deliveries.values():
            spread.report()

    def exposition(self) -> bytes:
        """This process's metrics; under ``--workers`` (``PROMETHEUS_MULTIPROC_DIR`` set before any import of
        prometheus-client, by the supervisor) the sum over every live and past worker, whichever one is asked."""
        self.report_tallies()
        self.process.report()
        self.process.sample()
        if MULTIPROCESS_DIR:
            registry = CollectorRegistry()
            MultiProcessCollector(registry, MULTIPROCESS_DIR)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)


def _version(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "unknown"
