"""Hub fan-out with stalled subscribers: what clients that stop reading cost the clients that do not.

Run: ``python -m benchmarks.stalled [--quick] [--out benchmarks/results]`` (full: ~2 min; quick: ~15 s).

A real ``gateway serve`` process (HTTP/1.1 on a loopback port, no TLS, no QUIC; a fresh one per scenario) gets N raw
asyncio HTTP/1.1 subscribers on ``GET /hub/subscribe?topic=bench`` (``Accept-Encoding: identity``, the chunked body
parsed with ``SSEParser``), of which 0 %, 1 % or 10 % are *stalled*: they send the request, read the response head
and never read again. One publisher, in the same process, then POSTs M events to ``/hub/publish`` on one keep-alive
connection; every event's data carries its sequence number and ``time.perf_counter_ns()`` taken just before the
POST is written, so a healthy subscriber's latency is receipt - publish on one clock. The publisher is sequential:
each POST goes ``interval_ms`` after the previous one, or when the previous answer came if that took longer.

Making a stall bite on loopback: a stalled socket gets ``SO_RCVBUF`` 4096 *and* advertises an MSS of 1460 (as a
client on Ethernet does), both set before connecting. Without the MSS, Linux sizes the server's send buffer from
loopback's 64 KiB MSS and lets it autotune to ``tcp_wmem``'s maximum (4 MiB) at once, so a stalled client soaks up
megabytes in the kernel before the gateway's ``send`` ever blocks; with it, the server's send queue to that client
stops growing at 70-120 KB (measured), the asyncio transport buffer fills (64 KiB), the gateway's write blocks and
its hub mailbox (``hub.max_buffered_events``, lowered for the run) overflows: the gateway cuts the client off.

Reported per scenario: for the HEALTHY subscribers, events delivered / expected (each must get every event, in
order), delivery latency p50/p99/max; the publisher's POST latency p50/p99 (request written -> response head read)
and the rate it achieved; the server's RSS and open file descriptors before publishing, after the stalled clients
were cut off, and after they closed their sockets; how many stalled clients the server cut off, why
(``gateway_streams_closed_total{kind="hub"}``, sampled every 0.25 s) and when, counted from the first publish;
CPU time and run-queue wait of both processes (the wait shows other work sharing the cores).

With ``taskset`` available and CPUs 0 and 1 usable, the server is pinned to CPU 0 and this load generator
(subscribers + publisher) to CPU 1, so the two never compete for a core. Latencies include the load generator's
own queueing: all the readers share its one core.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from benchmarks import RESULTS_DIR, ROOT, machine_info, terminate, write_json
from benchmarks.ports import free_port
from benchmarks.procstat import cpu_seconds, rss_bytes
from gateway.core.sse import SSEParser

TOKEN = "bench-stalled-" + "t" * 24
TOPIC = "bench"
HOST = "127.0.0.1"
STALLED_RCVBUF = 4096
STALLED_MSS = 1460
MIB = 1024 * 1024
SCENARIOS: tuple[tuple[str, float], ...] = (("0% stalled", 0.0), ("1% stalled", 0.01), ("10% stalled", 0.10))
METRICS_EVERY = 0.25  # seconds between /metrics + RSS samples during a scenario


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything that sizes a run; stored in the JSON beside the results."""

    subscribers: int
    events: int
    interval_ms: float
    small_bytes: int
    big_bytes: int
    big_every: int
    write_timeout: float
    max_buffered_events: int
    max_buffered_bytes: int
    connect_batch: int = 50
    delivery_timeout: float = 60.0  # after the last publish, for healthy clients to get everything
    cutoff_grace: float = 10.0  # beyond write_timeout, for the server to cut the stalled clients off
    linger_check: float = 2.0  # seconds after the cut-offs before counting the server's sockets again

    def env(self) -> dict[str, str]:
        """The gateway settings this run overrides (all of them, so the JSON says exactly what ran)."""
        return {
            "GATEWAY_HUB_PUBLISH_TOKEN": TOKEN,
            "GATEWAY_HUB_PUBLIC_TOPICS": TOPIC,  # subscribers read it without a token
            "GATEWAY_SSE_HEARTBEAT": "55",
            "GATEWAY_SSE_WRITE_TIMEOUT": f"{self.write_timeout:g}",
            "GATEWAY_HUB_MAX_BUFFERED_EVENTS": str(self.max_buffered_events),
            "GATEWAY_HUB_MAX_BUFFERED_BYTES": str(self.max_buffered_bytes),
            "GATEWAY_LIMITS_MAX_STREAMS_PER_CLIENT": "0",  # every subscriber comes from 127.0.0.1
            "GATEWAY_LIMITS_MAX_CONNECTIONS_PER_ADDRESS": "0",
            "GATEWAY_SERVER_DRAIN_TIMEOUT": "5",
        }


