"""Benchmarks of the gateway (see docs/benchmarks.md once written).

The workloads live here, shared by every benchmark, so that the memory measurement and the compression table feed
the encoders the same stream: a number in one table can then be read against the other.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from gateway.core.sse import encode_message
from gateway.demo.render import render_todos
from gateway.demo.store import Snapshot, TodoStore

__all__ = ["RESULTS_DIR", "ROOT", "machine_info", "ticker_frames", "todo_frames", "write_json"]

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "benchmarks" / "results"

_VERBS = ("Buy", "Call", "Fix", "Email", "Book", "Review", "Clean", "Pay", "Plan", "Water", "Return", "Update")
_OBJECTS = (
    "milk",
    "the plumber",
    "the bike",
    "Dana",
    "flights",
    "the pull request",
    "the garage",
    "rent",
    "the offsite",
    "the plants",
    "library books",
    "the README",
    "tax forms",
    "the dentist",
)


def _todo_text(rng: random.Random) -> str:
    """A short, plausible todo (~10-30 characters), so 50 items render to the 14-16 KB of a real list."""
    return f"{rng.choice(_VERBS)} {rng.choice(_OBJECTS)}"


def todo_frames(changes: int, *, items: int = 50, seed: int = 20240601) -> list[bytes]:
    """The demo's SSE stream: one full render of ``items`` todos, then one render after each single-item change.

    Changes mix toggles (half), adds and deletes (a quarter each), with the list held near ``items`` long so every
    render is about the same size; a seeded generator keeps the stream identical from run to run. Each render is
    framed exactly as the gateway frames it (``id`` = version), since the id line is part of what is compressed.
    """
    rng = random.Random(seed)
    store = TodoStore()
    for _ in range(items):
        store.add(_todo_text(rng))
    for todo in store.items()[: items // 3]:
        store.toggle(todo.id)
    frames = [encode_message(render_todos(Snapshot.of(store.items())), id="1")]
    for version in range(2, changes + 2):
        ids = [todo.id for todo in store.items()]
        roll = rng.random()
        if len(ids) > items + 4:
            roll = 0.9  # delete
        elif len(ids) < items - 4:
            roll = 0.6  # add
        if roll < 0.5:
            store.toggle(rng.choice(ids))
        elif roll < 0.75:
            store.add(_todo_text(rng))
        else:
            store.delete(rng.choice(ids))
        frames.append(encode_message(render_todos(Snapshot.of(store.items())), id=str(version)))
    return frames


def ticker_frames(events: int, *, symbols: int = 20, seed: int = 20240602) -> list[bytes]:
    """A market ticker: small JSON quotes (~150-200 bytes) from a seeded random walk over ``symbols`` symbols.

    The opposite of the todo view: each event is new data rather than a re-render, so a window can only reuse the
    keys and the symbols, which is what bounds any streaming codec's ratio on such a feed.
    """
    rng = random.Random(seed)
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    names = ["".join(rng.choice(letters) for _ in range(rng.randint(3, 4))) for _ in range(symbols)]
    venues = ("XNAS", "XNYS", "ARCX", "BATS")
    prices = {name: rng.uniform(10.0, 500.0) for name in names}
    ts = 1_717_200_000_000
    frames = []
    for seq in range(1, events + 1):
        name = rng.choice(names)
        prices[name] = max(1.0, prices[name] * (1.0 + rng.gauss(0.0, 0.002)))
        price = prices[name]
        spread = round(price * rng.uniform(0.0001, 0.0008), 2) or 0.01
        ts += rng.randint(5, 400)
        quote = {
            "symbol": name,
            "price": round(price, 2),
            "ts": ts,
            "bid": round(price - spread / 2, 2),
            "ask": round(price + spread / 2, 2),
            "size": rng.randint(1, 50) * 100,
            "venue": rng.choice(venues),
            "change_pct": round(rng.gauss(0.0, 1.2), 3),
            "seq": seq,
        }
        frames.append(encode_message(json.dumps(quote), id=str(seq)))
    return frames


def machine_info() -> dict[str, Any]:
    """Where and with what the numbers were taken: memory and timings mean little without it."""
    import brotli

    try:
        import zstandard

        zstd_version: str | None = f"{zstandard.__version__} (libzstd {'.'.join(map(str, zstandard.ZSTD_VERSION))})"
    except ImportError:  # pragma: no cover - zstd is optional
        zstd_version = None
    import zlib

    cpu = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:  # pragma: no cover - not Linux
        pass
    return {
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "brotli": brotli.__version__,
        "zstandard": zstd_version,
        "zlib": zlib.ZLIB_RUNTIME_VERSION,
    }


def write_json(path: Path, data: object) -> None:
    """Write through a temporary file so an interrupted run never leaves half a result behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)


def terminate(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """Stop a gateway process the way an orchestrator does: SIGTERM (it drains), SIGKILL only past ``timeout``."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode
