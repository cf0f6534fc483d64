"""What the kernel says about another process (Linux ``/proc``)."""

from __future__ import annotations

from pathlib import Path


def rss(pid: int) -> int:
    """Resident set size of process ``pid``, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")