FULL = Plan(subscribers=1000, events=500, interval_ms=5.0, small_bytes=200, big_bytes=4096, big_every=5,
            write_timeout=10.0, max_buffered_events=100, max_buffered_bytes=256 * 1024)
QUICK = Plan(subscribers=200, events=200, interval_ms=5.0, small_bytes=200, big_bytes=4096, big_every=3,
             write_timeout=3.0, max_buffered_events=32, max_buffered_bytes=128 * 1024, delivery_timeout=30.0,
             cutoff_grace=6.0, linger_check=1.0)


# -- small helpers ----------------------------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile of an already sorted sequence (None when empty)."""
    if not sorted_values:
        return None
    rank = max(1, min(len(sorted_values), int(-(-q * len(sorted_values) // 100))))
    return float(sorted_values[rank - 1])


def _ms(ns: float | None) -> float | None:
    return None if ns is None else round(ns / 1e6, 2)


def proc_fds(pid: int) -> int:
    """Open file descriptors of a process (its sockets, mostly)."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def raise_nofile(needed: int) -> int:
    """Lift this process's soft open-files limit to what N sockets need (never above the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = needed if hard == resource.RLIM_INFINITY else min(hard, needed)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return int(soft)


def pinning() -> tuple[list[str], int | None]:
    """(command prefix pinning the server to CPU 0, CPU for this process) when taskset and CPUs 0-1 are there."""
    taskset = shutil.which("taskset")
    try:
        usable = os.sched_getaffinity(0)
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return [], None
    if taskset is None or not {0, 1} <= usable:
        return [], None
    return [taskset, "-c", "0"], 1


class ChunkedDecoder:
    """Incremental ``Transfer-Encoding: chunked`` body decoder (trailers ignored)."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._remaining = 0
        self._need_crlf = False
        self.done = False

    def feed(self, data: bytes) -> bytes:
        self._buf += data
        buf, pos, out = self._buf, 0, bytearray()
        # Every pass consumes bytes or stops, so the loop is bounded by the input's length.
        while not self.done:
            if self._remaining:
                take = min(self._remaining, len(buf) - pos)
                out += buf[pos:pos + take]
                pos += take
                self._remaining -= take
                if self._remaining:
                    break
                self._need_crlf = True
            if self._need_crlf:
                if len(buf) - pos < 2:
                    break
                if buf[pos:pos + 2] != b"\r\n":
                    raise ValueError("malformed chunked body: no CRLF after a chunk")
                pos += 2
                self._need_crlf = False
            end = buf.find(b"\r\n", pos)
            if end < 0:
                break
            size = int(bytes(buf[pos:end]).split(b";", 1)[0], 16)
            pos = end + 2
            if size == 0:
                self.done = True
            self._remaining = size
        del buf[:pos]
        return bytes(out)


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    """Status code and lower-cased headers of an HTTP/1.1 response head."""
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return status, headers


def subscribe_request(port: int) -> bytes:
    return (f"GET /hub/subscribe?topic={TOPIC} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
            "Accept: text/event-stream\r\nAccept-Encoding: identity\r\n\r\n").encode()


async def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """One GET on a fresh connection (``Connection: close``): status and body."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nConnection: close\r\n\r\n".encode())
            status, headers = parse_head(await reader.readuntil(b"\r\n\r\n"))
            raw = await reader.read()
        finally:
            writer.close()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        raw = ChunkedDecoder().feed(raw)
    return status, raw


def parse_metrics(text: str) -> dict[str, float]:
    """The hub stream series of a Prometheus exposition: ``closed:<reason>`` and ``active``."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith('gateway_streams_closed_total{kind="hub"'):
            reason = line.split('reason="', 1)[1].split('"', 1)[0]
            out[f"closed:{reason}"] = float(line.rsplit(" ", 1)[1])
        elif line.startswith('gateway_streams_active{kind="hub"}'):
            out["active"] = float(line.rsplit(" ", 1)[1])
    return out


# -- the server -------------------------------------------------------------------------------------------------


class GatewayProcess:
    """``python -m gateway serve`` on a free loopback port, HTTP/1.1 + h2c only."""

    def __init__(self, env: dict[str, str], prefix: list[str], log: Path) -> None:
        self.port = free_port()
        self.log = log
        cmd = [*prefix, sys.executable, "-m", "gateway", "serve", "--bind", f"{HOST}:{self.port}",
               "--tls-bind", "", "--quic-bind", "", "--log-level", "warning"]
        with log.open("wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                         env={**os.environ, "PYTHONUNBUFFERED": "1", **env})

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")[-4000:]

    async def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        # Another process's readiness can only be observed by asking it; each attempt and the whole are bounded.
        for _ in range(int(timeout / 0.05) + 1):
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}:\n{self.output()}")
            with contextlib.suppress(OSError, TimeoutError, ValueError, IndexError, asyncio.IncompleteReadError):
                if (await http_get(self.port, "/readyz", timeout=1.0))[0] == 200:
                    return
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        self.stop()
        raise RuntimeError(f"gateway not ready within {timeout} s:\n{self.output()}")

    async def hub_metrics(self) -> dict[str, float]:
        status, body = await http_get(self.port, "/metrics")
        if status != 200:
            raise RuntimeError(f"/metrics answered {status}")
        return parse_metrics(body.decode())

    def stop(self, timeout: float = 40.0) -> int:
        return terminate(self.proc, timeout)


# -- the clients ------------------------------------------------------------------------------------------------


@dataclass(eq=False)
class Healthy:
    """A subscriber that reads everything: checks order and completeness, records each event's latency."""

    index: int
    expected: int
    latencies: list[int]  # shared across healthy clients, ns
    received: int = 0
    lost: int = 0
    out_of_order: int = 0
    next_seq: int = 0
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    task: asyncio.Task[None] | None = None
    error: str | None = None

    @property
    def complete(self) -> bool:
        return self.next_seq >= self.expected

    async def connect(self, port: int) -> None:
        self.reader, self.writer = await asyncio.open_connection(HOST, port)
        self.writer.write(subscribe_request(port))
        status, headers = parse_head(await self.reader.readuntil(b"\r\n\r\n"))
        if status != 200 or not headers.get("content-type", "").startswith("text/event-stream"):
            raise RuntimeError(f"subscriber {self.index}: status {status}, headers {headers}")
        if headers.get("content-encoding", "identity") != "identity":
            raise RuntimeError(f"subscriber {self.index}: unexpected content-encoding {headers['content-encoding']}")
        chunked = headers.get("transfer-encoding", "").lower() == "chunked"
        self.task = asyncio.create_task(self._read(ChunkedDecoder() if chunked else None))

    async def _read(self, dechunk: ChunkedDecoder | None) -> None:
        assert self.reader is not None
        parser, clock, latencies = SSEParser(), time.perf_counter_ns, self.latencies
        try:
            # Ends at the last event, EOF or cancellation (the scenario's deadline): at most M events.
            while not self.complete:
                data = await self.reader.read(65536)
                now = clock()
                if not data:
                    self.error = "eof"
                    return
                for event in parser.feed(dechunk.feed(data) if dechunk is not None else data):
                    body = orjson.loads(event.data)
                    seq = body["seq"]
                    latencies.append(now - body["t"])
                    self.received += 1
                    if seq == self.next_seq:
                        self.next_seq += 1
                    elif seq > self.next_seq:
                        self.lost += seq - self.next_seq
                        self.next_seq = seq + 1
                    else:
                        self.out_of_order += 1
        except (OSError, ValueError, KeyError) as exc:
            self.error = f"{type(exc).__name__}: {exc}"

    def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
        if self.writer is not None:
            self.writer.close()


@dataclass(eq=False)
class Stalled:
    """A subscriber that reads the response headers and then never reads again (small receive buffer)."""

    index: int
    sock: socket.socket | None = None

    async def connect(self, port: int) -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock = sock
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, STALLED_RCVBUF)  # before connect: sets the window
        if STALLED_MSS:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, STALLED_MSS)
        sock.setblocking(False)
        await loop.sock_connect(sock, (HOST, port))
        await loop.sock_sendall(sock, subscribe_request(port))
        head = b""
        for _ in range(64):  # headers are a few hundred bytes: bounded reads
            head += await loop.sock_recv(sock, 512)
            if b"\r\n\r\n" in head:
                break
        else:
            raise RuntimeError(f"stalled subscriber {self.index}: no response head")
        status, _ = parse_head(head.split(b"\r\n\r\n", 1)[0])
        if status != 200:
            raise RuntimeError(f"stalled subscriber {self.index}: status {status}")
        # ...and from here on, never another recv.

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()


# -- one scenario -----------------------------------------------------------------------------------------------


def _payload(plan: Plan, seq: int, t_ns: int) -> bytes:
    size = plan.big_bytes if plan.big_every and seq % plan.big_every == plan.big_every - 1 else plan.small_bytes
    head = orjson.dumps({"topic": TOPIC, "data": {"seq": seq, "t": t_ns, "pad": ""}})
    pad = "x" * max(0, size - len(head))
    return orjson.dumps({"topic": TOPIC, "data": {"seq": seq, "t": t_ns, "pad": pad}})


@dataclass
class Publisher:
    """M events on one keep-alive connection: each goes ``interval`` after the previous one was *sent*, or as
    soon as the previous POST was answered if that took longer (a sequential publisher, as most backends are)."""

    plan: Plan
    port: int
    sent_at: list[float] = field(default_factory=list)  # perf_counter() of each POST, for the cut-off timeline
    post_ns: list[int] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)

    async def run(self) -> None:
        plan, port = self.plan, self.port
        reader, writer = await asyncio.open_connection(HOST, port)
        interval = plan.interval_ms / 1000
        clock = time.perf_counter_ns
        try:
            for seq in range(plan.events):
                if self.sent_at:
                    delay = self.sent_at[-1] + interval - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                self.sent_at.append(time.perf_counter())
                t0 = clock()
                body = _payload(plan, seq, t0)
                writer.write(b"POST /hub/publish HTTP/1.1\r\nHost: %s:%d\r\nAuthorization: Bearer %s\r\n"
                             b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                             % (HOST.encode(), port, TOKEN.encode(), len(body), body))
                async with asyncio.timeout(10):
                    status, headers = parse_head(await reader.readuntil(b"\r\n\r\n"))
                    if int(headers.get("content-length", "0")):
                        await reader.readexactly(int(headers["content-length"]))
                self.post_ns.append(clock() - t0)
                self.statuses[status] = self.statuses.get(status, 0) + 1
                if status != 204:
                    raise RuntimeError(f"publish {seq}: status {status}")
        finally:
            writer.close()

    def summary(self) -> dict[str, Any]:
        post = sorted(self.post_ns)
        duration = self.sent_at[-1] - self.sent_at[0] if len(self.sent_at) > 1 else 0.0
        return {
            "published": len(post),
            "statuses": {str(k): v for k, v in self.statuses.items()},
            "duration_s": round(duration, 3),
            "events_per_s": round((len(self.sent_at) - 1) / duration, 1) if duration else None,
            "post_ms_p50": _ms(percentile(post, 50)),
            "post_ms_p99": _ms(percentile(post, 99)),
            "post_ms_max": _ms(percentile(post, 100)),
        }


