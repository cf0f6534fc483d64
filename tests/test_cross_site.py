"""Cross-site protection, CORS and per-client rate limits, against real gateway processes on loopback.

Whether a refused command reached the bus is read from the handler's own counter
(``gateway_commands_handled_total``): an accepted command sent after the refused ones is handled, and nothing
else ever is.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import pytest

from tests.support.metrics import metric, wait_metric
from tests.support.raw_stream import RawStream
from tests.support.server import HUB_TOKEN, Server, start_server

pytestmark = [pytest.mark.live, pytest.mark.asyncio]

APP = "http://app.example:9000"  # the CORS-allowed origin
EVIL = "https://evil.example"
JSON = {"content-type": "application/json"}
HANDLED = "gateway_commands_handled_total"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, certs: tuple[Path, Path]) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("cross-site"), certs, args=["--app", "tests.apps:gw"],
                       env={"GATEWAY_SECURITY_CORS_ORIGINS": APP})
    yield srv
    srv.stop()


async def _handled_only(srv: Server, before: float, accepted: int) -> None:
    """After ``accepted`` commands were answered 204, exactly that many handlers ran: the refused never did."""
    await wait_metric(srv.http, HANDLED, before + accepted, route="/tick", result="ok")


CROSS_SITE = [
    # (headers, body, status): what a page on another site can send without a preflight
    ({"content-type": "application/x-www-form-urlencoded", "origin": EVIL, "sec-fetch-site": "cross-site"},
     b"a=1", 403),  # an HTML form post
    ({"content-type": "text/plain", "origin": EVIL}, b"{}", 403),  # fetch no-cors with a text body
    ({"sec-fetch-site": "cross-site"}, b"", 403),  # a body-less no-cors fetch / sendBeacon
    ({"origin": EVIL, **JSON}, b"{}", 403),  # a foreign origin, even with JSON
    ({"origin": "null", **JSON}, b"{}", 403),  # a sandboxed frame
    ({"origin": "https://sub.example", "sec-fetch-site": "same-site", **JSON}, b"{}", 403),
    ({}, b"", 415),  # no browser markers, but no media type either: the first rule it breaks
]


@pytest.mark.parametrize(("headers", "body", "status"), CROSS_SITE)
async def test_cross_site_commands_are_refused_and_never_run(gateway: Server, headers: dict[str, str],
                                                             body: bytes, status: int) -> None:
    before = await metric(gateway.http, HANDLED, route="/tick", result="ok")
    async with httpx.AsyncClient(base_url=gateway.http, timeout=10) as client:
        refused = await client.post("/tick", content=body, headers=headers)
        assert refused.status_code == status, refused.text
        error = refused.json()
        assert error["error"] == ("cross_site_request" if status == 403 else "unsupported_media_type")
        assert error["detail"]
        assert (await client.post("/tick", json={})).status_code == 204  # a service call
    await _handled_only(gateway, before, 1)


async def test_same_origin_service_and_cors_origin_are_accepted(gateway: Server) -> None:
    before = await metric(gateway.http, HANDLED, route="/tick", result="ok")
    own = f"http://127.0.0.1:{gateway.http_port}"
    async with httpx.AsyncClient(base_url=gateway.http, timeout=10) as client:
        same = await client.post("/tick", json={}, headers={"origin": own, "sec-fetch-site": "same-origin"})
        older = await client.post("/tick", json={}, headers={"origin": own})  # no Sec-Fetch-Site
        service = await client.post("/tick", content=b"", headers=JSON)  # no body, but JSON: fine
        cors = await client.post("/tick", json={}, headers={"origin": APP, "sec-fetch-site": "cross-site"})
    assert [r.status_code for r in (same, older, service, cors)] == [204] * 4
    assert cors.headers["access-control-allow-origin"] == APP
    assert "access-control-allow-origin" not in same.headers
    await _handled_only(gateway, before, 4)


async def test_a_foreign_origin_is_counted_by_reason(gateway: Server) -> None:
    before = await metric(gateway.http, "gateway_cross_site_refused_total", kind="command",
                          reason="origin_not_allowed")
    async with httpx.AsyncClient(base_url=gateway.http, timeout=10) as client:
        assert (await client.post("/tick", json={}, headers={"origin": EVIL})).status_code == 403
    assert await metric(gateway.http, "gateway_cross_site_refused_total", kind="command",
                        reason="origin_not_allowed") == before + 1


async def test_hub_publishes_refuse_cross_site_requests(gateway: Server) -> None:
    auth = {"authorization": f"Bearer {HUB_TOKEN}", **JSON}
    body = json.dumps({"topic": "x", "data": 1}).encode()
    async with httpx.AsyncClient(base_url=gateway.http, timeout=10) as client:
        refused = await client.post("/hub/publish", content=body, headers={**auth, "sec-fetch-site": "cross-site"})
        accepted = await client.post("/hub/publish", content=body, headers=auth)
    assert refused.status_code == 403
    assert refused.json()["error"] == "cross_site_request"
    assert accepted.status_code == 204
    assert await metric(gateway.http, "gateway_cross_site_refused_total", kind="publish", reason="cross_site") >= 1


async def test_preflight_answers_an_allowed_origin_only(gateway: Server) -> None:
    ask = {"access-control-request-method": "POST", "access-control-request-headers": "content-type"}
    async with httpx.AsyncClient(base_url=gateway.http, timeout=10) as client:
        allowed = await client.options("/tick", headers={"origin": APP, **ask})
        stream = await client.options("/both", headers={"origin": APP, "access-control-request-method": "GET",
                                                         "access-control-request-headers": "last-event-id"})
        refused = await client.options("/tick", headers={"origin": EVIL, **ask})
        plain = await client.options("/tick")  # not a preflight: the route takes POST only
    assert allowed.status_code == stream.status_code == 204
    assert allowed.headers["access-control-allow-origin"] == APP
    assert "POST" in allowed.headers["access-control-allow-methods"]
    for name in ("Content-Type", "Idempotency-Key", "Last-Event-ID", "Authorization"):
        assert name in allowed.headers["access-control-allow-headers"]
    assert int(allowed.headers["access-control-max-age"]) > 0
    assert "origin" in allowed.headers["vary"].lower()
    assert allowed.headers["access-control-allow-credentials"] == "true"
    assert refused.status_code == 403
    assert not any(name.startswith("access-control-") for name in refused.headers)
    assert plain.status_code == 405


async def test_streams_carry_cors_headers_for_an_allowed_origin_only(gateway: Server) -> None:
    allowed = await RawStream.open(gateway.http_port, "/both", headers={"origin": APP})
    other = await RawStream.open(gateway.http_port, "/both", headers={"origin": EVIL})
    try:
        assert allowed.status == other.status == 200
        assert allowed.headers["access-control-allow-origin"] == APP
        assert "access-control-allow-origin" not in other.headers
    finally:
        allowed.close()
        other.close()


async def test_chromium_no_cors_post_from_another_origin_does_not_run(gateway: Server) -> None:
    """A page on http://localhost:PORT posts to http://127.0.0.1:PORT with no-cors fetch and sendBeacon."""
    from tests.support.chromium import launch

    before = await metric(gateway.http, HANDLED, route="/tick", result="ok")
    refused_before = await metric(gateway.http, "gateway_cross_site_refused_total", kind="command")
    async with launch() as browser:
        page = await (await browser.new_context()).new_page()
        await page.goto(f"http://localhost:{gateway.http_port}/healthz")
        target = f"http://127.0.0.1:{gateway.http_port}/tick"
        await page.evaluate("""async (url) => {
            await fetch(url, {mode: "no-cors", method: "POST"});
            await fetch(url, {mode: "no-cors", method: "POST", body: "{}"});
            navigator.sendBeacon(url);
        }""", target)
        await wait_metric(gateway.http, "gateway_cross_site_refused_total", refused_before + 3, kind="command")
    async with httpx.AsyncClient(base_url=gateway.http, timeout=10) as client:
        assert (await client.post("/tick", json={})).status_code == 204
    await _handled_only(gateway, before, 1)


