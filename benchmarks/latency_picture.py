"""The picture of docs/observability.md: latency quantiles as the Grafana dashboard draws them, from a real
Prometheus scraping a real gateway under the dashboard test's load.

    .venv/bin/python -m benchmarks.latency_picture [--out docs/observability-latency.png]

Needs Debian's ``prometheus`` and a Redis on 6379 (as the live tests do). It starts ``gateway serve --workers 2``
and Prometheus exactly as ``tests/test_grafana_dashboard.py`` does, runs that test's load twice (a calm phase, then
commands four times as often, on a longer list), and plots, from Prometheus's query API, the p50/p95/p99 of
``gateway_delivery_seconds`` by protocol with the dashboard's expressions. While the gateway does not register
that histogram yet, it plots what it has: view render time and bus lag. Run on demand, not by the tests.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from benchmarks import ROOT

OUT = ROOT / "docs" / "observability-latency.png"
WINDOW = "5s"  # rate() window: five 1 s scrapes, a little smoother than the dashboard's 4 s at that interval


async def collect(tmp: Path) -> tuple[str, dict[str, list[tuple[float, float]]], list[tuple[str, float]]]:
    """Run the load; the plotted title, each line's points (seconds since the start, value) and phase marks."""
    from gateway import devcert
    from tests.support.prometheus import JOB
    from tests.test_grafana_dashboard import drive, observed_gateway

    certs = devcert.create(tmp / "certs")
    async with observed_gateway(tmp, certs) as (server, prometheus):
        started = time.time()
        await drive(server, commands=60, tick=0.2)
        busier = time.time() - started
        await drive(server, commands=160, tick=0.05)
        end = await asyncio.to_thread(prometheus.wait_scraped_after, time.time(), 10)
        sel = f'job="{JOB}"'
        delivery = prometheus.query(f"count(gateway_delivery_seconds_bucket{{{sel}}})")
        if delivery:
            title = "Delivery latency (command or publish to socket), by protocol"
            queries = {f"p{q} {{protocol}}": (f"histogram_quantile(0.{q}, sum by (protocol, le) "
                                              f"(rate(gateway_delivery_seconds_bucket{{{sel}}}[{WINDOW}])))")
                       for q in ("50", "95", "99")}
        else:
            title = "View render time and bus lag (gateway_delivery_seconds not registered yet)"
            queries = {f"render p{q}": (f"histogram_quantile(0.{q}, sum by (le) "
                                        f"(rate(gateway_view_render_seconds_bucket{{{sel}}}[{WINDOW}])))")
                       for q in ("50", "99")}
            queries |= {f"bus lag p{q} {{kind}}": (f"histogram_quantile(0.{q}, sum by (kind, le) "
                                                   f"(rate(gateway_bus_lag_seconds_bucket{{{sel}}}[{WINDOW}])))")
                        for q in ("50", "99")}
        lines: dict[str, list[tuple[float, float]]] = {}
        for legend, expr in queries.items():
            for series in prometheus.query_range(expr, started, end, 1.0):
                name = legend.format(**series["metric"]) if "{" in legend else legend
                points = [(float(t) - started, float(v)) for t, v in series["values"] if v not in ("NaN", "+Inf")]
                if points:
                    lines[name] = points
    return title, lines, [("commands every 200 ms", 0.0), ("every 50 ms, longer list", busier)]


def plot(title: str, lines: dict[str, list[tuple[float, float]]], marks: list[tuple[str, float]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.8), dpi=110)
    for name in sorted(lines):
        xs, ys = zip(*lines[name], strict=True)
        ax.plot(xs, [y * 1000 for y in ys], label=name, linewidth=1.4)
    for label, at in marks:
        ax.axvline(at, color="grey", linestyle=":", linewidth=1)
        ax.annotate(label, (at, 1), xycoords=("data", "axes fraction"), xytext=(4, -14),
                    textcoords="offset points", fontsize=8, color="dimgrey")
    ax.set_yscale("log")
    ax.set_xlabel("seconds since the load began")
    ax.set_ylabel("milliseconds (log scale)")
    ax.set_title(title, fontsize=11)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.text(0.01, 0.01, "gateway serve --workers 2, Redis bus, HTTP/1.1 and HTTP/2 subscribers; Prometheus "
             f"scraping every 1 s, histogram_quantile over rate(...[{WINDOW}]) as the Grafana dashboard does",
             fontsize=7, color="dimgrey")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(out)
    print(f"wrote {out}: {', '.join(sorted(lines))}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="latency-picture-") as tmp:
        title, lines, marks = asyncio.run(collect(Path(tmp)))
    if not lines:
        raise SystemExit("Prometheus returned no latency series: nothing to plot")
    plot(title, lines, marks, args.out)


if __name__ == "__main__":
    main()
