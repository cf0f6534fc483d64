"""A fleet of SSE streams held open from one asyncio process, and the process-level knobs a run needs.

Opening 10,000 streams at once would overflow the server's accept backlog (Hypercorn's is 100) and turn into SYN
retransmits a second apart; so a fixed number of workers open them, each connect bounded by a timeout, and what
failed is counted by cause rather than raised: a benchmark wants "9,950 opened, 50 answered 429", not a traceback.
"""

from __future__ import annotations

import asyncio
import os
import resource
import ssl as _ssl
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from benchmarks.loadgen.h1 import H1Stream, open_h1_stream
from benchmarks.loadgen.h2 import H2Client, open_h2_connection
from benchmarks.loadgen.h3 import H3Client, client_quic_configuration, open_h3_connection
from benchmarks.loadgen.latency import LatencyRecorder
from benchmarks.loadgen.stream import Sink, StreamState

if TYPE_CHECKING:
    from aioquic.quic.configuration import QuicConfiguration

__all__ = ["Fleet", "FleetReport", "LatencyRecorder", "cpu_seconds", "pin_to_cpu", "raise_fd_limit", "run"]

Protocol = Literal["h1", "h2", "h3"]
PROTOCOLS: tuple[Protocol, ...] = ("h1", "h2", "h3")
T = TypeVar("T")


def raise_fd_limit() -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit (each stream of h1 is a socket); return the new soft
    limit. Raising the hard limit itself needs privileges, so that is left to the operator (``ulimit -Hn``)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            return soft
        return hard
    return soft


def cpu_seconds() -> float:
    """User + system CPU of this process so far: the generator's own cost, to report next to the server's.

    (``time.process_time()`` is ``os.times()``' user + system, read with nanosecond rather than 10 ms resolution.)
    """
    return time.process_time()


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run the generator's main coroutine on uvloop when it is installed, else on asyncio's own loop.

    Every received event costs one read, and on asyncio's selector loop the read machinery (epoll dispatch, handle,
    transport) costs more than all of the generator's own work on it; uvloop does that part in C.
    """
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is in the bench extra
        return asyncio.run(main)
    return uvloop.run(main)


def pin_to_cpu(cpu: int) -> None:
    """Keep this process on one CPU, away from the server's (Linux ``sched_setaffinity``)."""
    os.sched_setaffinity(0, {cpu})


@dataclass
class FleetReport:
    """What came of an ``open()``: streams answered 200, and the others by status or by error."""

    requested: int = 0
    opened: int = 0
    statuses: Counter[int] = field(default_factory=Counter)  # non-200 answers
    errors: Counter[str] = field(default_factory=Counter)  # no answer: timeout, refused, reset...
    seconds: float = 0.0

    @property
    def failed(self) -> int:
        return self.requested - self.opened


