"""The gateway's ASGI entry point: streams served natively, everything else by Quart, one lifespan for both."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from quart import Quart

from gateway.commands import CommandSpec
from gateway.core.errors import MethodNotAllowed, Unavailable
from gateway.core.paths import PathTemplate, first_match, is_template
from gateway.web.asgi_util import (
    Receive,
    Scope,
    Send,
    StreamRequest,
    answer_with_cors,
    joined_headers,
    parse_query,
    scope_headers,
    send_error,
    stop_answering_with_cors,
)
from gateway.web.context import HUB_PUBLISH_ROUTE, HUB_ROUTE, AppContext, ViewSpec
from gateway.web.hypercorn import install as install_corrections
from gateway.web.hypercorn.h11_post_lane import Request as LaneRequest
from gateway.web.posts import Answer, answer_post, serve_post, whole_body
from gateway.web.streams import serve_hub, serve_view

log = logging.getLogger("gateway")

class Dispatcher:
    """Routes a request to a stream responder or to the Quart app."""

    def __init__(self, runtime: AppContext, quart: Quart, *, startup: Callable[[], Awaitable[None]],
                 shutdown: Callable[[], Awaitable[None]]) -> None:
        self.runtime = runtime
        self.quart = quart
        self._startup = startup  # the API's life cycle, handed down: this layer never imports upward
        self._shutdown = shutdown
        self._templates: list[PathTemplate] | None = None

    def _route(self, scope: Scope) -> CommandSpec | ViewSpec | None:
        """The command or view of the request's path: an exact path first, then the path templates (their
        values go into ``scope["path_params"]``, where ``StreamRequest`` reads them)."""
        path = scope["path"]
        runtime = self.runtime
        route = runtime.commands.get(path) or runtime.views.get(path)
        if route is not None:
            return route
        if self._templates is None:  # registration is over once the dispatcher serves
            self._templates = [PathTemplate.parse(p) for p in (*runtime.commands, *runtime.views) if is_template(p)]
        found = first_match(self._templates, path)
        if found is None:
            return None
        template, scope["path_params"] = found
        return runtime.commands.get(template.path) or runtime.views[template.path]

    def lane_route(self, path: str) -> bool:
        """Whether ``h11_post_lane`` may serve a plain HTTP/1.1 POST to ``path`` from the connection's read loop:
        the hub publish and exact command paths, once started, unless traced or access-logged (their spans and
        lines are made on Hypercorn's path) or ``server.post_lane`` is off. The lane then calls ``lane_post``."""
        runtime = self.runtime
        server = runtime.settings.server
        return (runtime.started and server.post_lane and not server.access_log and not runtime.tracing.on
                and (path == HUB_PUBLISH_ROUTE or path in runtime.commands))

    async def lane_post(self, request: LaneRequest, client: tuple[str, int] | None, scheme: str) -> Answer:
        """A POST the lane holds whole, to a path ``lane_route`` took: answered by ``answer_post``, the function
        the ASGI path (``serve_post``) calls once it has read the body, with the same checks in the same order.
        Nothing of the dispatcher's own work applies to it: an exact path, a POST, no preflight, started,
        untraced; the refusals' CORS headers are added there."""
        path = request.path.decode("ascii")
        stream_request = StreamRequest("POST", path, parse_query(request.query), joined_headers(request.headers),
                                       client[0] if client else None, "1.1")
        answer = await answer_post(self.runtime, self.runtime.commands.get(path), stream_request, scheme,
                                   whole_body(request.body))
        assert answer is not None  # (a whole body cannot be cut short)
        return answer

    def _cross_origin_route(self, path: str, route: CommandSpec | ViewSpec | None) -> bool:
        """Streams, commands and hub publishes: the routes a CORS preflight is answered on."""
        return route is not None or path in (HUB_ROUTE, HUB_PUBLISH_ROUTE)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            path = scope["path"]
            route = self._route(scope)
            if not self._cross_origin_route(path, route):
                await self.quart(scope, receive, send)  # type: ignore[arg-type]
                return
            if scope["method"] == "OPTIONS":
                headers = scope_headers(scope)
                if "access-control-request-method" in headers:
                    await self.runtime.guard.serve_preflight(headers, send)
                    return
            # Every refusal of a stream, command or publish carries the CORS headers its success would.
            cors = answer_with_cors(self.runtime.guard.cors_of(scope))
            try:
                await self._cross_origin(path, route, scope, receive, send)
            finally:
                stop_answering_with_cors(cors)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        else:
            await self.quart(scope, receive, send)  # type: ignore[arg-type]

    def _cross_origin(self, path: str, route: CommandSpec | ViewSpec | None, scope: Scope, receive: Receive,
                      send: Send) -> Awaitable[None]:
        """What serves a stream (view or hub) or a post (command or hub publish), for ``__call__`` to await: a
        plain method, so that a stream's life holds no frame of it."""
        spec = route if isinstance(route, ViewSpec) else None
        if spec is not None or path == HUB_ROUTE:
            if scope["method"] not in ("GET", "HEAD"):
                refusal = MethodNotAllowed(f"{scope['method']} is not allowed on {path}", ("GET", "HEAD"))
                return send_error(send, refusal)
            if not self.runtime.started:
                return send_error(send, Unavailable("the gateway is starting", 1))
            if spec is not None:
                return serve_view(self.runtime, spec, scope, receive, send)
            return serve_hub(self.runtime, scope, receive, send)
        if not self.runtime.started:
            return send_error(send, Unavailable("the gateway is starting", 1))
        return serve_post(self.runtime, route if isinstance(route, CommandSpec) else None, scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    install_corrections(self.runtime.settings.server.accept_unverified_server)
                    await self._startup()
                    await self.quart.startup()
                except Exception as exc:
                    log.exception("gateway failed to start")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                try:
                    await self._shutdown()
                    await self.quart.shutdown()
                finally:
                    await send({"type": "lifespan.shutdown.complete"})
                return
