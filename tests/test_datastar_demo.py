"""The Datastar demo (``gateway.demo.datastar``) driven by Datastar's real browser client in a real Chromium.

Two pages over h2, then over HTTP/3: what one page does by typing and clicking, Datastar posts as a command, and
the other page shows it. Chromium's own network log proves the rest: the stream carries
``datastar-patch-elements`` events, compressed with Brotli, over the protocol asked for, and the commands carry
Datastar's header and the page's signals. A real HTTP/2 client with a real Brotli decoder then compares what a
change costs on the wire in this demo and in the first one.

The client is the pinned build ``make install`` fetches (``gateway/demo/fetch_datastar.py``); without it these
tests fail, naming the command, since the demo refuses to start without it.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from gateway.demo import fetch_datastar
from tests.support.cdp_stream import StreamTap
from tests.support.chromium import NetworkLog, chromium_or_skip, launch, spki_hash
from tests.support.server import Server, start_server
from tests.support.view_cost import cost_of_adds

if TYPE_CHECKING:
    from playwright.async_api import Page

pytestmark = [pytest.mark.live, pytest.mark.asyncio]

APP = ["--app", "gateway.demo.datastar:app"]
DATASTAR = {"datastar-request": "true"}
WAIT_MS = 10_000


def require_client() -> None:
    """Fail (not skip: the fetch is part of installing) when the pinned client is not in place."""
    if not fetch_datastar.client_is_current():
        pytest.fail(f"the Datastar client is not at {fetch_datastar.TARGET}: run `make install-dev` "
                    "(or `python gateway/demo/fetch_datastar.py`)")


@pytest.fixture(scope="module")
def datastar(tmp_path_factory: pytest.TempPathFactory, certs: tuple[Path, Path]) -> Iterator[Server]:
    """The Datastar demo, shared by the tests that only add state (each uses texts of its own)."""
    require_client()
    srv = start_server(tmp_path_factory.mktemp("datastar"), certs, args=APP)
    yield srv
    code = srv.stop()
    assert code == 0, f"gateway exited with {code} on SIGTERM:\n{srv.output()}"


async def _wait_live(page: Page) -> None:
    """The page's stream is open and its first patch is in (the status says so only once a patch arrived)."""
    await page.wait_for_selector('#status[data-state="connected"]', timeout=WAIT_MS)
    await page.wait_for_selector("#todos footer", timeout=WAIT_MS)


