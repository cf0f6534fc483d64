"""Caps on open connections: one for the process, one per peer address; the count itself, with no sockets.

A connection from a trusted proxy carries many clients, so it is counted against the process cap only. The TCP
listener (``gateway.web.hypercorn.connection_limits``) asks ``admit`` before any byte is read and refuses the
connection at once when it answers a reason; ``release`` when the connection ends.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Refusal(enum.Enum):
    """Why a connection was refused: the ``reason`` label of ``gateway_connections_refused_total``."""

    GLOBAL = "global"  # limits.max_connections
    ADDRESS = "address"  # limits.max_connections_per_address


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
