"""Small ASGI helpers shared by the stream responder and the dispatcher."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import orjson

from gateway.core.errors import GatewayError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = Sequence[tuple[bytes, bytes]]

# The CORS headers of the request being answered (``gateway.web.guard.Guard.cors_of``), for ``send_error``. A
# refusal is decided in many places (draining, admission limits, rate limits, tokens, hooks, bodies) and a page on
# an allowed origin must be able to read every one of them (the status, ``Retry-After``, ``WWW-Authenticate``):
# without the headers the browser hides the answer behind an opaque network error. The dispatcher sets them once
# per request; handing them to every refusal site instead would thread them through every layer, and wrapping
# ``send`` would hide the transport that fan-out writes to directly. Per task: Hypercorn runs each request in a
# task of its own, which copies the context.
_request_cors: ContextVar[Headers] = ContextVar("gateway_request_cors", default=())


def scope_headers(scope: Scope) -> dict[str, str]:
    """The request's headers by lower-case name; repeated ones joined with ", " as HTTP allows."""
    return joined_headers(scope.get("headers", ()))


def joined_headers(raw: Headers) -> dict[str, str]:
    """Raw header pairs by lower-case name; repeated ones joined with ", " as HTTP allows."""
    headers: dict[str, str] = {}
    for raw_name, raw_value in raw:
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers


def parse_query(raw: bytes) -> dict[str, list[str]]:
    """A raw query string's values by name (blank values kept)."""
    return parse_qs(raw.decode("latin-1"), keep_blank_values=True) if raw else {}


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
        client = scope.get("client")
        return cls(
            method=scope.get("method", "GET"),
            path=scope.get("path", "/"),
            query=parse_query(scope.get("query_string", b"")),
            headers=scope_headers(scope),
            client=client[0] if client else None,
            http_version=scope.get("http_version", "1.1"),
            path_params=dict(scope.get("path_params", {})),
        )

    def arg(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else None


def answer_with_cors(headers: Headers) -> Token[Headers] | None:
    """From now on in this context, ``send_error`` adds ``headers`` (the request's CORS headers) to any refusal; hand
    what it returns to ``stop_answering_with_cors`` once the request is served.

    A stream is served in between for its whole life, so nothing is held for it that need not be: no context manager
    (a ``@contextmanager`` generator keeps a frame, ~400 bytes with its wrapper; a ``with`` keeps its object and
    bound ``__exit__``), and no change where there is nothing to change (no headers where there are none already: no
    CORS list configured, the common case), since a value set in the context costs ~180 bytes more (the token, a new
    mapping of the task's variables). None then."""
    if not headers and not _request_cors.get():
        return None
    return _request_cors.set(headers)


def stop_answering_with_cors(token: Token[Headers] | None) -> None:
    if token is not None:
        _request_cors.reset(token)


def error_answer(error: GatewayError, extra: Mapping[str, str] | None = None, *,
                 cors: Headers = ()) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """The gateway's JSON error answer: status, headers (``cors`` last, unless named already) and body."""
    body = orjson.dumps(error.body())
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
    ]
    headers += [(k.lower().encode(), v.encode()) for k, v in {**error.headers(), **(extra or {})}.items()]
    if cors:
        given = {name for name, _ in headers}
        headers += [(name, value) for name, value in cors if name not in given]
    return error.status, headers, body


async def send_error(send: Send, error: GatewayError, extra: Mapping[str, str] | None = None) -> None:
    """Answer with the gateway's JSON error body, and the request's CORS headers (``answer_with_cors``)."""
    status, headers, body = error_answer(error, extra, cors=_request_cors.get())
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
