"""Commands and hub publishes, served at the ASGI level: the two POSTs every user action and every backend event
goes through.

Through Quart, a POST answered 204 cost ~300 µs of CPU (request and response objects, routing, context locals,
the response-timeout wrapper), several times what fan-out then spends delivering the event to a hundred streams.
Here the body is read from ``receive`` with the same rules and in the same order as before (415 from the headers,
413 from the declared or the received size, 400 for malformed JSON, 422 for the shape), the work is handed to the
bus, and the 204 is two ``send`` calls. Every refusal is a ``GatewayError`` turned into the JSON error body.

Both ways a POST arrives share one function, ``answer_post``: the ASGI path reads the body from ``receive`` and
sends the answer; the HTTP/1.1 POST lane (``gateway.web.hypercorn.h11_post_lane``), which holds a whole plain
request already parsed, hands it over as a ``StreamRequest`` and its body (``Dispatcher.lane_post``) and frames the
answer itself. Going through ASGI there (a scope, ``receive`` and ``send`` closures, message dicts, the dispatcher,
the headers decoded twice) cost ~24 µs of the ~39 µs a publish took in process, more than the checks themselves.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

import pydantic

from gateway.bus import Command
from gateway.commands import CommandSpec, as_validation_failed
from gateway.core import jsonbody
from gateway.core.auth import Identity, check_publish, parse_cookies
from gateway.core.clientaddr import client_address
from gateway.core.errors import (
    BadRequest,
    Forbidden,
    GatewayError,
    MethodNotAllowed,
    RequestTimeout,
    Unauthorized,
    Unavailable,
    ValidationFailed,
)
from gateway.core.hub import HubEvent, InvalidField
from gateway.core.topics import check_topic, hub_key
from gateway.web.asgi_util import Receive, Scope, Send, StreamRequest, error_answer, send_error
from gateway.web.auth import run_hook
from gateway.web.context import AppContext

Answer = tuple[int, list[tuple[bytes, bytes]], bytes]  # status, headers, body

NOBODY = Identity(None, {})  # may publish nowhere: the default grant
PUBLISH_TOKEN = Identity("hub.publish_token", {}, publish=("*",))  # the static token may publish anywhere

LINGER_BYTES = 1024 * 1024  # read and discarded past the limit, so the client sees the 413 and not a reset


class PublishBody(pydantic.BaseModel):
    """The body of ``POST /hub/publish``."""

    model_config = pydantic.ConfigDict(extra="forbid", strict=True)

    topic: str
    data: Any
    event: str | None = None
    id: str | None = None


async def _read_body(receive: Receive, limit: int, parts: list[bytes]) -> int:
    """Read the body into ``parts`` (up to ``limit`` bytes kept, ``LINGER_BYTES`` more read and dropped); its size,
    or -1 when the client went away."""
    received = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return -1
        chunk = message.get("body", b"")
        received += len(chunk)
        if received <= limit:
            parts.append(chunk)
        if not message.get("more_body", False) or received > limit + LINGER_BYTES:
            return received


Body = Callable[[AppContext, Mapping[str, str]], Awaitable["tuple[bytes, dict[str, Any]] | None"]]
"""How ``answer_post`` gets the request's JSON object body once the request itself has passed: its bytes and the
object they parse to, or None when the client went away while sending it (``asgi_body``, ``whole_body``)."""


def _judge_headers(runtime: AppContext, headers: Mapping[str, str]) -> None:
    """A body's headers, judged before its bytes: a malformed length (400), the media type and coding (415), then
    a declared size too large to be worth reading (413)."""
    limit = runtime.settings.commands.max_body
    declared = headers.get("content-length")
    try:
        length = int(declared) if declared is not None else None
    except ValueError:
        raise BadRequest(f"invalid Content-Length {declared!r}") from None
    jsonbody.check_headers(headers.get("content-type"), headers.get("content-encoding"))
    if length is not None and length > limit + LINGER_BYTES:
        jsonbody.check_size(length, limit)  # too large to be worth reading: refuse from the header


def _judge_body(runtime: AppContext, body: bytes, size: int) -> tuple[bytes, dict[str, Any]]:
    """A body judged: its ``size`` as received (413; ``body`` may hold less of an over-long one), then its syntax
    and shape (400)."""
    commands = runtime.settings.commands
    jsonbody.check_size(size, commands.max_body)
    return body, jsonbody.parse_object(body, max_depth=commands.max_depth)


async def read_json_body(runtime: AppContext, headers: Mapping[str, str],
                         receive: Receive) -> tuple[bytes, dict[str, Any]] | None:
    """The request's JSON object body, judged headers first (415), then size (413), then syntax (400): its bytes
    and the object they parse to (parsed once, here).

    None when the client went away while sending it. An over-limit body is still read, and discarded, up to
    ``LINGER_BYTES`` more: an HTTP/1.1 server that answers 413 and closes while the client is still uploading
    makes the kernel reset the connection, and the client then sees a reset instead of the 413. The whole body
    must arrive within ``limits.body_timeout`` of its head (408 otherwise): a total, not a between-reads
    deadline, since a between-reads one lets a client sending a byte a second hold the request for hours.
    """
    _judge_headers(runtime, headers)
    limit = runtime.settings.commands.max_body
    parts: list[bytes] = []
    deadline = runtime.settings.limits.body_timeout
    try:
        async with asyncio.timeout(deadline):
            received = await _read_body(receive, limit, parts)
    except TimeoutError:
        runtime.metrics.deadlines.labels("body").inc()
        came = sum(len(part) for part in parts)
        raise RequestTimeout(f"the body did not arrive within {deadline:g} s ({came} bytes came)") from None
    if received < 0:
        return None
    return _judge_body(runtime, b"".join(parts), received)


def asgi_body(receive: Receive) -> Body:
    """The body read from an ASGI ``receive`` (``read_json_body``)."""

    def read(runtime: AppContext, headers: Mapping[str, str]) -> Awaitable[tuple[bytes, dict[str, Any]] | None]:
        return read_json_body(runtime, headers, receive)

    return read


def whole_body(body: bytes) -> Body:
    """A body the server already holds whole (the POST lane: its ``Content-Length`` and bytes agree), judged as
    ``read_json_body`` judges one it reads."""

    async def read(runtime: AppContext, headers: Mapping[str, str]) -> tuple[bytes, dict[str, Any]]:
        _judge_headers(runtime, headers)
        return _judge_body(runtime, body, len(body))

    return read


# Left out of what a handler sees: the credentials themselves (a handler gets the identity they prove).
CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})


def command_context(runtime: AppContext, request: StreamRequest, identity: Identity | None) -> dict[str, Any]:
    """What travels with a command besides its body, as JSON: the client's address (trusted-proxy aware), the
    headers and cookies without the credentials, the verified token's claims, the path template's values, and
    when it was accepted (wall clock: the origin its view changes are timed from, in whichever process); when
    traced, the ``traceparent`` of the request's span (``gateway.tracing``)."""
    headers = request.headers
    cookie_name = runtime.settings.auth.cookie
    context: dict[str, Any] = {
        "accepted": time.time(),
        "client": client_address(request.client, headers.get("x-forwarded-for"), runtime.trusted_proxies),
        "headers": {k: v for k, v in headers.items() if k not in CREDENTIAL_HEADERS},
        "cookies": {k: v for k, v in parse_cookies(headers.get("cookie")).items() if k != cookie_name},
        "identity": dict(identity.claims) if identity is not None else None,
        "path": dict(request.path_params),
    }
    if runtime.tracing.on and (traceparent := runtime.tracing.current_traceparent()) is not None:
        context["traceparent"] = traceparent  # the POST span's: the handler's span continues it, anywhere
    return context


