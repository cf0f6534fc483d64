"""Our own gateway as a peer: ``python -m gateway serve`` on plain HTTP (HTTP/1.1 + h2c), driven through the hub,
and HTTP/3 (with h2 over TLS) on a second port with a development certificate made in the work directory."""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import orjson

from benchmarks.peers.base import PublishRequest, Target
from benchmarks.peers.process import HOST, ServerSpec, free_port, serve

__all__ = ["GatewayPeer"]

ROOT = Path(__file__).resolve().parent.parent.parent
TOKEN = "bench-peer-" + "g" * 24

# Every setting a run depends on is pinned here, so the result does not depend on the caller's shell: the
# inherited GATEWAY_* variables are dropped first, then these apply, then the caller's ``env``.
BASE_ENV: Mapping[str, str] = {
    "GATEWAY_HUB_PUBLISH_TOKEN": TOKEN,
    "GATEWAY_HUB_PUBLIC_TOPICS": "*",  # the peers serve their streams without tokens: so does the gateway here
    "GATEWAY_LIMITS_MAX_STREAMS": "100000",  # 10,000+ streams in one process
    "GATEWAY_LIMITS_MAX_STREAMS_PER_CLIENT": "0",  # every load-generator connection comes from 127.0.0.1
    "GATEWAY_LIMITS_MAX_CONNECTIONS_PER_ADDRESS": "0",  # likewise for the connection cap
    "GATEWAY_COMPRESSION_CLIENT_SHARE": "1",  # and the per-client share of the compression budget
    "GATEWAY_SSE_HEARTBEAT": "15",
    "GATEWAY_SERVER_ACCESS_LOG": "false",
    "GATEWAY_SERVER_LOG_LEVEL": "warning",
    "GATEWAY_SERVER_DRAIN_TIMEOUT": "3",  # a benchmark stop need not wait the production 30 s
}


@dataclass(frozen=True)
class GatewayPeer:
    """The gateway's hub. ``args`` are passed through to ``gateway serve`` (e.g. a loop choice)."""

    args: tuple[str, ...] = ()
    name: str = "gateway"
    workers: int = 0  # with --workers N: the child processes to wait for (their CPU and RSS count too)
    module: str = "gateway"  # what ``python -m`` runs: ``benchmarks.memhook`` wraps ``gateway serve``
    description: str = (
        "this gateway: Quart + Hypercorn (asyncio), hub fan-out, compression cohorts, 15 s heartbeats"
    )

    def missing(self) -> str | None:
        return None  # it is the project itself

    @contextlib.contextmanager
    def start(
        self, workdir: Path, *, cpu: int | None = None, env: Mapping[str, str] | None = None
    ) -> Iterator[Target]:
        from gateway import devcert

        port, tls_port = free_port(), free_port()
        certfile, keyfile = devcert.create(workdir / f"{self.name}-certs")
        inherited = {key: value for key, value in os.environ.items() if not key.startswith("GATEWAY_")}
        full_env = {**inherited, "PYTHONUNBUFFERED": "1", **BASE_ENV, **(env or {})}
        token = full_env["GATEWAY_HUB_PUBLISH_TOKEN"]
        drain = float(full_env["GATEWAY_SERVER_DRAIN_TIMEOUT"])
        spec = ServerSpec(
            name=self.name,
            argv=[sys.executable, "-m", self.module, "serve", "--bind", f"{HOST}:{port}",
                  "--tls-bind", f"{HOST}:{tls_port}", "--quic-bind", f"{HOST}:{tls_port}",
                  "--certfile", str(certfile), "--keyfile", str(keyfile), *self.args],
            env=full_env,
            cwd=ROOT,
            log=workdir / f"{self.name}-{port}.log",
            port=port,
            ready_path="/readyz",
            workers=self.workers,
            stop_timeout=2 * drain + 7.0,  # the drain, then Hypercorn's graceful phase (drain + 5 s) at worst
        )
        with serve(spec, cpu=cpu) as pids:
            yield Target(
                name=self.name,
                host=HOST,
                port=port,
                pids=pids,
                subscribe_path=_subscribe_path,
                publish=functools.partial(_publish, token),
                sse_id="bus version",
                tls_port=tls_port,
                certfile=str(certfile),
            )


def _subscribe_path(topic: str) -> str:
    return f"/hub/subscribe?topic={quote(topic, safe='')}"


def _publish(token: str, topic: str, data: str) -> PublishRequest:
    return PublishRequest(
        method="POST",
        path="/hub/publish",
        headers=(("Authorization", f"Bearer {token}"), ("Content-Type", "application/json")),
        body=orjson.dumps({"topic": topic, "data": data}),
        ok_status=(204,),
    )