# -- rate limits ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory, certs: tuple[Path, Path]) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("rate-limits"), certs, args=["--app", "tests.apps:gw"],
                       env={"GATEWAY_RATE_LIMITS_COMMANDS": "1", "GATEWAY_RATE_LIMITS_COMMANDS_BURST": "5",
                            "GATEWAY_RATE_LIMITS_STREAM_OPENS": "1", "GATEWAY_RATE_LIMITS_STREAM_OPENS_BURST": "20",
                            "GATEWAY_LIMITS_TRUSTED_PROXIES": "127.0.0.1",
                            "GATEWAY_LIMITS_MAX_STREAMS_PER_CLIENT": "0"})
    yield srv
    srv.stop()


async def test_a_command_flood_gets_429_while_another_client_goes_on(limited: Server) -> None:
    flooder, other = {"x-forwarded-for": "198.51.100.7", **JSON}, {"x-forwarded-for": "203.0.113.8", **JSON}
    async with httpx.AsyncClient(base_url=limited.http, timeout=10) as client:
        answers = await asyncio.gather(*(client.post("/tick", content=b"{}", headers=flooder) for _ in range(40)))
        calm = await client.post("/tick", content=b"{}", headers=other)
    statuses = Counter(r.status_code for r in answers)
    assert statuses[204] <= 10, statuses  # a burst of 5, and 1/s while the flood lasts
    assert statuses[429] >= 30, statuses
    refused = next(r for r in answers if r.status_code == 429)
    assert 1 <= int(refused.headers["retry-after"]) <= 2
    assert refused.json()["error"] == "too_many_requests"
    assert calm.status_code == 204
    assert await metric(limited.http, "gateway_rate_limited_total", kind="command") >= 30


