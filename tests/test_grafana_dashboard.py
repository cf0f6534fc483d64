"""deploy/grafana/: the gateway's Grafana dashboard and its provisioning, and deploy/compose's Prometheus and Grafana.

Two tiers. The ``unit`` tests read the files: the dashboard JSON is exactly what deploy/grafana/generate.py writes,
every panel has the dashboard's datasource and targets, ids are unique, every expression selects ``$job`` and
``$instance``, and every metric (and every label a matcher or a ``by`` names) is one gateway/metrics.py registers,
so a renamed metric cannot leave a panel silently empty; the provisioning and compose files point at each other.

The ``live`` test runs the real thing: ``gateway serve --workers 2`` on a Redis bus (the production shape, whose
per-worker ``pid`` series the dashboard's last row reads), a real Prometheus scraping it every second, and a few
seconds of load from view and hub subscribers over HTTP/1.1 and HTTP/2, commands, hub publishes, a stalled
subscriber that gets cut and one that gets events dropped, a refused stream and a refused command. Then every
target of every panel, with Grafana's variables substituted as Grafana would, runs against Prometheus's HTTP API
and must return data; and the events the clients received must equal what ``gateway_events_sent_total`` counted.
Without prometheus or Redis the live test skips, or fails under GATEWAY_TEST_STRICT=1.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import re
import ssl
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
import yaml

from tests.support.metrics import metric, wait_metric
from tests.support.prometheus import JOB, SCRAPE_INTERVAL, Prometheus, finite, running_prometheus
from tests.support.raw_stream import RawStream
from tests.support.redis import drop_namespace, redis_namespace
from tests.support.server import HUB_TOKEN, ROOT, Server, free_port, start_server
from tests.support.sse_client import SSEReader
from tests.support.stalled import close_now, open_stalled, read_until_gone
from tests.support.wait import wait_until
from tests.support.workers import METRICS_ENV
from tests.test_prometheus_rules import exposed, recorded, selectors

GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "gateway.json"
GENERATOR = GRAFANA / "generate.py"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yaml"
PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "gateway.yaml"
COMPOSE = ROOT / "deploy" / "compose" / "compose.yaml"
COMPOSE_PROMETHEUS = ROOT / "deploy" / "compose" / "prometheus.yml"
SHIPPED_PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
RULE_FILES = sorted((ROOT / "deploy" / "prometheus" / "rules").glob("*.yml"))

# Metric families announced for the observability issue that a panel may read before gateway/metrics.py registers
# them. Each is allowed only while it is absent: once registered, it is checked like any other (and the live test
# then requires its panels to show data).
PENDING = ("gateway_delivery_seconds", "gateway_bus_lag_seconds", "gateway_view_render_seconds", "gateway_ready",
           "gateway_build_info", "gateway_gc_pause_seconds", "gateway_stream_bytes_behind",
           "gateway_patches_folded_total", "process_")
# Labels Prometheus adds to every scraped series, and the one the multiprocess collector adds to process_* gauges
# under --workers (mode liveall: one series per worker; see gateway.metrics.ProcessStats).
TARGET_LABELS = frozenset({"job", "instance"})
WORKER_LABEL = "pid"

# Grafana's substitutions for a range query with a 1 s step against a datasource whose scrape interval is 1 s:
# $__interval is the step; $__rate_interval is max($__interval + scrape interval, 4 x scrape interval).
INTERVAL = f"{SCRAPE_INTERVAL:g}s"
RATE_INTERVAL = f"{max(2 * SCRAPE_INTERVAL, 4 * SCRAPE_INTERVAL):g}s"


# --- reading the dashboard -------------------------------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def panels() -> list[dict[str, Any]]:
    """Every panel but rows, including any nested in a collapsed row."""
    found = []
    for panel in dashboard()["panels"]:
        if panel["type"] == "row":
            found += panel.get("panels", [])
        else:
            found.append(panel)
    return found


def targets() -> list[tuple[str, dict[str, Any]]]:
    return [(panel["title"], t) for panel in panels() for t in panel["targets"]]


def generator() -> ModuleType:
    """deploy/grafana/generate.py, loaded from its path (deploy/ is not a package)."""
    spec = importlib.util.spec_from_file_location("grafana_generate", GENERATOR)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def substitute(expr: str, *, range_seconds: float, job: str = JOB, instance: str = ".+") -> str:
    """A target's expression as Grafana sends it (variables and built-in intervals replaced)."""
    return (expr.replace("$__rate_interval", RATE_INTERVAL).replace("$__interval", INTERVAL)
            .replace("$__range", f"{max(1, round(range_seconds))}s")
            .replace("$job", job).replace("$instance", instance))


