"""CPU time and memory of server processes, read from ``/proc`` (Linux only).

The server's own accounting is the fair measure across peers written in C, Rust and Python alike: user + system
time of every process that serves (all threads included), and their resident memory. System time matters: on
loopback the kernel does the receiver's TCP work in the sender's context, and that is part of what a delivery costs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU seconds of ``pids`` so far (each process with all its threads)."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15, counted from the state)
    return total / _TICK


def rss_bytes(pids: Iterable[int]) -> int:
    """Resident set size of ``pids`` together, bytes."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
                    break
    return total
