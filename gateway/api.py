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
import contextlib
import contextvars
import inspect
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from functools import partial
from typing import Any, TypeVar, get_type_hints

import pydantic

from gateway.bus import Command, create_bus
from gateway.bus.redis_layout import redacted
from gateway.commands import CommandContext, CommandSpec, Extra, Handler, path_values_model, validate_path_values
from gateway.config import Settings
from gateway.core import stamps
from gateway.core.compression import RouteCompression
from gateway.core.datastar import Rendered
from gateway.core.errors import Unavailable
from gateway.core.hub import HubEvent
from gateway.core.paths import PathTemplate, is_template
from gateway.core.slowclient import SlowClientPolicy
from gateway.core.stream import CloseReason
from gateway.core.topics import hub_key, view_key
from gateway.metrics import Metrics
from gateway.tracing import configure as configure_tracing
from gateway.web.asgi import Dispatcher
from gateway.web.asgi_util import Receive, Scope, Send, StreamRequest
from gateway.web.auth import AuthorizeHook
from gateway.web.context import HUB_ROUTE, AppContext, ViewSpec
from gateway.web.fanout import Fanout
from gateway.web.routes import build_quart

log = logging.getLogger("gateway")
command_log = logging.getLogger("gateway.commands")  # server.access_log: one line per command run

H = TypeVar("H", bound=Handler)
Hook = Callable[[], Awaitable[None]]
K = TypeVar("K", bound=Hook)
L = TypeVar("L", bound=Callable[[], contextlib.AbstractAsyncContextManager[Any]])
R = TypeVar("R", bound=Callable[..., Awaitable[Rendered]])

# When the command being run was accepted (wall clock), for the views it changes: their delivery is timed from it.
_ORIGIN: contextvars.ContextVar[float | None] = contextvars.ContextVar("gateway_origin", default=None)

SAMPLE_EVERY = 2.0  # seconds between samples of readiness and process numbers into their gauges

_RESERVED = {HUB_ROUTE, "/hub/publish", "/metrics", "/healthz", "/readyz"}


