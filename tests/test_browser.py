"""The demo in a real headless Chromium: two pages, a todo added through one appears in the other.

The browser's own network log (CDP ``Network.responseReceived``) proves how the stream was served: h2 with
``content-encoding: br``, and a second run forced onto HTTP/3 over QUIC.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import pytest

from tests.support.chromium import NetworkLog, chromium_or_skip, launch, spki_hash
from tests.support.server import Server

if TYPE_CHECKING:
    from playwright.async_api import Page

pytestmark = [pytest.mark.live, pytest.mark.asyncio]


async def _wait_live(page: Page) -> None:
    await page.wait_for_selector('#status[data-state="connected"]', timeout=10_000)
    await page.wait_for_selector("#todos footer", timeout=10_000)


@pytest.mark.parametrize("protocol", ["h2", "h3"])
async def test_two_browsers_see_each_others_changes(server: Server, protocol: str) -> None:
    chromium_or_skip()
    origin = f"127.0.0.1:{server.tls_port}"
    quic = {"quic_origin": origin, "spki": spki_hash(server.certfile)} if protocol == "h3" else {}
    async with launch(**quic) as browser:
        context = await browser.new_context(ignore_https_errors=True)
        try:
            writer, reader = await context.new_page(), await context.new_page()
            logs = [await NetworkLog.attach(writer), await NetworkLog.attach(reader)]
            for page in (writer, reader):
                await page.goto(f"https://{origin}/", wait_until="domcontentloaded")
                await _wait_live(page)

            for log in logs:
                stream = await log.wait_for_response("/todos/updates", timeout=10)
                assert stream.status == 200
                assert stream.protocol == protocol
                assert stream.headers["content-encoding"] == "br"
                assert stream.headers["content-type"].startswith("text/event-stream")

            text = f"from the other tab {uuid.uuid4().hex[:6]}"
            await writer.fill("#new-todo", text)
            await writer.press("#new-todo", "Enter")  # through the page, as a person would
            item = reader.locator("#todos li", has_text=text)
            await item.wait_for(timeout=10_000)
            # The writer's input clears once its command was answered 204.
            await writer.wait_for_function("document.querySelector('#new-todo').value === ''", timeout=10_000)

            # Toggle it from the reader's keyboard; the writer sees it done.
            checkbox = item.locator('input[type="checkbox"]')
            await checkbox.focus()
            await reader.keyboard.press("Space")
            await writer.locator("#todos li[data-done='true']", has_text=text).wait_for(timeout=10_000)
            # Focus survives the re-render that the change itself caused.
            focus_key = await reader.evaluate("document.activeElement?.dataset.focusKey || ''")
            assert focus_key.startswith("toggle-")
        finally:
            await context.close()
