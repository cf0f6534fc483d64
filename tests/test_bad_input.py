"""Every kind of bad command input, over HTTP/1.1 and h2: the exact status, a JSON error body, nothing on the bus."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio

from tests.support.server import Server

pytestmark = [pytest.mark.live, pytest.mark.asyncio]

JSON = {"content-type": "application/json"}
DEEP = b'{"text": ' + b"[" * 40 + b"1" + b"]" * 40 + b"}"

CASES: list[tuple[str, str, str, bytes, dict[str, str], int, str | None]] = [
    # (name, method, path, body, headers, status, field)
    ("malformed_json", "POST", "/todos/add", b'{"text": ', JSON, 400, None),
    ("nan", "POST", "/todos/add", b'{"text": NaN}', JSON, 400, None),
    ("infinity", "POST", "/todos/add", b'{"text": Infinity}', JSON, 400, None),
    ("negative_infinity", "POST", "/todos/toggle", b'{"id": -Infinity}', JSON, 400, None),
    ("too_deep", "POST", "/todos/add", DEEP, JSON, 400, None),
    ("not_an_object", "POST", "/todos/add", b'["text"]', JSON, 400, None),
    ("missing_field", "POST", "/todos/add", b"{}", JSON, 422, "text"),
    ("wrong_type", "POST", "/todos/add", b'{"text": 5}', JSON, 422, "text"),
    ("string_for_int", "POST", "/todos/toggle", b'{"id": "3"}', JSON, 422, "id"),
    ("bool_for_int", "POST", "/todos/toggle", b'{"id": true}', JSON, 422, "id"),
    ("blank_text", "POST", "/todos/add", b'{"text": "   "}', JSON, 422, "text"),
    ("too_long_text", "POST", "/todos/add", b'{"text": "' + b"x" * 501 + b'"}', JSON, 422, "text"),
    ("unexpected_field", "POST", "/todos/add", b'{"text": "a", "evil": 1}', JSON, 422, "evil"),
    ("unknown_path", "POST", "/todos/nope", b"{}", JSON, 404, None),
    ("wrong_method_command", "GET", "/todos/add", b"", {}, 405, None),
    ("wrong_method_view", "POST", "/todos/updates", b"{}", JSON, 405, None),
    ("too_large", "POST", "/todos/add", b'{"text": "' + b"x" * (64 * 1024) + b'"}', JSON, 413, None),
    ("form_body", "POST", "/todos/add", b"text=a", {"content-type": "application/x-www-form-urlencoded"}, 415,
     None),
    ("text_plain", "POST", "/todos/add", b'{"text": "a"}', {"content-type": "text/plain"}, 415, None),
    ("no_content_type", "POST", "/todos/add", b'{"text": "a"}', {}, 415, None),
    ("compressed", "POST", "/todos/add", b"\x1f\x8b\x08\x00", {**JSON, "content-encoding": "gzip"}, 415, None),
    ("latin1_charset", "POST", "/todos/add", b'{"text": "a"}', {"content-type": "application/json; charset=latin-1"},
     415, None),
]


@pytest_asyncio.fixture(params=["http/1.1", "h2"])
async def client(request: pytest.FixtureRequest, server: Server) -> AsyncIterator[httpx.AsyncClient]:
    if request.param == "h2":
        async with httpx.AsyncClient(base_url=server.https, http1=False, http2=True, verify=False,
                                     timeout=10) as c:
            yield c
    else:
        async with httpx.AsyncClient(base_url=server.http, timeout=10) as c:
            yield c


async def _accepted(client: httpx.AsyncClient) -> float:
    """Commands accepted so far, from the gateway's own metrics."""
    text = (await client.get("/metrics")).text
    return sum(float(v) for v in re.findall(r'^gateway_commands_total\{[^}]*outcome="accepted"[^}]*\} (\S+)$',
                                            text, re.M))


@pytest.mark.parametrize(("name", "method", "path", "body", "headers", "status", "field"), CASES,
                         ids=[c[0] for c in CASES])
async def test_bad_input(client: httpx.AsyncClient, name: str, method: str, path: str, body: bytes,
                         headers: dict[str, str], status: int, field: str | None) -> None:
    before = await _accepted(client)
    response = await client.request(method, path, content=body or None, headers=headers)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    payload: dict[str, Any] = response.json()
    assert set(payload) >= {"error", "detail"}
    assert isinstance(payload["error"], str)
    assert payload["error"]
    assert isinstance(payload["detail"], str)
    assert payload["detail"]
    if field is not None:
        assert payload["field"] == field
        assert field in payload["detail"]
    if status == 405:
        assert "POST" in response.headers["allow"] or "GET" in response.headers["allow"]
    assert await _accepted(client) == before  # nothing refused reached the bus


async def test_chunked_body_over_limit_is_413(server: Server) -> None:
    """A body without Content-Length is still cut off at the limit (HTTP/1.1 chunked upload)."""

    async def body() -> AsyncIterator[bytes]:
        yield b'{"text": "'
        for _ in range(80):
            yield b"x" * 1024
        yield b'"}'

    async with httpx.AsyncClient(base_url=server.http, timeout=10) as client:
        response = await client.post("/todos/add", content=body(), headers=JSON)
        assert response.status_code == 413
        assert response.json()["error"] == "payload_too_large"


async def test_valid_command_is_accepted_with_an_id(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.http, timeout=10) as client:
        response = await client.post("/todos/add", json={"text": "fine"})
        assert response.status_code == 204
        assert response.content == b""
        assert response.headers["command-id"]
        # A command without arguments may be posted with no body, as JSON like any other...
        assert (await client.post("/todos/clear-completed", headers=JSON)).status_code == 204
        # ...but not without a Content-Type: that is what a cross-site no-cors fetch or sendBeacon sends.
        bare = await client.post("/todos/clear-completed")
        assert bare.status_code == 415
        assert bare.json()["error"] == "unsupported_media_type"


async def test_idempotency_key_accepts_once(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.http, timeout=10) as client:
        headers = {"idempotency-key": "retry-me-123"}
        first = await client.post("/todos/add", json={"text": "once"}, headers=headers)
        second = await client.post("/todos/add", json={"text": "once"}, headers=headers)
        assert first.status_code == second.status_code == 204
        assert first.headers["command-id"] == second.headers["command-id"]