class Gateway:
    """Commands, views, the hub and the plumbing between them, as one ASGI app."""

    def __init__(self, settings: Settings | None = None, *, static_folder: str | None = None,
                 name: str = "gateway", hub_compression: RouteCompression | None = None,
                 tracer_provider: Any = None) -> None:
        self._settings = settings
        self._tracer_provider = tracer_provider  # an OpenTelemetry TracerProvider for tracing.enabled (optional)
        self._hub_compression = hub_compression or RouteCompression()
        self._static_folder = static_folder
        self._name = name
        self._commands: dict[str, CommandSpec] = {}
        self._views: dict[str, ViewSpec] = {}
        self._authorizers: dict[str, AuthorizeHook] = {}
        self._routes: list[tuple[str, Callable[..., Any], tuple[str, ...]]] = []
        self._on_startup: list[Hook] = []
        self._on_shutdown: list[Hook] = []
        self._lifespans: list[Callable[[], contextlib.AbstractAsyncContextManager[Any]]] = []
        self._resources = contextlib.AsyncExitStack()  # the entered lifespans, exited at shutdown
        self._runtime: AppContext | None = None
        self._app: Dispatcher | None = None
        self._sampler: asyncio.Task[None] | None = None
        # Ids of accepted commands this process stopped without running, and that no other process will run
        # (in-process bus, drain deadline passed): ``gateway serve`` exits non-zero when there are any.
        self.unrun_commands: list[str] = []

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
        template = PathTemplate.parse(path)  # a malformed template is refused here, naming its segment
        if is_template(path):
            if taken := [reserved for reserved in sorted(_RESERVED) if template.match(reserved) is not None]:
                raise ValueError(f"path {path!r} would take the gateway's own {taken[0]}")
            for other in (*self._commands, *self._views):
                if is_template(other) and PathTemplate.parse(other).shape == template.shape:
                    raise ValueError(f"path {path!r} matches the same paths as {other!r}")

    def command(self, path: str, *, authorize: AuthorizeHook | None = None, extra: Extra = "forbid"
                ) -> Callable[[H], H]:
        """Register an async handler as ``POST path``; its annotated parameters define the JSON body.

        ``path`` may name values in it (``/todos/{id}/toggle``, one path segment each, ``gateway.core.paths``):
        they are handler parameters too, typed and validated (422 naming the field) and not part of the body. A
        parameter annotated ``CommandContext`` receives the command's context (``gateway.commands``).

        ``authorize(identity, request)`` (sync or async) decides before the body is read: ``identity`` is the
        request's verified token (``gateway.core.auth.Identity``) or None; False refuses (401 without a token,
        403 with one), and it may raise ``Forbidden`` itself.

        ``extra="ignore"`` accepts body members the handler does not declare and drops them (a Datastar page
        posts all its signals: ``gateway.datastar``); the default refuses them with 422."""

        def register(handler: H) -> H:
            self._check_path(path)
            if authorize is not None:
                self._authorizers[path] = authorize
            self._commands[path] = CommandSpec.from_handler(path, handler, extra)
            return handler

        return register

    def view(self, path: str, topics: Iterable[str], *, per_request: bool | None = None,
             compression: RouteCompression | None = None, authorize: AuthorizeHook | None = None,
             slow_client: SlowClientPolicy | None = None) -> Callable[[R], R]:
        """Register a persistent SSE query at ``GET path``, re-rendered when any of ``topics`` changes.

        A view without parameters is rendered once per version and shared by every subscriber. A view that takes
        one parameter receives the ``StreamRequest`` and is rendered per connection (``per_request`` forces
        either way; a shared view must not depend on who asks). ``compression`` sets the route's codecs, quality
        and window (``RouteCompression(encodings=())`` never compresses it: see the BREACH note in the docs).
        ``authorize`` decides who may open the stream, as for ``command``. A view whose path names values
        (``/rooms/{room}/updates``) must take the request: they are in ``request.path_params``, as strings, and
        parameters after the request named after them get them typed (``async def room(request, room: int)``;
        422 naming a bad value before the stream opens). ``slow_client`` gives this view other slow-client limits
        than ``sse.slow_client_grace``: ``SlowClientPolicy(grace=...)`` and optionally ``max_bytes``, the bytes a
        client may be behind (``gateway.core.slowclient``; an ``sse.view_slow_clients`` rule overrides it).
        """

        def register(render: R) -> R:
            self._check_path(path)
            if authorize is not None:
                self._authorizers[path] = authorize
            takes_request = len(inspect.signature(render).parameters) > 0
            if is_template(path) and not takes_request:
                raise TypeError(f"view {path} has path parameters: it must take the request (request.path_params)")
            if per_request is False and takes_request:
                raise TypeError(f"shared view {path} must not take the request: it is rendered once for everybody")
            if per_request and not takes_request:
                raise TypeError(f"per-request view {path} must take the request as its parameter")
            policy = compression or RouteCompression()
            if takes_request:
                typed, model = _typed_view(path, render)
                spec = ViewSpec(path, tuple(topics), per_request_render=typed, compression=policy, path_model=model,
                                slow_client=slow_client)
            else:
                spec = ViewSpec(path, tuple(topics), shared_render=render, compression=policy,
                                slow_client=slow_client)
            self._views[path] = spec
            return render

        return register

    def route(self, path: str, methods: Iterable[str] = ("GET",)) -> Callable[[Callable[..., Any]], Any]:
        """A plain Quart route (pages, assets): ``@gw.route("/")``."""

        def register(func: Callable[..., Any]) -> Any:
            self._routes.append((path, func, tuple(methods)))
            return func

        return register

    def on_startup(self, hook: K) -> K:
        """Run ``async def hook()`` when the gateway starts (the ASGI lifespan startup), in registration order,
        before the bus hands out commands or a stream is served: open the app's own clients here. A hook that
        raises fails the startup with its message, and the server does not serve."""
        self._check_hook(hook, "on_startup")
        self._on_startup.append(hook)
        return hook

    def on_shutdown(self, hook: K) -> K:
        """Run ``async def hook()`` when the gateway stops, in registration order, after the drain (streams
        closed, accepted commands finished, the bus closed): close the app's own clients here. A hook that raises
        is logged; the others still run."""
        self._check_hook(hook, "on_shutdown")
        self._on_shutdown.append(hook)
        return hook

    def lifespan(self, factory: L) -> L:
        """Register an async context manager factory (``@contextlib.asynccontextmanager`` on a function without
        parameters), entered at startup after the ``on_startup`` hooks and exited at shutdown after the
        ``on_shutdown`` hooks, the last entered first."""
        self._check_hook(factory, "lifespan")
        self._lifespans.append(factory)
        return factory

    def _check_hook(self, hook: Callable[..., Any], kind: str) -> None:
        if self._runtime is not None and self._runtime.started:
            raise RuntimeError(f"register {kind} hooks before the gateway starts")
        if kind != "lifespan" and not inspect.iscoroutinefunction(hook):
            raise TypeError(f"{kind} hook {getattr(hook, '__name__', hook)!r} must be an async function")

    # -- runtime ----------------------------------------------------------------------------------------------

    @property
    def runtime(self) -> AppContext:
        """The parts the web layer is handed, assembled on first use from the effective settings."""
        if self._runtime is None:
            s = self.settings
            metrics = Metrics()
            bus = create_bus(s.bus.url, history=s.bus.history, workers=s.commands.workers,
                             queue_size=s.commands.queue_size, idempotency_ttl=s.commands.idempotency_ttl,
                             lease=s.bus.lease, timeout=s.bus.timeout, on_health=metrics.bus_health)
            tracing = configure_tracing(s.tracing.enabled, s.tracing.sample_ratio, s.tracing.otlp_endpoint,
                                        self._tracer_provider)
            runtime = AppContext(s, bus, metrics, hub_compression=self._hub_compression, tracing=tracing)
            runtime.commands.update(self._commands)
            runtime.views.update(self._views)
            runtime.authorizers.update(self._authorizers)
            self._runtime = runtime
        return self._runtime

    @property
    def app(self) -> Dispatcher:
        if self._app is None:
            quart = build_quart(self.runtime, static_folder=self._static_folder, name=self._name)
            for path, func, methods in self._routes:
                quart.add_url_rule(path, f"route:{path}", func, methods=list(methods))
            self._app = Dispatcher(self.runtime, quart, startup=self._startup, shutdown=self._shutdown)
        return self._app

    @property
    def hub(self) -> Hub:
        """Publish hub events from Python: ``await gw.hub.publish("prices", {"eur": 1.08}, event="tick")``."""
        return Hub(self)

    async def publish(self, topic: str, payload: bytes = b"") -> str:
        """Announce that view topic ``topic`` changed; every view on it re-renders. Returns the new version.

        The announcement is stamped with when the change began (the command being run was accepted, or now) and
        when it is published, so that every process times its delivery (``gateway.core.stamps``).

        A change must not go unannounced because the bus was briefly away (the state already changed; views would
        sit on the old one until the next change): while the bus is unavailable this retries with a growing
        delay for up to ``bus.lease`` seconds, then raises ``Unavailable``. A command that runs it is not
        acknowledged meanwhile, so it is not lost either way.
        """
        if payload:
            return await self._publish(view_key(topic), payload)
        tracing = self.runtime.tracing
        if tracing.on and tracing.current_traceparent(sampled_only=True) is not None:
            with tracing.child_span(f"publish {topic}", None, "producer", {"gateway.topic": topic}):
                payload = stamps.stamp(_ORIGIN.get(), time.time(), tracing.current_traceparent())
                return await self._publish(view_key(topic), payload)
        return await self._publish(view_key(topic), stamps.stamp(_ORIGIN.get(), time.time()))

    async def _publish(self, key: str, payload: bytes) -> str:
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.settings.bus.lease
        delay = 0.05
        while True:
            try:
                return await self.runtime.bus.publish(key, payload)
            except Unavailable:
                if loop.time() + delay > give_up:
                    raise
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, 1.0)

    # -- life cycle -------------------------------------------------------------------------------------------

    async def _startup(self) -> None:
        runtime = self.runtime
        try:
            for hook in self._on_startup:
                await _run_startup_hook(hook)
            for factory in self._lifespans:
                await _run_startup_hook(partial(self._resources.enter_async_context, factory()),
                                        getattr(factory, "__name__", repr(factory)))
            await self._start_serving(runtime)
        except BaseException:
            await self._resources.aclose()
            raise

    async def _start_serving(self, runtime: AppContext) -> None:
        compression = runtime.compression
        hub_route = compression.route(HUB_ROUTE, runtime.hub_compression)
        fanout = Fanout(runtime.bus, runtime.metrics, lambda size: compression.observe(hub_route, size),
                        runtime.metrics.report_tallies, tracing=runtime.tracing,
                        heartbeat=runtime.settings.sse.heartbeat, batch_window=runtime.settings.sse.batch_window)
        for spec in runtime.views.values():
            fanout.add_view(spec.path, spec.topics, spec.shared_render,
                            partial(compression.observe, compression.route(spec.path, spec.compression)))
        runtime.fanout = fanout
        await runtime.bus.start(self._run_command)
        await fanout.start()
        runtime.started = True
        self._sampler = asyncio.create_task(self._sample(runtime), name="gateway-sampler")
        log.info("gateway started: %d commands, %d views, bus %s", len(runtime.commands), len(runtime.views),
                 redacted(runtime.settings.bus.url))

    async def _sample(self, runtime: AppContext) -> None:
        """Every ``SAMPLE_EVERY`` seconds: readiness and this worker's process numbers into their gauges (a scrape
        reaches one worker under ``--workers``; the others speak through what they sampled)."""
        metrics = runtime.metrics
        while True:
            metrics.ready.set(1 if runtime.ready else 0)
            metrics.process.sample()
            metrics.process.report()
            metrics.report_tallies()  # a worker whose last writes went through its tasks reports them too
            await asyncio.sleep(SAMPLE_EVERY)

    async def _run_command(self, command_id: str, command: Command) -> None:
        """Run one accepted command; a failing handler is logged and counted, never fatal."""
        runtime = self.runtime
        spec = runtime.commands.get(command.name)
        if spec is None:
            log.error("command %s: no handler for %s in this process", command_id, command.name)
            return
        metrics = runtime.metrics
        loop = asyncio.get_running_loop()
        started = loop.time()
        accepted = command.context.get("accepted")
        token = _ORIGIN.set(accepted if isinstance(accepted, int | float) else None)
        outcome = "cancelled"  # a shutdown cut the handler short (Redis redelivers it): logged all the same
        try:
            if runtime.tracing.on:
                await self._run_traced(spec, command_id, command)
            else:
                await spec.run(command_id, command)
        except asyncio.CancelledError:
            raise
        except Exception:
            outcome = "error"
            metrics.commands_handled.labels(command.name, "error").inc()
            log.exception("command %s (%s) failed", command_id, command.name)
        else:
            outcome = "ok"
            metrics.commands_handled.labels(command.name, "ok").inc()
        finally:
            _ORIGIN.reset(token)
            seconds = loop.time() - started
            metrics.command_seconds.labels(command.name).observe(seconds)
            # The access line: the id ties it to the 204's command-id header, the delivery count shows a
            # networked bus's redeliveries. Fields in ``extra`` for server.log_format = json.
            if runtime.settings.server.access_log:
                duration_ms = round(seconds * 1000, 3)
                command_log.info("command %s %s %s in %.1f ms (delivery %d)", command_id, command.name, outcome,
                                 duration_ms, command.delivery,
                                 extra={"command_id": command_id, "route": command.name, "outcome": outcome,
                                        "duration_ms": duration_ms, "delivery": command.delivery})

    async def _run_traced(self, spec: CommandSpec, command_id: str, command: Command) -> None:
        """The handler in a span ``command <route>``, child of the POST's (its ``traceparent`` came with the
        command, across the bus); an exception is recorded on the span and goes on."""
        traceparent = command.context.get("traceparent")
        with self.runtime.tracing.child_span(
                f"command {command.name}", traceparent if isinstance(traceparent, str) else None, "consumer",
                {"gateway.command.id": command_id, "gateway.route": command.name,
                 "gateway.command.delivery": command.delivery}):
            await spec.run(command_id, command)

    async def drain(self, timeout: float | None = None) -> None:
        """Stop taking streams and commands, end streams with a reconnect hint, finish accepted commands."""
        runtime = self.runtime
        timeout = self.settings.server.drain_timeout if timeout is None else timeout
        if runtime.draining:
            return
        runtime.draining = True
        runtime.metrics.ready.set(0)
        loop = asyncio.get_running_loop()
        # Close streams spread over the first half of the window, so that their reconnects (to other instances)
        # spread out too, instead of arriving all at once.
        spread = timeout / 2
        log.info("draining: %d open streams closed over %.1f s", len(runtime.streams), spread)
        for stream in list(runtime.streams):
            loop.call_later(random.uniform(0, spread), stream.end, CloseReason.DRAIN)
        deadline = loop.time() + timeout
        if runtime.streams:
            runtime.streams_gone.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(runtime.streams_gone.wait(), timeout)
        self.unrun_commands += await runtime.bus.close(max(0.0, deadline - loop.time()))

    async def _shutdown(self) -> None:
        runtime = self.runtime
        runtime.gc.close()
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
        runtime.metrics.ready.set(0)
        runtime.metrics.process.close()
        if runtime._fanout is not None:
            await runtime._fanout.close()
        if not runtime.draining:
            runtime.draining = True
            self.unrun_commands += await runtime.bus.close(self.settings.server.drain_timeout)
        for hook in self._on_shutdown:
            try:
                await hook()
            except Exception:
                log.exception("on_shutdown hook %s failed", getattr(hook, "__name__", hook))
        try:
            await self._resources.aclose()
        except Exception:
            log.exception("an app lifespan failed to close")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)

    def asgi(self) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
        """The ASGI app ``gateway serve`` hands the server: the dispatcher, to which ``__call__`` only forwards (an
        open stream would keep that frame, ~240 bytes, for its whole life); the gateway itself when a subclass
        overrides ``__call__``."""
        if type(self).__call__ is Gateway.__call__:
            return self.app
        return self


