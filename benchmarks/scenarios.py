"""The comparison's scenarios: each takes a started peer (``Target``) and returns a plain dict of measurements.

The load generator runs in this process, pinned to another CPU than the server; the server's CPU time and memory
come from ``/proc`` (``benchmarks.procstat``). Every event carries ``{"seq", "t"}`` (``t`` = the publisher's
``perf_counter_ns`` just before the request is written), so latency is receipt minus publish on one clock, and
every subscriber checks it got every event, in order. Every wait is bounded; a scenario that times out reports
how far it got rather than hanging the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from benchmarks import ticker_frames
from benchmarks.loadgen import (
    Fleet,
    LatencyRecorder,
    Publisher,
    SSEEvent,
    StreamState,
    client_quic_configuration,
    cpu_seconds,
)
from benchmarks.loadgen.latency import LANE_BITS
from benchmarks.peers import Target
from benchmarks.procstat import cpu_between, cpu_reading, rss_bytes

TOPIC = "bench"
SSE_HEADERS = (("Accept", "text/event-stream"),)  # nchan refuses a subscriber that does not ask for SSE


def _quotes() -> list[dict[str, Any]]:
    """Ticker quotes (~160 bytes of JSON each) to carry the stamps: realistic, not a run of one letter that
    compresses to nothing."""
    out = []
    for frame in ticker_frames(512):
        data = frame.split(b"data: ", 1)[1].rstrip(b"\n")
        quote = orjson.loads(data)
        quote.pop("seq", None)
        out.append(quote)
    return out


_QUOTES = _quotes()


def payload(seq: int, *, quote: int | None = None) -> str:
    """One event's data: a ticker quote stamped with ``seq`` and the publish time (~190 bytes)."""
    body = _QUOTES[(seq if quote is None else quote) % len(_QUOTES)]
    return orjson.dumps({"seq": seq, "t": time.perf_counter_ns(), **body}).decode()


@contextlib.contextmanager
def quiet_generator() -> Iterator[None]:
    """No cyclic garbage collection in the load generator while it measures: with 10,000 streams' objects, one
    full collection stalls every reader for a noticeable fraction of a second, and that pause would be charged to
    whichever server is being measured. (Reference counting still frees everything; the collector runs after.)"""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@dataclass
class Clock:
    """Server CPU, generator CPU and wall time between ``start()`` and ``stop()``."""

    pids: tuple[int, ...]
    server: float = 0.0
    generator: float = 0.0
    wall: float = 0.0

    def start(self) -> Clock:
        self._s, self._g, self._w = cpu_reading(self.pids), cpu_seconds(), time.perf_counter()
        return self

    def stop(self) -> Clock:
        self.server = cpu_between(self._s, cpu_reading(self.pids))
        self.generator = cpu_seconds() - self._g
        self.wall = time.perf_counter() - self._w
        return self


async def _open(target: Target, count: int, *, encoding: str = "identity", protocol: str = "h1",
                path: str | None = None, sink: Any = None) -> Fleet:
    port, quic = target.port, None
    if protocol == "h3":  # over UDP to the TLS port; h1 and h2 (h2c) use the plain one
        if target.tls_port is None:
            raise RuntimeError(f"{target.name} serves no HTTP/3")
        port, quic = target.tls_port, client_quic_configuration(cafile=target.certfile)
    # Connections opened at once: 64 single-stream HTTP/1.1 connects; on h2 and h3 10 connections of 100 streams,
    # about 1,000 requests in flight. With 64 multiplexed connections (6,400 requests) in flight, some HTTP/3
    # connections took longer than the fleet's 10 s connect timeout (9,065 of 10,000 opened), while 8 at a time
    # opened all 10,000 in 3.3 s.
    fleet = Fleet(target.host, port, path or target.subscribe_path(TOPIC), protocol=protocol,  # type: ignore[arg-type]
                  accept_encoding=encoding, headers=SSE_HEADERS, sink=sink, concurrency=64 if protocol == "h1" else 10,
                  quic=quic)
    report = await fleet.open(count)
    if report.opened != count:
        await fleet.close()
        raise RuntimeError(f"{target.name}: opened {report.opened} of {count} streams "
                           f"(statuses {dict(report.statuses)}, errors {dict(report.errors)})")
    return fleet