async def _open_and_close(port: int, client: str, timeout: float = 20) -> tuple[int, str | None]:
    """One stream request from ``client`` (forwarded by the trusted loopback proxy): its status and Retry-After."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(f"GET /both HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Forwarded-For: {client}\r\n"
                         "Accept-Encoding: identity\r\n\r\n".encode())
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
        finally:
            writer.close()
    status = int(head.split()[1])
    retry = next((line.split(":", 1)[1].strip() for line in head.split("\r\n") if line.startswith("retry-after:")),
                 None)
    return status, retry


async def test_a_reconnect_storm_is_refused_and_a_healthy_stream_keeps_its_events(limited: Server) -> None:
    healthy = await RawStream.open(limited.http_port, "/both", headers={"x-forwarded-for": "192.0.2.50"})
    try:
        assert healthy.status == 200
        first, _ = await healthy.next_event(timeout=10)  # the current state
        assert first.startswith("a=0 ")
        statuses: Counter[int] = Counter()
        retry_afters: set[str | None] = set()
        for _ in range(20):  # 10,000 opens in batches of 500 concurrent connections
            batch = await asyncio.gather(*(_open_and_close(limited.http_port, "198.51.100.66") for _ in range(500)))
            statuses.update(status for status, _ in batch)
            retry_afters.update(retry for status, retry in batch if status != 200)
        assert sum(statuses.values()) == 10_000
        assert set(statuses) <= {200, 429, 503}, statuses
        assert statuses[200] <= 20 + 60, statuses  # the burst, plus 1/s for as long as the storm lasted
        assert None not in retry_afters
        assert all(int(r or 0) >= 1 for r in retry_afters)
        async with httpx.AsyncClient(base_url=limited.http, timeout=10) as client:
            bump = await client.post("/bump", json={"move": {"topic": "a"}},
                                     headers={"x-forwarded-for": "192.0.2.51"})
            assert bump.status_code == 204, bump.text
        changed, _ = await healthy.next_event(timeout=10)
        assert changed.startswith("a=1 "), changed
        assert await metric(limited.http, "gateway_rate_limited_total", kind="stream") >= 9_000
    finally:
        healthy.close()


# -- refusals readable by an allowed origin ---------------------------------------------------------------------

SECRET = "cors-secret-" + "s" * 32


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory, certs: tuple[Path, Path]) -> Iterator[Server]:
    """A CORS origin, private hub topics, two streams per process and one per client (told apart by the trusted
    loopback proxy's X-Forwarded-For), and a command rate limit of a burst of one."""
    srv = start_server(tmp_path_factory.mktemp("cors-refusals"), certs, args=["--app", "tests.apps:gw"],
                       env={"GATEWAY_SECURITY_CORS_ORIGINS": APP, "GATEWAY_HUB_PUBLIC_TOPICS": "public.*",
                            "GATEWAY_AUTH_JWT_KEY": SECRET, "GATEWAY_LIMITS_MAX_STREAMS": "2",
                            "GATEWAY_LIMITS_MAX_STREAMS_PER_CLIENT": "1",
                            "GATEWAY_LIMITS_TRUSTED_PROXIES": "127.0.0.1",
                            "GATEWAY_RATE_LIMITS_COMMANDS": "0.01", "GATEWAY_RATE_LIMITS_COMMANDS_BURST": "1"})
    yield srv
    srv.stop()


def _readable_by_app(headers: dict[str, str] | httpx.Headers, *exposed: str) -> None:
    """The answer carries exactly the CORS headers a success would: the listed origin echoed (never ``*``),
    credentials allowed, ``Vary: Origin``, and ``exposed`` readable by the page."""
    assert headers["access-control-allow-origin"] == APP
    assert headers["access-control-allow-credentials"] == "true"
    assert "origin" in headers["vary"].lower()
    names = [n.strip().lower() for n in headers["access-control-expose-headers"].split(",")]
    for name in exposed:
        assert name.lower() in names, names


def _not_readable(headers: dict[str, str] | httpx.Headers) -> None:
    assert not any(name.lower().startswith("access-control-") for name in headers)
    assert "origin" in headers["vary"].lower()


async def test_hub_refusals_carry_cors_headers_for_an_allowed_origin_only(strict: Server) -> None:
    wrong_scope = jwt.encode({"exp": int(time.time()) + 300, "mercure": {"subscribe": ["other"]}}, SECRET,
                             algorithm="HS256")
    no_token = await RawStream.open(strict.http_port, "/hub/subscribe?topic=secret", headers={"origin": APP})
    scoped = await RawStream.open(strict.http_port, "/hub/subscribe?topic=secret",
                                  headers={"origin": APP, "authorization": f"Bearer {wrong_scope}"})
    foreign = await RawStream.open(strict.http_port, "/hub/subscribe?topic=secret", headers={"origin": EVIL})
    assert (no_token.status, scoped.status, foreign.status) == (401, 403, 401)
    _readable_by_app(no_token.headers, "WWW-Authenticate")
    _readable_by_app(scoped.headers, "WWW-Authenticate")
    assert 'error="insufficient_scope"' in scoped.headers["www-authenticate"]
    _not_readable(foreign.headers)  # never reflected beyond the list
    assert json.loads(foreign.body)["error"] == "unauthorized"  # the same refusal, only unreadable in a browser


async def test_stream_limit_refusals_carry_cors_headers(strict: Server) -> None:
    """429 over the per-client cap and 503 over the process's: what a page needs to back off (the status and
    Retry-After) is readable."""
    ann, bob, cat = ({"origin": APP, "x-forwarded-for": address} for address in
                     ("198.51.100.1", "198.51.100.2", "198.51.100.3"))
    opened = [await RawStream.open(strict.http_port, "/hub/subscribe?topic=public.a", headers=ann)]
    try:
        opened.append(over_cap := await RawStream.open(strict.http_port, "/both", headers=ann))
        opened.append(await RawStream.open(strict.http_port, "/hub/subscribe?topic=public.a", headers=bob))
        opened.append(full := await RawStream.open(strict.http_port, "/hub/subscribe?topic=public.a", headers=cat))
        assert [s.status for s in opened] == [200, 429, 200, 503]
        for refused in (over_cap, full):
            assert int(refused.headers["retry-after"]) >= 1
            _readable_by_app(refused.headers, "Retry-After")
        _readable_by_app(opened[0].headers)  # as the stream that was served
    finally:
        for stream in opened:
            stream.close()


async def test_command_and_publish_refusals_carry_cors_headers(strict: Server) -> None:
    browser = {"origin": APP, "sec-fetch-site": "cross-site", **JSON}
    async with httpx.AsyncClient(base_url=strict.http, timeout=10) as client:
        accepted = await client.post("/tick", content=b"{}", headers=browser)
        limited = await client.post("/tick", content=b"{}", headers=browser)
        invalid = await client.post("/tick", content=b"[", headers=browser)
        publish = await client.post("/hub/publish", json={"topic": "x", "data": 1}, headers=browser)
        wrong_method = await client.put("/both", headers={"origin": APP})
        foreign = await client.post("/tick", content=b"{}", headers={**browser, "origin": EVIL})
    assert accepted.status_code == 204
    assert limited.status_code == 429
    assert invalid.status_code in (400, 429)  # refused either way: both answers must be readable
    assert publish.status_code in (401, 403)
    assert wrong_method.status_code == 405
    _readable_by_app(accepted.headers)
    _readable_by_app(limited.headers, "Retry-After")
    for refused in (invalid, publish, wrong_method):
        _readable_by_app(refused.headers)
        assert refused.json()["error"]
    assert foreign.status_code == 403
    _not_readable(foreign.headers)


async def test_a_draining_gateway_refuses_streams_readably(tmp_path: Path, certs: tuple[Path, Path]) -> None:
    """After SIGTERM new streams get 503 with Retry-After, readable by an allowed origin. Open streams keep the
    draining process alive for the drain window, so the refusal is seen before it exits."""
    srv = start_server(tmp_path, certs, args=["--app", "tests.apps:gw"],
                       env={"GATEWAY_SECURITY_CORS_ORIGINS": APP, "GATEWAY_SERVER_DRAIN_TIMEOUT": "4"})
    streams = [await RawStream.open(srv.http_port, "/both") for _ in range(20)]
    try:
        srv.proc.send_signal(signal.SIGTERM)
        async with httpx.AsyncClient(base_url=srv.http, timeout=5) as client, asyncio.timeout(5):
            while (await client.get("/readyz")).status_code != 503:
                pass  # each request is the wait: readiness is the other process's to flip
        refused = await RawStream.open(srv.http_port, "/both", headers={"origin": APP})
        assert refused.status == 503
        assert json.loads(refused.body)["error"] == "unavailable"
        assert int(refused.headers["retry-after"]) >= 1
        _readable_by_app(refused.headers, "Retry-After")
    finally:
        for stream in streams:
            stream.close()
        assert srv.stop() == 0, srv.output()