class Fleet:
    """N SSE streams against one server, over HTTP/1.1 (a connection each), HTTP/2 or HTTP/3
    (``streams_per_connection`` on each connection, capped by the server's MAX_CONCURRENT_STREAMS or MAX_STREAMS).

    HTTP/3 goes to ``port`` over UDP with ``quic`` (``client_quic_configuration()``, verifying against the system's
    CAs, when not given); ``ssl`` is for h1 and h2 over TLS.

    ``path`` may be a function of the stream's index, for per-stream topics. ``sink`` receives the events of every
    stream; by default a ``LatencyRecorder`` (``fleet.recorder`` when it is one).
    """

    def __init__(
        self,
        host: str,
        port: int,
        path: str | Callable[[int], str],
        *,
        protocol: Protocol = "h1",
        accept_encoding: str = "identity",
        streams_per_connection: int = 100,
        ssl: _ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        quic: QuicConfiguration | None = None,
        headers: Iterable[tuple[str, str]] = (),
        last_event_id: str | None = None,
        sink: Sink | None = None,
        rcvbuf: int | None = None,
        concurrency: int = 64,
        connect_timeout: float = 10.0,
    ) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, not {protocol!r}")
        self.host, self.port = host, port
        self._path = path
        self.protocol: Protocol = protocol
        self.accept_encoding = accept_encoding
        self.streams_per_connection = max(1, streams_per_connection)
        self.ssl = ssl
        self.server_hostname = server_hostname
        self.quic = quic if quic is not None or protocol != "h3" else client_quic_configuration(
            server_name=server_hostname)
        self.headers = list(headers)
        self.last_event_id = last_event_id
        self.sink: Sink = sink if sink is not None else LatencyRecorder()
        self.rcvbuf = rcvbuf
        self.concurrency = max(1, concurrency)
        self.connect_timeout = connect_timeout
        self.streams: list[StreamState] = []
        self.connections: list[H1Stream | H2Client | H3Client] = []
        self.report = FleetReport()

    @property
    def recorder(self) -> LatencyRecorder | None:
        return self.sink if isinstance(self.sink, LatencyRecorder) else None

    def path_for(self, index: int) -> str:
        return self._path(index) if callable(self._path) else self._path

    async def open(self, count: int) -> FleetReport:
        """Open ``count`` more streams; return the cumulative report (also ``fleet.report``)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        first = len(self.streams)
        new = [StreamState(first + i, self.sink) for i in range(count)]
        self.streams.extend(new)
        self.report.requested += count
        size = 1 if self.protocol == "h1" else self.streams_per_connection
        groups = iter([new[i:i + size] for i in range(0, count, size)])

        async def worker() -> None:
            for group in groups:  # one shared iterator: each group is taken by exactly one worker
                if self.protocol == "h1":
                    await self._open_h1(group[0])
                else:
                    await self._open_multiplexed(group)

        async with asyncio.TaskGroup() as tasks:
            for _ in range(min(self.concurrency, max(1, -(-count // size)))):
                tasks.create_task(worker())
        for state in new:
            self._count(state)
        self.report.seconds += loop.time() - started
        return self.report

    def _count(self, state: StreamState) -> None:
        if state.status == 200 and state.error is None:
            self.report.opened += 1
        elif state.status:
            self.report.statuses[state.status] += 1
        else:
            self.report.errors[state.error or "no response"] += 1

    async def _open_h1(self, state: StreamState) -> None:
        connection: H1Stream | None = None
        try:
            async with asyncio.timeout(self.connect_timeout):
                connection = await open_h1_stream(
                    state, self.host, self.port, self.path_for(state.index),
                    accept_encoding=self.accept_encoding, last_event_id=self.last_event_id, headers=self.headers,
                    ssl=self.ssl, server_hostname=self.server_hostname, rcvbuf=self.rcvbuf,
                )
                self.connections.append(connection)
                await asyncio.shield(state.opened)  # (shielded: a timeout must not cancel the stream's future)
        except TimeoutError:
            state.close("error", "timeout")
        except OSError as exc:
            state.close("error", _describe(exc))
        if connection is not None and state.error is not None and state.status in (0, 200):
            connection.close()  # no answer in time, or a 200 we cannot decode (a refusal ends by itself)

    async def _connect(self) -> H2Client | H3Client:
        if self.protocol == "h3":
            return await open_h3_connection(self.host, self.port, configuration=self.quic)
        return await open_h2_connection(self.host, self.port, ssl=self.ssl, server_hostname=self.server_hostname)

    async def _open_multiplexed(self, group: list[StreamState]) -> None:
        """HTTP/2 or HTTP/3: one connection for the group, or more when the server allows fewer streams on one."""
        pending = group
        while pending:
            client: H2Client | H3Client | None = None
            opening: dict[int, StreamState] = {}
            try:
                async with asyncio.timeout(self.connect_timeout):
                    client = await self._connect()
                    self.connections.append(client)
                    take = min(len(pending), client.capacity)
                    if not take:
                        raise ConnectionError("the server allows no stream on a new connection")
                    for state in pending[:take]:
                        stream_id = client.open_stream(
                            state, self.path_for(state.index), accept_encoding=self.accept_encoding,
                            last_event_id=self.last_event_id, headers=self.headers,
                        )
                        opening[stream_id] = state
                    await asyncio.wait([asyncio.shield(state.opened) for state in opening.values()])
            except (TimeoutError, OSError) as exc:
                error = "timeout" if isinstance(exc, TimeoutError) else _describe(exc)
                for state in pending:
                    if not state.opened.done():  # (the streams already answered keep going)
                        state.close("error", error)
                if client is not None:
                    for stream_id, state in opening.items():
                        if not state.status:
                            client.reset(stream_id)
                return
            pending = pending[len(opening):]

    def totals(self) -> dict[str, int]:
        """Sums over every stream: events, wire (still encoded) and decoded body bytes, open streams."""
        return {
            "streams": len(self.streams),
            "open": sum(1 for s in self.streams if s.ok),
            "events": sum(s.events for s in self.streams),
            "wire_bytes": sum(s.wire_bytes for s in self.streams),
            "decoded_bytes": sum(s.decoded_bytes for s in self.streams),
            "comments": sum(s.parser.comments for s in self.streams),
        }

    def ended(self) -> Counter[str]:
        """Streams that are no longer open, by how they ended (a stream the server cut shows here)."""
        return Counter(s.closed.result() for s in self.streams if s.closed.done())

    async def close(self, timeout: float = 10.0) -> None:
        """Close every connection and wait (bounded) until each transport reports it closed; abort the rest."""
        connections, self.connections = self.connections, []
        for connection in connections:
            connection.close()
        waiting = [c.lost for c in connections if not c.lost.done()]
        if waiting:
            await asyncio.wait(waiting, timeout=timeout)
        for connection in connections:
            if not connection.lost.done() and connection.transport is not None:
                connection.transport.abort()

    @staticmethod
    def cpu_seconds() -> float:
        return cpu_seconds()


def _describe(exc: BaseException) -> str:
    """A short cause for the report: ``ConnectionRefusedError``, ``OSError: [Errno 24]`` ..."""
    errno = getattr(exc, "errno", None)
    return f"{type(exc).__name__} [Errno {errno}]" if errno else f"{type(exc).__name__}: {exc}"
