"""How an application is written on the gateway.

    gw = Gateway()

    @gw.command("/todos/add")                       # POST, body validated from the signature -> 204
    async def add(text: str) -> None:
        store.add(text)
        await gw.publish("todos")                   # state changed

    @gw.view("/todos/updates", topics=["todos"])    # persistent query, re-rendered on change
    async def todos() -> str:
        return render(store)

A ``Gateway`` is itself an ASGI application. Its settings can be given up front or applied later by
``gateway serve`` (``configure``); until the ASGI lifespan starts it, it is only a set of registrations.
"""

from __future__ import annotations

import asyncio
import inspect
import random
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

from gateway.commands import CommandSpec, Handler
from gateway.config import Settings
from gateway.core.compression import RouteCompression
from gateway.core.errors import Unavailable
from gateway.web.asgi import Dispatcher
from gateway.web.asgi_util import Receive, Scope, Send, StreamRequest
from gateway.web.routes import build_quart
from gateway.web.runtime import HUB_ROUTE, Runtime, ViewSpec

H = TypeVar("H", bound=Handler)
R = TypeVar("R", bound=Callable[..., Awaitable[str]])

_RESERVED = {HUB_ROUTE, "/hub/publish", "/metrics", "/healthz", "/readyz"}


class Gateway:
    """Commands, views, the hub and the plumbing between them, as one ASGI app."""

    def __init__(self, settings: Settings | None = None, *, static_folder: str | None = None,
                 name: str = "gateway", hub_compression: RouteCompression | None = None) -> None:
        self._settings = settings
        self._hub_compression = hub_compression or RouteCompression()
        self._static_folder = static_folder
        self._name = name
        self._commands: dict[str, CommandSpec] = {}
        self._views: dict[str, ViewSpec] = {}
        self._routes: list[tuple[str, Callable[..., Any], tuple[str, ...]]] = []
        self._runtime: Runtime | None = None
        self._app: Dispatcher | None = None

    # -- configuration ----------------------------------------------------------------------------------------

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = Settings.load()
        return self._settings

    def configure(self, settings: Settings) -> None:
        """Apply the effective settings (``gateway serve`` does this) before the gateway starts."""
        if self._runtime is not None and self._runtime.started:
            raise RuntimeError("settings cannot change once the gateway has started")
        self._settings = settings
        self._runtime = None
        self._app = None

    # -- registration -----------------------------------------------------------------------------------------

    def _check_path(self, path: str) -> None:
        if not path.startswith("/") or path in _RESERVED or path in self._commands or path in self._views:
            raise ValueError(f"path {path!r} is reserved, already used, or does not start with '/'")
        if self._runtime is not None:
            raise RuntimeError("register commands and views before the gateway starts")

    def command(self, path: str) -> Callable[[H], H]:
        """Register an async handler as ``POST path``; its annotated parameters define the JSON body."""

        def register(handler: H) -> H:
            self._check_path(path)
            self._commands[path] = CommandSpec.from_handler(path, handler)
            return handler

        return register

    def view(self, path: str, topics: Iterable[str], *, per_request: bool | None = None,
             compression: RouteCompression | None = None) -> Callable[[R], R]:
        """Register a persistent SSE query at ``GET path``, re-rendered when any of ``topics`` changes.

        A view without parameters is rendered once per version and shared by every subscriber. A view that takes
        one parameter receives the ``StreamRequest`` and is rendered per connection (``per_request`` forces
        either way; a shared view must not depend on who asks). ``compression`` sets the route's codecs, quality
        and window (``RouteCompression(encodings=())`` never compresses it: see the BREACH note in the docs).
        """

        def register(render: R) -> R:
            self._check_path(path)
            takes_request = len(inspect.signature(render).parameters) > 0
            if per_request is False and takes_request:
                raise TypeError(f"shared view {path} must not take the request: it is rendered once for everybody")
            if per_request and not takes_request:
                raise TypeError(f"per-request view {path} must take the request as its parameter")
            policy = compression or RouteCompression()
            if takes_request:
                spec = ViewSpec(path, tuple(topics), per_request_render=render, compression=policy)
            else:
                spec = ViewSpec(path, tuple(topics), shared_render=render, compression=policy)
            self._views[path] = spec
            return render

        return register

    def route(self, path: str, methods: Iterable[str] = ("GET",)) -> Callable[[Callable[..., Any]], Any]:
        """A plain Quart route (pages, assets): ``@gw.route("/")``."""

        def register(func: Callable[..., Any]) -> Any:
            self._routes.append((path, func, tuple(methods)))
            return func

        return register

    # -- runtime ----------------------------------------------------------------------------------------------

    @property
    def runtime(self) -> Runtime:
        if self._runtime is None:
            runtime = Runtime(self.settings, hub_compression=self._hub_compression)
            runtime.commands.update(self._commands)
            runtime.views.update(self._views)
            self._runtime = runtime
        return self._runtime

    @property
    def app(self) -> Dispatcher:
        if self._app is None:
            quart = build_quart(self.runtime, static_folder=self._static_folder, name=self._name)
            for path, func, methods in self._routes:
                quart.add_url_rule(path, f"route:{path}", func, methods=list(methods))
            self._app = Dispatcher(self.runtime, quart)
        return self._app

    async def publish(self, topic: str, payload: bytes = b"") -> str:
        """Announce that ``topic`` changed; every view on it re-renders. Returns the new version.

        A change must not go unannounced because the bus was briefly away (the state already changed; views would
        sit on the old one until the next change): while the bus is unavailable this retries with a growing
        delay for up to ``bus.lease`` seconds, then raises ``Unavailable``. A command that runs it is not
        acknowledged meanwhile, so it is not lost either way.
        """
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.settings.bus.lease
        delay = 0.05
        while True:
            try:
                return await self.runtime.bus.publish(topic, payload)
            except Unavailable:
                if loop.time() + delay > give_up:
                    raise
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, 1.0)

    async def drain(self, timeout: float | None = None) -> None:
        """Stop taking streams and commands, end streams with a reconnect hint, finish accepted commands."""
        await self.runtime.drain(self.settings.server.drain_timeout if timeout is None else timeout)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


__all__ = ["Gateway", "RouteCompression", "StreamRequest"]