@pytest.mark.parametrize("protocol", ["h2", "h3"])
async def test_two_pages_share_the_list_through_datastar(datastar: Server, protocol: str) -> None:
    chromium_or_skip()
    origin = f"127.0.0.1:{datastar.tls_port}"
    quic = {"quic_origin": origin, "spki": spki_hash(datastar.certfile)} if protocol == "h3" else {}
    async with launch(**quic) as browser:
        context = await browser.new_context(ignore_https_errors=True)
        try:
            writer, reader = await context.new_page(), await context.new_page()
            logs = [await NetworkLog.attach(writer), await NetworkLog.attach(reader)]
            taps = [await StreamTap.attach(log, "/todos/updates") for log in logs]
            for page in (writer, reader):
                await page.goto(f"https://{origin}/", wait_until="domcontentloaded")
                await _wait_live(page)

            for log, tap in zip(logs, taps, strict=True):
                stream = await log.wait_for_response("/todos/updates", timeout=10)
                assert stream.status == 200
                assert stream.protocol == protocol
                assert stream.headers["content-encoding"] == "br"
                assert stream.headers["content-type"].startswith("text/event-stream")
                opened = await tap.wait_for_request("/todos/updates", "GET", timeout=10)
                assert opened.headers["datastar-request"] == "true"  # Datastar's client opened it
                first = await tap.wait_for_event(lambda e: e.event == "datastar-patch-elements", timeout=10)
                assert first.data.startswith('elements <div id="todos">'), first.data[:200]

            tag = uuid.uuid4().hex[:6]
            milk, bread = f"milk {tag} over {protocol}", f"bread {tag} over {protocol}"

            # Typed and clicked in the writer; Datastar posts the page's signals; the reader's list shows it.
            await writer.fill("#new-todo", milk)
            await writer.click("#add-form button[type=submit]")
            await reader.locator("#todos li", has_text=milk).wait_for(timeout=WAIT_MS)
            await writer.wait_for_function("document.querySelector('#new-todo').value === ''", timeout=WAIT_MS)
            add = await taps[0].wait_for_request("/todos/add", "POST", timeout=10)
            assert add.headers["datastar-request"] == "true"
            assert add.headers["content-type"] == "application/json"
            assert add.post_data is not None
            assert json.loads(add.post_data) == {"text": milk, "id": 0}  # every signal but the page's own (_)
            answered = await logs[0].wait_for_response("/todos/add", timeout=10)
            assert (answered.status, answered.protocol) == (204, protocol)
            for tap in taps:  # each browser's own record of the stream holds the patch that carried it
                patch = await tap.wait_for_event(lambda e: milk in e.data, timeout=10)
                assert patch.event == "datastar-patch-elements"

            # The reader adds one with the keyboard, toggles the writer's by a click, and the writer sees both.
            await reader.fill("#new-todo", bread)
            await reader.press("#new-todo", "Enter")
            await writer.locator("#todos li", has_text=bread).wait_for(timeout=WAIT_MS)
            milk_item = reader.locator("#todos li", has_text=milk)
            milk_id = int(await milk_item.get_attribute("data-id") or 0)
            await milk_item.locator('input[type="checkbox"]').click()
            await writer.locator("#todos li[data-done='true']", has_text=milk).wait_for(timeout=WAIT_MS)
            toggle = await taps[1].wait_for_request("/todos/toggle", "POST", timeout=10)
            assert toggle.post_data is not None
            assert json.loads(toggle.post_data) == {"text": "", "id": milk_id}  # ignored: text; taken: id

            # The writer deletes the reader's, then clears the completed one: both pages end without either.
            await writer.get_by_role("button", name=f"Delete: {bread}").click()
            await reader.locator("#todos li", has_text=bread).wait_for(state="detached", timeout=WAIT_MS)
            await writer.get_by_role("button", name="Clear completed").click()
            for page in (writer, reader):
                await page.locator("#todos li", has_text=milk).wait_for(state="detached", timeout=WAIT_MS)

            for tap in taps:  # the commands never cancelled the stream: one GET per page, from start to end
                assert len(tap.sent("/todos/updates", "GET")) == 1
                assert not tap.errors
                assert {event.event for event in tap.events()} == {"datastar-patch-elements"}
        finally:
            await context.close()


async def test_a_refused_command_is_shown_and_its_text_kept(datastar: Server) -> None:
    chromium_or_skip()
    async with launch() as browser:
        context = await browser.new_context(ignore_https_errors=True)
        try:
            page = await context.new_page()
            await page.goto(datastar.https + "/", wait_until="domcontentloaded")
            await _wait_live(page)
            await page.fill("#new-todo", "   ")  # passes `required`, fails the command's validation
            await page.press("#new-todo", "Enter")
            await page.wait_for_selector("#error-text:has-text('HTTP 422')", timeout=WAIT_MS)
            assert await page.is_visible("#error")
            assert await page.input_value("#new-todo") == "   "
            await page.click("#error-dismiss")
            await page.wait_for_selector("#error", state="hidden", timeout=WAIT_MS)
        finally:
            await context.close()


