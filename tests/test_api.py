"""The app API end to end: pydantic bodies, views over several topics, per-request views, failing handlers and
renders, and the registration rules."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway import Gateway
from gateway.web.asgi_util import StreamRequest
from tests.support.metrics import metric
from tests.support.server import Server, start_server
from tests.support.sse_client import SSEReader


@pytest.fixture(scope="module")
def app_server(tmp_path_factory: pytest.TempPathFactory, certs: tuple[Path, Path]) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("apps"), certs, args=["--app", "tests.apps:gw"])
    yield srv
    assert srv.stop() == 0


@pytest.mark.live
@pytest.mark.asyncio
async def test_view_over_two_topics_and_per_request_views(app_server: Server) -> None:
    base = app_server.http
    async with httpx.AsyncClient(timeout=10) as client, \
            client.stream("GET", base + "/both") as both, \
            client.stream("GET", base + "/hello?name=ada") as ada, \
            client.stream("GET", base + "/hello?name=%3Cbob%3E") as bob:
        readers = [SSEReader(r.aiter_raw(), r.headers.get("content-encoding")) for r in (both, ada, bob)]
        first = [await r.next_event() for r in readers]
        assert first[1].data.startswith("hello ada")
        assert first[2].data.startswith("hello &lt;bob&gt;")  # each connection rendered with its own request

        assert (await client.post(base + "/bump", json={"move": {"topic": "b", "by": 2}})).status_code == 204
        after_b = await readers[0].until(lambda e: "b=2" in e.data)
        assert (await client.post(base + "/bump", json={"move": {"topic": "a"}})).status_code == 204
        after_a = await readers[0].until(lambda e: "a=1" in e.data)
        assert int(after_a.id or 0) > int(after_b.id or 0) > int(first[0].id or 0)  # one version order
        assert (await readers[1].next_event()).data == "hello ada, a=1"
        assert (await readers[2].next_event()).data == "hello &lt;bob&gt;, a=1"


@pytest.mark.live
@pytest.mark.asyncio
async def test_model_fields_are_validated_and_named(app_server: Server) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(app_server.http + "/bump", json={"move": {"topic": "a", "by": "2"}})
    assert response.status_code == 422
    assert response.json()["field"] == "move.by"


@pytest.mark.live
@pytest.mark.asyncio
async def test_failing_handler_is_logged_and_counted_never_fatal(app_server: Server) -> None:
    base = app_server.http
    async with httpx.AsyncClient(timeout=10) as client:
        assert (await client.post(base + "/explode", json={"reason": "test"})).status_code == 204
        async with client.stream("GET", base + "/both") as stream:
            reader = SSEReader(stream.aiter_raw(), stream.headers.get("content-encoding"))
            await reader.next_event()
            # Commands are handled in order by the workers: once this one is visible, the failure was handled.
            assert (await client.post(base + "/bump", json={"move": {"topic": "a"}})).status_code == 204
            await reader.until(lambda e: "a=" in e.data and e.data != "")
    assert await metric(base, "gateway_commands_handled_total", route="/explode", result="error") >= 1
    assert "handler failed on purpose: test" in app_server.output()
    assert app_server.proc.poll() is None


@pytest.mark.live
@pytest.mark.asyncio
async def test_failing_render_keeps_streams_and_recovers(app_server: Server) -> None:
    base = app_server.http
    async with httpx.AsyncClient(timeout=10) as client, client.stream("GET", base + "/both") as stream:
        reader = SSEReader(stream.aiter_raw(), stream.headers.get("content-encoding"))
        await reader.next_event()
        assert (await client.post(base + "/break-render", json={"broken": True})).status_code == 204
        assert (await client.post(base + "/break-render", json={"broken": False})).status_code == 204
        recovered = await reader.next_event()  # the stream survived the failed render and got the next one
        assert recovered.data.startswith("a=")
    assert await metric(base, "gateway_view_renders_total", route="/both", result="error") >= 1


@pytest.mark.unit
def test_registration_rules() -> None:
    gw = Gateway()

    async def shared() -> str:
        return ""

    async def personal(request: StreamRequest) -> str:
        return ""

    gw.view("/ok", topics=["t"])(shared)
    with pytest.raises(ValueError, match="reserved, already used"):
        gw.view("/ok", topics=["t"])(shared)
    with pytest.raises(ValueError, match="reserved"):
        gw.view("/metrics", topics=["t"])(shared)
    with pytest.raises(TypeError, match="must not take the request"):
        gw.view("/p1", topics=["t"], per_request=False)(personal)
    with pytest.raises(TypeError, match="must take the request"):
        gw.view("/p2", topics=["t"], per_request=True)(shared)
    with pytest.raises(ValueError, match="at least one topic"):
        gw.view("/p3", topics=[])(shared)

    def sync_handler(x: int) -> None:
        return None

    with pytest.raises(TypeError, match="async"):
        gw.command("/sync")(sync_handler)  # type: ignore[type-var]  # a sync handler on purpose: the check under test
