"""Which browser requests may change state, and which origins may read across origins (CORS): a decision table.

A browser attaches ``Sec-Fetch-Site`` (every current browser) and ``Origin`` (on every POST and every CORS
request) by itself; a page cannot forge either. A service or ``curl`` sends neither. The rules, in order, for a
request that changes state (a command, a hub publish):

    Sec-Fetch-Site        Origin                            decision
    same-origin | none    any                               allow (the browser itself says it is ours)
    same-site | cross-site | other value
                          in the allowed set                allow (an origin configured as trusted)
                          anything else, or absent          refuse: reason same_site / cross_site
    absent                absent                            allow (not a browser: services, curl)
    absent                the request's own origin          allow (an older browser, same origin)
    absent                in the allowed set                allow
    absent                anything else, ``null`` included  refuse: reason origin_not_allowed

``Sec-Fetch-Site`` is believed before ``Origin`` because it needs no knowledge of our own address: behind a proxy
that rewrites ``Host`` the own origin computed here can be wrong, the browser's marker cannot. The allowed set is
``security.allowed_origins`` plus ``security.cors_origins``: an origin allowed to read across origins is trusted
to send commands across origins, which is what a CORS allow-list on a command route means.

The request's own origin is ``scheme://host[:port]``: the scheme of the connection (``https`` on the TLS and QUIC
listeners) and the ``Host`` header (HTTP/2 and HTTP/3 carry ``:authority``, which the server hands on as ``Host``);
from a trusted proxy only, ``X-Forwarded-Proto`` and ``X-Forwarded-Host`` (the last entry of each, the one the
nearest proxy wrote) replace them. Default ports (80 for http, 443 for https) are dropped, names lower-cased.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from gateway.core.errors import Forbidden

_DEFAULT_PORTS = {"http": 80, "https": 443}

# Reasons are metric labels: a fixed set.
REASONS = ("origin_not_allowed", "same_site", "cross_site")

CORS_METHODS = "GET, HEAD, POST"
CORS_HEADERS = "Content-Type, Idempotency-Key, Last-Event-ID, Authorization"
CORS_EXPOSE = "Command-Id, Event-Id, Event-Version, Retry-After, WWW-Authenticate"


class CrossSiteRefused(Forbidden):
    """403 for a cross-site browser request; ``reason`` is one of ``REASONS``."""

    code = "cross_site_request"

    def __init__(self, detail: str, reason: str) -> None:
        super().__init__(detail)
        self.reason = reason


def normalize(origin: str) -> str | None:
    """``scheme://host[:port]`` in canonical form (default port dropped, lower case), or None if it is not one."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname or parts.path not in ("", "/"):
        return None
    if parts.query or parts.fragment or parts.username is not None or parts.password is not None:
        return None
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"  # an IPv6 literal
    return f"{scheme}://{host}" if port is None or port == _DEFAULT_PORTS[scheme] else f"{scheme}://{host}:{port}"


def own_origin(scheme: str, host: str | None) -> str | None:
    """The origin a request was addressed to, from the connection's scheme and its ``Host``; None without one."""
    if not host or not host.strip():
        return None
    return normalize(f"{scheme.lower()}://{host.strip()}")


def _last(value: str | None) -> str | None:
    if value is None:
        return None
    last = value.split(",")[-1].strip()
    return last or None


def request_origin(scheme: str, headers: Mapping[str, str], from_trusted_proxy: bool) -> str | None:
    """The request's own origin; ``X-Forwarded-Proto``/``-Host`` count only when the peer is a trusted proxy."""
    host = headers.get("host")
    if from_trusted_proxy:
        scheme = _last(headers.get("x-forwarded-proto")) or scheme
        host = _last(headers.get("x-forwarded-host")) or host
    return own_origin(scheme, host)


def _checked(origins: Iterable[str], key: str) -> frozenset[str]:
    found = set()
    for item in origins:
        canonical = normalize(item)
        if canonical is None:
            raise ValueError(f"{key}: {item!r} is not an origin (scheme://host[:port], http or https)")
        found.add(canonical)
    return frozenset(found)


@dataclass(frozen=True, slots=True)
class OriginPolicy:
    """The allowed origins for state-changing requests and the CORS allow-list, checked once, canonical."""

    allowed: frozenset[str] = frozenset()
    cors: frozenset[str] = frozenset()
    max_age: int = 600

    @classmethod
    def of(cls, allowed_origins: Iterable[str], cors_origins: Iterable[str], max_age: int) -> OriginPolicy:
        cors = _checked(cors_origins, "security.cors_origins")
        return cls(_checked(allowed_origins, "security.allowed_origins") | cors, cors, max_age)

    def check(self, origin: str | None, fetch_site: str | None, own: str | None) -> None:
        """Refuse a state-changing request from another site (``CrossSiteRefused``); return if it may go on."""
        site = fetch_site.strip().lower() if fetch_site is not None else None
        canonical = normalize(origin) if origin is not None else None
        if site in ("same-origin", "none"):
            return
        if site is not None:
            if canonical is not None and canonical in self.allowed:
                return
            reason = "same_site" if site == "same-site" else "cross_site"
            raise CrossSiteRefused(f"a {site} browser request from origin {origin or '(none)'} may not change "
                                   "state here: its origin is not in security.allowed_origins", reason)
        if origin is None:
            return
        if canonical is not None and (canonical == own or canonical in self.allowed):
            return
        raise CrossSiteRefused(f"origin {origin} is neither this gateway's own ({own or 'unknown'}) nor in "
                               "security.allowed_origins", "origin_not_allowed")

    def cors_origin(self, origin: str | None) -> str | None:
        """The value for ``Access-Control-Allow-Origin``: the request's origin when it is on the CORS list, else
        None (no CORS headers at all). Never ``*`` and never an origin that is not listed."""
        if origin is None or not self.cors:
            return None
        canonical = normalize(origin)
        return canonical if canonical is not None and canonical in self.cors else None

    def cors_headers(self, origin: str | None) -> list[tuple[bytes, bytes]]:
        """Headers of an actual (non-preflight) response: allow headers for an allowed origin, and ``Vary``."""
        if not self.cors:
            return []
        allowed = self.cors_origin(origin)
        if allowed is None:
            return [(b"vary", b"origin")]
        return [(b"access-control-allow-origin", allowed.encode()),
                (b"access-control-allow-credentials", b"true"),
                (b"access-control-expose-headers", CORS_EXPOSE.encode()),
                (b"vary", b"origin")]

    def preflight_headers(self, origin: str | None) -> list[tuple[bytes, bytes]] | None:
        """The headers of a 204 preflight answer for an allowed origin; None for any other."""
        allowed = self.cors_origin(origin)
        if allowed is None:
            return None
        return [(b"access-control-allow-origin", allowed.encode()),
                (b"access-control-allow-credentials", b"true"),
                (b"access-control-allow-methods", CORS_METHODS.encode()),
                (b"access-control-allow-headers", CORS_HEADERS.encode()),
                (b"access-control-max-age", str(self.max_age).encode()),
                (b"vary", b"origin, access-control-request-method, access-control-request-headers")]
