"""Seeing into ``gateway serve --workers N`` from outside: which processes it runs, what each one listens on, and
each worker's own metrics.

A group's ``/metrics`` answers for all workers together (prometheus-client multiprocess mode), which is what a
scraper wants and exactly what a test proving that *each* worker did its share cannot use. Every worker writes
its values into files of its own, named after its pid, in ``PROMETHEUS_MULTIPROC_DIR``: a test that gives the
group that directory reads them per worker here.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import cast

from prometheus_client.mmap_dict import MmapedDict

METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"

# prometheus-client leaves this reader unannotated: it yields (key, value, timestamp, position) per sample.
_read_samples = cast(Callable[[str], Iterator[tuple[str, float, float, int]]], MmapedDict.read_all_values_from_file)


def children(pid: int) -> set[int]:
    """The child processes of ``pid`` (Linux): a supervisor's workers."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return {int(p) for p in path.read_text().split()} if path.exists() else set()


def tcp_listeners(port: int) -> int:
    """TCP listening sockets on ``port`` on this machine: one per ``SO_REUSEPORT`` worker once all listen."""
    wanted = f":{port:04X}"
    rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(1 for row in rows if row.split()[1].endswith(wanted) and row.split()[3] == "0A")


def per_worker(directory: Path, sample: str, **labels: str) -> dict[int, float]:
    """The value of ``sample`` (a sample name as exposed: ``gateway_commands_total``) for each worker pid that
    wrote any metric file in ``directory``, summed over the label sets that include ``labels`` (0 when none)."""
    found: dict[int, float] = {}
    for file in directory.glob("*.db"):
        pid = int(file.stem.rpartition("_")[2])
        found.setdefault(pid, 0.0)
        for key, value, _timestamp, _pos in _read_samples(str(file)):
            _family, name, sample_labels, _help = json.loads(key)
            if name == sample and all(sample_labels.get(k) == v for k, v in labels.items()):
                found[pid] += value
    return found