async def test_the_page_reconnects_when_the_gateway_comes_back(tmp_path: Path, certs: tuple[Path, Path]) -> None:
    """A drain closes the stream cleanly; the page's ``@get`` (``retry: 'always'``) keeps trying, says so, and takes
    the new process's state. Plain HTTP, because only the plain port can be asked for again."""
    chromium_or_skip()
    require_client()
    (tmp_path / "before").mkdir()
    (tmp_path / "after").mkdir()
    quick_drain = {"GATEWAY_SERVER_DRAIN_TIMEOUT": "2"}  # streams closed within 1 s of SIGTERM, not 15 s
    before = start_server(tmp_path / "before", certs, args=APP, env=quick_drain)
    async with launch() as browser:
        context = await browser.new_context()
        try:
            page = await context.new_page()
            await page.goto(before.http + "/", wait_until="domcontentloaded")
            await _wait_live(page)
            assert before.stop() == 0, before.output()
            await page.wait_for_selector('#status[data-state="reconnecting"]', timeout=3 * WAIT_MS)
            after = start_server(tmp_path / "after", certs, args=APP, env=quick_drain, http_port=before.http_port)
            try:
                async with httpx.AsyncClient(base_url=after.http, timeout=10) as client:
                    posted = await client.post("/todos/add", json={"text": "after the restart"})
                    assert posted.status_code == 204
                # Datastar backs off up to 30 s between attempts; a few attempts fit in this bound.
                await page.locator("#todos li", has_text="after the restart").wait_for(timeout=6 * WAIT_MS)
                await page.wait_for_selector('#status[data-state="connected"]', timeout=WAIT_MS)
            finally:
                assert after.stop() == 0, after.output()
        finally:
            await context.close()


async def test_commands_read_the_signals_they_declare_and_validate_them(datastar: Server) -> None:
    async with httpx.AsyncClient(base_url=datastar.http, headers=DATASTAR, timeout=10) as client:
        signals = {"text": "  signals  ", "id": 0, "filter": {"done": True}, "draft": [1, 2]}
        assert (await client.post("/todos/add", json=signals)).status_code == 204
        assert (await client.post("/todos/clear-completed", json=signals)).status_code == 204
        refused = {
            "/todos/add": [{"text": "   ", "id": 0}, {"id": 0}, {"text": "x" * 501}, {"text": 7}],
            "/todos/toggle": [{"text": "", "id": 0}, {"text": "", "id": "1"}, {"text": ""}],
            "/todos/delete": [{"id": -1}, {"id": 1.5}],
        }
        for path, bodies in refused.items():
            for body in bodies:
                response = await client.post(path, json=body)
                assert response.status_code == 422, (path, body, response.text)
                field = "text" if path == "/todos/add" else "id"
                assert field in response.json()["detail"], (path, body, response.text)


async def test_the_page_loads_the_pinned_client(datastar: Server) -> None:
    async with httpx.AsyncClient(base_url=datastar.http, timeout=10) as client:
        page = await client.get("/")
        assert page.status_code == 200
        assert '<script type="module" src="/datastar.js">' in page.text
        served = await client.get("/datastar.js")
        assert served.status_code == 200
        assert "javascript" in served.headers["content-type"]
        assert hashlib.sha256(served.content).hexdigest() == fetch_datastar.CLIENT.sha256
        assert b"datastar-patch-elements" in served.content


async def test_brotli_bytes_per_change_within_twice_the_first_demos(tmp_path: Path,
                                                                    certs: tuple[Path, Path]) -> None:
    """The same 30 adds on each demo's view, each held by httpx over h2 with ``Accept-Encoding: br``."""
    require_client()
    texts = [f"Todo number {i}: water the plants, call the bank, review pull request #{1000 + i}"
             for i in range(30)]
    costs = {}
    for name, args, extra, headers in [("first demo", [], {}, {}),
                                       ("Datastar demo", APP, {"id": 0}, DATASTAR)]:
        directory = tmp_path / name.replace(" ", "-")
        directory.mkdir()
        srv = start_server(directory, certs, args=args)
        try:
            costs[name] = await cost_of_adds(srv.https, texts, body=extra, headers=headers)
        finally:
            assert srv.stop() == 0, srv.output()
    for name, cost in costs.items():
        print(f"\n{name}: {cost.summary()}")
        assert (cost.http_version, cost.content_encoding) == ("HTTP/2", "br")
    ratio = costs["Datastar demo"].mean / costs["first demo"].mean
    print(f"Datastar / first demo: {ratio:.2f}x compressed bytes per change")
    assert ratio <= 2
