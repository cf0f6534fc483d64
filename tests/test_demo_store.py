"""Tests for the todo demo's store and its HTML snapshot.

The sans-IO store and the renderer are plain synchronous code, so they are
tested without a server: the store's rules and the renderer's escaping/shape
are what every SSE event depends on. The async ``Todos`` contract runs here on
``MemoryTodos``; ``tests/test_demo_workers.py`` runs it on Redis.
"""

from __future__ import annotations

import re

import pytest

from gateway.demo.render import render_todos
from gateway.demo.store import MAX_ITEMS, MAX_TEXT, MemoryTodos, Snapshot, Todo, TodoStore, todos_for
from tests.support.todos import CONTRACT, Check

pytestmark = pytest.mark.unit


def _store(*texts: str) -> TodoStore:
    """Build a store holding ``texts`` in order."""
    store = TodoStore()
    for text in texts:
        store.add(text)
    return store


def _snap(store: TodoStore) -> Snapshot:
    """What a view renders from ``store``."""
    return Snapshot.of(store.items())


# --- store -----------------------------------------------------------------


def test_constants() -> None:
    """The HTTP layer validates against these, so pin their values."""
    assert MAX_TEXT == 500
    assert MAX_ITEMS == 1000


def test_add_assigns_increasing_ids_from_one() -> None:
    """Ids start at 1 so that 0 can never name a real todo."""
    store = TodoStore()
    assert store.add("a") == Todo(id=1, text="a", done=False)
    assert store.add("b") == Todo(id=2, text="b", done=False)
    assert [t.id for t in store.items()] == [1, 2]


def test_ids_are_never_reused() -> None:
    """A stale command for a deleted id must not hit a newer todo."""
    store = _store("a", "b", "c")
    assert store.delete(3)
    store.toggle(2)
    assert store.clear_completed() == 1
    assert store.add("d").id == 4
    assert [t.id for t in store.items()] == [1, 4]


def test_toggle_flips_and_keeps_order() -> None:
    """Toggling replaces the entry in place; the list must not reorder."""
    store = _store("a", "b", "c")
    assert store.toggle(2) is True
    assert [(t.id, t.done) for t in store.items()] == [(1, False), (2, True), (3, False)]
    assert store.counts() == (3, 1)
    assert store.toggle(2) is True
    assert store.counts() == (3, 0)


def test_unknown_ids_are_reported_not_raised() -> None:
    """Another user may have deleted the todo first; that is not an error here."""
    store = _store("a")
    assert store.toggle(99) is False
    assert store.delete(99) is False
    assert store.delete(0) is False
    assert store.delete(1) is True
    assert store.delete(1) is False
    assert store.toggle(1) is False
    assert store.counts() == (0, 0)


def test_delete_done_item_updates_counts() -> None:
    """The done counter is maintained incrementally, so deletes must adjust it."""
    store = _store("a", "b")
    store.toggle(1)
    assert store.counts() == (2, 1)
    assert store.delete(1)
    assert store.counts() == (1, 0)


def test_clear_completed_returns_count_removed() -> None:
    """The count lets callers skip a broadcast when nothing changed."""
    store = _store("a", "b", "c", "d")
    assert store.clear_completed() == 0
    store.toggle(1)
    store.toggle(3)
    assert store.clear_completed() == 2
    assert [t.text for t in store.items()] == ["b", "d"]
    assert store.counts() == (2, 0)
    assert store.clear_completed() == 0


def test_items_is_a_snapshot() -> None:
    """Mutating the returned list must not change the store."""
    store = _store("a")
    items = store.items()
    items.clear()
    assert len(store.items()) == 1
    assert len(store) == 1


def test_todo_is_frozen() -> None:
    """Snapshots handed out must not be mutable behind the store's back."""
    todo = _store("a").items()[0]
    with pytest.raises(AttributeError):
        todo.done = True  # type: ignore[misc]