def proc_runqueue_wait(pid: int | str) -> float:
    """Seconds a process's main thread has spent runnable but waiting for a CPU (other work on its core)."""
    return int(Path(f"/proc/{pid}/schedstat").read_text(encoding="ascii").split()[1]) / 1e9




@dataclass
class Sampler:
    """RSS, fds and hub stream metrics of the server, a few times a second, from the first publish on."""

    server: GatewayProcess
    t0: float = 0.0
    samples: list[dict[str, Any]] = field(default_factory=list)
    errors: int = 0

    async def sample(self) -> dict[str, Any]:
        row: dict[str, Any] = {"t": round(time.perf_counter() - self.t0, 3), "rss": rss_bytes((self.server.pid,)),
                               "fds": proc_fds(self.server.pid)}
        try:
            row.update(await self.server.hub_metrics())
        except (OSError, TimeoutError, RuntimeError, ValueError, asyncio.IncompleteReadError):
            self.errors += 1
        self.samples.append(row)
        return row

    async def run(self, seconds: float) -> None:
        for _ in range(int(seconds / METRICS_EVERY) + 1):
            await self.sample()
            await asyncio.sleep(METRICS_EVERY)


def closed_count(row: dict[str, Any]) -> float:
    return float(sum(v for k, v in row.items() if k.startswith("closed:")))