def groupings(expr: str) -> list[set[str]]:
    """The label lists of every ``by (...)`` in an expression."""
    return [{label.strip() for label in found.split(",") if label.strip()}
            for found in re.findall(r"\bby\s*\(([^)]*)\)", expr)]


def missing_pending(names: dict[str, tuple[str, frozenset[str]]]) -> set[str]:
    """The PENDING prefixes that gateway/metrics.py does not register yet."""
    return {p for p in PENDING if not any(n == p or n.startswith(p + ("" if p.endswith("_") else "_"))
                                          for n in names)}


def pending_name(name: str, absent: set[str]) -> bool:
    return any(name == p or name.startswith(p if p.endswith("_") else p + "_") for p in absent)


# --- the files, read in-process (unit) -------------------------------------------------------------------------------


@pytest.mark.unit
def test_dashboard_is_what_the_generator_writes() -> None:
    """The JSON is generated: an edit made to it alone would be lost at the next generation."""
    assert DASHBOARD.read_text() == generator().render(), "run .venv/bin/python deploy/grafana/generate.py"


@pytest.mark.unit
def test_every_panel_has_the_datasource_targets_and_a_unique_id() -> None:
    board = dashboard()
    every = board["panels"] + [p for row in board["panels"] for p in row.get("panels", [])]
    ids = [p["id"] for p in every]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {sorted(i for i, n in Counter(ids).items() if n > 1)}"
    assert len(panels()) >= 30
    occupied: set[tuple[int, int]] = set()
    for panel in every:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, f"{panel['title']} runs off the grid"
        cells = {(pos["x"] + dx, pos["y"] + dy) for dx in range(pos["w"]) for dy in range(pos["h"])}
        assert not cells & occupied, f"{panel['title']} overlaps another panel"
        occupied |= cells
    for panel in panels():
        title = panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, title
        assert panel["targets"], f"{title} has no targets"
        assert panel.get("description"), f"{title} has no description (what it shows and why it matters)"
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), f"{title}: duplicate refIds"
        for t in panel["targets"]:
            assert t["datasource"] == panel["datasource"], title
            assert t["expr"].strip(), title


