"""The shipped demo on several processes behaves like one: its list lives in Redis when its bus does.

``RedisTodos`` keeps the ``Todos`` contract against the real Redis on 127.0.0.1:6379 (each test under a namespace
of its own), with two clients racing as two processes would. Then the demo itself, exactly as shipped
(``gateway serve --workers 2`` with the default app), on a Redis bus: commands over fresh connections, which the
kernel spreads over both workers; two view streams held on different workers; both converge on the same bytes,
and every command ran exactly once. Which worker did what is read from each worker's own metric files
(``tests.support.workers``), not from the group's summed ``/metrics``.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import re
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import redis.asyncio

from gateway.bus import redis_layout
from gateway.core.sse import ParsedEvent
from gateway.demo.redis_store import RedisTodos, default_prefix
from gateway.demo.render import render_todos
from gateway.demo.store import Snapshot, Todo, Todos
from tests.support.redis import drop_namespace, namespace_of, redis_namespace
from tests.support.server import Server, start_server
from tests.support.sse_client import SSEReader
from tests.support.todos import CONTRACT, Check, drop_todos
from tests.support.wait import wait_until
from tests.support.workers import METRICS_ENV, children, per_worker, tcp_listeners

pytestmark = pytest.mark.live

ADDS = 40
TOGGLED = [i for i in range(1, ADDS + 1) if i % 3 == 0 and i % 5 != 0]  # 11 todos ticked off...
DELETED = [i for i in range(1, ADDS + 1) if i % 5 == 0]  # ...8 deleted, then the ticked ones cleared
ITEM = re.compile(r'<li data-id="(\d+)" data-done="(true|false)"><label>.*?<span>(.*?)</span>', re.S)


# -- RedisTodos against real Redis ----------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.timeout(60)
@pytest.mark.parametrize("check", CONTRACT, ids=lambda check: check.__name__)
async def test_redis_todos_keep_the_contract(check: Check) -> None:
    url = redis_namespace()
    opened: list[RedisTodos] = []

    def open_store() -> Todos:
        opened.append(RedisTodos(url, timeout=5))
        return opened[-1]

    try:
        await check(open_store)
    finally:
        for store in opened:
            await store.aclose()
        await drop_todos(url)


@pytest.mark.asyncio
async def test_redis_todos_keep_apart_by_namespace_and_prefix() -> None:
    """Gateways that share a Redis under different namespaces share no list, and the keys say whose they are."""
    first, second = redis_namespace(), redis_namespace()
    a, b, c = RedisTodos(first), RedisTodos(second), RedisTodos(first, prefix=default_prefix(first) + ":other")
    try:
        await a.add("only in the first")
        assert (await b.snapshot()).total == 0
        assert (await c.snapshot()).total == 0
        client = redis.asyncio.Redis.from_url(first.partition("?")[0])
        try:
            keys = sorted([k.decode() async for k in client.scan_iter(match="{" + a.prefix + "}:*")])
        finally:
            await client.aclose()
        assert a.prefix == f"{namespace_of(first)}:demo:todos"
        assert keys == ["{" + a.prefix + "}:next", "{" + a.prefix + "}:text"]
    finally:
        for store in (a, b, c):
            await store.aclose()
        await drop_todos(first)


@pytest.mark.asyncio
async def test_an_unreachable_redis_is_reported_as_unavailable_within_the_timeout() -> None:
    """A store call never hangs a handler or a render: it fails within its timeout, saying what is away."""
    from gateway.core.errors import Unavailable
    from tests.support.server import free_port

    store = RedisTodos(f"redis://127.0.0.1:{free_port()}/0", timeout=1)
    try:
        with pytest.raises(Unavailable, match="todo store in Redis is unreachable"):
            await store.snapshot()
    finally:
        await store.aclose()


# -- the shipped demo on two workers ----------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _view(base: str) -> AsyncIterator[SSEReader]:
    """The demo's view stream on a connection of its own (the kernel picks the worker that accepts it)."""
    async with httpx.AsyncClient(timeout=10) as client, \
            client.stream("GET", f"{base}/todos/updates", headers={"Accept-Encoding": "br"}) as response:
        assert response.status_code == 200, await response.aread()
        yield SSEReader(response.aiter_raw(), response.headers.get("content-encoding"))


def _views_by_worker(metrics: Path) -> dict[int, float]:
    return {pid: n for pid, n in per_worker(metrics, "gateway_streams_active", kind="view").items() if n}


async def _view_on_another_worker(stack: contextlib.AsyncExitStack, group: Server, metrics: Path,
                                  taken: int) -> tuple[SSEReader, int]:
    """A view stream held by a worker other than ``taken``: streams that land on ``taken`` are closed and tried
    again (each try is a fresh connection, hashed afresh; 20 misses in a row has a chance of 1 in a million)."""
    for _ in range(20):
        attempt = contextlib.AsyncExitStack()
        view = await attempt.enter_async_context(_view(group.http))
        await view.next_event()
        await wait_until(lambda: sum(_views_by_worker(metrics).values()) == 2, 10, what="the second view counted")
        if _views_by_worker(metrics).get(taken) == 1:
            await stack.enter_async_context(attempt)
            (other,) = set(_views_by_worker(metrics)) - {taken}
            return view, other
        await attempt.aclose()
        await wait_until(lambda: sum(_views_by_worker(metrics).values()) == 1, 10, what="the extra view closed")
    raise AssertionError(f"20 view streams in a row landed on worker {taken}: is the other one listening?")


