"""The command and notification bus: the only bridge between the command side and the query side."""

from gateway.bus.base import Bus, Command, CommandHandler, Gap, Notification
from gateway.bus.memory import MemoryBus

__all__ = ["Bus", "Command", "CommandHandler", "Gap", "MemoryBus", "Notification", "create_bus"]


def create_bus(url: str, *, history: int, workers: int, queue_size: int, idempotency_ttl: float) -> Bus:
    """A bus from its URL (``memory://`` is the embedded default)."""
    if url in ("memory", "memory://"):
        return MemoryBus(history=history, workers=workers, queue_size=queue_size, idempotency_ttl=idempotency_ttl)
    raise ValueError(f"unsupported bus URL {url!r}: only memory:// is available")
