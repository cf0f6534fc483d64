"""Who may open one more stream: a limit for the process and one per client address, counted in one place.

The count is of *admitted* streams (from the request until the stream is closed), so a burst of reconnects cannot
slip past the limits while earlier streams are still preparing their first render.
"""

from __future__ import annotations

from collections import Counter

from gateway.core.errors import TooManyRequests, Unavailable


class Admission:
    """Admits and releases streams; ``per_client`` 0 means no per-client limit."""

    __slots__ = ("_clients", "max_streams", "open", "per_client")

    def __init__(self, max_streams: int, per_client: int = 0) -> None:
        if max_streams < 1 or per_client < 0:
            raise ValueError(f"stream limits must be positive: {max_streams} streams, {per_client} per client")
        self.max_streams = max_streams
        self.per_client = per_client
        self.open = 0
        self._clients: Counter[str] = Counter()

    def admit(self, client: str) -> None:
        """Count one more stream of ``client``, or refuse it (503 for the process, 429 for the client)."""
        if self.open >= self.max_streams:
            raise Unavailable(f"this gateway holds its maximum of {self.max_streams} streams; retry later", 5)
        if self.per_client and self._clients[client] >= self.per_client:
            raise TooManyRequests(f"{client} already holds {self.per_client} streams, the most one client may", 5)
        self.open += 1
        self._clients[client] += 1

    def release(self, client: str) -> None:
        self.open -= 1
        self._clients[client] -= 1
        if self._clients[client] <= 0:
            del self._clients[client]

    def held_by(self, client: str) -> int:
        return self._clients.get(client, 0)

    @property
    def clients(self) -> int:
        """How many distinct clients hold streams (bounded by ``open``)."""
        return len(self._clients)