async def _post_each(base: str, path: str, bodies: list[dict[str, object]]) -> None:
    """POST every body at once, each on a fresh connection (no keep-alive), so the kernel spreads them."""
    async with httpx.AsyncClient(timeout=10, limits=httpx.Limits(max_keepalive_connections=0)) as client:
        answers = await asyncio.gather(*(client.post(f"{base}{path}", json=body) for body in bodies))
    assert [a.status_code for a in answers] == [204] * len(bodies), [a.text for a in answers if a.status_code != 204]


def _items(event: ParsedEvent) -> list[Todo]:
    return [Todo(int(i), html.unescape(text), done == "true") for i, done, text in ITEM.findall(event.data)]


async def _newest_version(url: str) -> str:
    client = redis.asyncio.Redis.from_url(url.partition("?")[0])
    try:
        top = await client.xrevrange("{" + namespace_of(url) + "}:topic:view:todos", count=1)
    finally:
        await client.aclose()
    assert top is not None  # redis-py types a range, and an entry's id, as optional
    assert top[0][0] is not None
    return redis_layout.text(top[0][0])


@pytest.mark.asyncio
@pytest.mark.timeout(120)
async def test_the_shipped_demo_on_two_workers_behaves_like_one_process(tmp_path: Path,
                                                                        certs: tuple[Path, Path]) -> None:
    url = redis_namespace()
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    group = start_server(tmp_path, certs, env={"GATEWAY_BUS_URL": url, METRICS_ENV: str(metrics)},
                         args=["--workers", "2"])
    try:
        workers = children(group.proc.pid)
        assert len(workers) == 2
        await wait_until(lambda: tcp_listeners(group.http_port) >= 2, 20, what="both workers listening")
        async with contextlib.AsyncExitStack() as stack:
            # Two views, held by the two workers.
            first = await stack.enter_async_context(_view(group.http))
            empty = await first.next_event()
            await wait_until(lambda: sum(_views_by_worker(metrics).values()) == 1, 10, what="the first view counted")
            (first_worker,) = _views_by_worker(metrics)
            second, second_worker = await _view_on_another_worker(stack, group, metrics, first_worker)
            assert {first_worker, second_worker} == workers
            assert 'data-total="0"' in empty.data

            # 40 adds at once over fresh connections: both workers accept some and run some.
            texts = [f"todo {n:02d} <from a test> & more" for n in range(ADDS)]
            await _post_each(group.http, "/todos/add", [{"text": text} for text in texts])
            added = [await view.until(lambda e: f'data-total="{ADDS}"' in e.data) for view in (first, second)]
            todos = _items(added[0])
            assert [t.id for t in todos] == list(range(1, ADDS + 1)), "an add was lost or ran twice"
            assert sorted(t.text for t in todos) == sorted(texts)

            # Ticks and deletes at once, then one clear: each kind of command crosses the workers.
            await _post_each(group.http, "/todos/toggle", [{"id": i} for i in TOGGLED])
            await _post_each(group.http, "/todos/delete", [{"id": i} for i in DELETED])
            left = ADDS - len(DELETED)
            ticked = [await view.until(lambda e: f'data-total="{left}" data-done="{len(TOGGLED)}"' in e.data)
                      for view in (first, second)]
            await _post_each(group.http, "/todos/clear-completed", [{}])

            sent = {"/todos/add": ADDS, "/todos/toggle": len(TOGGLED), "/todos/delete": len(DELETED),
                    "/todos/clear-completed": 1}

            def handled() -> Counter[str]:
                return Counter({path: sum(per_worker(metrics, "gateway_commands_handled_total", route=path,
                                                     result="ok").values()) for path in sent})

            await wait_until(lambda: handled() == Counter(sent), 20, what=f"every command handled once: {sent}")
            newest = await _newest_version(url)
            finals = []
            for view, last in zip((first, second), ticked, strict=True):
                while last.id != newest:  # each event waited for within next_event's timeout
                    last = await view.next_event()
                finals.append(last)

        expected = Snapshot.of(t for t in todos if t.id not in DELETED and t.id not in TOGGLED)
        assert finals[0].data.encode() == finals[1].data.encode(), "two workers rendered one version differently"
        assert finals[0].data == render_todos(expected)
        check = RedisTodos(url)
        try:
            assert await check.snapshot() == expected
        finally:
            await check.aclose()

        accepted = per_worker(metrics, "gateway_commands_total", outcome="accepted")
        ran = per_worker(metrics, "gateway_commands_handled_total", result="ok")
        assert sum(accepted.values()) == sum(sent.values())
        assert {pid for pid, n in accepted.items() if n} == workers, f"one worker accepted every command: {accepted}"
        assert {pid for pid, n in ran.items() if n} == workers, f"one worker ran every command: {ran}"
        assert not sum(per_worker(metrics, "gateway_commands_handled_total", result="error").values())
    finally:
        assert group.stop() == 0, group.output()
        await drop_namespace(url)
        await drop_todos(url)
