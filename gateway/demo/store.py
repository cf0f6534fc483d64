"""State of the multiplayer todo list, and where it lives.

``TodoStore`` is deliberately sans-IO: it knows nothing about HTTP, the event
loop or the SSE stream, so every rule about *what* the list may contain lives
here, where plain synchronous tests can reach it.

The app talks to the list through ``Todos``, an async protocol with two
backends. Once the gateway runs more than one process, a command runs in one
process and the views it changes are rendered in all of them, so the list must
live where every process sees it: ``MemoryTodos`` (a ``TodoStore`` in this
process) serves the embedded, single-process bus; ``RedisTodos``
(``gateway.demo.redis_store``) serves a Redis bus, in the same Redis.
``todos_for(bus_url)`` picks the one the bus calls for.

Views render from one ``Snapshot``, read in one step, so a render never mixes
two states and two processes holding the same state render the same bytes.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

__all__ = ["MAX_ITEMS", "MAX_TEXT", "MemoryTodos", "Snapshot", "Todo", "TodoStore", "Todos", "todos_for"]

#: Longest todo text accepted.  The HTTP layer validates against this so a
#: single command cannot bloat every snapshot sent to every client.
MAX_TEXT = 500

#: Most todos kept at once.  Each change re-sends the whole list to every
#: connected page, so an unbounded list would make every event unbounded too.
MAX_ITEMS = 1000


@dataclass(frozen=True, slots=True)
class Todo:
    """One entry of the list.

    Frozen so that a snapshot handed to the renderer cannot be changed behind
    its back; the store replaces entries instead of mutating them.
    """

    id: int
    text: str
    done: bool


class TodoStore:
    """The shared list, keyed by id.

    A dict keeps insertion order and gives O(1) lookup, so toggling or
    deleting by id never needs a scan, while ``items`` still comes out in the
    order the todos were added.
    """

    def __init__(self) -> None:
        """Start empty; ids begin at 1 so 0 never names a real todo."""
        self._todos: dict[int, Todo] = {}
        self._next_id = 1
        self._done = 0

    def add(self, text: str) -> Todo:
        """Append a todo and return it.

        Ids only ever increase, so a command aimed at a deleted todo cannot
        silently hit a newer one that happened to reuse its id.

        Raises:
            ValueError: if the list already holds ``MAX_ITEMS`` todos.
        """
        if len(self._todos) >= MAX_ITEMS:
            raise ValueError(f"the list is full ({MAX_ITEMS} items)")
        todo = Todo(id=self._next_id, text=text, done=False)
        self._next_id += 1
        self._todos[todo.id] = todo
        return todo

    def toggle(self, todo_id: int) -> bool:
        """Flip a todo's done flag; False if no todo has this id.

        Unknown ids are normal in a multiplayer list (someone else may have
        just deleted it), so they are reported rather than raised.
        """
        todo = self._todos.get(todo_id)
        if todo is None:
            return False
        done = not todo.done
        # Reassigning an existing key keeps its position in the dict.
        self._todos[todo_id] = Todo(id=todo.id, text=todo.text, done=done)
        self._done += 1 if done else -1
        return True

    def delete(self, todo_id: int) -> bool:
        """Remove a todo; False if no todo has this id (see ``toggle``)."""
        todo = self._todos.pop(todo_id, None)
        if todo is None:
            return False
        if todo.done:
            self._done -= 1
        return True

    def clear_completed(self) -> int:
        """Remove every done todo and return how many went.

        Callers use the count to skip broadcasting when nothing changed.
        """
        if not self._done:
            return 0
        removed = self._done
        self._todos = {k: t for k, t in self._todos.items() if not t.done}
        self._done = 0
        return removed

    def items(self) -> list[Todo]:
        """Return the todos in insertion order as a new list.

        A copy, so the caller may iterate while the store keeps changing.
        """
        return list(self._todos.values())

    def counts(self) -> tuple[int, int]:
        """Return ``(total, done)`` in O(1) for the footer of each snapshot."""
        return len(self._todos), self._done

    def __len__(self) -> int:
        """Number of todos, so ``len(store)`` reads naturally."""
        return len(self._todos)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The whole list at one moment: what a view renders.

    Every backend reads it in one step, so the counts always describe these
    items; it checks that itself, and that the items come in id order (which is
    insertion order: ids only grow), so a render depends on the state alone,
    never on how a backend happened to return it.
    """

    items: tuple[Todo, ...]
    total: int
    done: int

    def __post_init__(self) -> None:
        """Refuse a snapshot that contradicts itself (a backend bug, caught where it is made)."""
        ids = [todo.id for todo in self.items]
        if any(a >= b for a, b in itertools.pairwise(ids)):
            raise ValueError(f"snapshot items must be in increasing id order, got ids {ids}")
        done = sum(todo.done for todo in self.items)
        if self.total != len(ids) or self.done != done:
            raise ValueError(f"snapshot counts total={self.total} done={self.done} do not match its items "
                             f"(total={len(ids)} done={done})")

    @classmethod
    def of(cls, items: Iterable[Todo]) -> Snapshot:
        """The snapshot of ``items`` in any order (sorted by id here, counted here)."""
        ordered = tuple(sorted(items, key=lambda todo: todo.id))
        return cls(ordered, len(ordered), sum(todo.done for todo in ordered))