async def _publishers(target: Target, count: int) -> list[Publisher]:
    publishers = [Publisher(target.host, target.port, timeout=30.0) for _ in range(count)]
    for publisher in publishers:
        await publisher.connect()
    return publishers


async def _publish(publisher: Publisher, target: Target, data: str) -> None:
    request = target.publish(TOPIC, data)
    status = await publisher.post(request.path, request.body, request.headers)
    if status not in request.ok_status:
        raise RuntimeError(f"{target.name}: publish answered {status}")


async def _warm_up(target: Target, fleet: Fleet, publisher: Publisher, events: int = 3) -> None:
    """A few events through every stream first: lazily created state is made and every subscriber is live."""
    recorder = fleet.recorder
    assert recorder is not None
    recorder.expect(events * len(fleet.streams))
    for seq in range(events):
        await _publish(publisher, target, payload(-events + seq))
    if not await recorder.wait_all(60):
        raise RuntimeError(f"{target.name}: warm-up delivered {recorder.delivered} of {recorder.expected}")
    recorder.reset()


def _latency(recorder: LatencyRecorder) -> dict[str, Any]:
    summary = recorder.percentiles()
    return {k: (round(v, 2) if isinstance(v, float) else v) for k, v in summary.items()}


# -- burst throughput ---------------------------------------------------------------------------------------------


async def burst(target: Target, subscribers: int, publishes: int, *, concurrency: int = 8,
                encoding: str = "identity", protocol: str = "h1", timeout: float = 180.0) -> dict[str, Any]:
    """``publishes`` events as fast as the server accepts them (``concurrency`` keep-alive publishers, each sending
    its next event when the previous was answered) to ``subscribers`` streams: delivered events/s and server CPU
    per delivered event. ``protocol`` h2 and h3 carry 100 streams on each connection."""
    fleet = await _open(target, subscribers, encoding=encoding, protocol=protocol)
    publishers = await _publishers(target, concurrency)
    try:
        await _warm_up(target, fleet, publishers[0])
        recorder = fleet.recorder
        assert recorder is not None
        recorder.expect(publishes * subscribers)
        before = fleet.totals()

        async def run(k: int) -> None:  # publisher k's events are lane k: in order within it, checked per stream
            for n, seq in enumerate(range(k, publishes, concurrency)):
                await _publish(publishers[k], target, payload(k << LANE_BITS | n, quote=seq))

        with quiet_generator():
            clock = Clock(target.pids).start()
            await asyncio.gather(*(run(k) for k in range(concurrency)))
            accepted = time.perf_counter() - clock._w
            complete = await recorder.wait_all(timeout)
            clock.stop()
        after = fleet.totals()
        delivered = recorder.delivered
        return {
            "subscribers": subscribers, "publishes": publishes, "publishers": concurrency, "encoding": encoding,
            "protocol": protocol,
            "content_encoding": fleet.streams[0].headers.get("content-encoding", "identity"),
            "complete": complete, "delivered": delivered, "expected": recorder.expected,
            "out_of_order": recorder.out_of_order,
            "seconds": round(clock.wall, 3), "publish_seconds": round(accepted, 3),
            "delivered_per_s": round(delivered / clock.wall),
            "server_cpu_s": round(clock.server, 3),
            "server_cpu_us_per_event": round(clock.server / max(delivered, 1) * 1e6, 2),
            "generator_cpu_share": round(clock.generator / clock.wall, 2),
            "wire_bytes_per_event": round((after["wire_bytes"] - before["wire_bytes"]) / max(delivered, 1), 1),
            "latency": _latency(recorder),
        }
    finally:
        for publisher in publishers:
            publisher.close()
        await fleet.close()


