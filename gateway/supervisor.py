"""``gateway serve --workers N``: N gateway processes on the same listeners, kept running by this one.

Each worker is a plain ``gateway serve`` process (same arguments, ``GATEWAY_WORKER_INDEX`` set) that binds the
TCP listeners itself with ``SO_REUSEPORT``, so the kernel spreads new connections evenly over the workers instead
of letting the busiest-to-wake one take most of them. Only worker 0 binds the HTTP/3 UDP socket: a QUIC
connection's packets must all reach the process that holds its state (the others still advertise it).

Unlike Hypercorn's own master, which stops every worker when one is killed, this supervisor restarts a worker
that dies (with a growing delay if it keeps dying at start) and marks its metrics dead. SIGTERM/SIGINT are passed
to every worker, which drain as a single process does; a worker that outlives ``drain_timeout`` + a margin is
killed. A worker exiting with 2 (bad settings) stops the whole group: restarting would not fix it.

Metrics: ``PROMETHEUS_MULTIPROC_DIR`` is set (a fresh directory unless the operator gave one) and emptied before
any worker starts; every worker's ``/metrics`` then answers for all of them.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("gateway.supervisor")

WORKER_ENV = "GATEWAY_WORKER_INDEX"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
KILL_MARGIN = 10.0  # seconds past the drain timeout before a worker is killed
QUICK_DEATH = 5.0  # a worker dying sooner than this after its start counts towards a longer restart delay
MAX_DELAY = 10.0


def worker_index() -> int | None:
    """This process's worker number under a supervisor, None when it runs alone."""
    value = os.environ.get(WORKER_ENV)
    return int(value) if value is not None and value.isdigit() else None


WATCHED = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT}


def _prepare_child() -> None:
    """In the child before exec: take signals again (the supervisor blocks them for ``sigtimedwait`` and a child
    inherits the mask) and receive SIGTERM when the supervisor dies, however it dies (Linux)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, WATCHED)
    libc_name = ctypes.util.find_library("c")
    if libc_name:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(libc_name, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class _Worker:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    quick_deaths: int = 0
    restart_at: float | None = None


class Supervisor:
    def __init__(self, argv: list[str], workers: int, drain_timeout: float) -> None:
        self.argv = argv
        self.workers = [_Worker(i) for i in range(workers)]
        self.drain_timeout = drain_timeout
        self.stopping = False
        self.exit_code = 0
        self.owns_metrics_dir = not os.environ.get(MULTIPROC_ENV)
        self.metrics_dir = self._metrics_dir()
        self.deadline = 0.0

    @staticmethod
    def _metrics_dir() -> Path:
        given = os.environ.get(MULTIPROC_ENV)
        path = Path(given) if given else Path(tempfile.mkdtemp(prefix="gateway-metrics-"))
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):  # a previous run's values must not be added to this one's
            stale.unlink()
        os.environ[MULTIPROC_ENV] = str(path)
        return path

    def _spawn(self, worker: _Worker) -> None:
        env = {**os.environ, WORKER_ENV: str(worker.index)}
        worker.proc = subprocess.Popen([sys.executable, "-m", "gateway", *self.argv], env=env,
                                       preexec_fn=_prepare_child)
        worker.started = time.monotonic()
        worker.restart_at = None
        log.info("worker %d started (pid %d)", worker.index, worker.proc.pid)

    def _reaped(self, worker: _Worker, code: int) -> None:
        assert worker.proc is not None
        pid = worker.proc.pid
        worker.proc = None
        with contextlib.suppress(Exception):
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(pid, str(self.metrics_dir))  # type: ignore[no-untyped-call]
        if self.stopping:
            log.info("worker %d (pid %d) exited with %d", worker.index, pid, code)
            return
        if code == 2:
            log.error("worker %d exited with 2 (invalid settings); stopping", worker.index)
            self.exit_code = 2
            self._stop()
            return
        worker.quick_deaths = worker.quick_deaths + 1 if time.monotonic() - worker.started < QUICK_DEATH else 0
        delay = min(MAX_DELAY, 0.1 * 2 ** worker.quick_deaths) if worker.quick_deaths else 0.0
        worker.restart_at = time.monotonic() + delay
        log.warning("worker %d (pid %d) died (%s); restarting in %.1f s", worker.index, pid,
                    f"signal {-code}" if code < 0 else f"exit {code}", delay)

    def _stop(self) -> None:
        if not self.stopping:
            self.stopping = True
            self.deadline = time.monotonic() + self.drain_timeout + KILL_MARGIN
        for worker in self.workers:
            if worker.proc is not None and worker.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.proc.send_signal(signal.SIGTERM)

    def run(self) -> int:
        watched = WATCHED
        signal.pthread_sigmask(signal.SIG_BLOCK, watched)  # taken with sigtimedwait below, never as handlers
        try:
            for worker in self.workers:
                self._spawn(worker)
            while True:
                for worker in self.workers:
                    if worker.proc is not None and (code := worker.proc.poll()) is not None:
                        self._reaped(worker, code)
                    if worker.proc is None and worker.restart_at is not None and not self.stopping \
                            and time.monotonic() >= worker.restart_at:
                        self._spawn(worker)
                if self.stopping:
                    alive = [w.proc for w in self.workers if w.proc is not None]
                    if not alive:
                        return self.exit_code
                    if time.monotonic() > self.deadline:
                        for proc in alive:
                            log.error("worker pid %d outlived the drain; killing it", proc.pid)
                            proc.kill()
                pending = [w.restart_at for w in self.workers if w.restart_at is not None]
                wait = max(0.01, min(pending) - time.monotonic()) if pending else 1.0
                info = signal.sigtimedwait(watched, wait)
                if info is not None and info.si_signo in (signal.SIGTERM, signal.SIGINT):
                    log.info("signal %d: stopping %d workers", info.si_signo, len(self.workers))
                    self._stop()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, watched)
            if self.owns_metrics_dir:
                shutil.rmtree(self.metrics_dir, ignore_errors=True)


def supervise(argv: list[str], workers: int, drain_timeout: float) -> int:
    """Run ``workers`` copies of ``gateway <argv>`` until SIGTERM/SIGINT; the exit code of the group."""
    return Supervisor(argv, workers, drain_timeout).run()
