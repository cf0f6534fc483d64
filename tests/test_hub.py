"""The generic hub: publish from any backend with a token, subscribe to topics, resume with Last-Event-ID."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from gateway.core.sse import ParsedEvent
from tests.support.server import HUB_TOKEN, QueryList, Server, start_server
from tests.support.sse_client import SSEReader

pytestmark = [pytest.mark.live, pytest.mark.asyncio]
AUTH = {"authorization": f"Bearer {HUB_TOKEN}"}


def _topic() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


@asynccontextmanager
async def subscribe(client: httpx.AsyncClient, base: str, topics: list[str], last_event_id: str | None = None,
                    *, via_query: bool = False) -> AsyncIterator[SSEReader]:
    params: QueryList = [("topic", t) for t in topics]
    headers = {"accept-encoding": "br"}
    if last_event_id is not None:
        if via_query:
            params.append(("lastEventId", last_event_id))
        else:
            headers["last-event-id"] = last_event_id
    async with client.stream("GET", base + "/hub/subscribe", params=params, headers=headers) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
        yield SSEReader(response.aiter_raw(), response.headers.get("content-encoding"))


async def publish(client: httpx.AsyncClient, base: str, topic: str, data: object, **extra: str) -> str:
    response = await client.post(base + "/hub/publish", json={"topic": topic, "data": data, **extra}, headers=AUTH)
    assert response.status_code == 204, response.text
    return response.headers["event-id"]


async def test_publish_subscribe_two_topics(server: Server) -> None:
    a, b, other = _topic(), _topic(), _topic()
    async with httpx.AsyncClient(timeout=10) as client, subscribe(client, server.http, [a, b]) as reader:
        id1 = await publish(client, server.http, a, "plain text\nsecond line")
        await publish(client, server.http, other, "not for us")
        id2 = await publish(client, server.http, b, {"price": 1.5, "tags": ["x"]}, event="tick")
        id3 = await publish(client, server.http, a, "custom id", id="order-42")
        events = [await reader.next_event() for _ in range(3)]
    assert [(e.id, e.event) for e in events] == [(id1, "message"), (id2, "tick"), ("order-42", "message")]
    assert id3 == "order-42"
    assert events[0].data == "plain text\nsecond line"
    assert json.loads(events[1].data) == {"price": 1.5, "tags": ["x"]}


@pytest.mark.parametrize("via_query", [False, True], ids=["header", "query"])
async def test_reconnect_replays_exactly_the_missed_events(server: Server, via_query: bool) -> None:
    a, b = _topic(), _topic()
    async with httpx.AsyncClient(timeout=10) as client:
        async with subscribe(client, server.http, [a, b]) as reader:
            await publish(client, server.http, a, "one")
            await publish(client, server.http, b, "two")
            seen = [await reader.next_event() for _ in range(2)]
        missed = [await publish(client, server.http, t, f"missed {i}") for i, t in enumerate([b, a, b])]
        last = seen[-1].id
        assert last is not None
        async with subscribe(client, server.http, [a, b], last, via_query=via_query) as reader:
            replayed = [await reader.next_event() for _ in range(3)]
            live_id = await publish(client, server.http, a, "live")
            live = await reader.next_event()
    assert [e.id for e in replayed] == missed
    assert [e.data for e in replayed] == ["missed 0", "missed 1", "missed 2"]
    assert (live.id, live.data) == (live_id, "live")


async def test_resume_after_a_publisher_chosen_id(server: Server) -> None:
    topic = _topic()
    async with httpx.AsyncClient(timeout=10) as client:
        await publish(client, server.http, topic, "first", id="evt-1")
        await publish(client, server.http, topic, "second", id="evt-2")
        async with subscribe(client, server.http, [topic], "evt-1") as reader:
            event = await reader.next_event()
    assert (event.id, event.data) == ("evt-2", "second")


async def test_unknown_last_event_id_gets_a_gap_event_then_the_history(server: Server) -> None:
    topic = _topic()
    async with httpx.AsyncClient(timeout=10) as client:
        await publish(client, server.http, topic, "kept")
        async with subscribe(client, server.http, [topic], "garbage id %%") as reader:
            gap = await reader.next_event()
            kept = await reader.next_event()
    assert gap.event == "gap"
    assert json.loads(gap.data)["reason"] == "unknown_last_event_id"
    assert kept.data == "kept"


async def test_last_event_id_ahead_of_the_bus_is_not_trusted(server: Server) -> None:
    """An id from a previous life of the bus (it was reset) must not make the stream wait for it forever."""
    topic = _topic()
    async with httpx.AsyncClient(timeout=10) as client:
        await publish(client, server.http, topic, "kept")
        async with subscribe(client, server.http, [topic], "99999999") as reader:
            gap = await reader.next_event()
            kept = await reader.next_event()
            live_id = await publish(client, server.http, topic, "live")
            live = await reader.next_event()
    assert json.loads(gap.data)["reason"] == "unknown_last_event_id"
    assert kept.data == "kept"
    assert (live.id, live.data) == (live_id, "live")


@pytest.fixture(scope="module")
def small_history(tmp_path_factory: pytest.TempPathFactory, certs: tuple[Path, Path]) -> Iterator[Server]:
    """A gateway keeping 5 notifications per topic and no publish token."""
    srv = start_server(tmp_path_factory.mktemp("small"), certs,
                       env={"GATEWAY_BUS_HISTORY": "5", "GATEWAY_HUB_PUBLISH_TOKEN": ""})
    yield srv
    assert srv.stop() == 0


async def test_evicted_history_is_announced_before_the_replay(
    tmp_path: Path, certs: tuple[Path, Path]
) -> None:
    srv = start_server(tmp_path, certs, env={"GATEWAY_BUS_HISTORY": "5"})
    try:
        topic = _topic()
        async with httpx.AsyncClient(timeout=10) as client:
            ids = [await publish(client, srv.http, topic, f"n{i}") for i in range(10)]
            async with subscribe(client, srv.http, [topic], ids[0]) as reader:
                gap: ParsedEvent = await reader.next_event()
                rest = [await reader.next_event() for _ in range(5)]
        assert gap.event == "gap"
        assert json.loads(gap.data) == {"reason": "history_evicted", "lastEventId": ids[0]}
        assert [e.id for e in rest] == ids[5:]
    finally:
        assert srv.stop() == 0


async def test_publishing_without_a_configured_token_is_refused(small_history: Server) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(small_history.http + "/hub/publish", json={"topic": "a", "data": "x"},
                                      headers=AUTH)
    assert response.status_code == 403
    assert "GATEWAY_HUB_PUBLISH_TOKEN" in response.json()["detail"]


@pytest.mark.parametrize(
    ("headers", "body", "status", "field"),
    [
        ({}, {"topic": "a", "data": "x"}, 401, None),
        ({"authorization": "Bearer wrong"}, {"topic": "a", "data": "x"}, 401, None),
        (AUTH, {"data": "x"}, 422, "topic"),
        (AUTH, {"topic": "a"}, 422, "data"),
        (AUTH, {"topic": "has space", "data": "x"}, 422, "topic"),
        (AUTH, {"topic": "a", "data": "x", "id": "bad\nid"}, 422, "id"),
        (AUTH, {"topic": "a", "data": "x", "event": "bad\revent"}, 422, "event"),
        (AUTH, {"topic": "a", "data": "x", "id": ""}, 422, "id"),
        (AUTH, {"topic": "a", "data": "x", "extra": 1}, 422, "extra"),
    ],
    ids=["no_token", "wrong_token", "no_topic", "no_data", "bad_topic", "newline_id", "cr_event", "empty_id",
         "extra_field"],
)
async def test_bad_publish(server: Server, headers: dict[str, str], body: dict[str, object], status: int,
                           field: str | None) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(server.http + "/hub/publish", json=body, headers=headers)
    assert response.status_code == status, response.text
    payload = response.json()
    assert payload["error"]
    assert payload["detail"]
    if field:
        assert payload["field"] == field


@pytest.mark.parametrize("query", ["", "?topic=", "?topic=a%20b"], ids=["none", "empty", "space"])
async def test_bad_subscribe(server: Server, query: str) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(server.http + "/hub/subscribe" + query)
    assert response.status_code == 400
    assert response.json()["error"] == "bad_request"