# -- ticker: a steady feed, the same pace for every encoding --------------------------------------------------------


async def ticker(target: Target, subscribers: int, events: int, *, rate: float, encoding: str = "identity",
                 timeout: float = 60.0) -> dict[str, Any]:
    """``events`` published at a steady ``rate`` per second, each to ``subscribers`` streams: server CPU per
    delivered event at a pace the load generator keeps up with, whatever the encoding.

    A burst is as fast as the server accepts, but the pace is set by the generator as much as by the server: it
    decodes every event of every stream, Brotli costs it more than identity, and a slower pace means fewer events
    per fan-out round, so more writes per event. Compared at one fixed pace, two encodings' CPU per event differ
    by what the server does for each, not by how fast the generator reads."""
    fleet = await _open(target, subscribers, encoding=encoding)
    publishers = await _publishers(target, 1)
    try:
        await _warm_up(target, fleet, publishers[0])
        recorder = fleet.recorder
        assert recorder is not None
        recorder.expect(events * subscribers)
        interval = 1.0 / rate
        late = 0  # events published after their slot had passed: the generator could not keep the pace
        with quiet_generator():
            clock = Clock(target.pids).start()
            start = time.perf_counter()
            for seq in range(events):
                delay = start + seq * interval - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                elif delay < -interval:
                    late += 1
                await _publish(publishers[0], target, payload(seq))
            complete = await recorder.wait_all(timeout)
            clock.stop()
        delivered = recorder.delivered
        return {
            "subscribers": subscribers, "publishes": events, "rate_per_s": rate, "encoding": encoding,
            "content_encoding": fleet.streams[0].headers.get("content-encoding", "identity"),
            "complete": complete, "delivered": delivered, "expected": recorder.expected,
            "out_of_order": recorder.out_of_order, "late_publishes": late, "seconds": round(clock.wall, 3),
            "server_cpu_s": round(clock.server, 3),
            "server_cpu_us_per_event": round(clock.server / max(delivered, 1) * 1e6, 2),
            "generator_cpu_share": round(clock.generator / clock.wall, 2),
            "latency": _latency(recorder),
        }
    finally:
        publishers[0].close()
        await fleet.close()


# -- broadcast latency and idle memory ----------------------------------------------------------------------------


async def broadcast(target: Target, subscribers: int, publishes: int, *, interval: float = 0.5,
                    protocol: str = "h1", timeout: float = 120.0) -> dict[str, Any]:
    """``subscribers`` idle streams (RSS per stream measured before any event), then ``publishes`` events spaced
    ``interval`` apart: publish-to-receipt latency over every delivery. ``protocol`` h2 and h3 carry 100 streams
    on each connection, as a browser's tabs share one."""
    rss_before = rss_bytes(target.pids)
    opened = time.perf_counter()
    fleet = await _open(target, subscribers, protocol=protocol)
    open_seconds = time.perf_counter() - opened
    publishers = await _publishers(target, 1)
    try:
        await asyncio.sleep(2.0)  # let the server's allocator settle: this is a memory reading, not a sync
        rss_idle = rss_bytes(target.pids)
        await _warm_up(target, fleet, publishers[0], events=1)
        recorder = fleet.recorder
        assert recorder is not None
        recorder.expect(publishes * subscribers)
        with quiet_generator():
            clock = Clock(target.pids).start()
            for seq in range(publishes):
                sent = time.perf_counter()
                await _publish(publishers[0], target, payload(seq))
                await asyncio.sleep(max(0.0, interval - (time.perf_counter() - sent)))
            complete = await recorder.wait_all(timeout)
            clock.stop()
        return {
            "subscribers": subscribers, "publishes": publishes, "interval_s": interval, "protocol": protocol,
            "complete": complete, "delivered": recorder.delivered, "expected": recorder.expected,
            "out_of_order": recorder.out_of_order, "open_seconds": round(open_seconds, 1),
            "latency": _latency(recorder),
            "server_cpu_us_per_event": round(clock.server / max(recorder.delivered, 1) * 1e6, 2),
            "generator_cpu_share": round(clock.generator / clock.wall, 2),
            "rss_before_mib": round(rss_before / 2**20, 1), "rss_idle_mib": round(rss_idle / 2**20, 1),
            "rss_per_idle_stream_kib": round((rss_idle - rss_before) / subscribers / 1024, 1),
        }
    finally:
        publishers[0].close()
        await fleet.close(timeout=30)


