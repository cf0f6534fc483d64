"""What each encoder setting costs and saves on two opposite SSE workloads: the table behind the defaults.

Run: ``python -m benchmarks.compression [--out benchmarks/results] [--quick] [--plot PATH | --no-plot]``.

- **todo view**: the demo's 50-item list (~15 KB per render) and 200 single-item changes; every change re-sends
  the whole list, which is the case a connection-long compression window exists for;
- **small-JSON ticker**: 2,000 quotes of ~165 bytes; each event is new data, so a window can only reuse keys and
  symbols.

Each row feeds ONE encoder the whole stream, one ``encode_flush`` per event, exactly as a connection does; "gzip
per message" compresses every event on its own, which is what a proxy without a per-connection stream does.
Every stream is decoded again with the client-side decoder, so a size is never that of a broken stream. The
first event (no history yet) is reported apart from the rest: the median of the others is what a long-lived
connection pays per change. Memory per connection is ``gateway.core.encoder_memory.estimate_bytes`` next to the
measured value from ``benchmarks/results/encoder_memory.json`` when that setting was measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import gzip
import json
import statistics
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import brotli

from benchmarks import RESULTS_DIR, ROOT, machine_info, ticker_frames, todo_frames, write_json
from gateway.core.encoder_memory import estimate_bytes
from gateway.core.encoders import ENCODERS, CodecSettings, create_encoder

WARMUP_EVENTS = 10
DEFAULT_PLOT = ROOT / "docs" / "compression.png"
MEMORY_JSON = RESULTS_DIR / "encoder_memory.json"


@dataclass(frozen=True, slots=True)
class Row:
    """One encoder setting of the table; ``codec=None`` is gzip per message (no per-connection state)."""

    id: str
    label: str
    codec: str | None
    settings: CodecSettings = field(default_factory=CodecSettings)

    def params(self) -> dict[str, int]:
        """Only the settings this codec reads, so rows match the memory measurement's."""
        prefix = {"br": "brotli_", "zstd": "zstd_", "gzip": "gzip_"}.get(self.codec or "")
        if prefix is None:
            return {}
        return {k: v for k, v in _asdict(self.settings).items() if k.startswith(prefix)}


def _asdict(settings: CodecSettings) -> dict[str, int]:
    return {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)}


def _br(q: int, w: int) -> CodecSettings:
    return CodecSettings(brotli_quality=q, brotli_lgwin=w)


ROWS: tuple[Row, ...] = (
    Row("identity", "identity", "identity"),
    Row("gzip-message", "gzip per message (level 6)", None),
    Row("gzip-6-w15", "gzip stream level 6, wbits 15", "gzip", CodecSettings(gzip_level=6, gzip_wbits=15)),
    Row("br-q3-w16", "brotli q3, lgwin 16", "br", _br(3, 16)),
    Row("br-q4-w16", "brotli q4, lgwin 16 (default)", "br", _br(4, 16)),
    Row("br-q5-w18", "brotli q5, lgwin 18", "br", _br(5, 18)),
    Row("br-q4-w10", "brotli q4, lgwin 10 (1 KiB window)", "br", _br(4, 10)),
    Row("br-q4-w12", "brotli q4, lgwin 12 (4 KiB window)", "br", _br(4, 12)),
    Row("br-q0-w16", "brotli q0, lgwin 16", "br", _br(0, 16)),
    Row("br-q1-w16", "brotli q1, lgwin 16", "br", _br(1, 16)),
    Row("zstd-3-w17", "zstd level 3, window_log 17", "zstd", CodecSettings(zstd_level=3, zstd_window_log=17)),
    Row("zstd-3-w20", "zstd level 3, window_log 20", "zstd", CodecSettings(zstd_level=3, zstd_window_log=20)),
)

Encode = Callable[[bytes], bytes]


def _encoder(row: Row) -> Encode:
    """A fresh per-connection encoder's ``encode_flush`` (or the stateless per-message gzip)."""
    if row.codec is None:
        return lambda frame: gzip.compress(frame, compresslevel=6, mtime=0)
    return create_encoder(row.codec, row.settings).encode_flush


def _decode(row: Row, chunks: list[bytes]) -> bytes:
    """The stream as a client decodes it, chunk by chunk with the standard decoders."""
    if row.codec is None:
        return b"".join(gzip.decompress(c) for c in chunks)
    if row.codec == "identity":
        return b"".join(chunks)
    if row.codec == "br":
        br = brotli.Decompressor()
        return b"".join(br.process(c) for c in chunks)
    if row.codec == "gzip":
        gz = zlib.decompressobj(16 + 15)
        return b"".join(gz.decompress(c) for c in chunks)
    import zstandard

    zd = zstandard.ZstdDecompressor().decompressobj()
    return b"".join(zd.decompress(c) for c in chunks)


