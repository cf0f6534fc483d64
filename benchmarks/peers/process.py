"""Running one server process for a benchmark: launch, pin, wait until it answers, measure who it is, stop.

Every peer goes through this one path so that the comparison is fair by construction: the same open-files limit,
the same CPU pinning (inherited by every process and thread the server creates), the same readiness rule and the
same stop sequence. Only Linux is supported: the CPU and RSS accounting the benchmark does reads ``/proc`` anyway.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import resource
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import terminate
from benchmarks.ports import free_port as free_port  # re-exported for the peers

__all__ = ["ServerSpec", "check_cpu", "descendants", "free_port", "serve"]

HOST = "127.0.0.1"
LOG_TAIL = 8000  # characters of each log quoted in a start-up failure


@dataclass(frozen=True)
class ServerSpec:
    """How to run one server and how to tell that it is up."""

    name: str
    argv: Sequence[str]
    env: Mapping[str, str]  # the complete environment of the child
    cwd: Path
    log: Path  # the child's stdout and stderr
    port: int
    ready_path: str  # GET this ...
    ready_status: int = 200  # ... until it answers this
    workers: int = 0  # child processes to wait for (nginx: 1), all counted in the target's pids
    ready_timeout: float = 30.0
    stop_timeout: float = 5.0  # after SIGTERM, before SIGKILL
    extra_logs: tuple[Path, ...] = field(default=())  # quoted too when start-up fails (nginx's error.log)


def check_cpu(cpu: int | None) -> None:
    """Refuse a CPU the machine does not have: pinning a server there would fail, or silently not happen.

    Checked against the machine's CPUs, not this process's affinity: the harness pins itself to the load
    generator's CPU and then starts servers on the other one."""
    online = os.cpu_count() or 1
    if cpu is not None and not 0 <= cpu < online:
        raise ValueError(f"CPU {cpu} is not usable here (CPUs 0-{online - 1})")


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid``, depth first (nginx: its workers), read from ``/proc``."""
    found: list[int] = []
    pending = [pid]
    while pending:
        parent = pending.pop()
        for task in _tasks(parent):
            try:
                text = Path(f"/proc/{parent}/task/{task}/children").read_text(encoding="ascii")
            except OSError:
                continue
            for child in map(int, text.split()):
                if child not in found:
                    found.append(child)
                    pending.append(child)
    return found


def _tasks(pid: int) -> list[int]:
    """The thread ids of a process (empty when it is gone)."""
    try:
        return [int(name) for name in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks, or None once it is gone or a zombie.

    A pid together with its start time names one process for good: a pid can be reused, and the stop sequence
    must never signal a stranger that happens to get a dead worker's number.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may contain spaces and parentheses
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def _taskset() -> str | None:
    """Where ``taskset`` is; without it the pinning falls back to ``sched_setaffinity`` from this process."""
    return shutil.which("taskset")


def _pin(pids: Sequence[int], cpu: int) -> None:
    """Pin every thread of every process to ``cpu`` (the fallback when ``taskset`` is not installed)."""
    for pid in pids:
        for task in _tasks(pid):
            with contextlib.suppress(OSError):
                os.sched_setaffinity(task, {cpu})


def _raise_nofile(pid: int) -> None:
    """Give the child the hard open-files limit as its soft one: every SSE stream is a socket.

    Set from outside with ``prlimit`` rather than in a ``preexec_fn``, which is unsafe when the runner has threads.
    It happens right after the fork, long before the server has accepted anything.
    """
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(OSError, ValueError):
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (hard, hard))


def _http_status(port: int, path: str) -> int | None:
    """The status of one GET, or None while nothing answers; every attempt is bounded by its own timeout."""
    conn = http.client.HTTPConnection(HOST, port, timeout=1.0)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def _logs(spec: ServerSpec) -> str:
    parts = []
    for path in (spec.log, *spec.extra_logs):
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            text = f"(unreadable: {exc})"
        parts.append(f"--- {path} ---\n{text[-LOG_TAIL:]}")
    return "\n".join(parts)


def _wait_ready(spec: ServerSpec, proc: subprocess.Popen[bytes]) -> None:
    """Poll until the server answers ``ready_path`` with ``ready_status`` and has its workers, or fail loudly.

    Readiness of another process can only be observed by asking it; the loop is bounded by ``ready_timeout``.
    """
    deadline = time.monotonic() + spec.ready_timeout
    status: int | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{spec.name} exited with {proc.returncode} while starting:\n{_logs(spec)}")
        status = _http_status(spec.port, spec.ready_path)
        if status == spec.ready_status and len(descendants(proc.pid)) >= spec.workers:
            return
        time.sleep(0.05)
    raise RuntimeError(
        f"{spec.name} not ready within {spec.ready_timeout:g} s (last GET {spec.ready_path} -> {status}):\n"
        f"{_logs(spec)}"
    )


def _stop(proc: subprocess.Popen[bytes], known: Sequence[tuple[int, int]], timeout: float) -> None:
    """SIGTERM, SIGKILL after ``timeout``; then make sure no process of the server outlives it.

    ``known`` are the server's other processes as (pid, start time), to which those alive now are added: a master
    killed with SIGKILL leaves its workers behind, and they would hold the port and skew the next measurement.
    """
    current = [(pid, started) for pid in descendants(proc.pid) if (started := _start_time(pid)) is not None]
    others = {*known, *current}
    terminate(proc, timeout)
    deadline = time.monotonic() + timeout
    killed = False
    while alive := [pid for pid, started in others if _start_time(pid) == started]:
        now = time.monotonic()
        if now > deadline:
            if killed:
                raise RuntimeError(f"processes {alive} survived SIGKILL")
            for pid in alive:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            killed, deadline = True, now + 5.0
        time.sleep(0.05)


@contextlib.contextmanager
def serve(spec: ServerSpec, *, cpu: int | None = None) -> Iterator[tuple[int, ...]]:
    """Run ``spec`` (pinned to ``cpu`` if given) and yield the pids of all its processes once it is ready."""
    check_cpu(cpu)
    taskset = _taskset()
    argv = list(spec.argv)
    if cpu is not None and taskset is not None:
        argv = [taskset, "-c", str(cpu), *argv]  # taskset execs the server: same pid, affinity inherited by all
    spec.log.parent.mkdir(parents=True, exist_ok=True)
    with spec.log.open("wb") as out:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=spec.cwd, env=dict(spec.env)
        )
    others: list[tuple[int, int]] = []
    try:
        _raise_nofile(proc.pid)
        if cpu is not None and taskset is None:
            _pin([proc.pid], cpu)
        _wait_ready(spec, proc)
        workers = descendants(proc.pid)
        if cpu is not None and taskset is None:
            _pin([proc.pid, *workers], cpu)  # workers forked before the first pin would have escaped it
        others = [(pid, started) for pid in workers if (started := _start_time(pid)) is not None]
        yield (proc.pid, *workers)
    finally:
        _stop(proc, others, spec.stop_timeout)