async def accept_command(runtime: AppContext, spec: CommandSpec, request: StreamRequest, identity: Identity | None,
                         body: bytes, parsed: dict[str, Any]) -> list[tuple[bytes, bytes]]:
    """Validate a command's body (its bytes, and the object they parse to) against its handler's signature and put
    it on the bus (204 once it is there)."""
    validated = spec.validate_body(body)
    key = request.headers.get("idempotency-key")
    if key is not None and not (0 < len(key) <= 255 and key.isprintable()):
        raise BadRequest("Idempotency-Key must be 1-255 printable characters")
    args = spec.declared(parsed) if parsed else {}
    context = command_context(runtime, request, identity)
    command_id = await runtime.bus.submit(Command(spec.path, args, key, validated, context))
    return [(b"command-id", command_id.encode())]


async def hub_publish(runtime: AppContext, headers: Mapping[str, str], parsed: dict[str, Any],
                      grant: Identity = NOBODY) -> list[tuple[bytes, bytes]]:
    """``POST /hub/publish``: one event on a topic (``parsed``: the body's JSON object), from a backend holding the
    publish token or a token whose ``mercure.publish`` claim covers the topic (``grant``, from ``_authorize``).

    The topic is judged (422) before the grant (403), and the grant before the event's other fields (422)."""
    try:
        body_fields = PublishBody.model_validate(parsed)  # strict: the same verdicts as on the JSON text
    except pydantic.ValidationError as exc:
        raise as_validation_failed(exc) from exc
    try:
        check_topic(body_fields.topic)
    except ValueError as exc:
        raise ValidationFailed(str(exc), field="topic") from exc
    check_publish(grant, body_fields.topic)
    try:
        event = HubEvent.of(body_fields.topic, body_fields.data, event=body_fields.event, id=body_fields.id)
    except InvalidField as exc:
        raise ValidationFailed(str(exc), field=exc.field) from exc
    if runtime.draining:
        raise Unavailable("the gateway is shutting down", 2)
    version = await runtime.bus.publish(hub_key(event.topic), event.payload)
    runtime.metrics.hub_published.inc()
    return [(b"event-id", (event.id or version).encode()), (b"event-version", version.encode())]


