"""Drive Debian's Chromium through Playwright (from PyPI) to check what a real browser negotiates.

Why a real browser: h2 and HTTP/3 negotiation, ``Accept-Encoding`` and EventSource behaviour are decided by
the browser, and only a browser shows them as users get them. Why Debian's build: tests must never download a
browser (no ``playwright install``), so Playwright is pointed at ``/usr/lib/chromium/chromium`` instead.

The recipe (flags, SPKI pinning for QUIC, CDP for live streams) is the one recorded in
``../shared/notes/chromium.md`` (relative to the project root). Typical use::

    executable = chromium_or_skip()
    async with launch(quic_origin=f"127.0.0.1:{port}", spki=spki_hash(cert_pem)) as browser:
        context = await browser.new_context(ignore_https_errors=True)
        page = await context.new_page()
        log = await NetworkLog.attach(page)
        await page.goto(f"https://127.0.0.1:{port}/")
        assert (await log.wait_for_response("/updates", timeout=5)).protocol == "h3"
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

if TYPE_CHECKING:  # Playwright itself is imported by launch(): collecting the unit tier never pays for it
    from playwright.async_api import Browser, CDPSession, Page

__all__ = [
    "BASE_ARGS",
    "CHROMIUM",
    "NetworkLog",
    "ObservedResponse",
    "chromium_or_skip",
    "find_chromium",
    "launch",
    "launch_args",
    "spki_hash",
]

SECONDS: Final = 1.0

LAUNCH_TIMEOUT: Final = 30 * SECONDS

CANDIDATES: Final = (Path("/usr/lib/chromium/chromium"), Path("/usr/bin/chromium"))
"""The real binary first: ``/usr/bin/chromium`` is Debian's shell wrapper, which adds a harmless warning."""

STRICT_ENV: Final = "GATEWAY_TEST_STRICT"
"""Set to ``1`` (as CI does) to turn a missing browser into a failure: a skipped check is not a passed one."""

BASE_ARGS: Final = (
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--ignore-certificate-errors",
)
"""Flags for every launch: run as root in a container, touch no network but ours, accept our test cert."""


def find_chromium() -> str | None:
    """Return the path of an executable Chromium, or None when this machine has none."""
    for candidate in CANDIDATES:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


CHROMIUM: Final = find_chromium()


def chromium_or_skip() -> str:
    """Return the Chromium path; skip the test without one, or fail it when ``GATEWAY_TEST_STRICT=1``."""
    if CHROMIUM is not None:
        return CHROMIUM
    reason = f"no Chromium at {' or '.join(map(str, CANDIDATES))} (apt-get install chromium)"
    if os.environ.get(STRICT_ENV) == "1":
        pytest.fail(f"{reason}; {STRICT_ENV}=1 forbids skipping browser tests")
    pytest.skip(reason)


def spki_hash(cert_pem_path: str | os.PathLike[str]) -> str:
    """Return base64(sha256(SubjectPublicKeyInfo DER)) of a PEM certificate.

    This is the value ``--ignore-certificate-errors-spki-list`` wants: Chromium's QUIC stack ignores
    ``--ignore-certificate-errors`` and fails with ERR_QUIC_PROTOCOL_ERROR unless the key is pinned this way.
    """
    certificate = x509.load_pem_x509_certificate(Path(cert_pem_path).read_bytes())
    spki = certificate.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode("ascii")


def launch_args(*, quic_origin: str | None = None, spki: str | None = None) -> list[str]:
    """Build the command-line flags for one launch (kept apart from ``launch`` so it can be checked alone).

    Without ``quic_origin`` QUIC is disabled outright: otherwise Hypercorn's ``Alt-Svc`` could switch a test
    meant for h2 to HTTP/3 halfway. With it, the origin is forced onto QUIC from the first request, since
    Alt-Svc alone never upgraded in headless runs. ``localhost`` is mapped to 127.0.0.1 because the QUIC bind
    is IPv4 only and Chromium would try ::1 first.
    """
    args = list(BASE_ARGS)
    if quic_origin is None:
        if spki is not None:
            raise ValueError(f"spki={spki!r} given without quic_origin: the SPKI pin only matters for QUIC")
        return [*args, "--disable-quic"]
    if spki is None:
        raise ValueError(
            f"quic_origin={quic_origin!r} needs spki=spki_hash(cert): without the pin Chromium's QUIC "
            "rejects a self-signed certificate (ERR_QUIC_PROTOCOL_ERROR)"
        )
    host, _, port = quic_origin.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"quic_origin={quic_origin!r} must be host:port, such as 127.0.0.1:8443")
    args += [
        "--enable-quic",
        f"--origin-to-force-quic-on={quic_origin}",
        f"--ignore-certificate-errors-spki-list={spki}",
    ]
    if host == "localhost":
        args.append("--host-resolver-rules=MAP localhost 127.0.0.1")
    return args


