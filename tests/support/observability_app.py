"""An app whose command takes a known time before it changes state, so that delivery latency has a floor."""

from __future__ import annotations

import asyncio

from gateway import Gateway

gw = Gateway(name="observability-test")
state = {"n": 0}


@gw.command("/slow")
async def slow(ms: int) -> None:
    """Take ``ms`` milliseconds, then change the state: its views' delivery latency is at least that long."""
    await asyncio.sleep(ms / 1000)
    state["n"] += 1
    await gw.publish("obs")


@gw.view("/obs", topics=["obs"])
async def obs() -> str:
    return f"n={state['n']}"
