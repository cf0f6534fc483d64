"""The multiplayer todo list, written the way an application on the gateway is written.

Commands change the list and publish ``todos``; the one view renders the complete list, once per version for
every subscriber. Nothing here knows about connections, compression or other browsers: that is the gateway's job.

Where the list lives follows from the bus (``todos_for``): in this process on the embedded bus, in Redis on a
Redis bus, because then several processes serve the app and a command runs in one of them while the views it
changes are rendered in all of them. Every handler takes one atomic step on the store, then publishes; the view
renders one snapshot, so every process renders the same state to the same bytes.

The Redis bus runs a command at least once: a process that dies before acknowledging one leaves it to another,
which gets the same command id. ``add`` and ``toggle`` pass it to the store, which then changes nothing twice;
every handler publishes again on a redelivery (``ctx.delivery > 1``), since the first run may have died between
changing the list and announcing it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Annotated

from pydantic import Field, StringConstraints
from quart import Response, send_from_directory

from gateway.api import Gateway
from gateway.commands import CommandContext, Extra
from gateway.demo.render import render_todos
from gateway.demo.store import MAX_TEXT, Todos, todos_for

STATIC = Path(__file__).parent / "static"

TodoText = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_TEXT)]
TodoId = Annotated[int, Field(ge=1)]


def create_app(store: Todos | None = None) -> Gateway:
    """A demo gateway on ``store``, or, by default, on the store its bus calls for.

    The default store is chosen from the effective settings' bus URL when the gateway starts (``gateway serve``
    applies its settings after importing the app) and closed when it stops. A ``store`` given here stays its
    owner's to close.
    """
    gw = Gateway(static_folder=str(STATIC), name="gateway.demo")
    current = todo_commands(gw, store)

    @gw.route("/")
    async def index() -> Response:
        return await no_cache(STATIC, "index.html")

    @gw.view("/todos/updates", topics=["todos"])
    async def updates() -> str:
        return render_todos(await current().snapshot())

    return gw


def todo_commands(gw: Gateway, store: Todos | None, *, extra: Extra = "forbid") -> Callable[[], Todos]:
    """Register the todo list's store (opened from the bus URL at startup unless ``store`` is given) and its four
    commands on ``gw``; return the accessor of the open store, for the views. Both demos share them: the
    Datastar one passes ``extra="ignore"`` (its page posts all its signals)."""
    todos: Todos | None = store

    @gw.lifespan
    @contextlib.asynccontextmanager
    async def todo_store() -> AsyncIterator[None]:
        nonlocal todos
        opened = store if store is not None else todos_for(gw.settings.bus.url, timeout=gw.settings.bus.timeout)
        todos = opened
        try:
            yield
        finally:
            todos = store
            if store is None:
                await opened.aclose()

    def current() -> Todos:
        if todos is None:
            raise RuntimeError("the demo's todo store opens when the gateway starts")
        return todos

    @gw.command("/todos/add", extra=extra)
    async def add(text: TodoText, ctx: CommandContext) -> None:
        await current().add(text, command_id=ctx.command_id)
        await gw.publish("todos")

    @gw.command("/todos/toggle", extra=extra)
    async def toggle(id: TodoId, ctx: CommandContext) -> None:
        if await current().toggle(id, command_id=ctx.command_id) or ctx.delivery > 1:
            await gw.publish("todos")

    @gw.command("/todos/delete", extra=extra)
    async def delete(id: TodoId, ctx: CommandContext) -> None:
        if await current().delete(id) or ctx.delivery > 1:
            await gw.publish("todos")

    @gw.command("/todos/clear-completed", extra=extra)
    async def clear_completed(ctx: CommandContext) -> None:
        if await current().clear_completed() or ctx.delivery > 1:
            await gw.publish("todos")

    return current


async def no_cache(directory: Path, name: str) -> Response:
    """A static file the browser revalidates each time (the page and what it loads change with the code)."""
    response: Response = await send_from_directory(directory, name)
    response.headers["Cache-Control"] = "no-cache"
    return response


app = create_app()
