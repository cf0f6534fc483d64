"""A gateway for plain Hypercorn (``python -m hypercorn tests.support.corrections_app:gw``), not ``gateway serve``.

``GET /corrections`` answers the names of the Hypercorn corrections installed in the serving process: under plain
Hypercorn only the gateway's own lifespan startup can have installed them.
"""

from __future__ import annotations

from gateway import Gateway
from gateway.web.hypercorn import installed

gw = Gateway()


@gw.route("/corrections")
async def corrections() -> dict[str, list[str]]:
    return {"installed": installed()}
