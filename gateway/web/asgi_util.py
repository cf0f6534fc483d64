"""Small ASGI helpers shared by the stream responder and the dispatcher."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import orjson

from gateway.core.errors import GatewayError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def scope_headers(scope: Scope) -> dict[str, str]:
    """The request's headers by lower-case name; repeated ones joined with ", " as HTTP allows."""
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope.get("headers", ()):
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers


@dataclass(frozen=True, slots=True)
class StreamRequest:
    """What a stream handler (and a per-request view) may know about its request."""

    method: str
    path: str
    query: Mapping[str, list[str]]
    headers: Mapping[str, str]
    client: str | None
    http_version: str
    path_params: Mapping[str, str] = field(default_factory=dict)  # a path template's values (``{name}``)

    @classmethod
    def from_scope(cls, scope: Scope) -> StreamRequest:
        headers = scope_headers(scope)
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        client = scope.get("client")
        return cls(
            method=scope.get("method", "GET"),
            path=scope.get("path", "/"),
            query=query,
            headers=headers,
            client=client[0] if client else None,
            http_version=scope.get("http_version", "1.1"),
            path_params=dict(scope.get("path_params", {})),
        )

    def arg(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else None


async def send_error(send: Send, error: GatewayError, extra: Mapping[str, str] | None = None) -> None:
    """Answer with the gateway's JSON error body."""
    body = orjson.dumps(error.body())
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
    ]
    headers += [(k.lower().encode(), v.encode()) for k, v in {**error.headers(), **(extra or {})}.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
