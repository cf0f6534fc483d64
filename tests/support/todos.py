"""The ``Todos`` contract: one set of checks every backend of the demo's store must pass.

Each check takes ``open_store``, which returns a client of one shared, empty list: ``MemoryTodos`` hands out the
same instance every time; ``RedisTodos`` a new client (its own connections) on the same keys, which is what two
gateway processes are. ``tests/test_demo_store.py`` runs the checks on memory (unit tier),
``tests/test_demo_workers.py`` on a real Redis (live tier). The caller closes what ``open_store`` opened.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import pytest
import redis.asyncio

from gateway.demo.redis_store import default_prefix
from gateway.demo.store import MAX_ITEMS, Snapshot, Todo, Todos

Opener = Callable[[], Todos]
Check = Callable[[Opener], Awaitable[None]]

CONTRACT: list[Check] = []


def _check(func: Check) -> Check:
    CONTRACT.append(func)
    return func


async def _filled(store: Todos, *texts: str) -> Todos:
    for text in texts:
        await store.add(text)
    return store


def _state(snapshot: Snapshot) -> list[tuple[int, str, bool]]:
    return [(t.id, t.text, t.done) for t in snapshot.items]


@_check
async def ids_start_at_one_and_grow(open_store: Opener) -> None:
    store = open_store()
    assert await store.add("a") == Todo(id=1, text="a", done=False)
    assert await store.add("b") == Todo(id=2, text="b", done=False)
    snap = await store.snapshot()
    assert _state(snap) == [(1, "a", False), (2, "b", False)]
    assert (snap.total, snap.done) == (2, 0)


@_check
async def toggle_flips_in_place_and_unknown_ids_are_reported(open_store: Opener) -> None:
    store = await _filled(open_store(), "a", "b", "c")
    assert await store.toggle(2) is True
    snap = await store.snapshot()
    assert [(t.id, t.done) for t in snap.items] == [(1, False), (2, True), (3, False)]
    assert (snap.total, snap.done) == (3, 1)
    assert await store.toggle(2) is True
    assert (await store.snapshot()).done == 0
    assert await store.toggle(99) is False
    assert await store.delete(99) is False
    assert await store.delete(1) is True
    assert await store.delete(1) is False
    assert await store.toggle(1) is False


@_check
async def delete_and_clear_keep_counts_and_never_reuse_ids(open_store: Opener) -> None:
    store = await _filled(open_store(), "a", "b", "c", "d")
    assert await store.clear_completed() == 0
    await store.toggle(1)
    await store.toggle(3)
    assert await store.delete(3) is True
    snap = await store.snapshot()
    assert (snap.total, snap.done) == (3, 1)
    assert await store.clear_completed() == 1
    assert await store.clear_completed() == 0
    assert (await store.add("e")).id == 5
    assert _state(await store.snapshot()) == [(2, "b", False), (4, "d", False), (5, "e", False)]


@_check
async def text_is_kept_exactly(open_store: Opener) -> None:
    store = open_store()
    texts = ["<script>alert('x')</script> & \"q\"", "line one\nline two", "Grüße 👋 — ok", " spaced "]
    for text in texts:
        await store.add(text)
    assert [t.text for t in (await store.snapshot()).items] == texts


@_check
async def the_list_holds_max_items_and_a_refused_add_uses_no_id(open_store: Opener) -> None:
    store = open_store()
    for i in range(MAX_ITEMS):
        await store.add(str(i))
    with pytest.raises(ValueError, match="full"):
        await store.add("one too many")
    snap = await store.snapshot()
    assert (snap.total, snap.done) == (MAX_ITEMS, 0)
    assert await store.delete(1)
    assert (await store.add("fits again")).id == MAX_ITEMS + 1


@_check
async def a_command_id_seen_before_changes_nothing(open_store: Opener) -> None:
    """What a redelivered command (same id) meets: the first run's result, and no second change."""
    store = open_store()
    first = await store.add("once", command_id="c-1")
    assert await open_store().add("once", command_id="c-1") == first
    assert await store.toggle(first.id, command_id="c-2") is True
    assert await open_store().toggle(first.id, command_id="c-2") is True
    assert await store.toggle(99, command_id="c-3") is False
    assert await store.toggle(99, command_id="c-3") is False
    assert _state(await store.snapshot()) == [(first.id, "once", True)]
    assert (await store.add("again", command_id="c-4")).id == first.id + 1


@_check
async def concurrent_adds_from_two_clients_stop_at_max_items_with_distinct_ids(open_store: Opener) -> None:
    """Two processes racing for the last places: never more than ``MAX_ITEMS``, never one id twice."""
    clients = [open_store(), open_store()]
    added: list[int] = []
    refused = 0

    async def fill(store: Todos, lane: int) -> None:
        nonlocal refused
        for n in range(MAX_ITEMS + 1):  # each lane alone would overfill the list: the bound is what stops it
            try:
                added.append((await store.add(f"lane {lane} #{n}")).id)
            except ValueError:
                refused += 1
                return

    await asyncio.gather(*(fill(clients[lane % 2], lane) for lane in range(8)))
    assert len(added) == MAX_ITEMS
    assert sorted(added) == list(range(1, MAX_ITEMS + 1))
    assert refused == 8
    snap = await clients[0].snapshot()
    assert snap.total == MAX_ITEMS
    assert sorted(t.id for t in snap.items) == sorted(added)


@_check
async def a_snapshot_never_sees_half_a_clear(open_store: Opener) -> None:
    """Items and counts read in one step, and clear_completed applied in one: every snapshot taken while another
    client clears is the state before or the state after, never a mix."""
    writer, reader = open_store(), open_store()
    before: list[tuple[int, str, bool]] = []
    for n in range(40):
        todo = await writer.add(f"t{n}")
        if n % 2:
            await writer.toggle(todo.id)
        before.append((todo.id, todo.text, bool(n % 2)))
    after = [item for item in before if not item[2]]
    seen: list[list[tuple[int, str, bool]]] = []

    async def read() -> None:
        for _ in range(100):
            seen.append(_state(await reader.snapshot()))
            await asyncio.sleep(0)  # a store that never waits on I/O still lets the clear run between reads

    async def clear() -> int:
        return await writer.clear_completed()

    async with asyncio.timeout(10):
        _, removed = await asyncio.gather(read(), clear())
    assert removed == 20
    seen.append(_state(await reader.snapshot()))
    assert all(state in (before, after) for state in seen)
    assert seen[-1] == after


async def drop_todos(bus_url: str) -> None:
    """Delete the demo list a gateway on ``bus_url`` keeps in Redis (its keys under ``default_prefix``)."""
    client = redis.asyncio.Redis.from_url(bus_url.partition("?")[0])
    try:
        keys = [key async for key in client.scan_iter(match="{" + default_prefix(bus_url) + "}:*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        with contextlib.suppress(Exception):
            await client.aclose()
