"""An app whose view and commands carry ``authorize`` hooks, served by ``gateway serve --app
tests.support.auth_app:gw`` in the authorization tests."""

from __future__ import annotations

from gateway import Gateway
from gateway.core.auth import Identity
from gateway.core.errors import Forbidden
from gateway.web.asgi_util import StreamRequest

gw = Gateway()


def admins_only(identity: Identity | None, request: StreamRequest) -> bool:
    return identity is not None and identity.claims.get("role") == "admin"


async def closed(identity: Identity | None, request: StreamRequest) -> bool:
    raise Forbidden("closed for maintenance")


@gw.command("/admin/reset", authorize=admins_only)
async def reset() -> None:
    await gw.publish("panel")


@gw.command("/closed", authorize=closed)
async def never() -> None:
    raise AssertionError("an authorize hook refused this command")


@gw.view("/admin/panel", topics=["panel"], authorize=admins_only)
async def panel() -> str:
    return "<p>the admin panel</p>"
