"""Hypercorn configuration and the serve loop, with a shutdown the gateway owns.

Hypercorn's own signal handling would give endless streams only its ``graceful_timeout`` and then cut them. Here
SIGTERM/SIGINT first *drain* the gateway (readiness 503, streams told to reconnect and closed, accepted commands
finished) and only then let Hypercorn stop listening, so its graceful phase finds nothing left to cut.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import signal
import socket
import warnings
from typing import Any, Protocol

from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config

from gateway.config import Settings
from gateway.supervisor import worker_index
from gateway.web.hypercorn import install as install_corrections


class Servable(Protocol):
    """What ``serve`` needs of the application (``gateway.api.Gateway`` is one): this layer never imports it."""

    def configure(self, settings: Settings) -> None: ...

    async def drain(self, timeout: float | None = None) -> None: ...

    @property
    def unrun_commands(self) -> list[str]:
        """Ids of accepted commands stopped without running that no other process will run."""
        ...

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None: ...

    def asgi(self) -> Any:
        """The ASGI app to serve: the gateway's own, or what it forwards to."""
        ...

log = logging.getLogger("gateway")


class _Config(Config):
    """Hypercorn's ``Config``, able to advertise HTTP/3 served by a sibling worker (``--workers``)."""

    advertised_quic: list[tuple[str, int]]
    h2_max_resets: int  # read by the h2_rapid_reset correction, from limits.h2_max_resets
    h2_reset_window: float

    def _set_quic_addresses(self, sockets: list[socket.socket]) -> None:
        super()._set_quic_addresses(sockets)
        if not sockets and getattr(self, "advertised_quic", None):
            self._quic_addresses = list(self.advertised_quic)


def hypercorn_config(settings: Settings, worker: int | None = None) -> Config:
    """The Hypercorn ``Config`` for these settings: plain + TLS listeners over TCP, HTTP/3 over UDP.

    ``worker``: this process's index under ``--workers``. Its TCP listeners then take ``SO_REUSEPORT`` (Hypercorn
    sets it when ``workers > 1``; its own multi-process runner is not used), and only worker 0 binds the UDP
    socket while the others advertise it.
    """
    server = settings.server
    config = _Config()
    tls = bool(server.certfile and server.keyfile)
    if tls:
        config.certfile = server.certfile
        config.keyfile = server.keyfile
        config.bind = [server.tls_bind] if server.tls_bind else []
        config.insecure_bind = [server.bind] if server.bind else []
        config.quic_bind = [server.quic_bind] if server.quic_bind else []
        if not config.bind:  # Hypercorn needs a secure bind for its TLS context; plain-only is handled below
            config.bind, config.insecure_bind = config.insecure_bind, []
            config.certfile = config.keyfile = None
    else:
        config.bind = [server.bind] if server.bind else []
    if not config.bind:
        raise ValueError("nothing to listen on: set server.bind or server.tls_bind")
    if worker is not None:
        config.workers = max(2, server.workers)
        if worker != 0 and config.quic_bind:
            host, _, port = config.quic_bind[0].rpartition(":")
            config.advertised_quic = [(host.strip("[]"), int(port))]
            config.quic_bind = []
    config.alpn_protocols = ["h2", "http/1.1"]
    # A stream lives as long as its client: no read timeout, no worker recycling.
    config.read_timeout = None
    config.max_requests = None
    # Hypercorn's own graceful phase only has to cover what the gateway's drain leaves (in-flight requests).
    config.graceful_timeout = server.drain_timeout + 5.0
    config.backlog = server.backlog
    config.keep_alive_timeout = server.keep_alive_timeout  # idle keep-alive between requests
    config.h2_max_resets = settings.limits.h2_max_resets
    config.h2_reset_window = settings.limits.h2_reset_window
    config.include_server_header = False
    config.server_names = list(server.server_names)  # any other Host: 404 from Hypercorn (empty: any Host)
    config.loglevel = server.log_level.upper()
    # Hypercorn's loggers go through logging (one format, one handler), not straight to stderr.
    config.errorlog = logging.getLogger("hypercorn.error")
    config.accesslog = logging.getLogger("hypercorn.access") if server.access_log else None
    return config


def listening(settings: Settings) -> list[str]:
    """Human-readable listeners, for the start-up log line."""
    s = settings.server
    tls = bool(s.certfile and s.keyfile)
    urls = [f"http://{s.bind} (HTTP/1.1, h2c)"] if s.bind else []
    if tls and s.tls_bind:
        urls.append(f"https://{s.tls_bind} (HTTP/1.1, h2)")
    if tls and s.quic_bind:
        urls.append(f"https://{s.quic_bind} over UDP (HTTP/3)")
    return urls


def raise_fd_limit() -> int:
    """Lift the soft open-files limit to the hard one: every stream is a socket, and 1024 is a typical default."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            log.warning("could not raise the open-files limit above %d", soft)
    return soft


# ``gateway serve``'s exit code when the drain deadline passed with accepted commands not run (each is logged by
# id): an orchestrator or an operator sees that the promise "a command answered 204 is executed" was broken.
EXIT_UNRUN_COMMANDS = 3


async def serve(gateway: Servable, settings: Settings) -> int:
    """Serve until SIGTERM/SIGINT, then drain and stop; the process's exit code."""
    # Before Hypercorn creates its servers (the lifespan installs them again, idempotently, for any other server).
    installed = install_corrections(settings.server.accept_unverified_server)
    log.debug("hypercorn corrections installed: %s", ", ".join(installed) or "none")
    log.info("open-files limit: %d", raise_fd_limit())
    gateway.configure(settings)
    worker = worker_index()
    config = hypercorn_config(settings, worker)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def shutdown_trigger() -> None:
        await stop.wait()
        log.info("signal received: draining for up to %.1f s", settings.server.drain_timeout)
        await gateway.drain()

    if (settings.server.certfile and not settings.server.keyfile) or (settings.server.keyfile and not (
        settings.server.certfile
    )):
        raise ValueError("certfile and keyfile go together")
    for url in listening(settings):
        log.info("listening on %s", url)
    app: Any = gateway.asgi()
    # ``workers`` is set only for its SO_REUSEPORT (see hypercorn_config); serve() warns that it spawns nothing.
    warnings.filterwarnings("ignore", message="The config `workers` has no affect", category=Warning)
    await hypercorn_serve(app, config, shutdown_trigger=shutdown_trigger)
    unrun = gateway.unrun_commands
    if unrun:
        log.error("stopped with %d accepted commands not run (ids %s): exit code %d", len(unrun),
                  ", ".join(unrun[:50]) + (" ..." if len(unrun) > 50 else ""), EXIT_UNRUN_COMMANDS)
        return EXIT_UNRUN_COMMANDS
    log.info("stopped")
    return 0