@pytest.mark.unit
def test_template_variables_and_their_use() -> None:
    """``$datasource`` picks the Prometheus; ``$job`` and ``$instance`` are in every selector of a scraped series,
    so another job's process_* series or another deployment never mix into a panel."""
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("job", "instance"):
        assert variables[name]["type"] == "query"
        assert variables[name]["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    assert "$job" in variables["instance"]["definition"], "the instance list must follow the chosen job"
    own = recorded_names()
    for title, t in targets():
        for name, labels in selectors(t["expr"]):
            if name not in own:
                assert {"job", "instance"} <= labels, f"{title}: {name} does not select $job and $instance"
        for used in re.findall(r"\$(\w+)", t["expr"]):
            assert used in variables or used.startswith("__"), f"{title}: ${used} is not a variable"


def recorded_names() -> set[str]:
    return recorded()


@pytest.mark.unit
def test_panels_read_only_metrics_and_labels_the_gateway_exposes() -> None:
    """Every metric a panel reads is registered by ``gateway.metrics.Metrics(CollectorRegistry())`` or recorded by
    deploy/prometheus/rules (or Prometheus's ``up``), with every label its matchers and ``by`` clauses name; the
    PENDING names are let through only while the registry lacks them."""
    names = exposed()
    absent = missing_pending(names)
    own = recorded_names()
    problems = []
    for title, t in targets():
        expr = t["expr"]
        labels_read: set[str] = set(TARGET_LABELS)
        for name, used in selectors(expr):
            if name in own or name == "up":
                continue
            if name not in names:
                if not pending_name(name, absent):
                    problems.append(f"{title}: {name} is not a metric of gateway/metrics.py")
                continue
            own_labels = names[name][1] | TARGET_LABELS | ({WORKER_LABEL} if name.startswith("process_") else set())
            labels_read |= own_labels
            if used - own_labels:
                problems.append(f"{title}: {name} has no label {sorted(used - own_labels)}")
        if any(pending_name(name, absent) for name, _ in selectors(expr)):
            continue
        for by in groupings(expr):
            if by - labels_read:
                problems.append(f"{title}: by ({', '.join(sorted(by))}): no metric it reads has "
                                f"{sorted(by - labels_read)}")
    assert not problems, "\n".join(problems)


@pytest.mark.unit
def test_provisioning_loads_the_dashboard_from_prometheus() -> None:
    (source,) = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090", "the compose service, on Prometheus's own port"
    shipped = yaml.safe_load(SHIPPED_PROMETHEUS.read_text())
    assert source["jsonData"]["timeInterval"] == shipped["global"]["scrape_interval"], \
        "Grafana's $__rate_interval must span four real scrapes"
    (provider,) = yaml.safe_load(PROVIDERS.read_text())["providers"]
    assert provider["type"] == "file"
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    grafana = services["grafana"]
    mounts = {m.split(":")[1]: m.split(":")[0] for m in grafana["volumes"]}
    assert mounts[provider["options"]["path"]] == "../grafana/dashboards"
    assert mounts["/etc/grafana/provisioning/datasources"] == "../grafana/provisioning/datasources"
    assert mounts["/etc/grafana/provisioning/dashboards"] == "../grafana/provisioning/dashboards"
    for mount in grafana["volumes"] + services["prometheus"]["volumes"]:
        host = mount.split(":")[0]
        if host.startswith("."):
            assert (COMPOSE.parent / host).exists(), f"compose mounts {host}, which does not exist"
    assert grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] == \
        f"{provider['options']['path']}/{DASHBOARD.name}"