def _measured_memory() -> dict[tuple[str, str], int]:
    """(codec, settings) -> measured RSS per encoder, from the memory benchmark's committed results."""
    try:
        data = json.loads(MEMORY_JSON.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {(r["codec"], json.dumps(r["settings"], sort_keys=True)): r["rss_bytes"] for r in data.get("rows", [])}


def _timed_pass(row: Row, frames: list[bytes]) -> tuple[list[bytes], list[int]]:
    """One fresh encoder over the whole stream: its output per event and the nanoseconds each call took."""
    warm = _encoder(row)
    for frame in frames[:WARMUP_EVENTS]:
        warm(frame)
    encode = _encoder(row)
    chunks: list[bytes] = []
    times: list[int] = []
    clock = time.perf_counter_ns
    gc.collect()
    gc.disable()  # a collection inside one timed call would be charged to that event
    try:
        for frame in frames:
            t0 = clock()
            out = encode(frame)
            times.append(clock() - t0)
            chunks.append(out)
    finally:
        gc.enable()
    return chunks, times


def run_row(row: Row, frames: list[bytes], measured: dict[tuple[str, str], int], passes: int) -> dict[str, Any]:
    """Sizes and CPU time per event for one setting over one workload.

    Sizes are deterministic; the time is the lowest of ``passes`` per-pass medians, since on a shared machine
    other work only ever adds time.
    """
    chunks, times = _timed_pass(row, frames)
    if _decode(row, chunks) != b"".join(frames):
        raise AssertionError(f"{row.id}: the stream does not decode to what was sent")
    cpu_ns = statistics.median(times[1:])
    for _ in range(passes - 1):
        cpu_ns = min(cpu_ns, statistics.median(_timed_pass(row, frames)[1][1:]))
    sizes = [len(c) for c in chunks]
    rest = sizes[1:]
    if row.codec is None:
        estimate: int | None = 0
        measured_rss: int | None = None
    else:
        estimate = estimate_bytes(row.codec, row.settings)
        measured_rss = measured.get((row.codec, json.dumps(row.params(), sort_keys=True)))
    return {
        "id": row.id,
        "label": row.label,
        "codec": row.codec or "gzip-message",
        "settings": row.params(),
        "events": len(frames),
        "first_event_bytes": sizes[0],
        "median_bytes": statistics.median(rest),
        "mean_bytes": round(statistics.fmean(rest), 1),
        "total_bytes": sum(sizes),
        "cpu_us_median": round(cpu_ns / 1000, 1),
        "memory_estimate_bytes": estimate,
        "memory_measured_bytes": measured_rss,
    }


def run_workload(name: str, description: str, frames: list[bytes], passes: int) -> dict[str, Any]:
    measured = _measured_memory()
    rows = [run_row(row, frames, measured, passes) for row in ROWS if row.codec is None or row.codec in ENCODERS]
    identity_total = next(r["total_bytes"] for r in rows if r["id"] == "identity")
    for r in rows:
        r["ratio"] = round(identity_total / r["total_bytes"], 1)
    return {
        "name": name,
        "description": description,
        "events": len(frames),
        "first_event_identity_bytes": len(frames[0]),
        "mean_event_identity_bytes": round(statistics.fmean(len(f) for f in frames), 1),
        "rows": rows,
    }


def _fmt_mem(n: int | None) -> str:
    return "-" if n is None else f"{n / 1024:,.0f}"


def print_workload(w: dict[str, Any]) -> None:
    print(f"\n{w['description']}: {w['events']} events, first {w['first_event_identity_bytes']:,} B, "
          f"mean {w['mean_event_identity_bytes']:,.0f} B uncompressed")
    print(f"{'setting':<36}{'first B':>9}{'median B':>10}{'mean B':>9}{'ratio':>8}{'CPU µs':>8}"
          f"{'mem est KiB':>13}{'measured':>10}")
    for r in w["rows"]:
        print(f"{r['label']:<36}{r['first_event_bytes']:>9,}{r['median_bytes']:>10,.0f}{r['mean_bytes']:>9,.1f}"
              f"{r['ratio']:>8,.1f}{r['cpu_us_median']:>8,.1f}{_fmt_mem(r['memory_estimate_bytes']):>13}"
              f"{_fmt_mem(r['memory_measured_bytes']):>10}")


def plot(result: dict[str, Any], path: Path) -> bool:
    """Bytes per event (log) per setting and workload, beside each setting's memory per connection."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[bench]'): no plot")
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    todo, ticker = result["workloads"]["todo"], result["workloads"]["ticker"]
    labels = [r["label"] for r in todo["rows"]]
    ys = list(range(len(labels)))
    fig, (ax_bytes, ax_mem) = plt.subplots(
        1, 2, figsize=(14, 7.2), sharey=True, width_ratios=[2.2, 1], layout="constrained"
    )
    height = 0.38
    for offset, workload, color in ((-height / 2, todo, "#1f77b4"), (height / 2, ticker, "#ff7f0e")):
        values = [r["median_bytes"] for r in workload["rows"]]
        name = f"{workload['description']} ({workload['mean_event_identity_bytes']:,.0f} B/event raw)"
        bars = ax_bytes.barh([y + offset for y in ys], values, height=height, color=color, label=name)
        ax_bytes.bar_label(bars, labels=[f"{v:,.0f}" for v in values], padding=3, fontsize=8)
    ax_bytes.set_xscale("log")
    ax_bytes.set_xlim(5, 60_000)
    ax_bytes.set_xlabel("bytes on the wire per event (median after the first event, log scale)")
    ax_bytes.set_yticks(ys, labels)
    ax_bytes.invert_yaxis()
    ax_bytes.grid(axis="x", which="major", alpha=0.3)
    ax_bytes.legend(loc="lower right", fontsize=9)
    ax_bytes.set_title("Bytes per event, one encoder per connection, flushed per event", fontsize=11)

    estimates = [(r["memory_estimate_bytes"] or 0) / 1024 for r in todo["rows"]]
    mem_bars = ax_mem.barh(ys, estimates, height=0.6, color="#9aa7b4", label="model (estimate_bytes)")
    ax_mem.bar_label(mem_bars, labels=[f"{v:,.0f}" if v else "0" for v in estimates], padding=3, fontsize=8)
    measured = [(y, r["memory_measured_bytes"] / 1024) for y, r in zip(ys, todo["rows"], strict=True)
                if r["memory_measured_bytes"] is not None]
    if measured:
        ax_mem.scatter([m for _, m in measured], [y for y, _ in measured], marker="D", s=22, color="#d62728",
                       zorder=3, label="measured RSS (encoder_memory)")
    ax_mem.set_xlim(0, max(estimates) * 1.3)
    ax_mem.set_xlabel("memory per connection (KiB)")
    ax_mem.grid(axis="x", alpha=0.3)
    ax_mem.legend(loc="upper right", fontsize=9)
    ax_mem.set_title("Memory held per connection", fontsize=11)

    machine = result["machine"]
    fig.suptitle(
        f"SSE compression per encoder setting — brotli {machine['brotli']}, zstandard {machine['zstandard']}, "
        f"Python {machine['python']}, {machine['date'][:10]}",
        fontsize=10,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="directory for compression.json")
    parser.add_argument("--quick", action="store_true", help="40 changes and 300 ticks (for tests)")
    parser.add_argument("--plot", type=Path, help=f"PNG path (default {DEFAULT_PLOT.relative_to(ROOT)}; with "
                        "--quick, compression.png in --out, so a quick run never replaces the published plot)")
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)

    changes, ticks, passes = (40, 300, 1) if args.quick else (200, 2000, 3)
    started = time.perf_counter()
    result: dict[str, Any] = {
        "machine": machine_info(),
        "quick": args.quick,
        "method": (
            "one encoder per row fed every event with encode_flush (gzip-message: gzip.compress level 6 per "
            "event); median/mean over events after the first; CPU = median perf_counter_ns per encode_flush "
            f"after {WARMUP_EVENTS} warm-up events on a separate encoder, lowest of {passes} passes; "
            "ratio = identity total / row total"
        ),
        "workloads": {
            "todo": run_workload("todo", "todo view", todo_frames(changes), passes),
            "ticker": run_workload("ticker", "small-JSON ticker", ticker_frames(ticks), passes),
        },
    }
    result["elapsed_seconds"] = round(time.perf_counter() - started, 1)
    for workload in result["workloads"].values():
        print_workload(workload)
    write_json(args.out / "compression.json", result)
    if not args.no_plot:
        path = args.plot or (args.out / "compression.png" if args.quick else DEFAULT_PLOT)
        if plot(result, path):
            print(f"\nplot: {path}")
    print(f"results: {args.out / 'compression.json'} ({result['elapsed_seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