def _authorize(runtime: AppContext, headers: Mapping[str, str]) -> Identity:
    """Who publishes: the static ``hub.publish_token`` may publish anywhere; a verified JWT where its
    ``mercure.publish`` claim allows, checked against the topic once the body is read."""
    token = runtime.settings.hub.publish_token
    scheme, _, given = headers.get("authorization", "").partition(" ")
    if token and scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode()):
        return PUBLISH_TOKEN
    if runtime.auth.verifier is None:
        if not token:
            raise Forbidden("hub publishing is disabled: set [hub] publish_token or GATEWAY_HUB_PUBLISH_TOKEN, "
                            "or auth.jwt_key for tokens with a mercure.publish claim")
        raise Unauthorized("a valid 'Authorization: Bearer <token>' header is required to publish")
    identity = runtime.auth.identify(headers)
    if identity is None:
        raise Unauthorized("a valid 'Authorization: Bearer <token>' header is required to publish")
    return identity


async def serve_post(runtime: AppContext, spec: CommandSpec | None, scope: Scope, receive: Receive,
                     send: Send) -> None:
    """One command (``spec``) or hub publish (``spec`` None), answered 204 or with the JSON error that says what
    is wrong; inside a SERVER span ``POST <route>`` when traced (``gateway.tracing``)."""
    if runtime.tracing.on:
        await _serve_traced(runtime, spec, scope, receive, send)
    else:
        await _serve_post(runtime, spec, scope, receive, send)


async def _serve_traced(runtime: AppContext, spec: CommandSpec | None, scope: Scope, receive: Receive,
                        send: Send) -> None:
    tracing = runtime.tracing
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())
               if k.lower() in (b"traceparent", b"tracestate")}
    route = spec.path if spec is not None else "/hub/publish"
    with tracing.server_span(f"POST {route}", headers) as span:
        span.set_attribute("http.route", route)

        async def traced_send(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                tracing.set_status_code(span, message["status"])
            await send(message)

        await _serve_post(runtime, spec, scope, receive, traced_send)


async def _serve_post(runtime: AppContext, spec: CommandSpec | None, scope: Scope, receive: Receive,
                      send: Send) -> None:
    path = scope["path"]
    if scope["method"] != "POST":
        await send_error(send, MethodNotAllowed(f"{scope['method']} is not allowed on {path}", ("POST",)))
        return
    answer = await answer_post(runtime, spec, StreamRequest.from_scope(scope), scope.get("scheme", "http"),
                               asgi_body(receive))
    if answer is None:
        return  # the client left mid-body: nobody to answer, nothing accepted
    status, headers, body = answer
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def answer_post(runtime: AppContext, spec: CommandSpec | None, request: StreamRequest, scheme: str,
                      body: Body) -> Answer | None:
    """One command (``spec``) or hub publish (``spec`` None) that is a POST: 204 once it is on the bus, or the JSON
    error that says what is wrong, each with the request's CORS headers. None when the client went away while
    sending the body (nothing was accepted). ``scheme``: the request's, for the origin checks."""
    metrics = runtime.metrics
    headers = request.headers
    try:
        runtime.guard.check_post("command" if spec else "publish", request.client, scheme, headers)  # 403, 429
        grant = NOBODY
        identity = None
        if spec is None:
            grant = _authorize(runtime, headers)
        else:
            if runtime.draining:
                raise Unavailable("the gateway is shutting down; retry on another instance", 2)
            identity = _identify(runtime, spec, headers)
            if (hook := runtime.authorizers.get(spec.path)) is not None:
                await run_hook(hook, identity, request)
            spec.validate_path(request.path_params)  # 422 before the body is read
        read = await body(runtime, headers)
        if read is None:
            return None
        if spec is None:
            extra = await hub_publish(runtime, headers, read[1], grant)
        else:
            extra = await accept_command(runtime, spec, request, identity, *read)
    except GatewayError as exc:
        if spec is not None:
            metrics.commands.labels(spec.path, exc.code).inc()
        return error_answer(exc, cors=runtime.guard.cors_headers(headers))
    if spec is not None:
        metrics.commands.labels(spec.path, "accepted").inc()
    return 204, extra + runtime.guard.cors_headers(headers), b""


def _identify(runtime: AppContext, spec: CommandSpec, headers: Mapping[str, str]) -> Identity | None:
    """The command's verified identity. A token that fails verification is refused (401), never passed on as
    anonymous; without a configured key no token is looked at, unless an ``authorize`` hook needs one."""
    if runtime.auth.verifier is None and spec.path not in runtime.authorizers:
        return None
    return runtime.auth.identify(headers)