def _typed_view(path: str, render: Callable[..., Awaitable[Rendered]]
                ) -> tuple[Callable[[StreamRequest], Awaitable[Rendered]], type[pydantic.BaseModel] | None]:
    """A per-request view's render, called with its typed path values when it declares them after the request
    (``async def room(request, room: int)``); the model that types them."""
    declared = list(inspect.signature(render).parameters)[1:]
    if not declared:
        return render, None
    names = PathTemplate.parse(path).params
    if unknown := [name for name in declared if name not in names]:
        raise TypeError(f"view {path}: parameter {unknown[0]!r} is not a value of the path (it has {names})")
    hints = get_type_hints(render, include_extras=True)
    model = path_values_model(f"Path_{render.__name__}", {name: (hints.get(name, Any), ...) for name in declared})

    async def typed(request: StreamRequest) -> Rendered:
        values = validate_path_values(model, request.path_params)
        return await render(request, **{name: getattr(values, name) for name in declared})

    return typed, model


async def _run_startup_hook(hook: Callable[[], Awaitable[Any]], name: str | None = None) -> None:
    """Run one startup hook; its failure becomes the startup's failure, with the hook's name and message."""
    name = name or getattr(hook, "__name__", repr(hook))
    try:
        await hook()
    except Exception as exc:
        raise RuntimeError(f"startup hook {name} failed: {exc}") from exc


class Hub:
    """The hub seen from the application: events published here reach ``GET /hub/subscribe`` clients."""

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway

    async def publish(self, topic: str, data: object, *, event: str | None = None, id: str | None = None) -> str:
        """Publish one event (``data``: text as it is, anything else as JSON); returns its bus version.

        Raises ``ValueError`` for an invalid topic, event type or id, and ``Unavailable`` as ``publish`` does."""
        hub_event = HubEvent.of(topic, data, event=event, id=id)
        return await self._gateway._publish(hub_key(hub_event.topic), hub_event.payload)


__all__ = ["CommandContext", "Gateway", "Hub", "HubEvent", "RouteCompression", "StreamRequest"]
