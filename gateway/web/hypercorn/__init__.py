"""Corrections to Hypercorn and aioquic defects that hurt a streaming gateway, one module each.

- ``quic_shutdown``: the QUIC listener and idle QUIC connections hold up shutdown (hypercorn, aioquic);
- ``h3_disconnects``: HTTP/3 disconnects never reach the app (hypercorn, aioquic);
- ``h2_late_data``: a DATA frame after an early response kills the h2 connection (hypercorn, h2);
- ``h2_backpressure``: h2 buffers grow without bound for a client that grants no window (hypercorn);
- ``send_after_disconnect``: a send after an HTTP/1.1 reset returns without ever yielding (hypercorn);
- ``tcp_close_abort``: a closed TCP connection lives on while its peer does not read (hypercorn);
- ``connection_limits``: every TCP connection is accepted, without a cap per process or per address (hypercorn);
- ``header_deadline``: an HTTP/1.1 request head may take 75 s, then is closed without a status (hypercorn, h11);
- ``h3_backpressure``: HTTP/3 buffers grow without bound for a client that grants no credit (hypercorn, aioquic);
  it wraps the ``stream_send`` installed by ``h3_disconnects``, so it is installed after it;
- ``h2_rapid_reset``: HTTP/2 Rapid Reset and the priority tree's quadratic removal (hypercorn, h2); it wraps the
  ``_handle_events`` of ``h2_late_data``, so it is installed after it;
- ``tcp_eof_close``: a connection closed by its client keeps its socket until the keep-alive timeout (hypercorn);
- ``accept_backoff``: out of descriptors, asyncio's accept loop spins and logs without bound (Python 3.11's asyncio);
- ``quic_retry``: HTTP/3 answers every Initial without a Retry and with no connection cap (hypercorn, aioquic); it
  wraps ``QuicProtocol._handle_events`` as ``h3_backpressure`` does, each independently of the other;
- ``h3_receive_queue``: HTTP/3 drops every datagram past ten waiting to be handled (hypercorn);
- ``app_queue``: every request holds an ``asyncio.Queue`` (~3.3 KB) for its ASGI ``receive`` for its whole life,
  and a response can only hear of its disconnect through a task waiting on it (hypercorn);
- ``h11_can_read``: every HTTP/1.1 connection holds an ``asyncio.Event`` (~860 bytes) it rarely waits on
  (hypercorn);
- ``h3_send_coalescing``: HTTP/3 builds packets after every write, walking every stream of the connection each
  time, and makes a timer task per write (hypercorn, aioquic); it replaces ``QuicProtocol.send_all``, which
  ``quic_shutdown`` and ``h3_backpressure`` call;
- ``drain_waiters``: every asyncio stream connection holds a deque of drain waiters (760 bytes) it rarely uses
  (Python 3.11's asyncio);
- ``asgi_wrapper``: every request keeps a coroutine frame (~260 bytes) that only forwards the call to the app
  (hypercorn);
- ``h11_switch_proposals``: every HTTP/1.1 connection holds an empty set of protocol-switch proposals (216 bytes)
  (h11);
- ``writer_future``: every asyncio stream writer holds a completed future nothing reads (~140 bytes) (Python 3.11's
  asyncio).

In parentheses: the packages whose internals each one relies on.

``transport``, ``h2_direct`` and ``h3_direct`` are not corrections: they are the seams through which fan-out writes
to an idle HTTP/1.1 socket and frames DATA for idle HTTP/2 and HTTP/3 streams (``gateway.web.direct``), and they
trust Hypercorn's, h11's, h2's and aioquic's objects only once ``install`` found them verified. Nor is
``h11_post_lane``, installed with them (last: it wraps ``header_deadline``'s ``H11Protocol.handle``): it serves a
plain HTTP/1.1 command or publish POST from the connection's read loop, without Hypercorn's per-request layers.

Each module reads or replaces private parts of the package it corrects, so the corrections are only known to be
right on the versions in ``VERIFIED`` (pinned exactly in ``pyproject.toml``). ``install`` refuses any other version
with ``UnverifiedServer``, one line naming the package, both versions and the setting that accepts the risk
(``server.accept_unverified_server``). With that setting, each unverified package is logged once as a warning, the
corrections relying on its internals stay out (the others are installed), and direct writes stay off.

``install`` runs in the gateway's own ASGI lifespan startup, so the corrections hold under any server that runs
the gateway (``gateway serve``, ``hypercorn mymod:gw``); ``gateway serve`` also calls it before Hypercorn creates
its servers. It patches classes, so it acts process-wide, once: calling it again installs nothing twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata

from gateway.web.hypercorn import (
    accept_backoff,
    app_queue,
    asgi_wrapper,
    connection_limits,
    drain_waiters,
    h2_backpressure,
    h2_late_data,
    h2_rapid_reset,
    h3_backpressure,
    h3_disconnects,
    h3_receive_queue,
    h3_send_coalescing,
    h11_can_read,
    h11_post_lane,
    h11_switch_proposals,
    header_deadline,
    quic_retry,
    quic_shutdown,
    send_after_disconnect,
    tcp_close_abort,
    tcp_eof_close,
    writer_future,
)
from gateway.web.hypercorn.send_after_disconnect import ClientDisconnected

__all__ = ["VERIFIED", "ClientDisconnected", "UnverifiedServer", "install", "installed", "unverified", "verify"]

log = logging.getLogger("gateway.hypercorn")

# The versions every correction and the direct-write seam were verified on (tests/ run against exactly these).
VERIFIED = {"hypercorn": "0.18.0", "h11": "0.16.0", "h2": "4.4.1", "aioquic": "1.7.2"}
SETTING = "server.accept_unverified_server"
SETTING_ENV = "GATEWAY_SERVER_ACCEPT_UNVERIFIED_SERVER"


class UnverifiedServer(RuntimeError):
    """A server package is not the version the corrections were verified on, and the risk was not accepted."""

    def __init__(self, package: str, found: str, verified: str) -> None:
        super().__init__(
            f"{package} {found} is installed, but the gateway's Hypercorn corrections are verified on {package} "
            f"{verified} only: install {package}=={verified}, or set {SETTING}=true ({SETTING_ENV}) to run with the "
            f"corrections that rely on {package}'s internals switched off")
        self.package = package
        self.found = found
        self.verified = verified


@dataclass(frozen=True)
class Correction:
    name: str
    relies_on: tuple[str, ...]  # packages whose private parts it replaces or reads
    install: Callable[[], None]


# In installation order: h3_backpressure wraps the ``stream_send`` that h3_disconnects installs.
CORRECTIONS: tuple[Correction, ...] = (
    Correction("quic_shutdown", ("hypercorn", "aioquic"), quic_shutdown.install),
    Correction("h3_disconnects", ("hypercorn", "aioquic"), h3_disconnects.install),
    Correction("h2_late_data", ("hypercorn", "h2"), h2_late_data.install),
    Correction("h2_backpressure", ("hypercorn",), h2_backpressure.install),
    Correction("send_after_disconnect", ("hypercorn",), send_after_disconnect.install),
    Correction("tcp_close_abort", ("hypercorn",), tcp_close_abort.install),
    Correction("connection_limits", ("hypercorn",), connection_limits.install),
    Correction("header_deadline", ("hypercorn", "h11"), header_deadline.install),
    Correction("h3_backpressure", ("hypercorn", "aioquic"), h3_backpressure.install),
    Correction("h2_rapid_reset", ("hypercorn", "h2"), h2_rapid_reset.install),
    Correction("tcp_eof_close", ("hypercorn",), tcp_eof_close.install),
    Correction("accept_backoff", (), accept_backoff.install),
    Correction("quic_retry", ("hypercorn", "aioquic"), quic_retry.install),
    Correction("h3_receive_queue", ("hypercorn",), h3_receive_queue.install),
    Correction("h3_send_coalescing", ("hypercorn", "aioquic"), h3_send_coalescing.install),
    Correction("app_queue", ("hypercorn",), app_queue.install),
    Correction("h11_can_read", ("hypercorn",), h11_can_read.install),
    Correction("drain_waiters", (), drain_waiters.install),
    Correction("asgi_wrapper", ("hypercorn",), asgi_wrapper.install),
    Correction("h11_switch_proposals", ("h11",), h11_switch_proposals.install),
    Correction("writer_future", (), writer_future.install),
    # Not a correction: the HTTP/1.1 POST lane; it wraps the ``H11Protocol.handle`` of header_deadline.
    Correction("h11_post_lane", ("hypercorn", "h11"), h11_post_lane.install),
)

_installed: list[str] = []
_warned: set[str] = set()
_direct_writes = False


def unverified() -> dict[str, str]:
    """``{package: installed version}`` for every server package that is not the verified version."""
    found: dict[str, str] = {}
    for package, verified in VERIFIED.items():
        try:
            current = metadata.version(package)
        except metadata.PackageNotFoundError:
            current = "(not installed)"
        if current != verified:
            found[package] = current
    return found


def verify(accept_unverified: bool) -> dict[str, str]:
    """The unverified packages; ``UnverifiedServer`` for the first of them unless ``accept_unverified``."""
    found = unverified()
    if found and not accept_unverified:
        package, current = next(iter(found.items()))
        raise UnverifiedServer(package, current, VERIFIED[package])
    return found


def install(accept_unverified: bool) -> list[str]:
    """Install every correction whose packages are verified; the names of those installed, in order.

    Raises ``UnverifiedServer`` (installing nothing) when a package is not the verified version, unless
    ``accept_unverified``. Idempotent: a correction already installed is not installed again.
    """
    global _direct_writes
    found = verify(accept_unverified)
    for package, current in found.items():
        if package not in _warned:
            _warned.add(package)
            skipped = [c.name for c in CORRECTIONS if package in c.relies_on]
            log.warning("%s %s is not the verified %s (%s is set): corrections switched off: %s; direct writes "
                        "off", package, current, VERIFIED[package], SETTING, ", ".join(skipped) or "none")
    for correction in CORRECTIONS:
        if correction.name not in _installed and not found.keys() & set(correction.relies_on):
            correction.install()
            _installed.append(correction.name)
    _direct_writes = not found
    return list(_installed)


def installed() -> list[str]:
    """The names of the corrections installed in this process so far."""
    return list(_installed)


def direct_writes_trusted() -> bool:
    """Whether ``transport`` may walk Hypercorn's and h11's objects: ``install`` ran and found every version."""
    return _direct_writes
