"""HTML snapshot of the todo list, sent whole on every change.

The page never patches the list itself: each SSE event carries this fragment
and replaces the container's contents.  So the fragment has to be complete
(list, counts, empty state) and stable, i.e. the same snapshot always yields
the same string, which keeps the stream testable and lets the page restore
focus by the ``data-focus-key`` attributes that survive the swap.  It depends
on the snapshot alone (no clock, no process id, no per-process counter), so
every gateway process renders the same shared state to the same bytes.
"""

from __future__ import annotations

from html import escape

from gateway.demo.store import Snapshot, Todo

__all__ = ["render_todos"]


def _plural(n: int, word: str) -> str:
    """Return "1 item" / "3 items", so the footer reads like a sentence."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _render_item(todo: Todo) -> str:
    """Render one ``<li>``; user text is escaped wherever it appears.

    The checkbox and the delete button are real form controls so keyboard and
    screen-reader users get focus, Space/Enter and roles for free.  The
    ``<label>`` wrapping checkbox and text names the checkbox by the text and
    makes the text clickable.
    """
    tid = todo.id
    text = escape(todo.text, quote=True)
    checked = " checked" if todo.done else ""
    state = "true" if todo.done else "false"
    # Kept terse (no classes; the page styles by structure and data-*) since
    # this line is repeated per item in every event sent to every client.
    return (
        f'<li data-id="{tid}" data-done="{state}"><label>'
        f'<input type="checkbox" data-action="toggle" data-id="{tid}"'
        f' data-focus-key="toggle-{tid}"{checked}>'
        f"<span>{text}</span></label>"
        f'<button type="button" data-action="delete" data-id="{tid}"'
        f' data-focus-key="delete-{tid}" aria-label="Delete: {text}">'
        "\u00d7</button></li>"
    )


def _render_footer(total: int, done: int) -> str:
    """Render the counts and the "Clear completed" button.

    The button is disabled rather than hidden when nothing is done, so the
    layout does not jump as items are ticked off.
    """
    left = total - done
    disabled = "" if done else " disabled"
    return (
        f'<footer data-total="{total}" data-done="{done}">'
        f'<span class="count">{_plural(left, "item")} left</span>'
        f'<button type="button" data-action="clear-completed"'
        f' data-focus-key="clear-completed"{disabled}>Clear completed</button>'
        "</footer>"
    )


def render_todos(snapshot: Snapshot) -> str:
    """Return the complete HTML of the list for one SSE event.

    Deterministic on purpose: no timestamps or random ids, so two renders of
    the same state are byte-identical.  It takes one ``Snapshot`` rather than
    the store, so the items and the counts it shows were read together.
    """
    todos = snapshot.items
    total, done = snapshot.total, snapshot.done
    # One item per line keeps the output diffable; no trailing newline, so an
    # SSE encoder that splits on newlines does not emit an empty data line.
    if todos:
        lines = ['<ul aria-label="Todo items">']
        lines.extend(_render_item(todo) for todo in todos)
        lines.append("</ul>")
    else:
        lines = ['<p class="empty">Nothing to do yet. Add the first todo above.</p>']
    lines.append(_render_footer(total, done))
    return "\n".join(lines)