@asynccontextmanager
async def launch(*, quic_origin: str | None = None, spki: str | None = None) -> AsyncIterator[Browser]:
    """Start a headless Chromium (skipping the test if there is none) and close it on exit.

    ``quic_origin`` (``host:port``) with ``spki`` (see ``spki_hash``) forces that origin onto HTTP/3;
    without them the browser uses h2 or HTTP/1.1 only. Each launch gets a fresh, throw-away profile from
    Playwright, so no cache, cookie or Alt-Svc memory leaks from one test into the next. Playwright bounds
    the launch itself to ``LAUNCH_TIMEOUT``. Create contexts with ``ignore_https_errors=True`` for the tests'
    self-signed certificates.
    """
    executable = chromium_or_skip()
    args = launch_args(quic_origin=quic_origin, spki=spki)
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=executable, headless=True, args=args, timeout=LAUNCH_TIMEOUT * 1000
        )
        try:
            yield browser
        finally:
            await browser.close()


@dataclass(frozen=True)
class ObservedResponse:
    """One ``Network.responseReceived`` event, reduced to what the tests assert on."""

    url: str
    status: int
    protocol: str
    """As Chromium names it: ``"h2"``, ``"h3"``, ``"http/1.1"``."""
    headers: Mapping[str, str] = field(default_factory=dict)
    """Lowercase names; repeated headers are joined by newlines, as CDP reports them."""
    remote_address: str | None = None
    """``ip:port`` the browser talked to, to prove a test stayed on loopback."""

    @classmethod
    def from_cdp(cls, params: Mapping[str, Any]) -> ObservedResponse:
        """Build from the event's params; a malformed event raises KeyError rather than passing silently."""
        response = params["response"]
        ip, port = response.get("remoteIPAddress"), response.get("remotePort")
        return cls(
            url=str(response["url"]),
            status=int(response["status"]),
            protocol=str(response.get("protocol", "")),
            headers={str(k).lower(): str(v) for k, v in dict(response.get("headers", {})).items()},
            remote_address=f"{ip}:{port}" if ip is not None else None,
        )


class NetworkLog:
    """Every response a page receives, recorded as soon as its headers arrive.

    Playwright's own response objects and ``performance`` entries only describe finished responses, but an
    SSE stream never finishes; CDP's ``Network.responseReceived`` fires when the headers are in, so the
    protocol and ``content-encoding`` of a live stream can be checked while it is still open.
    """

    def __init__(self, session: CDPSession) -> None:
        self.session = session
        self.responses: list[ObservedResponse] = []
        self._waiters: list[asyncio.Future[None]] = []

    @classmethod
    async def attach(cls, page: Page) -> NetworkLog:
        """Open a CDP session on ``page`` and start recording; attach before navigating to miss nothing."""
        session = await page.context.new_cdp_session(page)
        log = cls(session)
        session.on("Network.responseReceived", log._on_response_received)
        await session.send("Network.enable")
        return log

    def matching(self, url_substring: str) -> list[ObservedResponse]:
        """Return the recorded responses whose URL contains ``url_substring``, oldest first."""
        return [response for response in self.responses if url_substring in response.url]

    async def wait_for_response(
        self,
        url_substring: str,
        timeout: float = 10 * SECONDS,
        *,
        index: int = 0,
    ) -> ObservedResponse:
        """Return the ``index``-th (0 = first) response whose URL contains ``url_substring``.

        Already recorded responses count, so the call may come after the navigation. To wait for a *new*
        response (a reconnect, say), pass ``index=len(log.matching(url_substring))`` taken beforehand.
        Raises ``TimeoutError`` after ``timeout`` seconds, naming the URLs that were seen instead.
        """
        try:
            async with asyncio.timeout(timeout):
                while len(found := self.matching(url_substring)) <= index:
                    waiter = asyncio.get_running_loop().create_future()
                    self._waiters.append(waiter)
                    await waiter
        except TimeoutError:
            seen = [f"{r.status} {r.protocol} {r.url}" for r in self.responses] or ["nothing"]
            raise TimeoutError(
                f"no response #{index} matching {url_substring!r} within {timeout}s; seen: {'; '.join(seen)}"
            ) from None
        return found[index]

    async def detach(self) -> None:
        """Stop recording; pages closing detach by themselves, so this is only for long-lived pages."""
        await self.session.detach()

    def _on_response_received(self, params: dict[str, Any]) -> None:
        """Record the event and wake every waiter; they re-check their own condition."""
        self.responses.append(ObservedResponse.from_cdp(params))
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
