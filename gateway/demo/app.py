"""The multiplayer todo list, written the way an application on the gateway is written.

Commands change the store and publish ``todos``; the one view renders the complete list, once per version for
every subscriber. Nothing here knows about connections, compression or other browsers: that is the gateway's job.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, StringConstraints
from quart import Response, send_from_directory

from gateway.api import Gateway
from gateway.demo.render import render_todos
from gateway.demo.store import MAX_TEXT, TodoStore

STATIC = Path(__file__).parent / "static"

TodoText = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_TEXT)]
TodoId = Annotated[int, Field(ge=1)]


def create_app(store: TodoStore | None = None) -> Gateway:
    """A demo gateway around ``store`` (a fresh one by default)."""
    todos = store or TodoStore()
    gw = Gateway(static_folder=str(STATIC), name="gateway.demo")

    @gw.route("/")
    async def index() -> Response:
        response: Response = await send_from_directory(STATIC, "index.html")
        response.headers["Cache-Control"] = "no-cache"
        return response

    @gw.command("/todos/add")
    async def add(text: TodoText) -> None:
        todos.add(text)
        await gw.publish("todos")

    @gw.command("/todos/toggle")
    async def toggle(id: TodoId) -> None:
        if todos.toggle(id):
            await gw.publish("todos")

    @gw.command("/todos/delete")
    async def delete(id: TodoId) -> None:
        if todos.delete(id):
            await gw.publish("todos")

    @gw.command("/todos/clear-completed")
    async def clear_completed() -> None:
        if todos.clear_completed():
            await gw.publish("todos")

    @gw.view("/todos/updates", topics=["todos"])
    async def updates() -> str:
        return render_todos(todos)

    return gw


app = create_app()