async def idle_memory(target: Target, subscribers: int, *, encoding: str, protocol: str = "h1") -> dict[str, Any]:
    """RSS per idle stream with ``encoding`` (a compressor's state is the cost being measured) over ``protocol``."""
    rss_before = rss_bytes(target.pids)
    fleet = await _open(target, subscribers, encoding=encoding, protocol=protocol)
    try:
        publishers = await _publishers(target, 1)
        await _warm_up(target, fleet, publishers[0], events=2)  # compressors allocate on first use
        publishers[0].close()
        await asyncio.sleep(2.0)  # allocator settling before a memory reading
        rss = rss_bytes(target.pids)
        return {"subscribers": subscribers, "encoding": encoding, "protocol": protocol,
                "content_encoding": fleet.streams[0].headers.get("content-encoding", "identity"),
                "rss_per_stream_kib": round((rss - rss_before) / subscribers / 1024, 1)}
    finally:
        await fleet.close(timeout=30)


async def idle_view_memory(target: Target, subscribers: int, *, encoding: str, todos: int = 50) -> dict[str, Any]:
    """RSS per idle stream of the demo's todo view (``todos`` items, ~15 KB per render) after two changes: what a
    view stream costs when it holds its own compressor, or shares its cohort's."""
    publisher = (await _publishers(target, 1))[0]
    try:
        for i in range(todos):
            await publisher.post("/todos/add", orjson.dumps({"text": f"Task number {i} of the bench"}))
        rss_before = rss_bytes(target.pids)
        counter = RenderCounter()
        fleet = await _open(target, subscribers, encoding=encoding, path="/todos/updates", sink=counter)
        try:
            for todo in (1, 2):  # compressors allocate on first use: every stream encodes two changes
                await publisher.post("/todos/toggle", orjson.dumps({"id": todo}))
            converged = await _converged(fleet, counter)
            await asyncio.sleep(2.0)  # allocator settling before a memory reading
            rss = rss_bytes(target.pids)
            return {"subscribers": subscribers, "encoding": encoding, "converged": converged,
                    "content_encoding": fleet.streams[0].headers.get("content-encoding", "identity"),
                    "rss_per_stream_kib": round((rss - rss_before) / subscribers / 1024, 1)}
        finally:
            await fleet.close(timeout=30)
    finally:
        publisher.close()


# -- bytes per event by encoding (the gateway only) ---------------------------------------------------------------


async def bytes_per_event(target: Target, events: int = 300) -> dict[str, Any]:
    """One hub stream per encoding, the same ticker events to all: wire bytes per event (body only)."""
    encodings = ("identity", "gzip", "zstd", "br")
    fleets = [await _open(target, 1, encoding=enc) for enc in encodings]
    publishers = await _publishers(target, 1)
    try:
        for fleet in fleets:
            assert fleet.recorder is not None
            fleet.recorder.expect(events)
        before = [f.totals()["wire_bytes"] for f in fleets]
        for seq in range(events):
            await _publish(publishers[0], target, payload(seq))
        for fleet in fleets:
            assert fleet.recorder is not None
            await fleet.recorder.wait_all(30)
        rows = {}
        for enc, fleet, start in zip(encodings, fleets, before, strict=True):
            assert fleet.recorder is not None
            wire = fleet.totals()["wire_bytes"] - start
            rows[enc] = {"content_encoding": fleet.streams[0].headers.get("content-encoding", "identity"),
                         "delivered": fleet.recorder.delivered,
                         "wire_bytes_per_event": round(wire / max(fleet.recorder.delivered, 1), 1)}
        return {"events": events, "encodings": rows}
    finally:
        publishers[0].close()
        for fleet in fleets:
            await fleet.close()


