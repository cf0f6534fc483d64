"""Hypercorn accepts every TCP connection, from anyone, without limit (Hypercorn 0.18.0).

Defect: ``TCPServer`` serves every accepted socket; Hypercorn has no cap on open connections, neither for the
process nor per peer address. One host opening sockets in a loop (each idle until ``keep_alive_timeout``, 75 s
here) takes file descriptors and memory (~40 KiB of buffers and objects each) from everyone; measured before this
module: 2,000 idle connections from 127.0.0.1 were all held open.

Correction: ``TCPServer.run`` first counts the connection against ``limits.max_connections`` and
``limits.max_connections_per_address`` (``gateway.core.connections``; a peer in ``limits.trusted_proxies`` is
counted against the process cap only: it carries many clients). The excess is refused before a byte is read: on a
connection that speaks HTTP/1.1 (plain, or TLS with ALPN http/1.1) with ``503`` and the JSON error body,
``Retry-After: 1`` and ``Connection: close``; on h2 by closing it. Counted in
``gateway_connections_refused_total{reason}``.

An address with repeated abuse (``limits.abuse_strikes`` connections closed with GOAWAY ENHANCE_YOUR_CALM by
``h2_rapid_reset`` within ``limits.abuse_cooldown``) is put in a penalty box (``gateway.core.connections``) and its
new connections are aborted at once for ``limits.abuse_cooldown`` seconds, counted as ``reason="abuse"``; with
``limits.abuse_kernel_filter`` (``syn_filter``) the kernel drops its connection attempts before they are accepted.

The count is taken where the connection task first awaits its ``TCPServer`` (``TCPServer.__await__``, which
returns Hypercorn's own ``run`` when the connection is admitted) and given back when the connection closes
(``TCPServer._close``, which ``run`` always ends with), rather than in a coroutine wrapped around ``run``: such a
wrapper's frame (~300 bytes) would be held by every open connection for its whole life.

Upstream: Hypercorn has no connection limit (nor does uvicorn's ``--limit-concurrency`` count per address); the
upstream fix would be a ``max_connections`` config checked in ``TCPServer.run``.

Test that fails without it: ``tests/test_trust_boundary.py::test_per_address_connection_cap``.

Remove it when Hypercorn caps connections per address itself.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable, Iterator
from typing import Any

from gateway.core.clientaddr import Network
from gateway.core.connections import ConnectionCaps, PenaltyBox, Refusal
from gateway.web.hypercorn import syn_filter

log = logging.getLogger("gateway.hypercorn")

REFUSAL_LINGER = 0.5  # seconds a refused connection is read (and discarded) so the 503 is not lost to a reset

_REFUSED_BODY = b'{"error":"unavailable","detail":"too many connections from this address or to this server"}'
REFUSED_503 = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncache-control: no-store\r\n"
               b"retry-after: 1\r\nconnection: close\r\ncontent-length: " + str(len(_REFUSED_BODY)).encode()
               + b"\r\n\r\n" + _REFUSED_BODY)

caps = ConnectionCaps(0, 0)
penalties = PenaltyBox(0)
_trusted: tuple[Network, ...] = ()
_observers: list[Callable[[Refusal], None]] = []  # the last configured gateway's


def configure(max_total: int, max_per_address: int, trusted: tuple[Network, ...],
              on_refused: Callable[[Refusal], None] | None = None) -> None:
    """Set the caps (process-wide: the listener is); ``on_refused`` is told of every refusal."""
    global _trusted
    caps.max_total, caps.max_per_address = max_total, max_per_address
    _trusted = trusted
    _observers[:] = [on_refused] if on_refused is not None else []


def configure_penalties(strikes: int, cooldown: float) -> None:
    """``limits.abuse_strikes`` within ``limits.abuse_cooldown`` put an address in the penalty box."""
    global penalties
    penalties = PenaltyBox(strikes, cooldown)
    syn_filter.reset()


def strike(address: str) -> None:
    """A connection from ``address`` was closed for abuse (see ``PenaltyBox``); trusted proxies are exempt."""
    loop = asyncio.get_running_loop()
    if address and not _exempt(address) and penalties.strike(address, loop.time()):
        log.warning("%s put in the penalty box: %d connections closed for abuse within %g s; its new connections "
                    "are refused for %g s", address, penalties.strikes, penalties.cooldown, penalties.cooldown)
        syn_filter.update(penalties, loop)


def refuse_at_accept(address: str) -> bool:
    """True (and counted) when ``address`` is in the penalty box: the accept loop closes its socket at once."""
    if penalties.strikes and len(penalties) and not _exempt(address) and penalties.penalized(
            address, asyncio.get_running_loop().time()):
        refused(Refusal.ABUSE)
        return True
    return False


def refused(reason: Refusal) -> None:
    for observer in _observers:
        observer(reason)


def _exempt(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in _trusted)


def install() -> None:
    from hypercorn.asyncio.tcp_server import TCPServer

    original_close = TCPServer._close

    def __await__(self: Any) -> Iterator[Any]:
        peer = self.writer.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) and peer else ""  # a unix socket has no address
        exempt = not address or _exempt(address)
        if not exempt and penalties.penalized(address, asyncio.get_running_loop().time()):
            refused(Refusal.ABUSE)
            self.writer.transport.abort()  # an abuser gets no answer and costs no read
            return iter(())
        refusal = caps.admit(address, exempt)
        if refusal is not None:
            refused(refusal)
            return _refuse(self).__await__()
        self._gateway_address, self._gateway_exempt = address, exempt  # two attributes: no tuple held
        running: Iterator[Any] = self.run().__await__()  # Hypercorn's own
        return running

    async def _close(self: Any) -> None:
        address = getattr(self, "_gateway_address", None)
        if address is not None:  # the first close of an admitted connection (run ends with one, a protocol may ask)
            self._gateway_address = None
            caps.release(address, self._gateway_exempt)
        await original_close(self)

    TCPServer.__await__ = __await__  # type: ignore[assignment,method-assign]
    TCPServer._close = _close  # type: ignore[method-assign]


async def _refuse(server: Any) -> None:
    writer: asyncio.StreamWriter = server.writer
    ssl_object = writer.get_extra_info("ssl_object")
    try:
        if ssl_object is None or ssl_object.selected_alpn_protocol() in (None, "http/1.1"):
            writer.write(REFUSED_503)
            if ssl_object is None:
                writer.write_eof()
            # Read what the client already sent: closing over unread data resets the connection, 503 and all.
            await asyncio.wait_for(server.reader.read(64 * 1024), REFUSAL_LINGER)
    except (OSError, TimeoutError, RuntimeError):
        pass
    finally:
        if writer.transport.get_write_buffer_size():
            writer.transport.abort()  # the client does not even read its 503: nothing worth waiting for
        else:
            writer.close()
