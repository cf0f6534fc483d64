"""The Quart application: health, readiness, metrics and the application's own routes.

Streams, commands and hub publishes are not Quart requests: the dispatcher serves them at the ASGI level
(``gateway.web.streams`` and ``gateway.web.posts``), where the write deadline, the disconnect and the per-request
cost are under the gateway's control. Quart keeps routing, body handling and error pages for everything else,
with its errors turned into the gateway's JSON bodies here.
"""

from __future__ import annotations

from typing import Any

import orjson
from quart import Quart, Response, request
from werkzeug.exceptions import HTTPException

from gateway.core.errors import (
    BadRequest,
    Forbidden,
    GatewayError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    Unavailable,
)
from gateway.metrics import CONTENT_TYPE_LATEST
from gateway.web.context import AppContext
from gateway.web.posts import LINGER_BYTES

_HTTP_CODES: dict[int, type[GatewayError]] = {
    400: BadRequest, 404: NotFound, 413: PayloadTooLarge, 403: Forbidden, 401: Unauthorized,
}


def json_error(error: GatewayError) -> Response:
    response = Response(orjson.dumps(error.body()), status=error.status, content_type="application/json")
    response.headers["Cache-Control"] = "no-store"
    for name, value in error.headers().items():
        response.headers[name] = value
    return response



def build_quart(runtime: AppContext, *, static_folder: str | None = None, name: str = "gateway") -> Quart:
    app = Quart(name, static_folder=static_folder, static_url_path="/static" if static_folder else None)
    app.config["MAX_CONTENT_LENGTH"] = runtime.settings.commands.max_body + LINGER_BYTES  # the app's own routes
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



def _json(value: Any, status: int = 200) -> Response:
    response = Response(orjson.dumps(value), status=status, content_type="application/json")
    response.headers["Cache-Control"] = "no-store"
    return response
