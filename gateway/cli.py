"""``gateway serve | check | devcert``: start the server, validate settings, make a development certificate.

Invalid settings, an app that cannot be imported, a certificate or key that cannot be loaded, a listener address
already in use or a server package of an unverified version end the process with one line on stderr and exit code
2, never a traceback, and before anything starts: the operator needs to know which key is wrong, not where the
parser lives. ``gateway check`` runs the same checks.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.config import ServerSettings, Settings, describe, env_name
from gateway.core.errors import SettingsError
from gateway.logs import formatter

_FLAGS = {
    "bind": "server.bind",
    "tls_bind": "server.tls_bind",
    "quic_bind": "server.quic_bind",
    "certfile": "server.certfile",
    "keyfile": "server.keyfile",
    "app": "server.app",
    "log_level": "server.log_level",
    "log_format": "server.log_format",
    "bus": "bus.url",
    "loop": "server.loop",
    "workers": "server.workers",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="HTTP/2 + HTTP/3 Server-Sent-Events gateway")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help in (("serve", "run the gateway"), ("check", "validate and print the effective settings")):
        sub = commands.add_parser(name, help=help)
        sub.add_argument("--config", metavar="FILE", default=os.environ.get("GATEWAY_CONFIG"),
                         help="TOML settings file (also GATEWAY_CONFIG)")
        sub.add_argument("--app", metavar="MODULE:ATTR", help="the Gateway to serve (default: the demo)")
        sub.add_argument("--bind", metavar="HOST:PORT", help="plain HTTP/1.1 + h2c listener ('' disables)")
        sub.add_argument("--tls-bind", metavar="HOST:PORT", help="TLS listener, HTTP/1.1 + h2 ('' disables)")
        sub.add_argument("--quic-bind", metavar="HOST:PORT", help="HTTP/3 listener over UDP ('' disables)")
        sub.add_argument("--certfile", metavar="PEM", help="certificate for TLS and QUIC")
        sub.add_argument("--keyfile", metavar="PEM", help="private key for TLS and QUIC")
        sub.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
        sub.add_argument("--log-format", choices=["text", "json"], help="json: one JSON object a line")
        sub.add_argument("--bus", metavar="URL", help="bus backend URL: memory:// or redis://HOST:PORT/DB")
        sub.add_argument("--workers", metavar="N", help="processes sharing the listeners (needs a redis:// bus)")
        sub.add_argument("--loop", choices=["asyncio", "uvloop"], help="event loop implementation")
    doc = commands.add_parser("config", help="print every setting with its default (TOML or a markdown table)")
    doc.add_argument("--markdown", action="store_true", help="a markdown table instead of TOML")
    dev = commands.add_parser("devcert", help="create a self-signed development certificate")
    dev.add_argument("--dir", default=".dev-certs", help="where cert.pem and key.pem go")
    dev.add_argument("--force", action="store_true", help="replace an existing certificate")
    return parser


def load_settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, tuple[Any, str]] = {}
    for attr, key in _FLAGS.items():
        value = getattr(args, attr, None)
        if value is not None:
            overrides[key] = (value, "--" + attr.replace("_", "-"))
    return Settings.load(args.config, overrides=overrides)


def load_app(target: str) -> Any:
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SettingsError("server.app", target, f"cannot import {module_name!r} ({exc})") from None
    app = getattr(module, attr, None)
    if app is None:
        raise SettingsError("server.app", target, f"module {module_name!r} has no attribute {attr!r}")
    from gateway.api import Gateway

    if not isinstance(app, Gateway):
        raise SettingsError("server.app", target, "must name a gateway.Gateway instance")
    return app


def _loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """None for asyncio's own loop; uvloop's factory, or an error naming the setting when it is not installed."""
    if name != "uvloop":
        return None
    try:
        import uvloop
    except ImportError:
        raise SettingsError("server.loop", name, "uvloop is not installed: pip install 'gateway[uvloop]'") from None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def _secret(key: str, value: object) -> bool:
    """The publish token and an HS secret in auth.jwt_key are masked; a key file's path is shown."""
    from gateway.core.auth import key_file

    if key == "auth.jwt_key":
        return bool(value) and key_file(str(value)) is None
    return key == "hub.publish_token" and bool(value)


