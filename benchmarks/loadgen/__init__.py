"""The benchmark load generator: thousands of SSE streams from one asyncio process, cheap enough to measure with.

- ``sse``: a bytes-level WHATWG event-stream parser (independent of the gateway's, to judge other servers too);
- ``decoders``: streaming br / zstd / gzip / deflate / identity decoders;
- ``stream``: the per-stream state shared by every transport (decoder, parser, counters, sink);
- ``h1`` / ``h2`` / ``h3``: the transports (one stream per HTTP/1.1 connection; many per HTTP/2 connection and per
  HTTP/3 (QUIC) connection);
- ``publisher``: a keep-alive HTTP/1.1 POST client;
- ``latency``: the default sink, publish-to-delivery latency on one clock;
- ``fleet``: N streams opened with bounded concurrency, and the process knobs (fd limit, CPU pinning, CPU time).
"""

from __future__ import annotations

from benchmarks.loadgen.decoders import DECODERS, Decoder, make_decoder
from benchmarks.loadgen.fleet import Fleet, FleetReport, cpu_seconds, pin_to_cpu, raise_fd_limit, run
from benchmarks.loadgen.h2 import client_ssl_context
from benchmarks.loadgen.h3 import client_quic_configuration
from benchmarks.loadgen.latency import LatencyRecorder, LatencySummary, StreamStats, stamp
from benchmarks.loadgen.publisher import Publisher
from benchmarks.loadgen.sse import SSEEvent, SSEParser
from benchmarks.loadgen.stream import Sink, StreamState

__all__ = [
    "DECODERS",
    "Decoder",
    "Fleet",
    "FleetReport",
    "LatencyRecorder",
    "LatencySummary",
    "Publisher",
    "SSEEvent",
    "SSEParser",
    "Sink",
    "StreamState",
    "StreamStats",
    "client_quic_configuration",
    "client_ssl_context",
    "cpu_seconds",
    "make_decoder",
    "pin_to_cpu",
    "raise_fd_limit",
    "run",
    "stamp",
]
