"""Loopback ports for the servers the benchmarks and the tests start: one chooser, safe when several start at once."""

from __future__ import annotations

import random
import socket
import threading
from pathlib import Path

__all__ = ["free_port"]

# Ports handed out by ``free_port`` in this process: a port is never handed out twice, so gateways started at once
# (several tests start two or three in threads) cannot be given the same number.
_HANDED_OUT: set[int] = set()
_HANDING_OUT = threading.Lock()
_RANDOM = random.Random()
# Where ``free_port`` looks first: below the kernel's ephemeral range on a default Linux (32768-60999) and above the
# well-known services that may run here (Redis 6379, Prometheus 9090, NATS 4222).
_FIXED_RANGE = range(20000, 32768)


def _ephemeral_range() -> range:
    """The ports the kernel hands to ``bind(0)`` and to outgoing connections (Linux's setting, else its default)."""
    try:
        low, high = (int(n) for n in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return range(low, high + 1)


def _bindable(port: int) -> bool:
    """Whether ``port`` is free on loopback for both TCP and UDP right now."""
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def free_port() -> int:
    """A port free on loopback for both TCP and UDP (the TLS and QUIC listeners share a number).

    It is taken outside the kernel's ephemeral range. A port from that range that was free a moment ago can be
    given to any outgoing connection before the server binds it, and a gateway binds only after its lifespan
    (the Redis bus) started: CI once failed with "Address already in use" when three gateways on the Redis bus
    started at once on ports the kernel had picked. A port outside that range is only ever taken by an explicit
    bind. Where the ephemeral range covers ``_FIXED_RANGE``, the kernel's own choice is the fallback.
    """
    ephemeral = _ephemeral_range()
    candidates = [p for p in _FIXED_RANGE if p not in ephemeral]
    with _HANDING_OUT:
        for _ in range(200):
            if candidates:
                port = _RANDOM.choice(candidates)
            else:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                    tcp.bind(("127.0.0.1", 0))
                    port = int(tcp.getsockname()[1])
            if port in _HANDED_OUT or not _bindable(port):
                continue
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError("no free port pair found")