# -- the demo's view under a stream of commands (the gateway only) ------------------------------------------------


async def _converged(fleet: Fleet, counter: RenderCounter, quiet_ns: int = 300_000_000) -> bool:
    """Every stream on the same (latest) version and nothing more arriving: the view's convergence contract.
    The streams live in this process, so this polls local state only; bounded at 15 s."""
    try:
        async with asyncio.timeout(15):
            while True:
                ids = {s.parser.last_event_id for s in fleet.streams}
                if len(ids) == 1 and time.perf_counter_ns() - counter.last_ns > quiet_ns:
                    return True
                await asyncio.sleep(0.05)
    except TimeoutError:
        return False


class RenderCounter:
    """A sink for view streams: renders carry no stamp, so it counts them and when the last arrived."""

    def __init__(self) -> None:
        self.renders = 0
        self.last_ns = 0
        self.wanted = 0
        self.done = asyncio.Event()

    def __call__(self, stream: StreamState, events: list[SSEEvent], t_ns: int) -> None:
        self.renders += len(events)
        self.last_ns = t_ns
        if self.wanted and self.renders >= self.wanted:
            self.done.set()


async def view_rerender(target: Target, subscribers: int, commands: int, *, encoding: str,
                        interval: float = 0.02, todos: int = 50, seed: int = 7) -> dict[str, Any]:
    """The demo's todo view (``todos`` items, ~15 KB per render) held by ``subscribers`` streams while
    ``commands`` toggles arrive ``interval`` apart: wire bytes and server CPU per delivered render.

    Conflation may skip versions for a slow stream, so renders delivered are counted, not assumed; the last
    command's version must reach every stream (the view converges on the latest state)."""
    publisher = (await _publishers(target, 1))[0]
    rng = random.Random(seed)
    try:
        existing = 0
        for i in range(todos):
            status = await publisher.post("/todos/add", orjson.dumps({"text": f"Task number {i} of the bench"}))
            existing += status == 204
        counter = RenderCounter()
        fleet = await _open(target, subscribers, encoding=encoding, path="/todos/updates", sink=counter)
        try:
            first = counter.renders  # the state sent on connect
            before = fleet.totals()
            clock = Clock(target.pids).start()
            for _ in range(commands):
                sent = time.perf_counter()
                status = await publisher.post("/todos/toggle", orjson.dumps({"id": rng.randint(1, todos)}))
                if status != 204:
                    raise RuntimeError(f"{target.name}: toggle answered {status}")
                await asyncio.sleep(max(0.0, interval - (time.perf_counter() - sent)))
            converged = await _converged(fleet, counter)
            clock.stop()
            after = fleet.totals()
            renders = counter.renders - first
            final = sum(1 for s in fleet.streams if s.parser.last_event_id is not None)
            return {
                "subscribers": subscribers, "commands": commands, "encoding": encoding, "interval_s": interval,
                "content_encoding": fleet.streams[0].headers.get("content-encoding", "identity"),
                "renders_delivered": renders, "renders_per_stream": round(renders / subscribers, 1),
                "first_render_bytes": round(before["wire_bytes"] / subscribers),
                "decoded_bytes_per_render": round((after["decoded_bytes"] - before["decoded_bytes"])
                                                  / max(renders, 1)),
                "wire_bytes_per_render": round((after["wire_bytes"] - before["wire_bytes"]) / max(renders, 1), 1),
                "server_cpu_us_per_render": round(clock.server / max(renders, 1) * 1e6, 1),
                "streams_with_an_id": final, "converged": converged,
            }
        finally:
            await fleet.close()
    finally:
        publisher.close()


Scenario = Callable[..., Any]
