"""Conflation that understands Datastar patches, end to end: a stalled hub subscriber drains late, receives one
patch per element and one folded signal patch, and the real Datastar client in Chromium builds from its stream
exactly the page a fast subscriber's stream builds."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from gateway.core.datastar import PatchElements, PatchSignals
from gateway.core.mergepatch import apply
from gateway.core.sse import ParsedEvent
from tests.support.chromium import launch
from tests.support.metrics import metric
from tests.support.raw_stream import RawStream
from tests.support.server import HUB_TOKEN, start_server
from tests.support.wait import wait_until

pytestmark = pytest.mark.live

AUTH = {"Authorization": f"Bearer {HUB_TOKEN}"}
CLIENT = Path(__file__).resolve().parent.parent / "gateway" / "demo" / "datastar_static" / "datastar.js"
STEPS = 90
PAGE = """<!doctype html><html><head><script type="module" src="/datastar.js"></script></head><body>
<div id="dash"><span id="cpu">-</span><ul id="log"></ul><ul id="feed"></ul><div id="flag"></div>
<div id="pad"></div></div><pre id="signals" data-json-signals></pre>
<div data-init="@get('/replay')"></div></body></html>"""


def kernel_send_buffer_max() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    except (OSError, ValueError, IndexError):
        return 4 * 1024 * 1024


def sequence() -> list[PatchElements | PatchSignals]:
    """Patches of a small dashboard: two elements rewritten again and again, merged signals, an additive feed
    (never folded), and one element whose data-* attribute writes a signal (a barrier signals may not cross)."""
    patches: list[PatchElements | PatchSignals] = []
    for i in range(1, STEPS + 1):
        if i % 3 == 0:
            patches.append(PatchElements(f'<span id="cpu">{i}</span>'))
        elif i % 3 == 1:
            patches.append(PatchElements(f"<li>log {i}</li>", selector="#log", mode="inner"))
        else:
            nested: dict[str, Any] = {f"k{i % 4}": i, "gone": None if i % 5 else {"x": i}}
            patches.append(PatchSignals({"n": i, "stats": nested, "last": [i, i + 1] if i % 7 else None}))
        if i % 10 == 0:
            patches.append(PatchElements(f"<li>feed {i}</li>", selector="#feed", mode="append"))
        if i == STEPS // 2:
            patches.append(PatchElements(f'<div id="flag" data-signals:flag="{i}"></div>'))
    return patches


async def publish(client: httpx.AsyncClient, patch: PatchElements | PatchSignals, event_id: str) -> None:
    event = "datastar-patch-elements" if isinstance(patch, PatchElements) else "datastar-patch-signals"
    body = {"topic": "dash", "event": event, "id": event_id, "data": "\n".join(patch.data_lines())}
    response = await client.post("/hub/publish", json=body, headers=AUTH)
    assert response.status_code == 204, response.text


async def read_through(stream: RawStream, last_id: str, timeout: float) -> list[ParsedEvent]:
    events = []
    async with asyncio.timeout(timeout):
        while True:
            event = await stream.next_parsed(timeout)
            events.append(event)
            if event.id == last_id:
                return events


async def page_state(stream_bytes: bytes, expected_cpu: str, expected_n: int) -> tuple[str, Any]:
    """Feed ``stream_bytes`` to the real Datastar client as the response of its ``@get``; the page's dashboard
    HTML and signals once the last patch is in."""
    async with launch() as browser:
        page = await browser.new_page()

        async def serve(route: Any) -> None:
            path = route.request.url.split("replay.test", 1)[1]
            if path.startswith("/datastar.js"):
                await route.fulfill(body=CLIENT.read_bytes(), content_type="text/javascript")
            elif path.startswith("/replay"):
                await route.fulfill(body=stream_bytes, content_type="text/event-stream")
            else:
                await route.fulfill(body=PAGE, content_type="text/html")

        await page.route("http://replay.test/**", serve)
        await page.goto("http://replay.test/", timeout=15_000)
        await page.wait_for_function(
            "([cpu, n]) => document.querySelector('#cpu').textContent === cpu"
            " && JSON.parse(document.querySelector('#signals').textContent || '{}').n === n",
            arg=[expected_cpu, expected_n], timeout=15_000)
        html = await page.inner_html("#dash")
        signals = orjson.loads(await page.inner_text("#signals"))
        return html, signals


@pytest.mark.asyncio
async def test_a_stalled_subscriber_gets_one_patch_per_element_and_the_page_a_fast_one_gets(
        tmp_path: Path, certs: tuple[Path, Path]) -> None:
    if not CLIENT.exists():
        pytest.fail(f"{CLIENT} is missing: `make install-dev` fetches Datastar's client")
    srv = start_server(tmp_path, certs, env={"GATEWAY_HUB_MAX_BUFFERED_BYTES": str(64 * 2**20),
                                             "GATEWAY_HUB_MAX_BUFFERED_EVENTS": "100000",
                                             "GATEWAY_SSE_SLOW_CLIENT_GRACE": "60"})
    try:
        fast = await RawStream.open(srv.http_port, "/hub/subscribe?topic=dash")
        stalled = await RawStream.open(srv.http_port, "/hub/subscribe?topic=dash", rcvbuf=4096, mss=1460)
        patches = sequence()
        last = f"s{len(patches) - 1:03d}"
        fast_reader = asyncio.create_task(read_through(fast, last, 90))  # reads all along
        async with httpx.AsyncClient(base_url=srv.http, timeout=10) as client:
            # More than the kernel can buffer for the stalled socket, so that its stream's write blocks and
            # what follows waits in its mailbox (where #pad's own patches already fold).
            pads = kernel_send_buffer_max() // 16_000 + 40
            for i in range(pads):
                await publish(client, PatchElements(f'<div id="pad">{i} {"y" * 16_000}</div>'), f"p{i}")
            await wait_until(lambda: _folded(srv.http, "elements"), 20,
                             what="the stalled stream's mailbox folding #pad patches")
            for n, patch in enumerate(patches):
                await publish(client, patch, f"s{n:03d}")
        fast_events = await fast_reader
        stalled_events = await read_through(stalled, last, 60)

        def of_sequence(events: list[ParsedEvent]) -> list[ParsedEvent]:
            return [e for e in events if "pad" not in e.data]

        fast_seq, stalled_seq = of_sequence(fast_events), of_sequence(stalled_events)
        assert len(fast_seq) == len(patches)  # the fast reader never fell behind: every patch as published
        targets = [e.data.split("\n")[0] for e in stalled_seq if e.event == "datastar-patch-elements"]
        assert targets.count('elements <span id="cpu">90</span>') == 1
        assert sum(t.startswith("elements <span id=\"cpu\">") for t in targets) == 1, targets
        assert sum(t == "mode inner" for t in targets) == 1, targets
        assert sum(t == "mode append" for t in targets) == STEPS // 10  # additive patches are all kept
        signal_events = [e for e in stalled_seq if e.event == "datastar-patch-signals"]
        assert 1 <= len(signal_events) <= 4, "signals were not folded (one fold each side of the barrier)"
        assert await metric(srv.http, "gateway_patches_folded_total", kind="hub", patch="signals") > 0

        expected: Any = {}
        for patch in patches:
            if isinstance(patch, PatchSignals):
                expected = apply(expected, dict(patch.signals))
        fast_page = await page_state(fast.decoded, str(STEPS), expected["n"])
        stalled_page = await page_state(stalled.decoded, str(STEPS), expected["n"])
        assert stalled_page == fast_page
        assert {k: v for k, v in fast_page[1].items() if k != "flag"} == expected
        assert len(stalled.decoded) < len(fast.decoded)
        fast.close()
        stalled.close()
    finally:
        assert srv.stop() == 0


async def _folded(base: str, patch: str) -> bool:
    return await metric(base, "gateway_patches_folded_total", kind="hub", patch=patch) > 0
