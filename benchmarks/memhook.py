"""``python -m benchmarks.memhook serve ...``: ``gateway serve`` with a memory snapshot on ``SIGUSR2``.

The idle-stream breakdown (``benchmarks.idle_breakdown``) needs to know who allocated the memory a running gateway
holds, from outside the process and without changing the gateway: this launcher is the only place that knows. Run
it with ``BENCH_MEMHOOK_DIR=<directory>`` (and ``BENCH_MEMHOOK_FRAMES``, 30 by default); the first ``SIGUSR2``
starts ``tracemalloc`` and each one, the first included, writes ``snapshot-<n>.pickle`` there (under a temporary
name, renamed, so a reader never sees half a file). Tracing starts on the signal rather than with the interpreter
(``PYTHONTRACEMALLOC``) because importing the gateway under a 30-frame tracer takes over a minute; what was
allocated before it started is in no snapshot, which a difference of two snapshots does not miss. A snapshot holds:

- ``traces``: ``statistics("traceback")`` of the live allocations, as ``(bytes, blocks, ((file, line), ...))``
  with the innermost frame first. Grouping by traceback here keeps the file small (thousands of distinct
  tracebacks rather than millions of blocks) and leaves the judgement of who owns what to the reader;
- ``types``: live objects by type name, counted over every generation including the frozen one (``gc.freeze``
  hides objects from ``gc.get_objects``: they are unfrozen for the count and frozen again, which the gateway's own
  ``GCPolicy`` does on every sweep anyway);
- ``traced``: ``tracemalloc.get_traced_memory()`` and the tracer's own overhead (``get_tracemalloc_memory``).

Without the variables it is exactly ``gateway serve``: no tracing, no handler.
"""

from __future__ import annotations

import gc
import os
import pickle
import signal
import sys
import tracemalloc
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Any

DIR_ENV = "BENCH_MEMHOOK_DIR"
FRAMES_ENV = "BENCH_MEMHOOK_FRAMES"


def snapshot() -> dict[str, Any]:
    """The live allocations grouped by traceback, and the live objects by type."""
    taken = tracemalloc.take_snapshot().filter_traces((
        tracemalloc.Filter(False, tracemalloc.__file__),
        tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
        tracemalloc.Filter(False, "<frozen importlib._bootstrap_external>"),
    ))
    traces = [(stat.size, stat.count, tuple((frame.filename, frame.lineno) for frame in reversed(stat.traceback)))
              for stat in taken.statistics("traceback")]  # a Traceback iterates from the oldest frame
    frozen = gc.get_freeze_count()
    gc.unfreeze()
    try:
        types = Counter(type(obj).__qualname__ for obj in gc.get_objects())
    finally:
        if frozen:
            gc.freeze()
    return {"traces": traces, "types": dict(types), "traced": tracemalloc.get_traced_memory(),
            "tracer_overhead": tracemalloc.get_tracemalloc_memory(), "frozen": frozen}


def _dump(directory: Path) -> None:
    count = len(list(directory.glob("snapshot-*.pickle")))
    data = pickle.dumps(snapshot(), protocol=pickle.HIGHEST_PROTOCOL)
    part = directory / f".snapshot-{count}.part"
    part.write_bytes(data)
    part.rename(directory / f"snapshot-{count}.pickle")


def install(directory: Path, frames: int) -> None:
    """``SIGUSR2`` dumps a snapshot into ``directory``, after starting ``tracemalloc`` with ``frames`` frames if it
    is not tracing yet. A plain signal handler, not the loop's: it runs between two bytecodes of the main thread,
    whatever the loop is doing, and holds the loop while it writes."""

    def handler(signum: int, frame: FrameType | None) -> None:
        if not tracemalloc.is_tracing():
            tracemalloc.start(frames)
        _dump(directory)

    signal.signal(signal.SIGUSR2, handler)


def main(argv: list[str]) -> int:
    directory = os.environ.get(DIR_ENV)
    if directory:
        install(Path(directory), int(os.environ.get(FRAMES_ENV, "30")))
    from gateway.cli import main as gateway_main

    return gateway_main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