class Todos(Protocol):
    """The list as the app sees it: every method is one atomic step on the shared state.

    ``command_id`` makes ``add`` and ``toggle`` safe to run twice: a bus that
    delivers at least once (Redis, after a process died mid-command) hands the
    handler the same id again, and a second call with an id already seen
    changes nothing and returns what the first call did. ``delete`` and
    ``clear_completed`` need no id: running them twice changes nothing anyway.
    """

    async def add(self, text: str, *, command_id: str | None = None) -> Todo:
        """Append a todo with the next id; ``ValueError`` when ``MAX_ITEMS`` are held."""
        ...

    async def toggle(self, todo_id: int, *, command_id: str | None = None) -> bool:
        """Flip a todo's done flag; False if no todo has this id."""
        ...

    async def delete(self, todo_id: int) -> bool:
        """Remove a todo; False if no todo has this id."""
        ...

    async def clear_completed(self) -> int:
        """Remove every done todo; how many went."""
        ...

    async def snapshot(self) -> Snapshot:
        """The whole list, items and counts read in one step."""
        ...

    async def aclose(self) -> None:
        """Release what the store holds (connections); the state itself stays where it lives."""
        ...


#: Command ids a ``MemoryTodos`` remembers.  Its bus runs each command once,
#: so this only keeps the ``Todos`` contract; bounded, as everything per command is.
MEMORY_SEEN = 10_000


class MemoryTodos:
    """``Todos`` on a ``TodoStore`` in this process: the embedded default, right for exactly one process.

    No method awaits anything, so each runs whole between two turns of the
    event loop: atomic without a lock.
    """

    def __init__(self, store: TodoStore | None = None) -> None:
        """Wrap ``store`` (a fresh, empty one by default)."""
        self.store = store if store is not None else TodoStore()
        self._seen: OrderedDict[str, Todo | bool] = OrderedDict()

    def _remember(self, command_id: str | None, result: Todo | bool) -> None:
        if command_id is not None:
            self._seen[command_id] = result
            if len(self._seen) > MEMORY_SEEN:
                self._seen.popitem(last=False)

    async def add(self, text: str, *, command_id: str | None = None) -> Todo:
        """See ``Todos.add``."""
        seen = self._seen.get(command_id) if command_id is not None else None
        if isinstance(seen, Todo):
            return seen
        todo = self.store.add(text)
        self._remember(command_id, todo)
        return todo

    async def toggle(self, todo_id: int, *, command_id: str | None = None) -> bool:
        """See ``Todos.toggle``."""
        seen = self._seen.get(command_id) if command_id is not None else None
        if isinstance(seen, bool):
            return seen
        changed = self.store.toggle(todo_id)
        self._remember(command_id, changed)
        return changed

    async def delete(self, todo_id: int) -> bool:
        """See ``Todos.delete``."""
        return self.store.delete(todo_id)

    async def clear_completed(self) -> int:
        """See ``Todos.clear_completed``."""
        return self.store.clear_completed()

    async def snapshot(self) -> Snapshot:
        """See ``Todos.snapshot``; the store keeps insertion (id) order and its own counts."""
        total, done = self.store.counts()
        return Snapshot(tuple(self.store.items()), total, done)

    async def aclose(self) -> None:
        """Nothing to release: the list lives and dies with this process."""


def todos_for(bus_url: str, *, timeout: float = 2.0) -> Todos:
    """The store a gateway on ``bus_url`` needs: in this process for the embedded bus, in the bus's Redis otherwise.

    A Redis bus means several processes may serve the app, so the list goes
    where they all see it: ``RedisTodos`` at the same Redis (plain, TLS, unix
    socket, Sentinel or Cluster, as the bus URL says), its keys named after
    the bus's namespace. ``timeout`` bounds every Redis call (seconds).
    ``ValueError`` names what is wrong with a URL the store cannot use.
    """
    from gateway.bus import is_shared  # the same test the gateway applies to choose its bus

    if not is_shared(bus_url):
        return MemoryTodos()
    from gateway.demo.redis_store import RedisTodos  # on demand: the embedded default never loads redis-py

    return RedisTodos(bus_url, timeout=timeout)
