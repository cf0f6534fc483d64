"""Who the client is, for per-client limits: the peer address, or X-Forwarded-For from trusted proxies only.

``X-Forwarded-For`` is written by every hop, and any client can send one of its own; only the entries appended by
proxies we trust are believable. So the chain is read from the right: the peer must be trusted for the header to
count at all, trusted hops are skipped, and the first address that is not a trusted proxy is the client. Anything
unparsable ends the walk (a forged or broken entry is not trusted further).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(items: Iterable[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(item, strict=False) for item in items)


def _trusted(address: str, networks: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)


def is_trusted_proxy(peer: str | None, trusted: tuple[Network, ...]) -> bool:
    """Whether the socket's peer is a trusted proxy, whose forwarding headers are believed."""
    return peer is not None and bool(trusted) and _trusted(peer, trusted)


def client_address(peer: str | None, forwarded_for: str | None, trusted: tuple[Network, ...]) -> str:
    """The address limits apply to. ``peer`` is the socket's remote address (``None`` for a Unix socket)."""
    peer = peer or "unknown"
    if not trusted or not forwarded_for or not _trusted(peer, trusted):
        return peer
    hops = [hop.strip() for hop in forwarded_for.split(",")]
    for hop in reversed(hops):
        if not hop:
            break
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            break
        if not _trusted(hop, trusted):
            return hop
    # Every listed hop was a trusted proxy (or the list was broken): the leftmost parsable one is the best guess.
    for hop in hops:
        try:
            return str(ipaddress.ip_address(hop))
        except ValueError:
            continue
    return peer