@pytest.mark.unit
def test_compose_prometheus_is_the_shipped_config_with_compose_targets() -> None:
    """deploy/compose/prometheus.yml may differ from deploy/prometheus/prometheus.yml only in its targets (the
    compose services) and the Alertmanager (none in compose); its rule files are the shipped ones, mounted."""
    shipped, compose = (yaml.safe_load(p.read_text()) for p in (SHIPPED_PROMETHEUS, COMPOSE_PROMETHEUS))
    assert compose["global"] == shipped["global"]
    assert compose["rule_files"] == shipped["rule_files"]
    (job,) = compose["scrape_configs"]
    (shipped_job,) = shipped["scrape_configs"]
    assert {k: v for k, v in job.items() if k != "static_configs"} == \
           {k: v for k, v in shipped_job.items() if k != "static_configs"}
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    gateways = sorted(n for n, s in services.items() if "build" in s)
    assert job["static_configs"] == [{"targets": [f"{n}:8000" for n in gateways]}]
    prometheus = services["prometheus"]
    assert "./prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prometheus["volumes"]
    assert "../prometheus/rules:/etc/prometheus/rules:ro" in prometheus["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]


@pytest.mark.unit
def test_substitution_matches_grafana() -> None:
    expr = 'sum by (kind) (rate(a_total{job=~"$job", instance=~"$instance"}[$__rate_interval])) + $__interval'
    assert substitute(expr, range_seconds=30) == \
        'sum by (kind) (rate(a_total{job=~"gateway", instance=~".+"}[4s])) + 1s'
    assert groupings("sum by (a, b) (x) / sum by (c) (y)") == [{"a", "b"}, {"c"}]


# --- live: a gateway under load, a real Prometheus, every panel's query ----------------------------------------------

EVENT = 16_000  # bytes of data per event published to the stalled topics: a few hundred fill any socket buffer
HUB_RULES = [
    # A bound below one event: the first event fan-out cannot write to the socket overflows the mailbox at once,
    # with no write in flight, so the stream is cut cleanly and its reader gets everything written before.
    {"topic": "strict.*", "overflow": "disconnect", "max_bytes": 8192, "grace": 120},
    {"topic": "lossy.*", "overflow": "drop-oldest", "max_events": 20, "grace": 120},
]
AUTH = {"Authorization": f"Bearer {HUB_TOKEN}"}
VIEW = "/todos/updates"
TICKER = "ticker"
COMMANDS = 24  # /todos/add, one every TICK
PUBLISHES = 48  # ticker events, two every TICK
PREFILL = 40  # todos of 500 bytes added before the streams open
TICK = 0.2  # seconds: the load lasts COMMANDS * TICK, several rate() windows of RATE_INTERVAL
STALL_BOUND = 600  # most 16 kB events published to a stalled topic before the test gives up on its cut or drop


@dataclass
class Received:
    """Events the test's clients read, by stream kind."""

    events: Counter[str] = field(default_factory=Counter)


@dataclass
class Subscriber:
    """One SSE stream read in a task until it sees ``final`` in an event's data (views) or as an id (hub)."""

    kind: str
    url: str
    encoding: str
    h2: bool
    received: Received
    done: asyncio.Event = field(default_factory=asyncio.Event)
    opened: asyncio.Event = field(default_factory=asyncio.Event)
    final: str = ""
    task: asyncio.Task[None] | None = None

    async def run(self, tls: ssl.SSLContext) -> None:
        async with httpx.AsyncClient(http1=not self.h2, http2=self.h2, verify=tls, timeout=30) as client, \
                client.stream("GET", self.url, headers={"Accept-Encoding": self.encoding}) as response:
            assert response.status_code == 200, (self.url, response.status_code)
            assert response.http_version == ("HTTP/2" if self.h2 else "HTTP/1.1")
            reader = SSEReader(response.aiter_raw(), response.headers.get("content-encoding"))
            while True:
                event = await reader.next_event(timeout=30)
                self.received.events[self.kind] += 1
                self.opened.set()
                if self.final and (event.id == self.final if self.kind == "hub" else self.final in event.data):
                    self.done.set()


async def _publish(client: httpx.AsyncClient, topic: str, data: str, event_id: str) -> None:
    answer = await client.post("/hub/publish", json={"topic": topic, "data": data, "id": event_id}, headers=AUTH)
    assert answer.status_code == 204, answer.text


async def _stall_until(client: httpx.AsyncClient, base: str, topic: str, sample: str, **labels: str) -> list[str]:
    """Publish 16 kB events to ``topic`` until the gateway counts ``sample`` (a cut, a drop); their ids."""
    ids: list[str] = []
    while await metric(base, sample, **labels) == 0:
        assert len(ids) < STALL_BOUND, f"{STALL_BOUND} events to {topic} and still no {sample}"
        batch = [f"{topic}-{len(ids) + i:04d}" for i in range(10)]
        for event_id in batch:
            await _publish(client, topic, event_id + "y" * (EVENT - len(event_id)), event_id)
        ids += batch
    return ids


async def stalled_cut(server: Server) -> None:
    """A hub reader that stops reading on a ``disconnect`` topic, published to until it is cut as a slow consumer.

    It runs before the window whose events are compared: ``gateway_events_sent_total`` counts events handed to the
    transport, and a cut may abandon a write stuck on the client (its bytes never leave; the connection is reset),
    so what a cut reader reads can be fewer events than were counted for it (seen here: 4 of ~300).
    """
    stream = await open_stalled(server.http_port, "/hub/subscribe?topic=strict.cut")
    try:
        async with httpx.AsyncClient(base_url=server.http, timeout=10) as client:
            await _stall_until(client, server.http, "strict.cut", "gateway_slow_consumers_cut_total", kind="hub")
        await read_until_gone(stream)
    finally:
        await close_now(stream)
    await _settle(server)


async def _settle(server: Server) -> None:
    """Wait until the gateway holds no stream: every client is gone and the gateway has seen it (under --workers
    the gauge is summed over the live workers), so no event can be written that no client reads."""
    await wait_metric(server.http, "gateway_streams_active", 0, timeout=15)


def _report(server: Server) -> None:
    """Ask the gateway for /metrics on a fresh connection, so that the worker the kernel hands it to reports its
    streams' last writes.

    A stream's writes are tallied as plain numbers and moved into the shared counters after each fan-out round
    with a direct write, and before each exposition of that same worker. Under --workers a worker whose last
    writes went through its streams' own tasks (HTTP/2) and that Prometheus does not happen to scrape (its
    connection is kept alive to one worker) keeps them until its next round: a fresh connection reaches a worker
    the kernel picks by hashing the client's port, so a few of them reach every worker.
    """
    httpx.get(server.http + "/metrics", timeout=5, headers={"Connection": "close"})


async def drain_view(stream: RawStream, received: Received, final: str) -> None:
    """Read a stalled view reader up to the render that holds ``final``, counting every event."""
    try:
        async with asyncio.timeout(30):
            while True:
                event = await stream.next_parsed(30)
                received.events["view"] += 1
                if final in event.data:
                    break
    finally:
        await close_now(stream)


async def stalled_drop(server: Server, client: httpx.AsyncClient, received: Received) -> None:
    """A hub reader that stops reading on a ``drop-oldest`` topic: events are dropped and a gap event says so;
    it then reads up to a last event published after the drops (gap events are events too)."""
    stream = await open_stalled(server.http_port, "/hub/subscribe?topic=lossy.drop")
    try:
        await _stall_until(client, server.http, "lossy.drop", "gateway_events_dropped_total", kind="hub")
        await _publish(client, "lossy.drop", "last", "lossy-last")
        async with asyncio.timeout(30):
            while True:
                event = await stream.next_parsed(30)
                received.events["hub"] += 1
                if event.id == "lossy-last":
                    break
    finally:
        await close_now(stream)


@dataclass
class Load:
    """What the load did, for the checks: its time window and the events its clients read."""

    started: float
    ended: float
    received: Received


async def drive(server: Server, *, commands: int = COMMANDS, tick: float = TICK) -> Load:
    """A few seconds of traffic on every path the dashboard shows; bounded in counts and time.

    Six view and four hub subscribers (HTTP/1.1 and HTTP/2, Brotli, zstd, gzip and identity), ``commands``
    commands (one refused with 422) and twice as many hub publishes, one hub stream refused (400), and a stalled
    hub reader that gets events dropped (the cut one runs before: ``stalled_cut``). It ends with a last command
    and a last hub event every subscriber waits for, so that when it returns every event written has been read;
    then every stream is closed and the gateway has seen them go.
    """
    tls = ssl.create_default_context(cafile=str(server.certfile))
    received = Received()
    specs = [("view", VIEW, "br", False), ("view", VIEW, "gzip", False), ("view", VIEW, "identity", False),
             ("view", VIEW, "br", True), ("view", VIEW, "zstd", True), ("view", VIEW, "identity", True),
             ("hub", f"/hub/subscribe?topic={TICKER}", "br", False), ("hub", f"/hub/subscribe?topic={TICKER}",
                                                                      "identity", False),
             ("hub", f"/hub/subscribe?topic={TICKER}", "gzip", True), ("hub", f"/hub/subscribe?topic={TICKER}",
                                                                       "br", True)]
    subscribers = [Subscriber(kind, (server.https if h2 else server.http) + path, enc, h2, received)
                   for kind, path, enc, h2 in specs]
    started = time.time()
    async with httpx.AsyncClient(base_url=server.http, timeout=10) as client:
        # Renders of about 20 kB: a client that stops reading falls behind within a few of them.
        for n in range(PREFILL):
            text = f"prefill {n} " + "x" * 480
            assert (await client.post("/todos/add", json={"text": text})).status_code == 204
        for sub in subscribers:
            sub.task = asyncio.create_task(sub.run(tls), name=f"{sub.kind} {sub.encoding} h2={sub.h2}")
        try:
            # Bounded: setup and teardown, and each command with its two publishes (well under 200 ms on loopback).
            async with asyncio.timeout(30 + commands * (tick + 0.2)):
                await _open(client, subscribers)
                stalls = asyncio.ensure_future(stalled_drop(server, client, received))
                conflating = await open_stalled(server.http_port, VIEW)
                refused = await client.get("/hub/subscribe")  # no topic: 400, counted as a refused stream
                assert refused.status_code == 400
                invalid = await client.post("/todos/add", json={})  # 422, an outcome of its own
                assert invalid.status_code == 422
                for n in range(commands):
                    assert (await client.post("/todos/add", json={"text": f"load {n}"})).status_code == 204
                    await _publish(client, TICKER, json.dumps({"n": 2 * n}), f"tick-{2 * n}")
                    await asyncio.sleep(tick / 2)  # pacing of the load itself, not a wait for anything
                    await _publish(client, TICKER, json.dumps({"n": 2 * n + 1}), f"tick-{2 * n + 1}")
                    await asyncio.sleep(tick / 2)
                await stalls
                final = f"final-{uuid.uuid4().hex[:8]}"
                for sub in subscribers:
                    sub.final = final if sub.kind == "view" else "tick-final"
                assert (await client.post("/todos/add", json={"text": final})).status_code == 204
                await _publish(client, TICKER, "{}", "tick-final")
                for sub in subscribers:
                    await _done(sub)
                await drain_view(conflating, received, final)
        finally:
            for sub in subscribers:
                if sub.task is not None:
                    sub.task.cancel()
            await asyncio.gather(*(s.task for s in subscribers if s.task), return_exceptions=True)
    await _settle(server)
    return Load(started, time.time(), received)


async def _open(client: httpx.AsyncClient, subscribers: list[Subscriber], attempts: int = 40) -> None:
    """Wait until every subscriber has read an event. A view's first event is its current state; a hub stream has
    none, and an event published before its topic's subscription reaches the bus is not for it: the test
    publishes opening events until each hub stream has read one (whatever each reads is counted)."""
    for attempt in range(attempts):
        await _publish(client, TICKER, json.dumps({"open": attempt}), f"tick-open-{attempt}")
        waiting = [asyncio.ensure_future(_first_of(s, s.opened, "its first event")) for s in subscribers]
        _, pending = await asyncio.wait(waiting, timeout=0.5)
        for task in pending:
            task.cancel()
        for task in waiting:
            if task.done() and not task.cancelled() and task.exception():
                raise task.exception()  # type: ignore[misc]
        if not pending:
            return
    raise TimeoutError(f"some subscribers read no event after {attempts} opening events")


async def _done(sub: Subscriber) -> None:
    await _first_of(sub, sub.done, f"the final event {sub.final}")


async def _first_of(sub: Subscriber, event: asyncio.Event, what: str) -> None:
    """Wait for ``event``, or raise the subscriber's own failure if its task ended first."""
    assert sub.task is not None
    waiter = asyncio.ensure_future(event.wait())
    await asyncio.wait([waiter, sub.task], return_when=asyncio.FIRST_COMPLETED)
    if not waiter.done():
        waiter.cancel()
        exc = sub.task.exception() if not sub.task.cancelled() else None
        raise AssertionError(f"{sub.kind} subscriber ({sub.encoding}, h2={sub.h2}) ended before {what}") from exc


@contextlib.asynccontextmanager
async def observed_gateway(tmp: Path, certs: tuple[Path, Path]) -> AsyncIterator[tuple[Server, Prometheus]]:
    """``gateway serve --workers 2`` on a fresh Redis namespace, and a Prometheus scraping it every second with the
    shipped recording and alerting rules loaded; both stopped on exit. Prometheus starts first, on the port the
    gateway will take, so the two start together."""
    url = redis_namespace()
    metrics_dir = tmp / "metrics"
    metrics_dir.mkdir()
    port = free_port()
    env = {"GATEWAY_BUS_URL": url, METRICS_ENV: str(metrics_dir),
           "GATEWAY_HUB_SLOW_CLIENTS": json.dumps(HUB_RULES),
           # The stalled view reader conflates for the whole load and is never cut as too slow, nor for a write
           # stuck on it (benchmarks.latency_picture stalls it longer than the default 30 s write timeout).
           "GATEWAY_SSE_VIEW_SLOW_CLIENTS": json.dumps([{"path": VIEW, "grace": 120}]),
           "GATEWAY_SSE_WRITE_TIMEOUT": "300",
           # A budget of about three Brotli streams per worker, so that later streams are downgraded (and the
           # downgrade panel has data); one address (all of loopback) may use all of it.
           "GATEWAY_COMPRESSION_MEMORY_BUDGET": "3000000", "GATEWAY_COMPRESSION_CLIENT_SHARE": "1"}
    try:
        with running_prometheus(tmp, [f"127.0.0.1:{port}"], rule_files=RULE_FILES) as prometheus:
            server = start_server(tmp, certs, env=env, args=["--workers", "2"], http_port=port)
            try:
                yield server, prometheus
            finally:
                code = server.stop()
                assert code == 0, f"gateway exited with {code}:\n{server.output()}"
    finally:
        await drop_namespace(url)


async def observe(tmp: Path, certs: tuple[Path, Path], check: Callable[[Server, Prometheus, Load, float], None],
                  **load: Any) -> None:
    async with observed_gateway(tmp, certs) as (server, prometheus):
        started = time.time()
        await stalled_cut(server)
        before = await asyncio.to_thread(prometheus.wait_scraped_after, time.time(), 20)
        baseline = await asyncio.to_thread(_events_by_kind, prometheus, before)
        result = await drive(server, **load)
        result.started = started  # the dashboard's window includes the cut
        expected = result.received.events

        def caught_up() -> bool:
            _report(server)
            return _events_by_kind(prometheus, None) - baseline == expected

        # The counter can only be read through scrapes: poll, bounded, until Prometheus holds every event the
        # clients read (see _report for how the last ones get reported); a count that never matches fails below.
        with contextlib.suppress(TimeoutError):
            await wait_until(lambda: asyncio.to_thread(caught_up), 15, what="gateway_events_sent_total to match",
                             interval=0.25)
        end = await asyncio.to_thread(prometheus.wait_scraped_after, time.time(), 10)
        counted = await asyncio.to_thread(_events_by_kind, prometheus, end)
        assert counted - baseline == expected, (
            f"events the clients read {dict(expected)} != gateway_events_sent_total's increase "
            f"{dict(counted - baseline)} over the same window")
        await asyncio.to_thread(check, server, prometheus, result, end)


def _events_by_kind(prometheus: Prometheus, at: float | None) -> Counter[str]:
    return Counter({s["metric"]["kind"]: round(float(s["value"][1])) for s in prometheus.query(
        f'sum by (kind) (gateway_events_sent_total{{job="{JOB}"}})', at)})


def check_every_panel(server: Server, prometheus: Prometheus, load: Load, end: float) -> None:
    """Every target of every panel returns data over the load's window, as Grafana would ask for it."""
    absent = missing_pending(exposed())
    empty, skipped = [], []
    start = load.started
    for title, t in targets():
        expr = substitute(t["expr"], range_seconds=end - start)
        if t.get("instant"):
            result = prometheus.query(expr, end)
        else:
            result = prometheus.query_range(expr, start, end, SCRAPE_INTERVAL)
        if any(pending_name(name, absent) for name, _ in selectors(t["expr"])):
            skipped.append(f"{title}: {t['refId']}")
            continue
        if not finite(result):
            empty.append(f"{title} [{t['refId']}]: {expr}")
    assert not empty, "panels without data under load:\n" + "\n".join(empty)
    if skipped:
        print(f"not yet registered {sorted(absent)}; their targets ran but were not required to show data: {skipped}")
    # The per-worker row: one series per worker of the group.
    pids = {s["metric"].get(WORKER_LABEL) for s in prometheus.query(
        f'process_resident_memory_bytes{{job="{JOB}"}}', end)}
    assert len(pids - {None}) == 2, f"expected a process_* series per worker (pid), got {pids}"
    assert prometheus.query(f'min(gateway_ready{{job="{JOB}"}})', end)[0]["value"][1] == "1"


@pytest.mark.live
@pytest.mark.asyncio
@pytest.mark.timeout(120)
async def test_every_panel_shows_data_and_events_sent_match_events_received(tmp_path: Path,
                                                                            certs: tuple[Path, Path]) -> None:
    await observe(tmp_path, certs, check_every_panel)


@pytest.mark.live
def test_compose_prometheus_config_passes_promtool(tmp_path: Path) -> None:
    """deploy/compose/prometheus.yml with the rule files where compose mounts them (next to it, in rules/)."""
    from tests.test_prometheus_rules import promtool

    (tmp_path / "prometheus.yml").write_text(COMPOSE_PROMETHEUS.read_text())
    (tmp_path / "rules").symlink_to(RULE_FILES[0].parent)
    promtool("check", "config", str(tmp_path / "prometheus.yml"))