def test_add_beyond_max_items_raises() -> None:
    """The cap bounds the size of every event sent to every client."""
    store = TodoStore()
    for i in range(MAX_ITEMS):
        store.add(str(i))
    with pytest.raises(ValueError, match="full"):
        store.add("one too many")
    assert store.counts() == (MAX_ITEMS, 0)
    store.delete(1)
    # A rejected add consumes no id; the deleted id 1 is still not reused.
    assert store.add("fits again").id == MAX_ITEMS + 1


# --- renderer --------------------------------------------------------------


def test_empty_state() -> None:
    """An empty list still renders a message and the footer, never a bare void."""
    html = render_todos(_snap(TodoStore()))
    assert '<p class="empty">' in html
    assert "<li" not in html
    assert "<ul" not in html
    assert '<footer data-total="0" data-done="0">' in html
    assert "0 items left" in html
    assert re.search(r'data-action="clear-completed"[^>]*\bdisabled\b', html)


def test_item_structure() -> None:
    """Pin the markup contract the page's JS and the end-to-end tests rely on."""
    store = _store("Buy milk", "Walk dog")
    store.toggle(2)
    html = render_todos(_snap(store))
    assert '<li data-id="1" data-done="false">' in html
    assert '<li data-id="2" data-done="true">' in html
    assert '<input type="checkbox" data-action="toggle" data-id="1" data-focus-key="toggle-1">' in html
    assert '<input type="checkbox" data-action="toggle" data-id="2" data-focus-key="toggle-2" checked>' in html
    assert "<label><input" in html
    assert "<span>Buy milk</span></label>" in html
    assert (
        '<button type="button" data-action="delete" data-id="1"'
        ' data-focus-key="delete-1" aria-label="Delete: Buy milk">' in html
    )
    assert "1 item left" in html
    assert '<footer data-total="2" data-done="1">' in html
    clear = re.search(r'<button[^>]*data-action="clear-completed"[^>]*>', html)
    assert clear is not None
    assert 'data-focus-key="clear-completed"' in clear.group(0)
    assert "disabled" not in clear.group(0)
    assert html.index('data-id="1"') < html.index('data-id="2"')


def test_counts_pluralise() -> None:
    """The footer reads as a sentence."""
    assert "3 items left" in render_todos(_snap(_store("a", "b", "c")))
    assert "1 item left" in render_todos(_snap(_store("a")))


def test_user_text_is_escaped() -> None:
    """Text from one user is shown to all users, so it must never become markup."""
    evil = "<script>alert(\"x\")</script> & 'q' <img src=x onerror=alert(1)>"
    html = render_todos(_snap(_store(evil)))
    assert "<script" not in html
    assert "<img" not in html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#x27;q&#x27;" in html
    # The text appears escaped both as content and inside the aria-label.
    assert html.count("&lt;script&gt;") == 2
    assert 'aria-label="Delete: &lt;script&gt;alert(&quot;x&quot;)' in html


def test_render_is_deterministic() -> None:
    """Equal state must give byte-equal snapshots, with no timestamps or random ids."""

    def build() -> TodoStore:
        store = _store("a", "b <i>", "c")
        store.toggle(2)
        store.delete(1)
        return store

    first = render_todos(_snap(build()))
    assert first == render_todos(_snap(build()))
    store = build()
    assert render_todos(_snap(store)) == render_todos(_snap(store))


def test_render_has_one_line_per_item_and_no_trailing_newline() -> None:
    """No trailing newline, so an SSE encoder emits no empty data line."""
    html = render_todos(_snap(_store("a", "b", "c")))
    assert not html.endswith("\n")
    assert sum(line.startswith("<li ") for line in html.split("\n")) == 3


def test_newline_in_text_stays_inside_its_item() -> None:
    """Text is escaped, not rewritten; a newline stays within its <span>."""
    html = render_todos(_snap(_store("line one\nline two")))
    assert "<span>line one\nline two</span>" in html


