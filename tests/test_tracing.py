"""Traces (gateway/tracing.py): a command's POST, handler, publish, render and first delivery are one trace, which
continues the request's W3C ``traceparent``; with tracing off or OpenTelemetry absent nothing of it is imported."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
from collections.abc import Callable, MutableMapping
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from gateway import Gateway, Settings
from gateway.core import stamps
from gateway.core.topics import view_key
from tests.support.server import ROOT

pytestmark = pytest.mark.unit

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
INCOMING = f"00-{TRACE_ID}-b7ad6b7169203331-01"


def _scope(method: str, path: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
            "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"", "headers": headers,
            "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000)}


def _gateway(environ: dict[str, str], provider: TracerProvider | None = None) -> tuple[Gateway, list[str]]:
    gw = Gateway(Settings.load(environ=environ), tracer_provider=provider)
    items: list[str] = []

    @gw.command("/items/add")
    async def add(text: str) -> None:
        items.append(text)
        await gw.publish("items")

    @gw.view("/items/updates", topics=["items"])
    async def updates() -> str:
        return f"<ul>{''.join(f'<li>{i}</li>' for i in items)}</ul>"

    return gw, items


async def _post(gw: Gateway, path: str, body: bytes, extra: list[tuple[bytes, bytes]]) -> int:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra]
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> MutableMapping[str, Any]:
        if messages:
            return messages.pop(0)
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    await gw(_scope("POST", path, headers), receive, send)
    return int(sent[0]["status"])


async def _until(done: Callable[[], bool]) -> None:
    """Wait, bounded (the caller's timeout besides), until ``done()``."""
    for _ in range(1000):
        if done():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("not done within 10 s")


class _ViewClient:
    """A view stream held through the ASGI app: the bytes it is sent, until it leaves."""

    def __init__(self, gw: Gateway, path: str) -> None:
        self.body = b""
        self.changed = asyncio.Event()
        self._gone = asyncio.Event()
        self.task = asyncio.create_task(gw(_scope("GET", path, [(b"accept", b"text/event-stream")]),
                                           self._receive, self._send))

    async def _receive(self) -> MutableMapping[str, Any]:
        await self._gone.wait()
        return {"type": "http.disconnect"}

    async def _send(self, message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.body":
            self.body += message.get("body", b"")
            self.changed.set()

    async def wait_for(self, text: bytes) -> None:
        while text not in self.body:
            self.changed.clear()
            await self.changed.wait()

    async def close(self) -> None:
        self._gone.set()
        await asyncio.wait_for(self.task, 5)


@pytest.mark.asyncio
async def test_a_command_is_one_trace_from_its_post_to_its_first_delivery() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    gw, _ = _gateway({"GATEWAY_TRACING_ENABLED": "true"}, provider)
    assert gw.runtime.tracing.on
    await gw._startup()
    try:
        async with asyncio.timeout(10):
            viewer = _ViewClient(gw, "/items/updates")
            await viewer.wait_for(b"<ul></ul>")
            status = await _post(gw, "/items/add", b'{"text": "milk"}', [(b"traceparent", INCOMING.encode())])
            assert status == 204
            await viewer.wait_for(b"<li>milk</li>")
            await _until(lambda: any(s.name == "deliver /items/updates" for s in exporter.get_finished_spans()))
            await viewer.close()
    finally:
        await gw._shutdown()

    spans = {s.name: s for s in exporter.get_finished_spans()}
    chain = ["POST /items/add", "command /items/add", "publish items", "render /items/updates",
             "deliver /items/updates"]
    assert set(chain) <= spans.keys(), sorted(spans)
    assert {f"{spans[n].context.trace_id:032x}" for n in chain} == {TRACE_ID}
    post = spans["POST /items/add"]
    assert post.parent is not None
    assert f"{post.parent.span_id:016x}" == "b7ad6b7169203331"  # the caller's span
    assert post.kind is SpanKind.SERVER
    assert post.attributes is not None
    assert post.attributes["http.response.status_code"] == 204
    for parent, child in itertools.pairwise(chain):
        assert _parent_id(spans[child]) == spans[parent].context.span_id, f"{child} is not a child of {parent}"
    # Only the traced version's first delivery is a span; the connect-time render of version 0 made none.
    assert [s.name for s in exporter.get_finished_spans()].count("deliver /items/updates") == 1
    assert sum(s.name.startswith("render ") for s in exporter.get_finished_spans()) == 1


def _parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


@pytest.mark.asyncio
async def test_a_command_without_a_traceparent_starts_its_own_trace() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    gw, items = _gateway({"GATEWAY_TRACING_ENABLED": "1"}, provider)
    await gw._startup()
    try:
        async with asyncio.timeout(10):
            assert await _post(gw, "/items/add", b'{"text": "eggs"}', []) == 204
            await _until(lambda: "command /items/add" in {s.name for s in exporter.get_finished_spans()})
            assert await _post(gw, "/items/add", b'{"text": 1}', []) == 422
    finally:
        await gw._shutdown()
    posts = [s for s in exporter.get_finished_spans() if s.name == "POST /items/add"]
    (command,) = [s for s in exporter.get_finished_spans() if s.name == "command /items/add"]
    assert len(posts) == 2
    assert all(s.parent is None for s in posts)  # each a new root
    assert _parent_id(command) == posts[0].context.span_id
    assert command.context.trace_id == posts[0].context.trace_id != posts[1].context.trace_id
    assert items == ["eggs"]
    assert posts[1].attributes is not None
    assert posts[1].attributes["http.response.status_code"] == 422


@pytest.mark.asyncio
async def test_disabled_tracing_makes_no_spans_and_stamps_nothing_more() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    gw, ran = _gateway({}, provider)
    assert not gw.runtime.tracing.on
    await gw._startup()
    try:
        async with asyncio.timeout(10):
            assert await _post(gw, "/items/add", b'{"text": "x"}', [(b"traceparent", INCOMING.encode())]) == 204
            for _ in range(1000):  # the handler ran and published
                if (await gw.runtime.bus.history([view_key("items")], None))[0]:
                    break
                await asyncio.sleep(0.01)
            assert ran == ["x"]
    finally:
        await gw._shutdown()
    assert exporter.get_finished_spans() == ()
    found, _ = await gw.runtime.bus.history([view_key("items")], None)
    assert [stamps.trace(n.payload) for n in found] == [None]


def test_stamps_carry_a_traceparent_and_old_stamps_still_read() -> None:
    traced = stamps.stamp(1700000000.25, 1700000000.5, INCOMING)
    assert stamps.read(traced) == (1700000000.25, 1700000000.5)
    assert stamps.trace(traced) == INCOMING
    old = b"ts1 1700000000.250000 1700000000.500000"
    assert stamps.stamp(1700000000.25, 1700000000.5) == old  # untraced: byte for byte the old format
    assert stamps.read(old) == (1700000000.25, 1700000000.5)
    assert stamps.trace(old) is None
    assert stamps.trace(stamps.stamp(None, 1.0, "not a traceparent!")) is None  # refused, never stamped
    assert stamps.trace(b"ts1 - 1.0 \xff") is None
    assert stamps.trace(b"app payload") is None


@pytest.mark.parametrize("environ", [{}, {"GATEWAY_TRACING_ENABLED": "true"}])
def test_off_or_absent_opentelemetry_is_never_imported(environ: dict[str, str]) -> None:
    """Disabled: nothing imported. Enabled but not installed (imports of it fail): a warning, no tracing."""
    block = "" if not environ else (
        "import importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] == 'opentelemetry': raise ImportError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
    )
    code = (
        "import sys, asyncio\n" + block +
        "from gateway import Gateway, Settings\n"
        f"gw = Gateway(Settings.load(environ={environ!r}))\n"
        "@gw.command('/a')\n"
        "async def a() -> None:\n"
        "    await gw.publish('t')\n"
        "assert not gw.runtime.tracing.on\n"
        "async def main():\n"
        "    await gw._startup()\n"
        "    await gw.runtime.bus.submit(__import__('gateway.bus').bus.Command('/a', {}, None, None, {}))\n"
        "    await asyncio.sleep(0.1)\n"
        "    await gw._shutdown()\n"
        "asyncio.run(main())\n"
        "print(sorted(n for n in sys.modules if n.startswith('opentelemetry')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    if environ:
        assert "OpenTelemetry is not installed" in result.stderr
