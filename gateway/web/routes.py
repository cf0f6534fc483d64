"""The Quart application: command endpoints, hub publishing, health, readiness and metrics.

Streams are not Quart responses (the dispatcher serves them at the ASGI level, where the write deadline and the
disconnect are under the gateway's control), so Quart's response timeout never touches a stream, while every
request/response route keeps Quart's routing, body handling and error pages, turned into JSON here.
"""

from __future__ import annotations

import hmac
from typing import Any

import orjson
import pydantic
from quart import Quart, Response, request
from werkzeug.exceptions import HTTPException

from gateway.bus import Command
from gateway.commands import CommandSpec, as_validation_failed
from gateway.core import jsonbody
from gateway.core.errors import (
    BadRequest,
    Forbidden,
    GatewayError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    Unavailable,
    ValidationFailed,
)
from gateway.core.sse import Event
from gateway.metrics import CONTENT_TYPE_LATEST
from gateway.web.fanout import hub_payload
from gateway.web.runtime import Runtime
from gateway.web.streams import check_topic

_HTTP_CODES: dict[int, type[GatewayError]] = {
    400: BadRequest, 404: NotFound, 413: PayloadTooLarge, 403: Forbidden, 401: Unauthorized,
}


def json_error(error: GatewayError) -> Response:
    response = Response(orjson.dumps(error.body()), status=error.status, content_type="application/json")
    response.headers["Cache-Control"] = "no-store"
    for name, value in error.headers().items():
        response.headers[name] = value
    return response


class HubEvent(pydantic.BaseModel):
    """The body of ``POST /hub/publish``."""

    model_config = pydantic.ConfigDict(extra="forbid", strict=True)

    topic: str
    data: Any
    event: str | None = None
    id: str | None = None


