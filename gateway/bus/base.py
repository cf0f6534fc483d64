"""The ``Bus`` protocol every backend implements, and the frozen records it moves.

Two roles:
- *commands*: ``submit`` accepts a validated command (or raises ``Unavailable``) and returns its id; each accepted
  command is handed to the handler exactly once across the cluster. An idempotency key makes a retried submit
  return the first id without running the command again.
- *notifications*: ``publish`` stamps a topic change with a version that increases across all topics;
  ``subscribe`` yields notifications in version order, first those after ``after`` from the bounded per-topic
  history, then live ones; when some wanted notifications were already evicted, a ``Gap`` comes first, never a
  silent hole.
The same contract tests run against every backend (``tests/test_bus_contract.py``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class Command:
    """A validated command, ready for the handler. ``args`` is the JSON object that was validated; ``validated``
    is the result of that validation, which an in-process bus hands to the handler as it is (a networked bus
    carries ``args`` only, and the handler's side validates them again with the same validator). ``context`` is
    what the request told about the command besides its body (client, headers, identity claims, path values: a
    JSON object, carried next to ``args``); ``delivery`` counts the runs the bus handed it to (1, or more when a
    networked bus redelivers a command whose process died), set by the bus, not the submitter."""

    name: str
    args: Mapping[str, Any] = field(default_factory=dict)
    idempotency_key: str | None = None
    validated: Any = field(default=None, compare=False, repr=False)
    context: Mapping[str, Any] = field(default_factory=dict)
    delivery: int = 1

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a command needs a name")
        if self.delivery < 1:
            raise ValueError(f"a command's delivery count starts at 1, not {self.delivery}")


@dataclass(frozen=True, slots=True)
class Notification:
    """One topic change. ``payload`` is opaque (empty for a plain "state changed" wake-up)."""

    topic: str
    version: str
    payload: bytes = b""


@dataclass(frozen=True, slots=True)
class Gap:
    """Notifications of ``topic`` after ``after`` were evicted from the history before they could be read."""

    topic: str
    after: str | None


CommandHandler = Callable[[str, Command], Awaitable[None]]


class Bus(Protocol):
    """What the gateway needs from a bus backend."""

    @property
    def ready(self) -> bool:
        """True while the backend can accept commands and publish."""
        ...

    async def start(self, handler: CommandHandler) -> None:
        """Connect and start handing accepted commands to ``handler(command_id, command)``."""
        ...

    async def close(self, timeout: float) -> list[str]:
        """Refuse new commands, let accepted ones finish (up to ``timeout`` seconds), release resources.

        Returns the ids of accepted commands that were not run and that no other process will run (each is
        logged): always empty for a bus that keeps unfinished commands for another process."""
        ...

    async def submit(self, command: Command) -> str:
        """Accept a command for execution and return its id; raises ``Unavailable`` when it cannot."""
        ...

    async def publish(self, topic: str, payload: bytes = b"") -> str:
        """Record a change of ``topic``; returns its version."""
        ...

    async def head(self) -> str:
        """The newest version of the whole bus ("0" before the first publish): a safe ``after`` for "from now"."""
        ...

    async def current_version(self, topic: str) -> str | None:
        """The version of the newest notification of ``topic``, or None if it never changed."""
        ...

    def subscribe(self, topics: Sequence[str], after: str | None = None) -> AsyncIterator[Notification | Gap]:
        """History after ``after`` (if given), then live notifications, in version order, until closed.

        Without ``after`` the subscription starts at the moment of this call (not of the first iteration).
        """
        ...

    async def history(self, topics: Sequence[str], after: str | None) -> tuple[list[Notification], list[Gap]]:
        """Stored notifications of ``topics`` newer than ``after`` (all of them for None), oldest first."""
        ...
