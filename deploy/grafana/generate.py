"""Writes deploy/grafana/dashboards/gateway.json, the gateway's Grafana dashboard, from the panel list below.

Why a generator and not a hand-edited JSON file: a dashboard is some sixty PromQL expressions that must all use
the same ``job``/``instance`` matchers, the same ``$__rate_interval`` and the same datasource, laid out on a grid
whose positions nobody wants to compute by hand. Here each panel is one call; the JSON is committed next to it
(Grafana provisions the JSON, not this script), and ``tests/test_grafana_dashboard.py`` fails when the two
differ, so an edit of the JSON alone does not survive.

Why no library (grafanalib, grafana-foundation-sdk): the dashboard needs five panel types and a few options each;
a library would be a locked dependency whose model lags Grafana's, for a file this script writes in 300 lines
of plain dictionaries.

    .venv/bin/python deploy/grafana/generate.py           # rewrite the JSON
    .venv/bin/python deploy/grafana/generate.py --check   # exit 1 if the committed JSON is not what it writes
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUTPUT = Path(__file__).resolve().parent / "dashboards" / "gateway.json"
UID = "sse-gateway"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# Every expression selects the chosen job(s) and instance(s): a Prometheus that scrapes other things too (its own
# process_* series, another service's) must not mix them into the gateway's panels.
SEL = 'job=~"$job", instance=~"$instance"'
RATE = "$__rate_interval"  # Grafana's window for rate(): at least four scrapes (the datasource's timeInterval)
WIDTH = 24  # Grafana's grid is 24 columns wide


def sel(extra: str = "") -> str:
    """A label matcher block: the dashboard's job and instance, plus ``extra`` matchers."""
    return "{" + SEL + (", " + extra if extra else "") + "}"


def rate(metric: str, by: str, extra: str = "") -> str:
    """Per-second rate of a counter summed by ``by`` (a comma-separated label list, possibly empty)."""
    return f"sum by ({by}) (rate({metric}{sel(extra)}[{RATE}]))"


def quantile(q: float, histogram: str, by: str) -> str:
    """The ``q`` quantile of a histogram, by ``by`` (``le`` is added)."""
    return f"histogram_quantile({q}, sum by ({by}, le) (rate({histogram}_bucket{sel()}[{RATE}])))"


def target(expr: str, legend: str = "", *, instant: bool = False, fmt: str = "time_series") -> dict[str, Any]:
    t: dict[str, Any] = {"datasource": DATASOURCE, "expr": expr, "legendFormat": legend or "__auto",
                         "format": fmt, "range": not instant, "instant": instant}
    return t


def quantiles(histogram: str, by: str, legend: str, qs: tuple[float, ...] = (0.5, 0.95, 0.99)) -> list[dict[str, Any]]:
    return [target(quantile(q, histogram, by), f"p{round(q * 100)} {legend}") for q in qs]


class Layout:
    """Panels in rows, left to right, wrapping at the grid's width; ids counted from 1, unique."""

    def __init__(self) -> None:
        self.panels: list[dict[str, Any]] = []
        self.x = self.y = 0
        self.row_height = 0

    def _id(self) -> int:
        return len(self.panels) + 1

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append({"id": self._id(), "type": "row", "title": title, "collapsed": False,
                            "gridPos": {"h": 1, "w": WIDTH, "x": 0, "y": self.y}, "panels": []})
        self.y += 1

    def _newline(self) -> None:
        if self.x:
            self.y += self.row_height
            self.x = self.row_height = 0

    def add(self, kind: str, title: str, description: str, targets: list[dict[str, Any]], *, unit: str = "short",
            w: int = 8, h: int = 8, options: dict[str, Any] | None = None,
            field_config: dict[str, Any] | None = None, overrides: list[dict[str, Any]] | None = None) -> None:
        if self.x + w > WIDTH:
            self._newline()
        for index, t in enumerate(targets):
            t["refId"] = chr(ord("A") + index)
        defaults: dict[str, Any] = {"unit": unit}
        if kind == "timeseries":
            defaults["custom"] = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never",
                                  "spanNulls": False}
        defaults.update(field_config or {})
        panel: dict[str, Any] = {
            "id": self._id(), "type": kind, "title": title, "description": description, "datasource": DATASOURCE,
            "gridPos": {"h": h, "w": w, "x": self.x, "y": self.y}, "targets": targets,
            "fieldConfig": {"defaults": defaults, "overrides": overrides or []}, "options": options or {}}
        if kind == "timeseries":
            panel["options"] = {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                                "tooltip": {"mode": "multi", "sort": "desc"}, **(options or {})}
        self.panels.append(panel)
        self.x += w
        self.row_height = max(self.row_height, h)

    def series(self, title: str, description: str, targets: list[dict[str, Any]], **kw: Any) -> None:
        self.add("timeseries", title, description, targets, **kw)

    def stat(self, title: str, description: str, targets: list[dict[str, Any]], **kw: Any) -> None:
        kw.setdefault("options", {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                                  "colorMode": "background", "graphMode": "none", "textMode": "value_and_name"})
        self.add("stat", title, description, targets, **kw)