async def connect_all(plan: Plan, port: int, stalled_count: int,
                      latencies: list[int]) -> tuple[list[Healthy], list[Stalled]]:
    """N subscribers in batches (the listen backlog is 100), stalled ones spread evenly among them."""
    n = plan.subscribers
    stalled_at = {round(i * n / stalled_count) for i in range(stalled_count)} if stalled_count else set()
    healthy: list[Healthy] = []
    stalled: list[Stalled] = []
    clients: list[Healthy | Stalled] = []
    for i in range(n):
        if i in stalled_at:
            stalled.append(Stalled(i))
            clients.append(stalled[-1])
        else:
            healthy.append(Healthy(i, plan.events, latencies))
            clients.append(healthy[-1])
    async with asyncio.timeout(60):
        for start in range(0, n, plan.connect_batch):
            await asyncio.gather(*(c.connect(port) for c in clients[start:start + plan.connect_batch]))
    return healthy, stalled


async def run_scenario(plan: Plan, name: str, fraction: float, prefix: list[str], logdir: Path) -> dict[str, Any]:
    """One fresh server, N subscribers of which ``fraction`` stalled, M events; everything bounded in time."""
    stalled_count = round(plan.subscribers * fraction)
    server = GatewayProcess(plan.env(), prefix, logdir / f"gateway-{round(fraction * 100)}.log")
    healthy: list[Healthy] = []
    stalled: list[Stalled] = []
    load_before = os.getloadavg()[0]
    try:
        await server.wait_ready()
        rss_idle, fds_idle = rss_bytes((server.pid,)), proc_fds(server.pid)
        latencies: list[int] = []
        connect_started = time.perf_counter()
        healthy, stalled = await connect_all(plan, server.port, stalled_count, latencies)
        connect_s = time.perf_counter() - connect_started
        sampler = Sampler(server)
        for _ in range(100):  # every stream attached before the first publish
            if (await sampler.sample()).get("active") == plan.subscribers:
                break
            await asyncio.sleep(0.05)
        rss_before, fds_before = rss_bytes((server.pid,)), proc_fds(server.pid)

        # Publish, and wait (bounded) for every healthy subscriber to have every event.
        sampler.samples.clear()
        sampler.t0 = time.perf_counter()
        cpu_server0, cpu_self0 = cpu_seconds((server.pid,)), time.process_time()
        wait_server0, wait_self0 = proc_runqueue_wait(server.pid), proc_runqueue_wait("self")
        budget = plan.events * 0.5 + plan.delivery_timeout + plan.write_timeout + plan.cutoff_grace + 5
        sampling = asyncio.create_task(sampler.run(budget))
        publisher = Publisher(plan, server.port)
        async with asyncio.timeout(plan.events * 0.5):  # half a second per event is far beyond any normal run
            await publisher.run()
        published_at = time.perf_counter()
        pending = [h.task for h in healthy if h.task is not None and not h.task.done()]
        if pending:
            await asyncio.wait(pending, timeout=plan.delivery_timeout)
        delivered_s = time.perf_counter() - published_at
        busy_s = time.perf_counter() - sampler.t0
        cpu_server = cpu_seconds((server.pid,)) - cpu_server0
        cpu_self = time.process_time() - cpu_self0
        wait_server = proc_runqueue_wait(server.pid) - wait_server0
        wait_self = proc_runqueue_wait("self") - wait_self0
        for h in healthy:
            if h.task is not None and not h.task.done():
                h.task.cancel()

        # Stalled subscribers: wait (bounded) until the server has cut every one of them off.
        cutoff_deadline = time.perf_counter() + plan.write_timeout + plan.cutoff_grace
        last = await sampler.sample()
        while stalled and closed_count(last) < len(stalled) and time.perf_counter() < cutoff_deadline:
            await asyncio.sleep(METRICS_EVERY)
            last = await sampler.sample()
        sampling.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampling
        rss_after, fds_after = rss_bytes((server.pid,)), proc_fds(server.pid)
        peak_rss = max([rss_before, rss_after, *(s["rss"] for s in sampler.samples)])
        # Are the cut-off clients' TCP connections released, or do they linger until the client goes away?
        await asyncio.sleep(plan.linger_check)
        fds_later, fds_later_at = proc_fds(server.pid), time.perf_counter() - sampler.t0
        for c in stalled:
            c.close()
        await asyncio.sleep(0.5)
        fds_stalled_closed = proc_fds(server.pid)
    finally:
        for h in healthy:
            h.close()
        for st in stalled:
            st.close()
        await asyncio.sleep(0.2)
        exit_code = server.stop()

    latencies.sort()
    expected = len(healthy) * plan.events
    reasons = {k.split(":", 1)[1]: int(v) for k, v in last.items() if k.startswith("closed:")}
    cut_times = _cut_times(sampler.samples)
    sent = [t - sampler.t0 for t in publisher.sent_at]
    return {
        "name": name,
        "stalled_fraction": fraction,
        "subscribers": plan.subscribers,
        "stalled": len(stalled),
        "healthy": len(healthy),
        "connect_s": round(connect_s, 2),
        "loadavg_1min_before": round(load_before, 2),
        "healthy_expected": expected,
        "healthy_delivered": sum(h.received for h in healthy),
        "healthy_complete_in_order": sum(1 for h in healthy if h.complete and not h.lost and not h.out_of_order),
        "healthy_lost": sum(h.lost for h in healthy),
        "healthy_out_of_order": sum(h.out_of_order for h in healthy),
        "healthy_errors": sorted({h.error for h in healthy if h.error}),
        "all_healthy_in_order": all(h.complete and not h.lost and not h.out_of_order for h in healthy),
        "delivery_done_after_last_publish_s": round(delivered_s, 3),
        "latency_ms": {"p50": _ms(percentile(latencies, 50)), "p90": _ms(percentile(latencies, 90)),
                       "p99": _ms(percentile(latencies, 99)), "max": _ms(percentile(latencies, 100)),
                       "samples": len(latencies)},
        "publisher": publisher.summary(),
        "cpu": {"busy_s": round(busy_s, 2), "server_s": round(cpu_server, 2),
                "server_pct": round(100 * cpu_server / busy_s, 1), "load_generator_s": round(cpu_self, 2),
                "load_generator_pct": round(100 * cpu_self / busy_s, 1),
                # Time each was ready to run but its CPU was taken (by other processes on a shared machine).
                "server_runqueue_wait_s": round(wait_server, 2),
                "load_generator_runqueue_wait_s": round(wait_self, 2)},
        "server": {
            "rss_idle_mib": round(rss_idle / MIB, 1),
            "rss_before_mib": round(rss_before / MIB, 1),
            "rss_after_mib": round(rss_after / MIB, 1),
            "rss_peak_mib": round(peak_rss / MIB, 1),
            "rss_growth_mib": round((rss_after - rss_before) / MIB, 1),
            "fds_idle": fds_idle,
            "fds_before": fds_before,
            "fds_after_cutoff": fds_after,
            "fds_later": fds_later,
            "fds_later_at_s": round(fds_later_at, 2),
            "fds_after_stalled_clients_closed": fds_stalled_closed,
            "exit_code": exit_code,
        },
        "hub_streams_closed": reasons,
        "stalled_cut_off": int(sum(reasons.values())),
        "cut_off_s_after_first_publish": cut_times,
        "cut_off_events_published_by_then": {
            k: (None if v is None else sum(1 for t in sent if t <= v)) for k, v in cut_times.items()
        },
        "metrics_samples": len(sampler.samples),
        "metrics_errors": sampler.errors,
    }


