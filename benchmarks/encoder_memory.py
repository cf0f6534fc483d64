"""Resident memory of one live compressor, per codec setting: the data behind ``gateway.core.encoder_memory``.

Run: ``python -m benchmarks.encoder_memory [--out benchmarks/results] [--codec br] [--jobs 2]``.

Why the method is what it is:
- **one fresh subprocess per setting**: freed memory stays in the allocator's free lists and shared-library pages
  stay resident, so two settings measured in one process would each see the other's leftovers;
- **RSS, and what the libraries allocate**: a compressor ``malloc``s its window and tables up front, but the kernel
  only backs the pages it has written, and RSS is what the machine actually runs out of. The allocated size
  (glibc's ``mallinfo2``) is recorded next to it: the gap shows which parts only fill in as a connection ages;
- **a realistic stream, long enough to fill the window**: each encoder is fed the demo's todo renders (~15 KB, one
  small change each) with one ``encode_flush`` per event, as the gateway does, and at least 2.25 windows of them
  (Brotli's ring buffer is twice its window), so every ring buffer has wrapped as on a long-lived connection;
- **many encoders per process, after a warm-up encoder**: the first encoder pays for the library's code and static
  tables (Brotli's dictionary), which every connection shares; dividing the RSS growth of N further encoders by N
  leaves only what each connection costs. N shrinks for big settings so a run stays within a memory and time
  budget.

Two further sets check the model where the grid does not reach:
- **large renders**: the gateway sizes a route's window to hold its renders, so events of up to ~0.8 window are
  normal; per-event buffers (Brotli's command array and output storage) grow with the event, so RSS is measured
  again with renders that large (the demo's list caps them at ~290 KB);
- **allocation only**: the rest of what ``CodecSettings`` accepts (Brotli q7, q8, q10, lgwin 24; zstd levels
  1-22 up to window_log 27), one encoder each after a few events: the libraries allocate their windows and tables
  up front, and in-use bytes, unlike RSS, are exact in a shared process, so these run in one batch per job.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import ctypes
import ctypes.util
import gc
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import RESULTS_DIR, machine_info, todo_frames, write_json
from gateway.core.encoder_memory import estimate_bytes
from gateway.core.encoders import ENCODERS, CodecSettings, StreamEncoder, create_encoder

PAGE = os.sysconf("SC_PAGE_SIZE")
RENDER_BYTES_PER_ITEM = 310  # one todo of the demo's list, to size the large renders
MIN_FLUSHES = 20
WINDOWS_FED = 2.25  # Brotli's ring buffer is twice its window: 2.25 windows write every byte of it
WORKER_BUDGET = 700 * 1024 * 1024  # RSS one worker may grow by; two run at once on a 2-core machine
MAX_ENCODERS = 200
MIN_ENCODERS = 8
PROBE = 4
WORKER_TIMEOUT = 170.0


def grid() -> list[tuple[str, dict[str, int]]]:
    """The settings measured: every knob the gateway exposes, over the range a deployment would use."""
    rows: list[tuple[str, dict[str, int]]] = [("identity", {})]
    rows += [
        ("br", {"brotli_quality": q, "brotli_lgwin": w})
        for q in (0, 1, 2, 3, 4, 5, 6, 9, 11)
        for w in (10, 12, 14, 16, 18, 20, 22)
    ]
    rows += [("gzip", {"gzip_level": lv, "gzip_wbits": w}) for lv in (1, 6, 9) for w in (9, 12, 15)]
    if "zstd" in ENCODERS:
        rows += [
            ("zstd", {"zstd_level": lv, "zstd_window_log": w}) for lv in (1, 3, 6, 12) for w in (10, 14, 17, 20, 23)
        ]
    return rows


def spot_grid() -> list[tuple[str, dict[str, int]]]:
    """Settings outside the RSS grid, checked for allocation only: the rest of what ``CodecSettings`` accepts.

    A deployment may configure any of them, so the model must hold there too; the allocation is known after a few
    events (the libraries allocate their tables and windows up front), which keeps these checks cheap. zstd's
    levels 20-22 allocate 160-640 MiB of tables and are checked at the smallest window only.
    """
    rows: list[tuple[str, dict[str, int]]] = [
        ("br", {"brotli_quality": q, "brotli_lgwin": w}) for q in (7, 8, 10) for w in (10, 16, 17, 18, 20, 22)
    ]
    rows += [("br", {"brotli_quality": q, "brotli_lgwin": 24}) for q in range(12)]
    if "zstd" in ENCODERS:
        rows += [
            ("zstd", {"zstd_level": lv, "zstd_window_log": w})
            for lv in range(1, 23)
            for w in (10, 15, 20, 27)
            if lv < 20 or w == 10
        ]
    return rows


def large_grid() -> list[tuple[str, dict[str, int]]]:
    """Settings measured again with renders as large as their window is sized for."""
    rows: list[tuple[str, dict[str, int]]] = [
        ("br", {"brotli_quality": q, "brotli_lgwin": w}) for q in (0, 1, 2, 4, 5, 9) for w in (16, 18, 20)
    ]
    rows += [("br", {"brotli_quality": 11, "brotli_lgwin": w}) for w in (16, 18)]  # ~8 MB/s: the slowest rows
    rows.append(("gzip", {"gzip_level": 6, "gzip_wbits": 15}))
    if "zstd" in ENCODERS:
        rows += [("zstd", {"zstd_level": 3, "zstd_window_log": w}) for w in (17, 20)]
    return rows


def _window(codec: str, params: dict[str, int]) -> int:
    bits = {"br": "brotli_lgwin", "gzip": "gzip_wbits", "zstd": "zstd_window_log"}.get(codec)
    return 1 << params[bits] if bits else 0


# --- worker (runs in its own process) -----------------------------------------------------------------------


def _rss() -> int:
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * PAGE


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _allocated_reader() -> Any:
    """Bytes currently handed out by glibc malloc (heap in use + mmapped chunks), or None off glibc."""
    path = ctypes.util.find_library("c")
    if not path:
        return None
    libc = ctypes.CDLL(path)
    fn = getattr(libc, "mallinfo2", None)
    if fn is None:
        return None
    fn.restype = _MallInfo2

    def read() -> int:
        info = fn()
        return int(info.uordblks + info.hblkhd)

    return read


def _feed(encoders: list[StreamEncoder], frames: list[bytes]) -> None:
    """Event by event across all encoders, as a fan-out does; the output is dropped at once like a sent frame."""
    for frame in frames:
        for encoder in encoders:
            encoder.encode_flush(frame)


def measure(codec: str, params: dict[str, int], max_encoders: int, items: int = 50) -> dict[str, Any]:
    """Per-encoder RSS (and allocation) growth for one setting, in this (fresh) process."""
    settings = CodecSettings(**params)
    render = todo_frames(0, items=items)[0]  # later renders differ by a few %: 0.9 keeps the stream long enough
    flushes = max(MIN_FLUSHES, math.ceil(WINDOWS_FED * _window(codec, params) / (0.9 * len(render))))
    frames = todo_frames(flushes - 1, items=items)
    allocated = _allocated_reader()
    started = time.perf_counter()

    warm = [create_encoder(codec, settings)]  # kept alive: shared code and tables are resident from here on
    _feed(warm, frames)
    live: list[StreamEncoder] = []
    live_extend = live.extend  # bound before the baseline so nothing is allocated between the readings
    gc.collect()
    gc.disable()
    rss0 = _rss()
    alloc0 = allocated() if allocated else 0

    probe = [create_encoder(codec, settings) for _ in range(PROBE)]
    _feed(probe, frames)
    live_extend(probe)
    rough = max(1, (_rss() - rss0) // PROBE)
    n = max(MIN_ENCODERS, min(max_encoders, WORKER_BUDGET // rough))
    rest = [create_encoder(codec, settings) for _ in range(n - PROBE)]
    _feed(rest, frames)
    live_extend(rest)

    rss1 = _rss()
    alloc1 = allocated() if allocated else 0
    gc.enable()
    return {
        "codec": codec,
        "settings": params,
        "encoders": len(live),
        "event_bytes": len(frames[-1]),
        "flushes": len(frames),
        "bytes_fed": sum(len(f) for f in frames),
        "rss_bytes": math.ceil((rss1 - rss0) / len(live)),
        "allocated_bytes": math.ceil((alloc1 - alloc0) / len(live)) if allocated else None,
        "seconds": round(time.perf_counter() - started, 2),
    }


def measure_allocations(settings_list: list[tuple[str, dict[str, int]]]) -> list[dict[str, Any]]:
    """What one encoder of each setting has allocated after a few events (in-use bytes: exact in one process)."""
    frames = todo_frames(2)
    allocated = _allocated_reader()
    if allocated is None:  # pragma: no cover - not glibc
        raise SystemExit("allocation checks need glibc's mallinfo2")
    warm: dict[str, StreamEncoder] = {}
    rows = []
    for codec, params in settings_list:
        if codec not in warm:  # the library's one-time state, outside every measurement
            warm[codec] = create_encoder(codec, CodecSettings())
            _feed([warm[codec]], frames)
        gc.collect()
        alloc0 = allocated()
        encoder = create_encoder(codec, CodecSettings(**params))
        _feed([encoder], frames)
        rows.append({"codec": codec, "settings": params, "allocated_bytes": allocated() - alloc0})
        del encoder
    return rows


# --- driver -------------------------------------------------------------------------------------------------


def _worker(spec: dict[str, Any]) -> list[dict[str, Any]]:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.encoder_memory", "--worker", json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=WORKER_TIMEOUT,
        check=True,
    )
    rows: list[dict[str, Any]] = json.loads(out.stdout.strip().splitlines()[-1])
    for row in rows:
        row["estimate_bytes"] = estimate_bytes(row["codec"], CodecSettings(**row["settings"]))
    return rows


def _rss_spec(codec: str, params: dict[str, int], kind: str) -> dict[str, Any]:
    slow = codec == "br" and params["brotli_quality"] >= 10
    if kind == "large":
        items = max(50, min(950, int(0.8 * _window(codec, params) / RENDER_BYTES_PER_ITEM)))
        return {"kind": kind, "codec": codec, "params": params, "max_encoders": 10 if slow else 40, "items": items}
    most = (20 if _window(codec, params) <= 1 << 18 else 10) if slow else MAX_ENCODERS  # q10-11: ~8 MB/s
    return {"kind": kind, "codec": codec, "params": params, "max_encoders": most, "items": 50}


def _label(codec: str, params: dict[str, int]) -> str:
    short = {
        "brotli_quality": "q",
        "brotli_lgwin": "lgwin",
        "gzip_level": "level",
        "gzip_wbits": "wbits",
        "zstd_level": "level",
        "zstd_window_log": "wlog",
    }
    return " ".join([codec, *(f"{short[k]}={v}" for k, v in params.items())])


def _kib(n: int | None) -> str:
    return "-" if n is None else f"{n / 1024:,.0f}"


def print_table(rows: list[dict[str, Any]]) -> None:
    print(
        f"{'setting':<26}{'N':>5}{'event KiB':>10}{'fed KiB':>9}{'RSS KiB':>10}{'alloc KiB':>11}{'model KiB':>11}"
        f"{'s':>7}"
    )
    for r in rows:
        print(
            f"{_label(r['codec'], r['settings']):<26}{r['encoders']:>5}{r['event_bytes'] / 1024:>10,.0f}"
            f"{r['bytes_fed'] / 1024:>9,.0f}{_kib(r['rss_bytes']):>10}{_kib(r['allocated_bytes']):>11}"
            f"{_kib(r['estimate_bytes']):>11}{r['seconds']:>7.1f}"
        )


def _sorted(rows: list[dict[str, Any]], settings: list[tuple[str, dict[str, int]]]) -> list[dict[str, Any]]:
    order = {(c, json.dumps(p)): i for i, (c, p) in enumerate(settings)}
    return sorted(rows, key=lambda r: order[(r["codec"], json.dumps(r["settings"]))])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="directory for encoder_memory.json")
    parser.add_argument("--codec", action="append", help="measure only this codec (repeatable)")
    parser.add_argument("--jobs", type=int, default=2, help="measurements run at once (one process each)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        spec = json.loads(args.worker)
        if spec["kind"] == "allocation":
            rows = measure_allocations([(c, p) for c, p in spec["settings"]])
        else:
            rows = [measure(spec["codec"], spec["params"], spec["max_encoders"], spec["items"])]
        print(json.dumps(rows))
        return 0

    wanted = set(args.codec or ENCODERS)
    jobs = max(1, args.jobs)
    specs = [_rss_spec(c, p, "rss") for c, p in grid() if c in wanted]
    specs += [_rss_spec(c, p, "large") for c, p in large_grid() if c in wanted]
    # the slowest first, so they overlap instead of finishing alone at the end
    specs.sort(key=lambda s: -_window(s["codec"], s["params"]) * (16 if s["max_encoders"] <= 20 else 1))
    spots = [(c, p) for c, p in spot_grid() if c in wanted]
    specs += [{"kind": "allocation", "settings": spots[i::jobs]} for i in range(jobs) if spots[i::jobs]]

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        done = list(pool.map(_worker, specs))
    elapsed = time.perf_counter() - started
    kinds = [spec["kind"] for spec in specs]
    rows = _sorted([r for k, rs in zip(kinds, done, strict=True) if k == "rss" for r in rs], grid())
    large = _sorted([r for k, rs in zip(kinds, done, strict=True) if k == "large" for r in rs], large_grid())
    allocs = _sorted([r for k, rs in zip(kinds, done, strict=True) if k == "allocation" for r in rs], spot_grid())

    print_table(rows)
    print("\nlarge renders (events of ~0.8 window, at most ~290 KB):")
    print_table(large)
    print("\nallocation only (one encoder, a few events), KiB:")
    for r in allocs:
        label = _label(r["codec"], r["settings"])
        print(f"  {label:<26}{_kib(r['allocated_bytes']):>10}  model {_kib(r['estimate_bytes'])}")
    print(f"\n{len(rows)} + {len(large)} settings measured and {len(allocs)} allocation checks in {elapsed:.0f} s")
    result = {
        "machine": machine_info(),
        "method": (
            "rows: per setting, a fresh process: warm-up encoder, then N encoders each fed >= max(20, 2.25 windows) "
            "of todo renders (~15 KB) with one encode_flush per event; rss_bytes = RSS growth / N "
            "(/proc/self/statm), allocated_bytes = glibc mallinfo2 growth / N. large_renders: the same with "
            "renders of ~0.8 window (at most ~290 KB). allocation_only: mallinfo2 growth of one encoder after "
            "3 events"
        ),
        "elapsed_seconds": round(elapsed, 1),
        "rows": rows,
        "large_renders": large,
        "allocation_only": allocs,
    }
    write_json(args.out / "encoder_memory.json", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
