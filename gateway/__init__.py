"""An HTTP/2 + HTTP/3 Server-Sent-Events gateway: stateless commands in, persistent compressed queries out.

``Gateway`` and ``Settings`` are loaded on first use, so importing the sans-IO core (``gateway.core``), for
example from a load generator, does not drag in Quart, Hypercorn or asyncio.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.api import Gateway
    from gateway.commands import CommandContext
    from gateway.config import Settings
    from gateway.core.compression import RouteCompression

__all__ = ["CommandContext", "Gateway", "RouteCompression", "Settings"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "Gateway":
        from gateway.api import Gateway

        return Gateway
    if name == "Settings":
        from gateway.config import Settings

        return Settings
    if name == "CommandContext":
        from gateway.commands import CommandContext

        return CommandContext
    if name == "RouteCompression":
        from gateway.core.compression import RouteCompression

        return RouteCompression
    raise AttributeError(f"module 'gateway' has no attribute {name!r}")