def _cut_times(samples: list[dict[str, Any]]) -> dict[str, float | None]:
    """First sample showing a closed hub stream, the sample by which half were, and the one showing the last."""
    counts = [(s["t"], closed_count(s)) for s in samples if "active" in s]
    total = max((c for _, c in counts), default=0)
    if not total:
        return {"first": None, "half": None, "last": None}

    def when(threshold: float) -> float | None:
        return next((t for t, c in counts if c >= threshold), None)

    return {"first": when(1), "half": when(total / 2), "last": when(total)}


def revision() -> dict[str, Any]:
    """The commit measured, and whether gateway/ had uncommitted changes (other work in progress) at the time."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30,
                                  check=True).stdout.rstrip("\n")
        except (OSError, subprocess.SubprocessError):
            return ""

    dirty = [line[3:] for line in git("status", "--porcelain", "--", "gateway").splitlines()]
    return {"commit": git("rev-parse", "HEAD").strip() or None, "gateway_uncommitted": dirty}


def effective_settings(env: dict[str, str]) -> dict[str, Any]:
    """The server's own view of the settings this run uses (``gateway check``, token masked): sse, hub, limits."""
    out = subprocess.run([sys.executable, "-m", "gateway", "check", "--bind", f"{HOST}:1", "--tls-bind", "",
                          "--quic-bind", ""], cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True,
                         timeout=60, check=True).stdout
    settings = tomllib.loads(out)
    return {k: settings[k] for k in ("sse", "hub", "limits") if k in settings}


