"""A small app exercising the app API's edges, served by ``gateway serve --app tests.apps:gw``."""

from __future__ import annotations

import html

from pydantic import BaseModel

from gateway import Gateway
from gateway.web.asgi_util import StreamRequest

gw = Gateway()
state = {"a": 0, "b": 0, "broken": False}


class Move(BaseModel):
    topic: str
    by: int = 1


@gw.command("/bump")
async def bump(move: Move) -> None:
    """A pydantic model as the body's field."""
    state[move.topic] = state.get(move.topic, 0) + move.by
    await gw.publish(move.topic)


@gw.command("/explode")
async def explode(reason: str) -> None:
    raise RuntimeError(f"handler failed on purpose: {reason}")


@gw.command("/break-render")
async def break_render(broken: bool) -> None:
    state["broken"] = broken
    await gw.publish("b")


@gw.view("/both", topics=["a", "b"])
async def both() -> str:
    if state["broken"]:
        raise RuntimeError("render failed on purpose")
    return f"a={state['a']} b={state['b']}"


@gw.view("/hello", topics=["a"])
async def hello(request: StreamRequest) -> str:
    """Rendered per connection: it depends on who asks."""
    return f"hello {html.escape(request.arg('name') or 'nobody')}, a={state['a']}"
