"""An app whose commands take a while, for draining with a backlog: ``gateway serve --app
tests.support.drain_app:gw``.

``/work`` sleeps ``GATEWAY_TEST_WORK_SECONDS`` (default 0.3) and then records its ``n`` in a file per process in
the ``GATEWAY_TEST_RECORDS`` directory, so a test knows exactly which accepted commands ran to the end.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from gateway import Gateway

gw = Gateway()


@gw.command("/work")
async def work(n: int) -> None:
    await asyncio.sleep(float(os.environ.get("GATEWAY_TEST_WORK_SECONDS", "0.3")))
    with (Path(os.environ["GATEWAY_TEST_RECORDS"]) / f"{os.getpid()}.log").open("a") as out:
        out.write(f"{n}\n")
        out.flush()
        os.fsync(out.fileno())