def test_fifty_item_render_size() -> None:
    """Every change re-sends the whole list, so keep a snapshot compact."""
    store = _store(*(f"Todo number {i}: pick up groceries" for i in range(50)))
    for todo_id in range(1, 51, 3):
        store.toggle(todo_id)
    size = len(render_todos(_snap(store)).encode("utf-8"))
    assert 8_000 <= size <= 20_000, size


# --- snapshot ----------------------------------------------------------------


def test_snapshot_of_orders_by_id_and_counts() -> None:
    """Backends may read items in any order; the render must not depend on it."""
    snap = Snapshot.of([Todo(3, "c", True), Todo(1, "a", False), Todo(2, "b", True)])
    assert [t.id for t in snap.items] == [1, 2, 3]
    assert (snap.total, snap.done) == (3, 2)
    assert render_todos(snap) == render_todos(Snapshot.of(reversed(snap.items)))


@pytest.mark.parametrize(
    ("items", "total", "done", "wrong"),
    [
        ((Todo(2, "b", False), Todo(1, "a", False)), 2, 0, "increasing id order"),
        ((Todo(1, "a", False), Todo(1, "a", False)), 2, 0, "increasing id order"),
        ((Todo(1, "a", True),), 1, 0, "do not match"),
        ((Todo(1, "a", False),), 2, 0, "do not match"),
    ],
)
def test_snapshot_refuses_to_contradict_itself(items: tuple[Todo, ...], total: int, done: int, wrong: str) -> None:
    """A backend that read items and counts at different moments is caught where the snapshot is made."""
    with pytest.raises(ValueError, match=wrong):
        Snapshot(items, total, done)


def test_snapshot_is_frozen() -> None:
    """A render's input cannot change under it."""
    snap = Snapshot.of([])
    with pytest.raises(AttributeError):
        snap.total = 1  # type: ignore[misc]


# --- the Todos contract on memory, and the choice of backend ------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("check", CONTRACT, ids=lambda check: check.__name__)
async def test_memory_todos_keep_the_contract(check: Check) -> None:
    store = MemoryTodos()
    await check(lambda: store)
    await store.aclose()


@pytest.mark.asyncio
async def test_memory_todos_snapshot_wraps_the_sans_io_store() -> None:
    """The embedded backend is the sans-IO store: what a sync test sets up is what the view renders."""
    store = _store("a", "b")
    store.toggle(1)
    assert await MemoryTodos(store).snapshot() == _snap(store)


@pytest.mark.asyncio
async def test_todos_for_follows_the_bus() -> None:
    """One process: the list in memory. A Redis bus: in that Redis (nothing connects until the first call)."""
    from gateway.demo.redis_store import RedisTodos

    assert isinstance(todos_for("memory://"), MemoryTodos)
    shared = todos_for("redis://127.0.0.1:6379/0")
    sentinel = todos_for("redis+sentinel://127.0.0.1:26379/mymaster?namespace=shop")
    try:
        assert isinstance(shared, RedisTodos)
        assert shared.prefix == "gateway:demo:todos"
        assert isinstance(sentinel, RedisTodos)
        assert sentinel.prefix == "shop:demo:todos"
    finally:
        await shared.aclose()
        await sentinel.aclose()


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("kafka://127.0.0.1", "must be memory://, redis://"),
        ("redis://127.0.0.1/0?namespace=a{b}", "namespace must be"),
        ("redis+sentinel://127.0.0.1:26379", "names the master"),
    ],
)
def test_todos_for_refuses_a_url_it_cannot_use_with_the_reason(url: str, says: str) -> None:
    with pytest.raises(ValueError, match=re.escape(says)):
        todos_for(url)


def test_redis_todos_refuses_a_prefix_that_would_break_its_hash_tag() -> None:
    from gateway.demo.redis_store import RedisTodos

    with pytest.raises(ValueError, match="prefix must be"):
        RedisTodos("redis://127.0.0.1:6379/0", prefix="a}b")
