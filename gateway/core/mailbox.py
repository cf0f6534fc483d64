"""Per-connection bounded mailboxes: the only buffer between fan-out and a connection's writer.

A publisher never waits on a subscriber. Fan-out calls ``put`` (never blocks, O(1)); the connection's writer
calls ``take`` when it is ready to write. What happens when a client reads slower than state changes is the
mailbox's *policy*, decided here without any I/O:

- ``ConflatingMailbox`` (views): holds only the newest item; an older pending item is replaced and counted as
  skipped. A view converges on the latest state, so intermediate renders are worth nothing to a slow client.
- ``BoundedMailbox`` (hub streams): a FIFO bounded in items and bytes. When full, policy ``disconnect`` tells the
  caller to close the connection (the client resumes from Last-Event-ID), ``drop-oldest`` discards the oldest
  items and remembers the first lost one so the writer can announce the gap. Datastar patches queued in it are
  folded as they wait (a newer patch of the same element drops the older; signal patches merge), see its class.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Generic, Literal, TypeVar

from gateway.core.datastar import PatchInfo
from gateway.core.mergepatch import Fold, fold

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


class _Entry(Generic[T]):
    """One queued item; a folded-away one stays in the queue as a tombstone (``live`` False) until the queue is
    compacted, so that folding never scans or reorders the queue."""

    __slots__ = ("info", "item", "live", "size")

    def __init__(self, item: T, size: int, info: PatchInfo | None) -> None:
        self.item = item
        self.size = size
        self.info = info
        self.live = True


Merge = Callable[[T, Fold], tuple[T, int]]
"""Builds the item (and its size) that carries folded signal patches, from the newest of them."""


class BoundedMailbox(Generic[T]):
    """A FIFO of ``(item, size)`` bounded by ``Limits``, that folds Datastar patches as they queue up.

    Items put with a ``PatchInfo`` (``gateway.core.datastar``) are conflated while they wait: a patch that
    rewrites an element (outer, inner, replace, remove) makes the queued patches of the same target that it
    overwrites irrelevant, and they are dropped; a signal patch is folded with the queued signal patch before it
    (``merge`` builds the item) unless a barrier lies between them (``PatchInfo.barrier``). The folded item takes
    the place of the newest, so ids stay in order. A client that drains late thus converges on the state a fast
    client reaches, with fewer bytes, and a slow client fed patches of a few targets is not cut off for it.
    ``superseded`` and ``merged`` count the patches that folding removed.
    """

    __slots__ = ("_dead", "_items", "_signals", "_targets", "bytes", "count", "dropped", "first_dropped", "limits",
                 "merge", "merged", "superseded")

    def __init__(self, limits: Limits, merge: Merge[T] | None = None) -> None:
        self.limits = limits
        self.merge = merge  # None: signal patches are queued as they come
        # Made by the first put and given up by every take: an empty deque is ~760 bytes, and most streams' mailboxes
        # stay empty (fan-out writes to an idle stream directly). The index likewise (an empty dict: 64 bytes).
        self._items: deque[_Entry[T]] | None = None
        self._targets: dict[str, list[_Entry[T]]] | None = None  # live element patches by target
        self._signals: _Entry[T] | None = None  # the newest signal patch no barrier follows
        self._dead = 0
        self.count = 0  # live items
        self.bytes = 0
        self.dropped = 0
        self.first_dropped: T | None = None
        self.superseded = 0
        self.merged = 0

    def put(self, item: T, size: int, info: PatchInfo | None = None) -> PutResult:
        if info is not None:
            previous = self._signals
            if info.signals is not None and previous is not None and self.merge is not None:
                before = previous.info.signals if previous.info is not None else None
                if before is not None:
                    folded = fold(fold(before, info.signals.reset), info.signals.patch)
                    self._kill(previous)
                    self.merged += 1
                    item, size = self.merge(item, folded)
                    info = PatchInfo(signals=folded)
            elif info.target is not None and self._targets is not None and (same := self._targets.get(info.target)):
                kept = []
                for entry in same:
                    if not entry.live:
                        continue
                    if entry.info is not None and entry.info.mode in info.supersedes:
                        self._kill(entry)
                        self.superseded += 1
                    else:
                        kept.append(entry)
                self._targets[info.target] = kept
        return self._append(_Entry(item, size, info))

    def _append(self, entry: _Entry[T]) -> PutResult:
        limits = self.limits
        size = entry.size
        result = PutResult.QUEUED
        items = self._items
        if items is None:
            items = self._items = deque()
        if self.count >= limits.max_items or self.bytes + size > limits.max_bytes:
            if limits.policy == "disconnect":
                return PutResult.OVERFLOW
            while self.count and (self.count >= limits.max_items or self.bytes + size > limits.max_bytes):
                old = items.popleft()
                if not old.live:
                    self._dead -= 1
                    continue
                self._kill(old)
                self._dead -= 1
                self._unindex(old)
                self.dropped += 1
                if self.first_dropped is None:
                    self.first_dropped = old.item
            result = PutResult.DROPPED_OLDEST
        items.append(entry)
        self.count += 1
        self.bytes += size
        info = entry.info
        if info is not None:
            if info.target is not None:
                if self._targets is None:
                    self._targets = {}
                self._targets.setdefault(info.target, []).append(entry)
            if info.signals is not None:
                self._signals = entry
            elif info.barrier:
                self._signals = None
        if self._dead > 64 and self._dead > self.count:
            self._items = deque(e for e in items if e.live)
            self._dead = 0
        return result

    def _unindex(self, entry: _Entry[T]) -> None:
        """Forget a popped element patch, so that the index holds nothing the queue lost."""
        target = entry.info.target if entry.info is not None else None
        targets = self._targets
        if target is not None and targets is not None and (same := targets.get(target)) is not None:
            if entry in same:
                same.remove(entry)
            if not same:
                del targets[target]

    def _kill(self, entry: _Entry[T]) -> None:
        """Take ``entry`` out of the counts; it stays in the deque as a tombstone."""
        if not entry.live:
            return
        entry.live = False
        self.count -= 1
        self.bytes -= entry.size
        self._dead += 1
        if entry is self._signals:
            self._signals = None

    def take_all(self) -> list[T]:
        """Everything pending, oldest first (the writer coalesces them into one write)."""
        queued = self._items
        items = [entry.item for entry in queued if entry.live] if queued is not None else []
        self._items = None
        self._targets = None
        self._signals = None
        self._dead = 0
        self.count = 0
        self.bytes = 0
        return items

    def take_gap(self) -> T | None:
        """The first item lost since the last call, if any (for the writer's gap event)."""
        first, self.first_dropped = self.first_dropped, None
        return first

    def __len__(self) -> int:
        return self.count
