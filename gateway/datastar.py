"""Datastar on the gateway: views return patches, commands receive signals.

    from gateway.datastar import PatchElements, PatchSignals

    @gw.view("/todos/updates", topics=["todos"])        # rendered once per version, compressed per connection
    async def updates() -> list[Patch]:
        return [PatchElements(render_list()), PatchSignals({"count": n})]

    @gw.command("/todos/add", extra="ignore")           # Datastar posts every signal of the page as the body
    async def add(text: str) -> None: ...

A view returns one patch or a list of them (``gateway.core.datastar`` frames them as Datastar's SDK specification
says, the version as the id of the last event). Datastar sends a page's signals as the JSON body of a POST, so a
command reads the ones it declares and, registered with ``extra="ignore"``, ignores the rest; its POSTs carry
``Datastar-Request: true`` (``is_datastar``). A per-request view reads the signals of a GET (``?datastar=``)
with ``read_signals``.

On a hub topic, Datastar events published as they are (``event: datastar-patch-elements`` and its ``data:``
lines) reach subscribers unchanged, and a slow subscriber's queue folds them (``gateway.core.mailbox``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from gateway.core.datastar import ELEMENTS, SIGNALS, ExecuteScript, Patch, PatchElements, PatchSignals, Rendered
from gateway.core.errors import BadRequest
from gateway.web.asgi_util import StreamRequest

__all__ = ["ELEMENTS", "SIGNALS", "ExecuteScript", "Patch", "PatchElements", "PatchSignals", "Rendered",
           "is_datastar", "read_signals"]


def is_datastar(headers: Mapping[str, str]) -> bool:
    """True for a request made by Datastar's client (``Datastar-Request: true``); ``headers`` with lower-case
    names, as ``StreamRequest.headers`` and ``CommandContext.headers`` hold them."""
    return headers.get("datastar-request", "").strip().lower() == "true"


def read_signals(request: StreamRequest) -> dict[str, Any]:
    """The signals a Datastar GET sent in ``?datastar=<json>``; empty when there are none. Raises
    ``BadRequest`` (400, naming the parameter) when the value is not a JSON object."""
    raw = request.arg("datastar")
    if not raw:
        return {}
    try:
        signals = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"datastar: the signals are not JSON ({exc})") from exc
    if not isinstance(signals, dict):
        raise BadRequest("datastar: the signals must be a JSON object")
    return signals
