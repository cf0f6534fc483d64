"""In-memory state of the multiplayer todo list.

The store is deliberately sans-IO: it knows nothing about HTTP, the event
loop or the SSE stream.  The web layer mutates it in response to commands and
then asks the renderer for a fresh snapshot, so every rule about *what* the
list may contain lives here, where plain synchronous tests can reach it.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MAX_ITEMS", "MAX_TEXT", "Todo", "TodoStore"]

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
