"""A small app exercising the app API's edges, served by ``gateway serve --app tests.apps:gw``."""

from __future__ import annotations

import html
import os

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


# -- compression policies ---------------------------------------------------------------------------------------

from gateway import RouteCompression  # noqa: E402

WORDS = [f"w{i:03d}{'x' * (i % 7)}" for i in range(400)]
sized = {"bytes": 5000, "tick": 0}


def _pseudo_random_words(count: int, seed: int) -> list[str]:
    """Deterministic filler that does not compress much within one render (a linear congruential walk)."""
    out, x = [], seed
    for _ in range(count):
        x = (x * 1103515245 + 12345) % 2**31
        out.append(WORDS[x % len(WORDS)])
    return out


@gw.command("/size")
async def set_size(bytes: int) -> None:
    sized["bytes"] = bytes
    await gw.publish("sized")


@gw.command("/tick")
async def tick() -> None:
    sized["tick"] += 1
    await gw.publish("sized")


_filler: dict[int, str] = {}


@gw.view("/sized", topics=["sized"], compression=RouteCompression(brotli_lgwin=14))
async def sized_view() -> str:
    """A render of about ``sized["bytes"]`` bytes that changes in one place per tick."""
    size = sized["bytes"]
    if size not in _filler:
        _filler[size] = " ".join(_pseudo_random_words(size // 6, 7))[:size]
    return f"<p>tick {sized['tick']}</p><div>{_filler[size]}</div>"


noise = {"tick": 0, "bytes": 0}


@gw.command("/noise/set")
async def set_noise(bytes: int) -> None:
    noise["tick"] += 1
    noise["bytes"] = bytes
    await gw.publish("noise")


@gw.view("/noise", topics=["noise"])
async def noise_view() -> str:
    """A render that does not compress at all past its tick: ``bytes`` of fresh hex each version."""
    return f"<p>tick {noise['tick']}</p><pre>{os.urandom(noise['bytes'] // 2).hex()}</pre>"


@gw.view("/secret", topics=["a"], compression=RouteCompression(encodings=()))
async def secret() -> str:
    return "token=s3cr3t; comment=user text here"


@gw.view("/gzip-only", topics=["a"], compression=RouteCompression(encodings=("gzip",)))
async def gzip_only() -> str:
    return "gzip " * 50


# -- drain: accepted commands must run before the process exits ------------------------------------------------

import asyncio  # noqa: E402


@gw.command("/record")
async def record(n: int) -> None:
    """Slow on purpose (so some are still queued at SIGTERM); appends to $RECORD_FILE once executed."""
    await asyncio.sleep(0.02)
    await asyncio.to_thread(_append, os.environ["RECORD_FILE"], f"{n}\n")


def _append(path: str, line: str) -> None:
    with open(path, "a", encoding="utf-8") as out:
        out.write(line)