# -- output -----------------------------------------------------------------------------------------------------


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else round(a / b, 2)


def ratios(scenarios: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    base = scenarios[0]
    return {
        s["name"]: {
            "healthy_p99_vs_0pct": _ratio(s["latency_ms"]["p99"], base["latency_ms"]["p99"]),
            "publisher_p99_vs_0pct": _ratio(s["publisher"]["post_ms_p99"], base["publisher"]["post_ms_p99"]),
        }
        for s in scenarios[1:]
    }


def _cut_cell(s: dict[str, Any]) -> str:
    if not s["stalled"]:
        return "-"
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(s["hub_streams_closed"].items()))
    times, events = s["cut_off_s_after_first_publish"], s["cut_off_events_published_by_then"]
    if times["first"] is None:
        when = ""
    elif times["first"] == times["last"]:
        when = f" by {times['last']:.2f} s (event {events['last']})"
    else:
        when = f" {times['first']:.2f}-{times['last']:.2f} s (events {events['first']}-{events['last']})"
    return f"{s['stalled_cut_off']}/{s['stalled']}{when}" + (f", {reasons}" if reasons else "")


def table(scenarios: list[dict[str, Any]]) -> str:
    rows = [
        "| scenario | subscribers | stalled | healthy delivered / expected | p50 ms | p99 ms | max ms "
        "| POST p50 / p99 ms | events/s | server RSS before / after MiB "
        "| stalled clients cut off (after the 1st publish) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in scenarios:
        lat, pub, srv = s["latency_ms"], s["publisher"], s["server"]
        order = "" if s["all_healthy_in_order"] else " **(lost or out of order)**"
        rows.append(
            f"| {s['name']} | {s['subscribers']:,} | {s['stalled']:,} "
            f"| {s['healthy_delivered']:,} / {s['healthy_expected']:,}{order} "
            f"| {lat['p50']:.1f} | {lat['p99']:.1f} | {lat['max']:.1f} "
            f"| {pub['post_ms_p50']:.1f} / {pub['post_ms_p99']:.1f} | {pub['events_per_s']:.0f} "
            f"| {srv['rss_before_mib']:.1f} / {srv['rss_after_mib']:.1f} | {_cut_cell(s)} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="directory for stalled.json")
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK.subscribers} subscribers, {QUICK.events} events (for tests)")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL

    started = time.perf_counter()
    nofile = raise_nofile(plan.subscribers * 2 + 256)
    if nofile < plan.subscribers + 64:
        raise SystemExit(f"open-files limit {nofile} is too low for {plan.subscribers} subscribers")
    settings = effective_settings(plan.env())
    load = os.getloadavg()[0]
    if load > 1.0:
        print(f"warning: 1-minute load average {load:.2f} before the run: other work shares these CPUs and will "
              "show in the latencies (see cpu.*_runqueue_wait_s in the JSON)", file=sys.stderr)
    prefix, own_cpu = pinning()
    if own_cpu is not None:
        os.sched_setaffinity(0, {own_cpu})

    async def run_all(logdir: Path) -> list[dict[str, Any]]:
        return [await run_scenario(plan, name, fraction, prefix, logdir) for name, fraction in SCENARIOS]

    with tempfile.TemporaryDirectory(prefix="stalled-bench-") as tmp:
        scenarios = asyncio.run(run_all(Path(tmp)))

    result: dict[str, Any] = {
        "machine": machine_info(),
        "quick": args.quick,
        "plan": asdict(plan),
        "gateway_env": {k: v for k, v in plan.env().items() if k != "GATEWAY_HUB_PUBLISH_TOKEN"},
        "gateway_settings": settings,
        "revision": revision(),
        "pinning": {"server_cpu": 0, "load_generator_cpu": own_cpu} if own_cpu is not None else None,
        "nofile_soft_limit": nofile,
        "stalled_socket": {"SO_RCVBUF": STALLED_RCVBUF, "TCP_MAXSEG": STALLED_MSS},
        "method": (
            "fresh `gateway serve` per scenario (HTTP/1.1, identity); N raw asyncio HTTP/1.1 subscribers, the "
            f"stalled ones (SO_RCVBUF {STALLED_RCVBUF}, MSS {STALLED_MSS}, set before connect) never read after "
            "the response head; one sequential publisher on one keep-alive connection, M events (every "
            "big_every-th of big_bytes, the rest small_bytes of JSON), each sent interval_ms after the previous "
            "one or when its answer came if later, carrying perf_counter_ns() at publish; latency = receipt - "
            "publish on the same clock, pooled over healthy subscribers; POST latency = request written -> "
            "response head read; RSS from /proc before the first publish and after the stalled clients were cut "
            f"off; cut-offs from gateway_streams_closed_total{{kind=\"hub\"}}, sampled every {METRICS_EVERY} s"
        ),
        "scenarios": scenarios,
        "ratios": ratios(scenarios),
    }
    result["elapsed_seconds"] = round(time.perf_counter() - started, 1)
    print(table(scenarios))
    print()
    for name, r in result["ratios"].items():
        print(f"{name}: healthy p99 x{r['healthy_p99_vs_0pct']} vs 0% stalled, "
              f"publisher POST p99 x{r['publisher_p99_vs_0pct']}")
    write_json(args.out / "stalled.json", result)
    print(f"results: {args.out / 'stalled.json'} ({result['elapsed_seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
