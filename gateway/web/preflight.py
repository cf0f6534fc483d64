"""Start-up problems found before anything starts, each reported as one line naming the setting.

``gateway check`` and ``gateway serve`` run these before the first "listening" log line, so an operator reads
``server.keyfile='/etc/gateway/key.pem': no such file`` instead of a bare ``[Errno 2]`` after "gateway started":

- the certificate and key exist, are readable, parse as a PEM certificate and private key, and belong together
  (loaded exactly as the TLS and QUIC listeners will load them);
- every configured listener can be bound now, the way Hypercorn will bind it (``SO_REUSEADDR``, and
  ``SO_REUSEPORT`` when several workers share the listeners), so a port in use is reported with its setting and
  address. The workers of ``gateway serve --workers`` skip this: the supervisor checked before spawning them, and
  their siblings hold the same addresses on purpose;
- the server packages are the versions the Hypercorn corrections were verified on (``gateway.web.hypercorn``).
"""

from __future__ import annotations

import errno
import socket
import ssl
from pathlib import Path

from gateway.config import Settings
from gateway.core.errors import SettingsError
from gateway.web.hypercorn import verify as verify_server_versions


class CannotListen(OSError):
    """A configured listener cannot be bound: the message names the setting, the address and the OS's reason."""

    def __init__(self, key: str, address: str, transport: str, reason: str) -> None:
        super().__init__(f"cannot listen on {key}={address!r} ({transport}): {reason}")
        self.key = key
        self.address = address


def check(settings: Settings, *, listeners: bool) -> None:
    """Every start-up check; ``listeners=False`` in a worker whose supervisor checked them."""
    check_tls(settings)
    verify_server_versions(settings.server.accept_unverified_server)
    if listeners:
        check_listeners(settings)


def check_tls(settings: Settings) -> None:
    """The certificate and key, as the TLS and QUIC listeners will load them; ``SettingsError`` naming the file."""
    server = settings.server
    if not server.certfile and not server.keyfile:
        return
    if not server.keyfile:
        raise SettingsError("server.keyfile", "", "server.certfile is set: give its private key too")
    if not server.certfile:
        raise SettingsError("server.certfile", "", "server.keyfile is set: give its certificate too")
    _readable("server.certfile", server.certfile)
    _readable("server.keyfile", server.keyfile)
    try:
        ssl.create_default_context().load_verify_locations(cafile=server.certfile)
    except ssl.SSLError:
        raise SettingsError("server.certfile", server.certfile, "not a PEM certificate") from None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        # A password callback, so an encrypted key fails here instead of prompting on the terminal.
        context.load_cert_chain(server.certfile, server.keyfile, password=lambda: b"")
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise SettingsError("server.keyfile", server.keyfile,
                                f"not the private key of server.certfile ({server.certfile})") from None
        raise SettingsError("server.keyfile", server.keyfile, "not a PEM private key (an encrypted key is not "
                            "supported: the gateway has no password to give)") from None


def _readable(key: str, path: str) -> None:
    try:
        with Path(path).open("rb") as file:
            file.read(1)
    except FileNotFoundError:
        raise SettingsError(key, path, "no such file") from None
    except IsADirectoryError:
        raise SettingsError(key, path, "a directory, not a PEM file") from None
    except OSError as exc:
        raise SettingsError(key, path, f"cannot be read ({exc.strerror or exc})") from None


def listeners(settings: Settings) -> list[tuple[str, str, socket.SocketKind]]:
    """``(setting, address, socket type)`` of every listener these settings open, as ``server.hypercorn_config``
    configures them (TLS, h2 and HTTP/3 only with a certificate; without ``tls_bind`` the plain listener only)."""
    server = settings.server
    if not (server.certfile and server.keyfile):
        return [("server.bind", server.bind, socket.SOCK_STREAM)] if server.bind else []
    if not server.tls_bind:  # served as plain HTTP only (see hypercorn_config)
        return [("server.bind", server.bind, socket.SOCK_STREAM)] if server.bind else []
    found = [("server.tls_bind", server.tls_bind, socket.SOCK_STREAM)]
    if server.bind:
        found.append(("server.bind", server.bind, socket.SOCK_STREAM))
    if server.quic_bind:
        found.append(("server.quic_bind", server.quic_bind, socket.SOCK_DGRAM))
    return found


def check_listeners(settings: Settings) -> None:
    """Bind each listener and let it go; ``CannotListen`` for the first that cannot be bound."""
    reuse_port = settings.server.workers > 1
    for key, address, kind in listeners(settings):
        transport = "TCP" if kind == socket.SOCK_STREAM else "UDP"
        host, _, port = address.replace("[", "").replace("]", "").rpartition(":")
        try:
            _try_bind(host, int(port), kind, reuse_port)
        except OSError as exc:
            reason = "address already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
            raise CannotListen(key, address, transport, reason) from None


def _try_bind(host: str, port: int, kind: socket.SocketKind, reuse_port: bool) -> None:
    """Bind as ``hypercorn.config.Config._create_sockets`` does, then close."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, kind) as sock:
        if reuse_port and hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Bound, never listening: a listening socket would take a share of a live sibling's connections
        # (SO_REUSEPORT) and reset them when closed. An address another socket listens on fails here already.
        sock.bind((host, port))
