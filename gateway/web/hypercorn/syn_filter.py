"""The penalty box in the kernel: a boxed address's connection attempts dropped before they reach the process.

Why: ``connection_limits`` refuses a boxed address's connections right after ``accept()`` (``accept_backoff``),
which costs the process an accept, a close and a turn of the event loop per attempt. A Rapid Reset client that
reconnects as soon as it is closed made ~7,000 attempts a second from one loopback address; refusing them was a
quarter of the gateway's busy time, and every other client's deliveries waited behind it.

What it does: every listening TCP socket the accept loop serves is registered here; while the box holds addresses,
each listener carries a classic BPF filter (``SO_ATTACH_FILTER``, built by ``gateway.core.synfilter``) that drops
the packets of those addresses, so their SYNs go unanswered: no connection, no accept, nothing for the process to
do, and the client falls back to its SYN retransmit timer (1 s, then 3 s, 7 s, ...). The filter is rebuilt when an
address enters the box (at most ten times a second) and when the earliest one leaves it, and detached when the box
is empty. Connections the
kernel accepted before the filter (already in the accept queue) are still refused at accept. Accepted sockets
inherit the listener's filter; it never names their own peer (a boxed peer's SYN would not have got through), so
it only costs them a few instructions per packet.

Scope: Linux (elsewhere, or if the kernel refuses the filter, it logs once and the accept-time refusal remains);
per process, like the box itself (with ``--workers`` each process boxes on its own strikes and filters its own
``SO_REUSEPORT`` listener). Set by ``limits.abuse_kernel_filter`` (on). Attempts dropped by the kernel are not
counted in ``gateway_connections_refused_total``; ``gateway_penalty_box_addresses`` tells how many addresses are
filtered.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import socket
import struct
import time
from collections.abc import Callable

from gateway.core.connections import PenaltyBox
from gateway.core.resets import Throttle
from gateway.core.synfilter import Program, program

log = logging.getLogger("gateway.hypercorn")

SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)  # linux/socket.h (asm-generic)
SO_DETACH_FILTER = getattr(socket, "SO_DETACH_FILTER", 27)
REFRESH_MARGIN = 0.01  # seconds after the earliest release that the filter is rebuilt
MIN_INTERVAL = 0.1  # seconds between two rebuilds (each parses up to ~2,000 addresses: a few milliseconds)

_enabled = False
_listeners: dict[int, socket.socket] = {}
_attached: tuple[str, ...] = ()  # the addresses the listeners' filter drops now
_refresh: asyncio.TimerHandle | None = None  # the next rebuild: when an address leaves, or a deferred one
_last = float("-inf")  # loop time of the last rebuild
_lines = Throttle(1.0)
_observers: list[Callable[[int], None]] = []


def configure(enabled: bool, on_change: Callable[[int], None] | None = None) -> None:
    """Turn the kernel filter on or off (``limits.abuse_kernel_filter``); ``on_change`` hears how many addresses
    the filter drops after each change."""
    global _enabled
    _enabled = enabled and hasattr(socket, "AF_PACKET")  # Linux
    _observers[:] = [on_change] if on_change is not None else []
    if enabled and not _enabled:
        log.info("limits.abuse_kernel_filter: socket filters are Linux only; boxed addresses are refused at accept")


def listening(sock: socket.socket) -> None:
    """Called by the accept loop with its listener: remembers TCP listeners (one dict lookup once known) and gives
    a new one the filter in force."""
    fd = sock.fileno()
    known = _listeners.get(fd)
    if known is sock or not _enabled:
        return
    if sock.type != socket.SOCK_STREAM or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    _listeners[fd] = sock
    if _attached:
        _attach(sock, _attached)


def update(box: PenaltyBox, loop: asyncio.AbstractEventLoop) -> None:
    """Make every listener's filter drop exactly the addresses in ``box``: at once, or, within ``MIN_INTERVAL`` of
    the last rebuild, when that interval ends (a flood of addresses boxed one after another costs at most
    ``1 / MIN_INTERVAL`` rebuilds a second); and again when the earliest of them leaves."""
    global _refresh
    if not _enabled:
        return
    due = _last + MIN_INTERVAL
    if due > loop.time():
        if _refresh is None or _refresh.when() > due:
            if _refresh is not None:
                _refresh.cancel()
            _refresh = loop.call_at(due, _rebuild, box, loop)
        return
    _rebuild(box, loop)


def _rebuild(box: PenaltyBox, loop: asyncio.AbstractEventLoop) -> None:
    global _attached, _refresh, _last
    if _refresh is not None:
        _refresh.cancel()
        _refresh = None
    if not _enabled:
        return
    now = _last = loop.time()
    boxed = box.boxed(now)
    addresses = tuple(address for address, _ in boxed)
    if addresses != _attached:
        for fd, sock in list(_listeners.items()):
            if sock.fileno() != fd:  # closed (its number may be reused by another socket)
                del _listeners[fd]
            elif not _attach(sock, addresses):
                return
        _attached = addresses
        for observer in _observers:
            observer(len(addresses))
    if boxed:
        release = min(until for _, until in boxed) + REFRESH_MARGIN
        _refresh = loop.call_at(max(release, now + MIN_INTERVAL), _rebuild, box, loop)


def _attach(sock: socket.socket, addresses: tuple[str, ...]) -> bool:
    """Attach the filter for ``addresses`` to ``sock`` (detach when there are none); False, with the filter turned
    off for good, if the kernel refuses."""
    global _enabled
    try:
        if not addresses:
            with contextlib.suppress(OSError):  # ENOENT: nothing attached
                sock.setsockopt(socket.SOL_SOCKET, SO_DETACH_FILTER, 0)
            return True
        built = _program(addresses)
        code = ctypes.create_string_buffer(built.pack())
        fprog = struct.pack("@HP", len(built.instructions), ctypes.addressof(code))  # struct sock_fprog
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
        return True
    except OSError as exc:
        _enabled = False
        log.warning("cannot attach the penalty box's socket filter (%s); boxed addresses are refused at accept", exc)
        return False


_built: tuple[tuple[str, ...], Program] | None = None


def _program(addresses: tuple[str, ...]) -> Program:
    """The program for ``addresses``, built once per change of the box (every listener gets the same)."""
    global _built
    if _built is None or _built[0] != addresses:
        _built = addresses, program(addresses)
        if _built[1].left_out and _lines.hit(time.monotonic()):
            log.warning("the kernel filter holds %d of %d boxed addresses; the rest are refused at accept",
                        len(_built[1].dropped), len(_built[1].dropped) + _built[1].left_out)
    return _built[1]


def reset() -> None:
    """Forget listeners and filters (a new gateway in the same process, as tests make)."""
    global _attached, _refresh, _last
    if _refresh is not None:
        _refresh.cancel()
    _listeners.clear()
    _attached, _refresh, _last = (), None, float("-inf")


def attached() -> tuple[str, ...]:
    """The addresses the listeners' filter drops now, the most recently boxed first."""
    return _attached