def up_down(up: str, down: str) -> dict[str, Any]:
    """Value mappings and thresholds for a 0/1 gauge: red ``down`` for 0, green ``up`` for 1."""
    return {"mappings": [{"type": "value", "options": {"0": {"text": down, "color": "red", "index": 0},
                                                       "1": {"text": up, "color": "green", "index": 1}}}],
            "thresholds": {"mode": "absolute", "steps": [{"color": "red", "value": None},
                                                         {"color": "green", "value": 1}]},
            "color": {"mode": "thresholds"}}


def panels() -> list[dict[str, Any]]:
    g = Layout()

    g.row("Build and readiness")
    g.stat("Ready", "gateway_ready: 1 while /readyz answers 200 (bus reachable, not draining); under --workers "
           "the lowest of the workers. 0 takes the instance out of the balancer, it does not restart it.",
           [target(f"min by (instance) (gateway_ready{sel()})", "{{instance}}")], w=6, h=5,
           field_config=up_down("ready", "not ready"))
    g.stat("Scraped", "up: 1 when /metrics answered the last scrape (under --workers, any worker answered).",
           [target(f'up{sel()}', "{{instance}}")], w=6, h=5, field_config=up_down("up", "down"))
    g.add("table", "Build", "gateway_build_info: the gateway, Python and Hypercorn versions each instance runs; two "
          "rows for one instance during a rolling upgrade.",
          [target(f"max by (instance, version, python, hypercorn) (gateway_build_info{sel()})", instant=True,
                  fmt="table")], w=12, h=5,
          options={"showHeader": True, "cellHeight": "sm"})

    g.row("Traffic")
    g.series("Streams open by kind", "gateway_streams_active: open SSE streams, view and hub.",
             [target(f"sum by (instance, kind) (gateway_streams_active{sel()})", "{{instance}} {{kind}}")])
    g.series("Events sent by kind", "Events written to clients per second (gateway_events_sent_total); "
             "heartbeats are comments and are not counted.",
             [target(rate("gateway_events_sent_total", "kind"), "{{kind}}")], unit="ops")
    g.series("Commands by route and outcome", "Command requests per second: accepted (204) or the refusal's "
             "error code.", [target(rate("gateway_commands_total", "route, outcome"), "{{route}} {{outcome}}")],
             unit="reqps")
    g.series("Hub publishes and bus notifications", "POST /hub/publish accepted per second, and notifications "
             "the fan-out read from the bus (view changes and hub events, counted by every process).",
             [target(rate("gateway_hub_published_total", ""), "hub publishes"),
              target(rate("gateway_bus_notifications_total", ""), "bus notifications")], unit="ops")
    g.series("Streams opened and closed", "New streams per second by kind, and closes by reason (client_closed "
             "is normal; slow_consumer and write_timeout are cuts, draining is a deploy).",
             [target(rate("gateway_streams_opened_total", "kind"), "opened {{kind}}"),
              target(rate("gateway_streams_closed_total", "kind, reason"), "closed {{kind}} {{reason}}")],
             unit="ops")
    g.series("Stream refusals", "Stream requests refused before streaming (503 over limits.max_streams, 429 per "
             "client, draining), by reason.",
             [target(rate("gateway_streams_refused_total", "kind, reason"), "{{kind}} {{reason}}")], unit="ops")

    g.row("Delivery latency")
    g.add("heatmap", "Delivery latency", "gateway_delivery_seconds: from a command accepted or a hub event "
          "published to its bytes handed to the socket, all routes and protocols.",
          [target(f"sum by (le) (increase(gateway_delivery_seconds_bucket{sel()}[{RATE}]))", "{{le}}",
                  fmt="heatmap")], unit="s", w=12, h=9,
          options={"calculate": False, "yAxis": {"unit": "s"}, "cellGap": 1, "color": {"mode": "scheme",
                   "scheme": "Oranges", "steps": 64}, "tooltip": {"mode": "single", "yHistogram": True},
                   "rowsFrame": {"layout": "auto"}, "legend": {"show": True}})
    g.series("Delivery latency quantiles by route and protocol", "p50, p95 and p99 of gateway_delivery_seconds "
             "by route and protocol (h1, h2, h3); the dashed objective is the p99 the GatewayDeliveryP99High "
             "alert holds it to (recording rule gateway:delivery_p99_objective_seconds).",
             [*quantiles("gateway_delivery_seconds", "route, protocol", "{{route}} {{protocol}}"),
              target("max(gateway:delivery_p99_objective_seconds)", "p99 objective")], unit="s", w=12, h=9,
             field_config={"custom": {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 0, "showPoints": "never",
                                      "scaleDistribution": {"type": "log", "log": 10}}})

    g.row("Protocols, encodings and compression")
    g.series("Deliveries by protocol", "Deliveries per second by HTTP protocol (gateway_delivery_seconds_count): "
             "which protocols the clients use. Streams themselves are counted by kind and encoding.",
             [target(rate("gateway_delivery_seconds_count", "protocol"), "{{protocol}}")], unit="ops")
    g.series("Streams opened by kind and encoding", "New streams per second by negotiated content encoding.",
             [target(rate("gateway_streams_opened_total", "kind, encoding"), "{{kind}} {{encoding}}")], unit="ops")
    g.series("Compression ratio", "Bytes before compression over bytes on the wire, by route and encoding "
             "(identity is 1).",
             [target(f"{rate('gateway_stream_bytes_uncompressed_total', 'route, encoding')} / "
                     f"({rate('gateway_stream_bytes_sent_total', 'route, encoding')} > 0)",
                     "{{route}} {{encoding}}")], unit="x")
    g.series("Compressor memory and budget", "Estimated memory of the live compressors against "
             "compression.memory_budget; past the budget new streams get cheaper encoders.",
             [target(f"sum by (instance) (gateway_compression_memory_bytes{sel()})", "{{instance}} in use"),
              target(f"sum by (instance) (gateway_compression_memory_budget_bytes{sel()})", "{{instance}} budget")],
             unit="bytes")
    g.series("Compression downgrades", "Streams given a cheaper encoder to stay within the budget, by route and "
             "reason (window, quality, gzip, identity).",
             [target(rate("gateway_compression_downgrades_total", "route, reason"), "{{route}} {{reason}}")],
             unit="ops")
    g.series("Bytes on the wire and compression CPU", "Bytes sent per second by route and encoding, and CPU "
             "seconds per second spent compressing (right axis).",
             [target(rate("gateway_stream_bytes_sent_total", "route, encoding"), "{{route}} {{encoding}}"),
              target(rate("gateway_encode_seconds_total", ""), "compression CPU")], unit="Bps",
             overrides=[{"matcher": {"id": "byName", "options": "compression CPU"},
                         "properties": [{"id": "unit", "value": "percentunit"},
                                        {"id": "custom.axisPlacement", "value": "right"}]}])

    g.row("Slow clients")
    g.series("Slow-client cuts", "Streams cut off as too slow, by kind and the overflow policy that applied.",
             [target(rate("gateway_slow_consumers_cut_total", "kind, policy"), "{{kind}} {{policy}}")], unit="ops")
    g.series("Bytes behind", "p50 and p99 of the bytes a stream held undelivered (mailbox and HTTP/1.1 socket "
             "buffer) each time fan-out handed it events.",
             quantiles("gateway_stream_bytes_behind", "kind", "{{kind}}", (0.5, 0.99)), unit="bytes")
    g.series("Dropped, conflated and folded", "Hub events dropped for drop-oldest subscribers, view versions "
             "skipped by slow clients (latest wins), Datastar patches folded away.",
             [target(rate("gateway_events_dropped_total", "kind"), "dropped {{kind}}"),
              target(rate("gateway_view_versions_conflated_total", "route"), "conflated {{route}}"),
              target(rate("gateway_patches_folded_total", "kind, patch"), "folded {{kind}} {{patch}}")],
             unit="ops")

    g.row("Bus")
    g.stat("Bus up", "gateway_bus_up: the bus backend (Redis) reachable; the lowest of the workers.",
           [target(f"min by (instance) (gateway_bus_up{sel()})", "{{instance}}")], w=6, h=8,
           field_config=up_down("up", "down"))
    g.series("Bus lag", "p50 and p99 of the time from a notification's publication (in any process) to this "
             "process's fan-out reading it, by kind; across machines it includes their clock offset.",
             quantiles("gateway_bus_lag_seconds", "kind", "{{kind}}", (0.5, 0.99)), unit="s", w=10)
    g.series("Bus gaps and outages", "Times fan-out fell behind the bus history (subscribers get a gap or a fresh "
             "render) and times the backend became unreachable.",
             [target(f"sum by (instance) (increase(gateway_bus_gaps_total{sel()}[{RATE}]))", "{{instance}} gaps"),
              target(f"sum by (instance) (increase(gateway_bus_outages_total{sel()}[{RATE}]))",
                     "{{instance}} outages")], w=8)

    g.row("Commands and views")
    g.add("bargauge", "Command outcomes over the range", "Command requests in the dashboard's time range by "
          "outcome: accepted, or the refusal's error code.",
          [target(f"sum by (outcome) (increase(gateway_commands_total{sel()}[$__range]))", "{{outcome}}",
                  instant=True)], w=6,
          options={"orientation": "horizontal", "displayMode": "basic", "showUnfilled": True,
                   "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}})
    g.series("Handlers run by result", "Command handlers run per second by route and result (error: the command "
             "was answered 204 and did nothing; its traceback is in the log).",
             [target(rate("gateway_commands_handled_total", "route, result"), "{{route}} {{result}}")], unit="ops",
             w=9)
    g.series("Handler latency", "p50 and p99 of command handler time by route.",
             quantiles("gateway_command_handler_seconds", "route", "{{route}}", (0.5, 0.99)), unit="s", w=9)
    g.series("View render time", "p50 and p99 of a view's render time by route (a shared view renders once per "
             "version).", quantiles("gateway_view_render_seconds", "route", "{{route}}", (0.5, 0.99)), unit="s",
             w=12)
    g.series("View renders by result", "Renders per second by route and result.",
             [target(rate("gateway_view_renders_total", "route, result"), "{{route}} {{result}}")], unit="ops",
             w=12)

    g.row("Process resources (per instance; under --workers, the sum of its workers)")
    g.series("CPU", "CPU seconds per second (1 = one core).",
             [target(f"sum by (instance) (rate(process_cpu_seconds_total{sel()}[{RATE}]))", "{{instance}}")],
             unit="percentunit", w=6)
    g.series("Resident memory", "process_resident_memory_bytes, summed over workers.",
             [target(f"sum by (instance) (process_resident_memory_bytes{sel()})", "{{instance}}")], unit="bytes",
             w=6)
    g.series("Open file descriptors", "Open descriptors (every stream is a socket) against the limit of one "
             "process.", [target(f"sum by (instance) (process_open_fds{sel()})", "{{instance}} open"),
                          target(f"max by (instance) (process_max_fds{sel()})", "{{instance}} limit per process")],
             w=6)
    g.series("GC pauses", "Seconds per second the CPython collector paused the loop, by generation, and the p99 "
             "pause.", [target(rate("gateway_gc_pause_seconds_sum", "generation"), "paused/s gen {{generation}}"),
                        *quantiles("gateway_gc_pause_seconds", "generation", "gen {{generation}}", (0.99,))],
             unit="s", w=6)

    g.row("Per worker (gateway serve --workers N: one series per worker pid)")
    g.series("CPU by worker", "process_cpu_seconds_total by pid: an unbalanced group shows one worker busier.",
             [target(f"sum by (instance, pid) (rate(process_cpu_seconds_total{sel()}[{RATE}]))",
                     "{{instance}} pid {{pid}}")], unit="percentunit")
    g.series("Resident memory by worker", "process_resident_memory_bytes by pid.",
             [target(f"sum by (instance, pid) (process_resident_memory_bytes{sel()})", "{{instance}} pid {{pid}}")],
             unit="bytes")
    g.series("Open descriptors by worker", "process_open_fds by pid: a worker's streams.",
             [target(f"sum by (instance, pid) (process_open_fds{sel()})", "{{instance}} pid {{pid}}")])
    return g.panels


def variables() -> list[dict[str, Any]]:
    def query(name: str, label: str, definition: str) -> dict[str, Any]:
        return {"type": "query", "name": name, "label": label, "datasource": DATASOURCE,
                "definition": definition, "query": {"query": definition, "refId": f"var-{name}"},
                "refresh": 2, "includeAll": True, "multi": True, "allValue": ".+", "sort": 1,
                "current": {"selected": True, "text": ["All"], "value": ["$__all"]}, "options": [], "hide": 0}

    return [
        {"type": "datasource", "name": "datasource", "label": "Data source", "query": "prometheus",
         "current": {}, "options": [], "refresh": 1, "regex": "", "hide": 0},
        query("job", "Job", "label_values(gateway_build_info, job)"),
        query("instance", "Instance", 'label_values(gateway_build_info{job=~"$job"}, instance)'),
    ]


def dashboard() -> dict[str, Any]:
    return {
        "uid": UID, "title": "SSE gateway", "tags": ["sse-gateway"], "timezone": "browser", "editable": True,
        "graphTooltip": 1, "refresh": "30s", "schemaVersion": 39, "version": 1,
        "time": {"from": "now-1h", "to": "now"}, "fiscalYearStartMonth": 0, "liveNow": False,
        "description": "SSE gateway: traffic, delivery latency, compression, slow clients, bus, commands, views and "
                       "processes. Generated by deploy/grafana/generate.py.",
        "links": [], "annotations": {"list": []},
        "templating": {"list": variables()},
        "panels": panels(),
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not OUTPUT.exists() or OUTPUT.read_text() != text:
            print(f"{OUTPUT} is not what {Path(__file__).name} writes: run it", file=sys.stderr)
            return 1
        return 0
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT} ({len(dashboard()['panels'])} panels and rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