def _print_settings(settings: Settings) -> None:
    from gateway.bus.redis_layout import redacted
    values = settings.flat()
    section = ""
    for key, _kind, _default, help in describe():
        head, name = key.split(".")
        if head != section:
            print(f"{'' if not section else chr(10)}[{head}]")
            section = head
        value = values[key]
        shown = "***" if _secret(key, value) else redacted(value) if key == "bus.url" else value
        rendered = str(shown).lower() if isinstance(shown, bool) else repr(shown).replace("'", '"')
        print(f"{name} = {rendered}  # {help} (env {env_name(key)})")


# aioquic logs ~10 INFO lines per HTTP/3 connection (handshake, ALPN, each state change): debug material only.
PROTOCOL_LOGGERS = ("quic", "http3", "aioquic")
# hpack logs every header it encodes or decodes at DEBUG: never useful, and it would drown --log-level debug.
SILENT_LOGGERS = ("hpack",)
# The access lines: when server.access_log asks for them they are written whatever log_level says.
ACCESS_LOGGERS = ("hypercorn.access", "gateway.commands", "gateway.streams")


def _configure_logging(server: ServerSettings) -> None:
    """One handler on the root logger (stderr), in ``server.log_format``; every library logs through it.

    Run by ``gateway serve`` before anything else, so it holds for the supervisor and for each ``--workers``
    child, which is the same command re-executed with the same flags and environment."""
    level = server.log_level
    handler = logging.StreamHandler()
    handler.setFormatter(formatter(server.log_format))
    logging.basicConfig(level=level.upper(), handlers=[handler])  # a no-op where logging is set up (pytest)
    for name in PROTOCOL_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if level == "debug" else logging.WARNING)
    for name in SILENT_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    # Hypercorn's errors (a protocol error, a failing lifespan) are the gateway's own business: its level.
    logging.getLogger("hypercorn.error").setLevel(level.upper())
    if server.access_log:
        for name in ACCESS_LOGGERS:
            logging.getLogger(name).setLevel(min(logging.INFO, logging.getLevelNamesMapping()[level.upper()]))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "config":
        from gateway.config import defaults_markdown, defaults_toml

        print(defaults_markdown() if args.markdown else defaults_toml(), end="")
        return 0
    if args.command == "devcert":
        directory = Path(args.dir)
        if (directory / "cert.pem").exists() and not args.force:
            print(f"{directory}/cert.pem exists; keeping it (use --force to replace)")
            return 0
        from gateway import devcert

        cert, key = devcert.create(directory)
        print(f"wrote {cert} and {key}")
        return 0
    from gateway.web import preflight
    from gateway.web.hypercorn import UnverifiedServer

    try:
        settings = load_settings(args)
        if args.command == "check":
            load_app(settings.server.app)
            preflight.check(settings, listeners=True)
            _print_settings(settings)
            return 0
        _configure_logging(settings.server)
        gateway = load_app(settings.server.app)
        from gateway.supervisor import supervise, worker_index

        # A worker's listeners are shared with its siblings on purpose: its supervisor checked them before.
        preflight.check(settings, listeners=worker_index() is None)
        if settings.server.workers > 1 and worker_index() is None:
            return supervise(sys.argv[1:] if argv is None else argv, settings.server.workers,
                             settings.server.drain_timeout)
        from gateway.web.server import serve

        with asyncio.Runner(loop_factory=_loop_factory(settings.server.loop)) as runner:
            return runner.run(serve(gateway, settings))
    except SettingsError as exc:
        print(f"gateway: error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, OSError, UnverifiedServer) as exc:
        print(f"gateway: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0
