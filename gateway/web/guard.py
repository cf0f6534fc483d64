"""The trust boundary at the door: cross-site refusals, CORS and per-client rate limits, applied to ASGI scopes.

The decisions are the sans-IO ``gateway.core.origins.OriginPolicy`` and ``gateway.core.ratelimit.TokenBuckets``;
this module reads them off a scope, counts refusals in metrics and answers CORS preflights. Rate limits are per
process: under ``--workers`` every worker keeps its own buckets.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from gateway.config import RateLimitSettings, Settings
from gateway.core.clientaddr import Network, client_address, is_trusted_proxy
from gateway.core.errors import Forbidden, TooManyRequests
from gateway.core.origins import CrossSiteRefused, OriginPolicy, request_origin
from gateway.core.ratelimit import TokenBuckets
from gateway.metrics import Metrics
from gateway.web.asgi_util import Headers, Scope, Send, send_error

KINDS = ("command", "publish", "stream")


def _buckets(limits: RateLimitSettings) -> dict[str, TokenBuckets]:
    configured = {"command": (limits.commands, limits.commands_burst),
                  "publish": (limits.publishes, limits.publishes_burst),
                  "stream": (limits.stream_opens, limits.stream_opens_burst)}
    return {kind: TokenBuckets(rate, burst, time.monotonic, limits.max_clients)
            for kind, (rate, burst) in configured.items() if rate > 0}


class Guard:
    """Cross-site protection, CORS and rate limits of one gateway process."""

    def __init__(self, settings: Settings, metrics: Metrics, trusted: tuple[Network, ...]) -> None:
        security = settings.security
        self.policy = OriginPolicy.of(security.allowed_origins, security.cors_origins, security.cors_max_age)
        self.metrics = metrics
        self.trusted = trusted
        self.buckets = _buckets(settings.rate_limits)

    def client(self, peer: str | None, headers: Mapping[str, str]) -> str:
        return client_address(peer, headers.get("x-forwarded-for"), self.trusted)

    def check_post(self, kind: str, peer: str | None, scheme: str, headers: Mapping[str, str]) -> None:
        """A command or publish from ``peer`` (the connection's address) over ``scheme``: refuse a cross-site
        browser request (403), then a client over its rate (429)."""
        origin, site = headers.get("origin"), headers.get("sec-fetch-site")
        if origin is not None or site is not None:  # (neither: not a browser's request, nothing to refuse)
            own = request_origin(scheme, headers, is_trusted_proxy(peer, self.trusted))
            try:
                self.policy.check(origin, site, own)
            except CrossSiteRefused as exc:
                self.metrics.cross_site_refused.labels(kind, exc.reason).inc()
                raise
        self.take(kind, self.client(peer, headers))

    def take(self, kind: str, client: str) -> None:
        """One request of ``kind`` by ``client``, or ``TooManyRequests`` with the seconds until the next token."""
        buckets = self.buckets.get(kind)
        if buckets is None:
            return
        wait = buckets.take(client)
        if wait > 0:
            self.metrics.rate_limited.labels(kind).inc()
            raise TooManyRequests(f"{client} is over the {kind} rate limit ({buckets.rate:g}/s, burst "
                                  f"{buckets.burst}); retry in {wait:.2f} s", buckets.retry_after(wait))

    def cors_headers(self, headers: Mapping[str, str]) -> list[tuple[bytes, bytes]]:
        return self.policy.cors_headers(headers.get("origin"))

    def cors_of(self, scope: Scope) -> Headers:
        """``cors_headers`` read straight off the scope's raw headers (its refusals need them before, or without,
        the parsed ``StreamRequest``); nothing to read when no CORS list is configured."""
        if not self.policy.cors:
            return ()
        origins = [value.decode("latin-1") for name, value in scope.get("headers", ()) if name.lower() == b"origin"]
        return self.policy.cors_headers(", ".join(origins) if origins else None)  # two Origins: neither is listed

    async def serve_preflight(self, headers: Mapping[str, str], send: Send) -> None:
        """Answer a CORS preflight: 204 with the allow headers for a listed origin, 403 without them otherwise."""
        allowed = self.policy.preflight_headers(headers.get("origin"))
        if allowed is None:
            await send_error(send, Forbidden(f"origin {headers.get('origin') or '(none)'} is not in "
                                             "security.cors_origins"), {"Vary": "Origin"})
            return
        await send({"type": "http.response.start", "status": 204, "headers": allowed})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
