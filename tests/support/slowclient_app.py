"""Views of large renders with different slow-client limits, served by ``gateway serve --app
tests.support.slowclient_app:gw`` (``tests/test_slow_client_policy.py``).

Every view renders about 1 MB that changes with each ``POST /tick``: a client that stops reading is behind by
megabytes within a few ticks. ``/quick`` declares a 1 s grace, ``/capped`` a cap on bytes behind (one render and
32 KiB), ``/configured`` declares nothing (the test gives it a grace through ``sse.view_slow_clients``),
``/patient`` declares nothing.
"""

from __future__ import annotations

from gateway import Gateway
from gateway.core.slowclient import SlowClientPolicy

gw = Gateway()
state = {"tick": 0}
FILLER = "".join(f"{i:07d} " for i in range(125_000))  # 1,000,000 bytes
RENDER = len(FILLER)


@gw.command("/tick")
async def tick() -> None:
    state["tick"] += 1
    await gw.publish("big")


def _render() -> str:
    return f"<p>tick {state['tick']}</p>{FILLER}"


@gw.view("/quick", topics=["big"], slow_client=SlowClientPolicy(grace=1))
async def quick() -> str:
    return _render()


# Past one render and 32 KiB behind: a stalled client's socket buffer soon holds more than 64 KiB (where fan-out
# stops writing to it), so the first render queued after that cuts it, however much the kernel took in before.
@gw.view("/capped", topics=["big"], slow_client=SlowClientPolicy(max_bytes=RENDER + 32 * 1024))
async def capped() -> str:
    return _render()


@gw.view("/configured", topics=["big"])
async def configured() -> str:
    return _render()


@gw.view("/patient", topics=["big"])
async def patient() -> str:
    return _render()
