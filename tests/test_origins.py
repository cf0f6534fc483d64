"""The cross-site decision table, the request's own origin, and the CORS headers: sans-IO, no server."""

from __future__ import annotations

import pytest

from gateway.core.origins import CrossSiteRefused, OriginPolicy, normalize, request_origin

pytestmark = pytest.mark.unit

OWN = "https://gw.example"
POLICY = OriginPolicy.of(["https://partner.example"], ["https://app.example:8443"], 600)


@pytest.mark.parametrize(
    ("origin", "fetch_site"),
    [
        (None, None),  # a service, curl: no browser markers at all
        (OWN, None),  # an older browser on our own origin
        ("HTTPS://GW.EXAMPLE:443", None),  # the same origin, spelt differently
        (OWN, "same-origin"),
        (None, "same-origin"),
        ("https://elsewhere.example", "same-origin"),  # the browser's marker beats our idea of our own origin
        (None, "none"),  # user-initiated (typed, bookmarked)
        ("https://partner.example", None),
        ("https://partner.example", "cross-site"),  # configured as allowed
        ("https://partner.example", "same-site"),
        ("https://app.example:8443", "cross-site"),  # a CORS origin is allowed to send commands
    ],
)
def test_allowed(origin: str | None, fetch_site: str | None) -> None:
    POLICY.check(origin, fetch_site, OWN)


@pytest.mark.parametrize(
    ("origin", "fetch_site", "reason"),
    [
        ("https://evil.example", None, "origin_not_allowed"),
        ("null", None, "origin_not_allowed"),  # sandboxed frames, file: pages
        ("http://gw.example", None, "origin_not_allowed"),  # another scheme is another origin
        ("https://gw.example:8443", None, "origin_not_allowed"),  # another port too
        ("https://evil.example", "cross-site", "cross_site"),
        (None, "cross-site", "cross_site"),  # a no-cors fetch may omit Origin; the marker is enough
        (OWN, "cross-site", "cross_site"),  # an Origin that claims to be ours does not outvote the browser
        ("https://sub.gw.example", "same-site", "same_site"),
        ("https://evil.example", "something-new", "cross_site"),  # an unknown value is not trusted
        ("https://app.example", "cross-site", "cross_site"),  # the default port is not the listed 8443
    ],
)
def test_refused(origin: str | None, fetch_site: str | None, reason: str) -> None:
    with pytest.raises(CrossSiteRefused) as info:
        POLICY.check(origin, fetch_site, OWN)
    assert info.value.reason == reason
    assert info.value.status == 403
    assert info.value.body()["error"] == "cross_site_request"


def test_unknown_own_origin_allows_only_listed_origins() -> None:
    POLICY.check("https://partner.example", None, None)
    with pytest.raises(CrossSiteRefused):
        POLICY.check(OWN, None, None)


@pytest.mark.parametrize(
    ("value", "canonical"),
    [
        ("https://Example.COM", "https://example.com"),
        ("https://example.com:443", "https://example.com"),
        ("http://example.com:80/", "http://example.com"),
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000"),
        ("http://[::1]:8000", "http://[::1]:8000"),
        ("null", None),
        ("ftp://example.com", None),
        ("https://example.com/path", None),
        ("https://user@example.com", None),
        ("https://example.com:99999", None),
        ("*", None),
        ("", None),
    ],
)
def test_normalize(value: str, canonical: str | None) -> None:
    assert normalize(value) == canonical


def test_own_origin_from_scheme_and_host() -> None:
    assert request_origin("http", {"host": "127.0.0.1:8000"}, False) == "http://127.0.0.1:8000"
    assert request_origin("https", {"host": "gw.example:443"}, False) == "https://gw.example"
    assert request_origin("https", {}, False) is None


def test_forwarded_proto_and_host_only_from_a_trusted_proxy() -> None:
    headers = {"host": "10.0.0.5:8000", "x-forwarded-proto": "https", "x-forwarded-host": "evil.example, gw.example"}
    assert request_origin("http", headers, True) == "https://gw.example"  # the nearest proxy's entry: the last
    assert request_origin("http", headers, False) == "http://10.0.0.5:8000"


def test_settings_refuse_what_is_not_an_origin() -> None:
    with pytest.raises(ValueError, match=r"security\.cors_origins"):
        OriginPolicy.of([], ["*"], 600)


def test_preflight_echoes_a_listed_origin_only() -> None:
    headers = dict(POLICY.preflight_headers("https://APP.example:8443") or [])
    assert headers[b"access-control-allow-origin"] == b"https://app.example:8443"
    assert headers[b"access-control-allow-credentials"] == b"true"
    assert b"POST" in headers[b"access-control-allow-methods"]
    for name in (b"Content-Type", b"Idempotency-Key", b"Last-Event-ID", b"Authorization"):
        assert name in headers[b"access-control-allow-headers"]
    assert headers[b"access-control-max-age"] == b"600"
    assert b"origin" in headers[b"vary"]
    # allowed_origins may send commands but are not a CORS origin; nobody else is echoed either
    for origin in ("https://partner.example", "https://evil.example", "null", None):
        assert POLICY.preflight_headers(origin) is None


def test_actual_responses_carry_allow_headers_for_listed_origins() -> None:
    allowed = dict(POLICY.cors_headers("https://app.example:8443"))
    assert allowed[b"access-control-allow-origin"] == b"https://app.example:8443"
    assert b"*" not in allowed.values()
    assert POLICY.cors_headers("https://evil.example") == [(b"vary", b"origin")]
    assert OriginPolicy.of([], [], 600).cors_headers("https://evil.example") == []
