"""nginx + the nchan module as a peer: the C pub/sub server people put in front of SSE clients.

It runs the distribution's nginx binary from a private prefix (config, pid, logs and temp files all in the run's
work directory), so nothing of the system's nginx is read or touched and several can run side by side.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from benchmarks.peers.base import PublishRequest, Target
from benchmarks.peers.process import HOST, ServerSpec, free_port, serve

__all__ = ["CONFIG_TEMPLATE", "NchanPeer", "render_config"]

MODULE = Path("/usr/lib/nginx/modules/ngx_nchan_module.so")  # Debian's libnginx-mod-nchan
MAX_NOFILE = 65536
MAX_CONNECTIONS = 40000

# %(name)s placeholders: nginx's own syntax uses $ and braces, so neither str.format nor string.Template fits.
CONFIG_TEMPLATE = """\
# nginx + nchan for the SSE benchmark, written by benchmarks/peers/nchan.py for one run.
load_module %(module)s;
%(user)s
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile %(nofile)d;
pid %(prefix)s/nginx.pid;
lock_file %(prefix)s/nginx.lock;
error_log %(prefix)s/error.log warn;

events {
    worker_connections %(connections)d;
}

http {
    access_log off;
    gzip off;  # a client offering br or gzip still gets identity: nchan sends every message as it is
    server_tokens off;
    client_body_temp_path %(prefix)s/client_body;
    proxy_temp_path %(prefix)s/proxy;
    fastcgi_temp_path %(prefix)s/fastcgi;
    uwsgi_temp_path %(prefix)s/uwsgi;
    scgi_temp_path %(prefix)s/scgi;
    client_body_buffer_size 64k;  # a published message stays in memory, never in a temp file
    keepalive_timeout 75s;
    keepalive_requests 1000000;  # the default (1000) would close a publisher's keep-alive connection mid-run
    nchan_shared_memory_size 256M;  # channels and their message buffers

    server {
        listen %(host)s:%(port)d backlog=4096;

        location = /readyz {
            return 200 "ready\\n";
        }

        location = /sub {
            nchan_subscriber eventsource;
            nchan_channel_id $arg_topic;
            nchan_subscriber_first_message newest;  # live only, like the other peers: no backlog on connect
            nchan_subscriber_timeout 0;  # streams are never ended by the server
            nchan_eventsource_ping_interval 15;
            nchan_eventsource_ping_event "";  # the ping is a bare comment, like the other peers' heartbeats
            nchan_eventsource_ping_comment "ping";
        }

        location = /pub {
            nchan_publisher http;
            nchan_channel_id $arg_topic;
            nchan_message_buffer_length 1024;
            nchan_message_timeout 0;  # buffered messages never expire during a run (the buffer length bounds it)
        }
    }
}
"""


def render_config(prefix: Path, port: int) -> str:
    """The nginx.conf of one run, sized for 10,000+ streams within what this machine's limits allow."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # nginx sets the worker's limit itself; without CAP_SYS_RESOURCE it cannot go past the hard limit.
    nofile = MAX_NOFILE if hard == resource.RLIM_INFINITY else min(MAX_NOFILE, hard)
    return CONFIG_TEMPLATE % {
        "module": MODULE,
        # As root the workers would run as "nobody" and could not write the private prefix.
        "user": "user root;" if os.geteuid() == 0 else "# (not root: the workers run as the current user)",
        "nofile": nofile,
        "connections": min(MAX_CONNECTIONS, nofile),
        "prefix": prefix,
        "host": HOST,
        "port": port,
    }


def _nginx() -> str | None:
    # /usr/sbin is not on an unprivileged user's PATH on Debian.
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin:/sbin")


@dataclass(frozen=True)
class NchanPeer:
    name: str = "nchan"
    description: str = (
        "nginx 1 worker + nchan (C, shared-memory channels), EventSource subscriber, identity only, 15 s pings"
    )

    def missing(self) -> str | None:
        if _nginx() is None:
            return "nginx is not installed (apt-get install nginx)"
        if not MODULE.is_file():
            return f"the nchan module is not installed: no {MODULE} (apt-get install libnginx-mod-nchan)"
        return None

    @contextlib.contextmanager
    def start(
        self, workdir: Path, *, cpu: int | None = None, env: Mapping[str, str] | None = None
    ) -> Iterator[Target]:
        nginx = _nginx()
        if nginx is None or not MODULE.is_file():
            raise RuntimeError(f"{self.name} cannot run here: {self.missing()}")
        port = free_port()
        prefix = (workdir / f"{self.name}-{port}").resolve()
        prefix.mkdir(parents=True, exist_ok=True)
        conf = prefix / "nginx.conf"
        conf.write_text(render_config(prefix, port), encoding="utf-8")
        spec = ServerSpec(
            name=self.name,
            argv=[nginx, "-p", f"{prefix}/", "-c", str(conf)],
            env={**os.environ, **(env or {})},
            cwd=prefix,
            log=workdir / f"{self.name}-{port}.log",
            port=port,
            ready_path="/readyz",
            workers=1,
            extra_logs=(prefix / "error.log",),
        )
        with serve(spec, cpu=cpu) as pids:
            yield Target(
                name=self.name,
                host=HOST,
                port=port,
                pids=pids,
                subscribe_path=_subscribe_path,
                publish=_publish,
                sse_id="nchan time:tag",
            )


def _subscribe_path(topic: str) -> str:
    # $arg_topic is the raw, still-encoded query value: publisher and subscriber must quote alike, and they do.
    return f"/sub?topic={quote(topic, safe='')}"


def _publish(topic: str, data: str) -> PublishRequest:
    return PublishRequest(
        method="POST",
        path=f"/pub?topic={quote(topic, safe='')}",
        headers=(("Content-Type", "text/plain; charset=utf-8"),),
        body=data.encode(),
        ok_status=(201, 202),  # 201: delivered to at least one subscriber; 202: queued, nobody subscribed
    )
