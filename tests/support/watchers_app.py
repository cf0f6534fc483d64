"""A gateway that reports its own asyncio tasks (``GET /tasks``): how many wait on a request's ``receive()`` to
learn of a disconnect (the stream watcher), and how many tasks there are at all."""

from __future__ import annotations

import asyncio

from gateway import Gateway

gw = Gateway()


@gw.route("/tasks")
async def tasks() -> dict[str, int]:
    everything = asyncio.all_tasks()
    return {"watchers": sum(task.get_name() == "gateway-stream-watch" for task in everything),
            "tasks": len(everything)}
