"""The two naive Python hubs as peers: sse-starlette under uvicorn, and a bare Quart app under Hypercorn.

Both speak the same tiny protocol (``GET /subscribe?topic=T``, ``POST /publish?topic=T`` with the raw data as the
body, 204), so one Target shape serves them. Each runs as one process with one event loop, like the gateway.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from benchmarks.peers.base import PublishRequest, Target
from benchmarks.peers.process import HOST, ServerSpec, free_port, serve

__all__ = ["NaiveQuartPeer", "StarlettePeer"]

ROOT = Path(__file__).resolve().parent.parent.parent
KEEP_ALIVE = "75"  # seconds between requests on an idle connection: the gateway's value
BACKLOG = "4096"  # 10,000 subscribers connect in bursts; the servers' defaults (100, 2048) would drop SYNs
GRACE = "3"  # seconds a stop lets open streams finish before the server cuts them


def _missing_modules(*modules: str) -> str | None:
    absent = [name for name in modules if importlib.util.find_spec(name) is None]
    if absent:
        return f"{', '.join(absent)} not installed (pip install -e '.[bench]')"
    return None


@contextlib.contextmanager
def _run(name: str, argv: Sequence[str], workdir: Path, port: int, cpu: int | None,
         env: Mapping[str, str] | None) -> Iterator[Target]:
    spec = ServerSpec(
        name=name,
        argv=argv,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        cwd=ROOT,
        log=workdir / f"{name}-{port}.log",
        port=port,
        ready_path="/readyz",
        stop_timeout=float(GRACE) + 4.0,
    )
    with serve(spec, cpu=cpu) as pids:
        yield Target(
            name=name,
            host=HOST,
            port=port,
            pids=pids,
            subscribe_path=_subscribe_path,
            publish=_publish,
            sse_id="none",
        )


def _subscribe_path(topic: str) -> str:
    return f"/subscribe?topic={quote(topic, safe='')}"


def _publish(topic: str, data: str) -> PublishRequest:
    return PublishRequest(
        method="POST",
        path=f"/publish?topic={quote(topic, safe='')}",
        headers=(("Content-Type", "text/plain; charset=utf-8"),),
        body=data.encode(),
        ok_status=(204,),
    )


@dataclass(frozen=True)
class StarlettePeer:
    """sse-starlette's EventSourceResponse on uvicorn, with asyncio and h11 as the gateway's own stack uses."""

    name: str = "sse-starlette"
    description: str = (
        "Starlette + sse-starlette EventSourceResponse, a queue per subscriber, on uvicorn (asyncio loop, h11: "
        "the gateway's stack), 15 s pings"
    )

    def missing(self) -> str | None:
        return _missing_modules("uvicorn", "sse_starlette", "starlette", "h11")

    def start(
        self, workdir: Path, *, cpu: int | None = None, env: Mapping[str, str] | None = None
    ) -> contextlib.AbstractContextManager[Target]:
        port = free_port()
        argv = [
            sys.executable, "-m", "uvicorn", "benchmarks.peers.starlette_app:app",
            "--host", HOST, "--port", str(port),
            "--loop", "asyncio", "--http", "h11",
            "--no-access-log", "--log-level", "warning",
            "--timeout-keep-alive", KEEP_ALIVE,
            "--backlog", BACKLOG,
            "--timeout-graceful-shutdown", GRACE,
        ]
        return _run(self.name, argv, workdir, port, cpu, env)


@dataclass(frozen=True)
class NaiveQuartPeer:
    """The naive Quart hub on Hypercorn; ``brotli`` gives each stream its own flushed Brotli compressor."""

    brotli: bool = False
    name: str = "naive-quart"
    description: str = "naive Quart app on Hypercorn (asyncio), a queue per subscriber, identity, no heartbeat"

    def missing(self) -> str | None:
        return _missing_modules("quart", "hypercorn", "brotli")

    def start(
        self, workdir: Path, *, cpu: int | None = None, env: Mapping[str, str] | None = None
    ) -> contextlib.AbstractContextManager[Target]:
        port = free_port()
        factory = "create_app(brotli_streams=True)" if self.brotli else "create_app()"
        argv = [
            sys.executable, "-m", "hypercorn", f"benchmarks.peers.naive_quart_app:{factory}",
            "--bind", f"{HOST}:{port}",
            "--workers", "0",  # serve in this process: with 1, Hypercorn forks a worker and idles a parent
            "--keep-alive", KEEP_ALIVE,
            "--backlog", BACKLOG,
            "--graceful-timeout", GRACE,
            "--log-level", "warning",
            "--error-logfile", "-",
            # No --read-timeout: Hypercorn's default is none, and a stream's client never sends anything.
        ]
        return _run(self.name, argv, workdir, port, cpu, env)
