"""What Chromium itself sent and received on a page's fetches, read from its network log (CDP).

``NetworkLog`` (``tests/support/chromium.py``) records a response's headers when they arrive. The *body* of a
stream that never ends shows up nowhere else: ``performance`` entries wait for the end, and
``Network.eventSourceMessageReceived`` only reports ``EventSource`` streams, while Datastar streams with ``fetch``.
``Network.streamResourceContent`` turns streaming on for one request: its answer holds what was buffered so far,
and from then on every ``Network.dataReceived`` of that request carries its bytes, decoded (after the
``content-encoding``) as the page reads them, with ``encodedDataLength`` as they came off the wire. Those bytes are
parsed with the gateway's own conforming SSE parser.

Requests are recorded from ``Network.requestWillBeSent``: the headers the page set (``Datastar-Request``,
``Content-Type``) and the body of a POST, to show what the browser's client really sent. Typical use::

    log = await NetworkLog.attach(page)
    tap = await StreamTap.attach(log, "/todos/updates")       # before navigating, to miss nothing
    await page.goto(url)
    event = await tap.wait_for_event(lambda e: "milk" in e.data, timeout=10)
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from gateway.core.sse import ParsedEvent, SSEParser

if TYPE_CHECKING:
    from playwright.async_api import CDPSession

    from tests.support.chromium import NetworkLog

__all__ = ["SentRequest", "StreamTap", "TappedStream"]

T = TypeVar("T")


@dataclass(frozen=True)
class SentRequest:
    """One ``Network.requestWillBeSent``, reduced to what the tests assert on."""

    request_id: str
    url: str
    method: str
    headers: Mapping[str, str]
    """As the page set them, names in lower case (the network stack adds others, such as ``accept-encoding``)."""
    post_data: str | None


@dataclass
class TappedStream:
    """The body of one streamed response, as Chromium handed it to the page."""

    request_id: str
    url: str
    events: list[ParsedEvent] = field(default_factory=list)
    decoded_bytes: int = 0
    encoded_bytes: int = 0
    """Sum of ``encodedDataLength`` after streaming was turned on: bytes off the wire, still compressed."""
    parser: SSEParser = field(default_factory=SSEParser)
    _buffered: bool = False
    _early: list[bytes] = field(default_factory=list)

    def feed(self, data: bytes) -> None:
        """Parse ``data`` after what came before it."""
        self.decoded_bytes += len(data)
        self.events.extend(self.parser.feed(data))


class StreamTap:
    """Streams every response whose URL contains ``url_substring`` and records every request the page sends."""

    def __init__(self, session: CDPSession, url_substring: str) -> None:
        self.session = session
        self.url_substring = url_substring
        self.requests: list[SentRequest] = []
        self.streams: dict[str, TappedStream] = {}
        self.errors: list[str] = []
        """``Network.streamResourceContent`` failures (a request that ended before streaming was on, say)."""
        self._tasks: set[asyncio.Task[None]] = set()
        self._waiters: list[asyncio.Future[None]] = []

    @classmethod
    async def attach(cls, log: NetworkLog, url_substring: str) -> StreamTap:
        """Tap ``log``'s CDP session (``Network.enable`` is already on); attach before navigating."""
        tap = cls(log.session, url_substring)
        log.session.on("Network.requestWillBeSent", tap._on_request)
        log.session.on("Network.responseReceived", tap._on_response)
        log.session.on("Network.dataReceived", tap._on_data)
        return tap

    def events(self) -> list[ParsedEvent]:
        """Every event of every tapped stream, stream by stream in the order they opened."""
        return [event for stream in self.streams.values() for event in stream.events]

    def sent(self, url_substring: str, method: str | None = None) -> list[SentRequest]:
        """The requests sent so far to URLs containing ``url_substring`` (with ``method``, if given)."""
        return [r for r in self.requests if url_substring in r.url and (method is None or r.method == method)]

    async def wait_for_event(self, predicate: Callable[[ParsedEvent], bool], timeout: float) -> ParsedEvent:
        """The first tapped event for which ``predicate`` holds, received already or within ``timeout`` s."""
        return await self._wait(lambda: next((e for e in self.events() if predicate(e)), None), timeout,
                                what="a matching event on a tapped stream")

    async def wait_for_request(self, url_substring: str, method: str, timeout: float, *, index: int = 0
                               ) -> SentRequest:
        """The ``index``-th request of ``method`` to a URL containing ``url_substring``, within ``timeout`` s."""
        def found() -> SentRequest | None:
            matching = self.sent(url_substring, method)
            return matching[index] if len(matching) > index else None

        return await self._wait(found, timeout, what=f"request #{index} {method} {url_substring}")

    async def _wait(self, probe: Callable[[], T | None], timeout: float, *, what: str) -> T:
        """``probe()`` once it is not None, re-checked on every CDP event this tap handles."""
        try:
            async with asyncio.timeout(timeout):
                while (result := probe()) is None:
                    waiter = asyncio.get_running_loop().create_future()
                    self._waiters.append(waiter)
                    await waiter
        except TimeoutError:
            seen = [f"{s.url}: {[e.event for e in s.events]}" for s in self.streams.values()] or ["no stream"]
            raise TimeoutError(f"no {what} within {timeout} s; tapped: {'; '.join(seen)}; "
                               f"errors: {self.errors or 'none'}") from None
        return result

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _on_request(self, params: dict[str, Any]) -> None:
        request = params["request"]
        headers = {str(k).lower(): str(v) for k, v in dict(request.get("headers", {})).items()}
        self.requests.append(SentRequest(str(params["requestId"]), str(request["url"]), str(request["method"]),
                                         headers, request.get("postData")))
        self._wake()

    def _on_response(self, params: dict[str, Any]) -> None:
        url = str(params["response"]["url"])
        if self.url_substring not in url:
            return
        request_id = str(params["requestId"])
        self.streams[request_id] = TappedStream(request_id, url)
        task = asyncio.get_running_loop().create_task(self._start_streaming(request_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _start_streaming(self, request_id: str) -> None:
        """Turn streaming on; feed what was buffered, then the chunks that arrived while the answer was on its
        way (CDP sends the answer before any event that follows it, but this coroutine resumes after them)."""
        stream = self.streams[request_id]
        try:
            reply = await self.session.send("Network.streamResourceContent", {"requestId": request_id})
        except Exception as exc:  # the page may close first; the test reads the reason in ``errors``
            self.errors.append(f"{stream.url}: {exc}")
            return
        stream.feed(base64.b64decode(reply.get("bufferedData", "")))
        stream._buffered = True
        for chunk in stream._early:
            stream.feed(chunk)
        stream._early.clear()
        self._wake()

    def _on_data(self, params: dict[str, Any]) -> None:
        stream = self.streams.get(str(params["requestId"]))
        if stream is None or "data" not in params:
            return
        stream.encoded_bytes += int(params.get("encodedDataLength", 0))
        chunk = base64.b64decode(params["data"])
        if stream._buffered:
            stream.feed(chunk)
            self._wake()
        else:
            stream._early.append(chunk)
