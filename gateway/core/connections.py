"""Caps on open connections: one for the process, one per peer address; the count itself, with no sockets.

A connection from a trusted proxy carries many clients, so it is counted against the process cap only. The TCP
listener (``gateway.web.hypercorn.connection_limits``) asks ``admit`` before any byte is read and refuses the
connection at once when it answers a reason; ``release`` when the connection ends.
"""

from __future__ import annotations

import enum
from collections import OrderedDict, deque
from dataclasses import dataclass, field


class Refusal(enum.Enum):
    """Why a connection was refused: the ``reason`` label of ``gateway_connections_refused_total``."""

    GLOBAL = "global"  # limits.max_connections
    ADDRESS = "address"  # limits.max_connections_per_address
    ABUSE = "abuse"  # the address is in the penalty box (limits.abuse_strikes)


@dataclass(eq=False)
class ConnectionCaps:
    """Open connections counted against ``max_total`` and ``max_per_address`` (0 disables either)."""

    max_total: int
    max_per_address: int
    total: int = 0
    by_address: dict[str, int] = field(default_factory=dict)

    def admit(self, address: str, exempt: bool = False) -> Refusal | None:
        """Count a new connection from ``address``, or say why it is refused (and count nothing)."""
        if self.max_total and self.total >= self.max_total:
            return Refusal.GLOBAL
        held = self.by_address.get(address, 0)
        if not exempt and self.max_per_address and held >= self.max_per_address:
            return Refusal.ADDRESS
        self.total += 1
        if not exempt:
            self.by_address[address] = held + 1
        return None

    def release(self, address: str, exempt: bool = False) -> None:
        self.total = max(0, self.total - 1)
        if not exempt:
            left = self.by_address.get(address, 0) - 1
            if left > 0:
                self.by_address[address] = left
            else:
                self.by_address.pop(address, None)


class PenaltyBox:
    """Addresses refused new connections for a while after repeated abuse.

    A connection closed for abuse (an HTTP/2 client that reset more streams than its budget: GOAWAY
    ENHANCE_YOUR_CALM) is a strike against its peer address; ``strikes`` of them within ``cooldown`` seconds put
    the address in the box for ``cooldown`` seconds, during which its new connections are refused before a byte
    is read. Closing one connection does not stop an attacker who reconnects at once: each new connection costs a
    TLS or h2 handshake and a budget of resets' worth of parsing; refusing at accept costs almost nothing. A
    browser never comes near (it resets a few streams a second at most). At most ``max_addresses`` are
    remembered (the oldest forgotten first), so a flood of distinct addresses cannot grow it without bound.
    ``strikes`` 0 disables it.
    """

    def __init__(self, strikes: int = 3, cooldown: float = 30.0, max_addresses: int = 10_000) -> None:
        self.strikes = strikes
        self.cooldown = cooldown
        self.max_addresses = max_addresses
        self._strikes: OrderedDict[str, deque[float]] = OrderedDict()
        self._until: OrderedDict[str, float] = OrderedDict()

    def strike(self, address: str, now: float) -> bool:
        """Count one abuse by ``address``; True when this strike puts it in the box."""
        if not self.strikes:
            return False
        times = self._strikes.pop(address, None) or deque(maxlen=self.strikes)
        times.append(now)
        self._strikes[address] = times
        _bound(self._strikes, self.max_addresses)
        if len(times) == self.strikes and now - times[0] <= self.cooldown:
            self._until.pop(address, None)
            self._until[address] = now + self.cooldown
            _bound(self._until, self.max_addresses)
            times.clear()
            return True
        return False

    def penalized(self, address: str, now: float) -> bool:
        until = self._until.get(address)
        if until is None:
            return False
        if now < until:
            return True
        del self._until[address]
        return False

    def boxed(self, now: float) -> list[tuple[str, float]]:
        """The addresses in the box at ``now``, each with the time it leaves, the most recently boxed first."""
        return [(address, until) for address, until in reversed(self._until.items()) if until > now]

    def __len__(self) -> int:
        return len(self._until)


def _bound(table: OrderedDict[str, object] | OrderedDict[str, deque[float]] | OrderedDict[str, float],
           size: int) -> None:
    while len(table) > size:
        table.popitem(last=False)