def build_quart(runtime: Runtime, *, static_folder: str | None = None, name: str = "gateway") -> Quart:
    app = Quart(name, static_folder=static_folder, static_url_path="/static" if static_folder else None)
    app.config["MAX_CONTENT_LENGTH"] = runtime.settings.commands.max_body + LINGER_BYTES
    app.config["JSON_SORT_KEYS"] = False

    @app.errorhandler(GatewayError)
    async def _gateway_error(error: GatewayError) -> Response:
        return json_error(error)

    @app.errorhandler(HTTPException)
    async def _http_error(error: HTTPException) -> Response:
        code = error.code or 500
        if code == 405:
            allowed = tuple(sorted(getattr(error, "valid_methods", None) or ()))
            return json_error(MethodNotAllowed(f"{request.method} is not allowed on {request.path}", allowed))
        if code == 413:
            limit = runtime.settings.commands.max_body
            return json_error(PayloadTooLarge(f"request body over the limit of {limit} bytes"))
        if code == 404:
            return json_error(NotFound(f"no route for {request.path}"))
        cls = _HTTP_CODES.get(code)
        if cls is not None:
            return json_error(cls(error.description or error.name))
        response = json_error(GatewayError(error.description or error.name))
        response.status_code = code
        return response

    for spec in runtime.commands.values():
        app.add_url_rule(spec.path, f"command:{spec.path}", _command_view(runtime, spec), methods=["POST"])

    @app.post("/hub/publish")
    async def hub_publish() -> Response:
        token = runtime.settings.hub.publish_token
        if not token:
            raise Forbidden("hub publishing is disabled: set [hub] publish_token or GATEWAY_HUB_PUBLISH_TOKEN")
        scheme, _, given = (request.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise Unauthorized("a valid 'Authorization: Bearer <token>' header is required to publish")
        body = await _json_body(runtime)
        try:
            event = HubEvent.model_validate_json(body)
        except pydantic.ValidationError as exc:
            raise as_validation_failed(exc) from exc
        try:
            check_topic(event.topic)
        except BadRequest as exc:
            raise ValidationFailed(exc.detail, field="topic") from exc
        data = event.data if isinstance(event.data, str) else orjson.dumps(event.data).decode()
        for field in ("event", "id"):
            value = getattr(event, field)
            if value is not None:
                try:
                    Event(**{field: value})
                except ValueError as exc:
                    raise ValidationFailed(f"{field}: {exc}", field=field) from exc
                if not value or len(value) > 256:
                    raise ValidationFailed(f"{field}: must be 1-256 characters", field=field)
        if runtime.draining:
            raise Unavailable("the gateway is shutting down", 2)
        version = await runtime.bus.publish(event.topic, hub_payload(data, event.event, event.id))
        runtime.metrics.hub_published.inc()
        response = _no_content()
        response.headers["Event-Id"] = event.id or version
        response.headers["Event-Version"] = version
        return response

    @app.get("/healthz")
    async def healthz() -> Response:
        return _json({"status": "ok"})

    @app.get("/readyz")
    async def readyz() -> Response:
        if runtime.ready:
            return _json({"status": "ready"})
        reason = "draining" if runtime.draining else "starting" if not runtime.started else "bus unavailable"
        return json_error(Unavailable(f"not ready: {reason}", 2))

    if runtime.settings.metrics.enabled:
        @app.get("/metrics")
        async def metrics() -> Response:
            return Response(runtime.metrics.exposition(), content_type=CONTENT_TYPE_LATEST)

    return app


def _no_content() -> Response:
    # An empty bytes body: with none at all Quart streams an empty iterable through a worker thread per response.
    response = Response(b"", status=204)
    del response.headers["Content-Type"]
    del response.headers["Content-Length"]  # a 204 has no body to measure (RFC 9110 §8.6)
    return response


def _json(value: Any, status: int = 200) -> Response:
    response = Response(orjson.dumps(value), status=status, content_type="application/json")
    response.headers["Cache-Control"] = "no-store"
    return response


LINGER_BYTES = 1024 * 1024


async def _json_body(runtime: Runtime) -> bytes:
    """Headers judged first (415), then size (413), then syntax and shape (400).

    An over-limit body is still read, and discarded, up to ``LINGER_BYTES`` more: an HTTP/1.1 server that answers
    413 and closes while the client is still uploading makes the kernel reset the connection, and the client
    then sees a reset instead of the 413 it should be told about.
    """
    limits = runtime.settings.commands
    length = request.content_length
    jsonbody.check_headers(
        request.headers.get("Content-Type"), request.headers.get("Content-Encoding"), empty=length == 0
    )
    if length is not None and length > limits.max_body + LINGER_BYTES:
        jsonbody.check_size(length, limits.max_body)  # too large to be worth reading: refuse from the header
    body = bytearray()
    received = 0
    try:
        async for chunk in request.body:
            received += len(chunk)
            if received <= limits.max_body:
                body += chunk
    except HTTPException as exc:
        if exc.code != 413:
            raise
        received = max(received, limits.max_body + LINGER_BYTES)
    jsonbody.check_size(received, limits.max_body)
    data = bytes(body)
    jsonbody.parse_object(data, max_depth=limits.max_depth)
    return data


def _command_view(runtime: Runtime, spec: CommandSpec) -> Any:
    async def accept() -> Response:
        metrics = runtime.metrics
        try:
            if runtime.draining:
                raise Unavailable("the gateway is shutting down; retry on another instance", 2)
            body = await _json_body(runtime)
            spec.validate_body(body)
            key = request.headers.get("Idempotency-Key")
            if key is not None and not (0 < len(key) <= 255 and key.isprintable()):
                raise BadRequest("Idempotency-Key must be 1-255 printable characters")
            args = orjson.loads(body) if body.strip() else {}
            command_id = await runtime.bus.submit(Command(spec.path, args, key))
        except GatewayError as exc:
            metrics.commands.labels(spec.path, exc.code).inc()
            raise
        except HTTPException as exc:
            metrics.commands.labels(spec.path, f"http_{exc.code}").inc()
            raise
        metrics.commands.labels(spec.path, "accepted").inc()
        response = _no_content()
        response.headers["Command-Id"] = command_id
        return response

    accept.__name__ = f"command_{spec.path.strip('/').replace('/', '_') or 'root'}"
    return accept
