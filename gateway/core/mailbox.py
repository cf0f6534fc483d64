"""Per-connection bounded mailboxes: the only buffer between fan-out and a connection's writer.

A publisher never waits on a subscriber. Fan-out calls ``put`` (never blocks, O(1)); the connection's writer
calls ``take`` when it is ready to write. What happens when a client reads slower than state changes is the
mailbox's *policy*, decided here without any I/O:

- ``ConflatingMailbox`` (views): holds only the newest item; an older pending item is replaced and counted as
  skipped. A view converges on the latest state, so intermediate renders are worth nothing to a slow client.
- ``BoundedMailbox`` (hub streams): a FIFO bounded in items and bytes. When full, policy ``disconnect`` tells the
  caller to close the connection (the client resumes from Last-Event-ID), ``drop-oldest`` discards the oldest
  items and remembers the first lost one so the writer can announce the gap.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import Enum
from typing import Generic, Literal, TypeVar

T = TypeVar("T")


class PutResult(Enum):
    """What fan-out must do after a put."""

    QUEUED = "queued"
    REPLACED = "replaced"  # conflated: an older pending item was superseded
    DROPPED_OLDEST = "dropped_oldest"
    OVERFLOW = "overflow"  # policy "disconnect": the connection must be closed


class ConflatingMailbox(Generic[T]):
    """Holds at most one item, the newest."""

    __slots__ = ("_item", "skipped")

    def __init__(self) -> None:
        self._item: T | None = None
        self.skipped = 0

    def put(self, item: T) -> PutResult:
        if self._item is not None:
            self._item = item
            self.skipped += 1
            return PutResult.REPLACED
        self._item = item
        return PutResult.QUEUED

    def take(self) -> T | None:
        item, self._item = self._item, None
        return item

    def __len__(self) -> int:
        return 0 if self._item is None else 1


@dataclass(frozen=True, slots=True)
class Limits:
    """High-water marks of a bounded mailbox; both must hold."""

    max_items: int = 1000
    max_bytes: int = 4 * 1024 * 1024
    policy: Literal["disconnect", "drop-oldest"] = "disconnect"

    def __post_init__(self) -> None:
        if self.max_items < 1 or self.max_bytes < 1:
            raise ValueError(f"mailbox limits must be positive: {self.max_items} items, {self.max_bytes} bytes")
        if self.policy not in ("disconnect", "drop-oldest"):
            raise ValueError(f"mailbox policy must be 'disconnect' or 'drop-oldest', got {self.policy!r}")


class BoundedMailbox(Generic[T]):
    """A FIFO of ``(item, size)`` bounded by ``Limits``."""

    __slots__ = ("_items", "bytes", "dropped", "first_dropped", "limits")

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._items: deque[tuple[T, int]] = deque()
        self.bytes = 0
        self.dropped = 0
        self.first_dropped: T | None = None

    def put(self, item: T, size: int) -> PutResult:
        limits = self.limits
        if len(self._items) < limits.max_items and self.bytes + size <= limits.max_bytes:
            self._items.append((item, size))
            self.bytes += size
            return PutResult.QUEUED
        if limits.policy == "disconnect":
            return PutResult.OVERFLOW
        while self._items and (
            len(self._items) >= limits.max_items or self.bytes + size > limits.max_bytes
        ):
            old, old_size = self._items.popleft()
            self.bytes -= old_size
            self.dropped += 1
            if self.first_dropped is None:
                self.first_dropped = old
        self._items.append((item, size))
        self.bytes += size
        return PutResult.DROPPED_OLDEST

    def take_all(self) -> list[T]:
        """Everything pending, oldest first (the writer coalesces them into one write)."""
        items = [item for item, _ in self._items]
        self._items.clear()
        self.bytes = 0
        return items

    def take_gap(self) -> T | None:
        """The first item lost since the last call, if any (for the writer's gap event)."""
        first, self.first_dropped = self.first_dropped, None
        return first

    def __len__(self) -> int:
        return len(self._items)
