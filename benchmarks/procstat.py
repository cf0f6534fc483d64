"""CPU time and memory of server processes, read from ``/proc`` (Linux only).

The server's own accounting is the fair measure across peers written in C, Rust and Python alike: user + system
time of every process that serves (all threads included), and their resident memory. System time matters: on
loopback the kernel does the receiver's TCP work in the sender's context, and that is part of what a delivery costs.
A measurement takes two ``cpu_reading``s and ``cpu_between`` them: to the nanosecond where it can, since a burst's
few hundred milliseconds of CPU are only tens of clock ticks.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU seconds of ``pids`` so far (each process with all its threads)."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15, counted from the state)
    return total / _TICK


@dataclass(frozen=True)
class CpuReading:
    """CPU time of some processes at one moment, two ways: ``ticks``, user + system seconds from ``/proc/PID/stat``
    (every thread, exited ones included, but in steps of a clock tick: 10 ms); ``threads``, nanoseconds on a CPU of
    each live thread, from ``/proc/PID/task/TID/schedstat`` (exact, but only for threads alive at the reading)."""

    ticks: float
    threads: dict[tuple[int, int], int]


def cpu_reading(pids: Iterable[int]) -> CpuReading:
    threads: dict[tuple[int, int], int] = {}
    pids = tuple(pids)
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat", encoding="ascii") as f:
                    threads[(pid, int(tid))] = int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                pass  # (a thread that has just exited)
    return CpuReading(cpu_seconds(pids), threads)


def cpu_between(before: CpuReading, after: CpuReading) -> float:
    """CPU seconds between two readings of the same processes: exact when the same threads lived at both (a
    short burst is a few hundred milliseconds of CPU, so a tick is several percent of it), in ticks otherwise. A
    thread that ended in between takes its time out of the exact sum: when that falls short of the ticks by more
    than two ticks, the ticks are the answer."""
    ticks = after.ticks - before.ticks
    if not before.threads or before.threads.keys() != after.threads.keys():
        return ticks
    exact = sum(after.threads.values()) / 1e9 - sum(before.threads.values()) / 1e9
    return exact if exact >= ticks - 2 / _TICK else ticks


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
