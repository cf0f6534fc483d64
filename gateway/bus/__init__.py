"""The command and notification bus: the only bridge between the command side and the query side."""

from collections.abc import Callable

from gateway.bus.base import Bus, Command, CommandHandler, Gap, Notification
from gateway.bus.memory import MemoryBus

__all__ = ["Bus", "Command", "CommandHandler", "Gap", "MemoryBus", "Notification", "create_bus", "is_shared"]


def is_shared(url: str) -> bool:
    """True for a bus that several processes can share (Redis); False for the embedded one."""
    return url not in ("memory", "memory://")


def create_bus(url: str, *, history: int, workers: int, queue_size: int, idempotency_ttl: float,
               lease: float = 30.0, timeout: float = 2.0, on_health: Callable[[bool], None] | None = None) -> Bus:
    """A bus from its URL: ``memory://`` (the embedded default) or a Redis URL (``redis://``, ``rediss://``,
    ``unix://``, ``redis+sentinel://``). ``lease``, ``timeout`` and ``on_health`` concern networked backends."""
    if not is_shared(url):
        return MemoryBus(history=history, workers=workers, queue_size=queue_size, idempotency_ttl=idempotency_ttl)
    from gateway.bus.redisbus import RedisBus  # imported on demand: the embedded bus never loads redis-py

    return RedisBus(url, history=history, workers=workers, queue_size=queue_size, idempotency_ttl=idempotency_ttl,
                    lease=lease, timeout=timeout, on_health=on_health)
