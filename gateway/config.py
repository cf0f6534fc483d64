"""Typed settings: defaults < ``config/*.toml`` < ``GATEWAY_*`` environment < command-line flags.

Every setting is declared once, in the dataclasses below, with its unit, its default, a check and a help text;
the loader, the environment mapping (``[sse] heartbeat`` <-> ``GATEWAY_SSE_HEARTBEAT``), ``gateway check`` and
the tests that keep ``config/gateway.toml`` and the README complete all read that one declaration. A bad value is
reported as one ``SettingsError`` line naming the key, the value, where it came from and what is allowed; so is a
``GATEWAY_*`` environment variable that names no setting (with the nearest one), unless it is one of the few the
gateway's tools use for something else (``ENV_NOT_SETTINGS``).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import tomllib
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.bus import is_shared
from gateway.core.encoders import ENCODERS, CodecSettings
from gateway.core.errors import SettingsError
from gateway.core.slowclient import GRACE, MAX_BYTES, MAX_EVENTS, PolicyError, Rule, TopicRule, ViewRule

SECONDS = 1.0
MILLISECONDS = 1
KIB = 1024

Check = Callable[[Any], str | None]  # returns what is allowed when the value is not


def _between(low: float, high: float, unit: str = "") -> Check:
    def check(value: Any) -> str | None:
        return None if low <= value <= high else f"must be from {low:g} to {high:g}{unit}"

    return check


def _address(optional: bool) -> Check:
    def check(value: Any) -> str | None:
        if optional and value == "":
            return None
        host, sep, port = str(value).rpartition(":")
        if sep and host and port.isdigit() and 0 <= int(port) <= 65535:
            return None
        return "must be HOST:PORT (port 0-65535)" + (', or "" to disable' if optional else "")

    return check


def _one_of(*allowed: str) -> Check:
    def check(value: Any) -> str | None:
        return None if value in allowed else f"must be one of {', '.join(allowed)}"

    return check


def _encodings(value: Any) -> str | None:
    unknown = [v for v in value if v not in ENCODERS]
    if unknown or not value:
        return f"must be a non-empty list drawn from {', '.join(sorted(ENCODERS))}"
    return None


def _bus_url(value: Any) -> str | None:
    if not is_shared(str(value)):
        return None
    from gateway.bus.redis_layout import parse_url  # no I/O: only the URL's shape is checked here

    try:
        parse_url(str(value))
    except ValueError as exc:
        return f"{exc} (memory:// is the embedded single-process bus)"
    return None


def _module_attr(value: Any) -> str | None:
    module, sep, attr = str(value).partition(":")
    return None if sep and module and attr else "must be MODULE:ATTRIBUTE, e.g. gateway.demo:app"


def _field(default: Any, help: str, check: Check | None = None) -> Any:
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, "check": check})
    return field(default=default, metadata={"help": help, "check": check})


@dataclass(frozen=True)
class ServerSettings:
    bind: str = _field("127.0.0.1:8000", "plain listener: HTTP/1.1 and h2c", _address(True))
    tls_bind: str = _field("127.0.0.1:8443", "TLS listener: HTTP/1.1 and h2 (needs certfile/keyfile)", _address(True))
    quic_bind: str = _field("127.0.0.1:8443", "UDP listener for HTTP/3 (needs certfile/keyfile)", _address(True))
    certfile: str = _field("", "PEM certificate for TLS and QUIC; empty serves plain HTTP only")
    keyfile: str = _field("", "PEM private key of certfile")
    app: str = _field("gateway.demo:app", "the Gateway to serve, as MODULE:ATTRIBUTE", _module_attr)
    drain_timeout: float = _field(30 * SECONDS, "seconds a SIGTERM drain may take: open streams are closed spread "
                                  "over its first half, accepted commands finish within it", _between(0, 3600, " s"))
    log_level: str = _field("info", "logging level", _one_of("debug", "info", "warning", "error"))
    log_format: str = _field("text", "log line format: text (for people), or json (one JSON object a line, for a "
                             "log collector; access lines carry their fields)", _one_of("text", "json"))
    access_log: bool = _field(False, "log every request, every command when its handler finishes and every "
                              "stream when it closes (one line each)")
    loop: str = _field("asyncio", "event loop: asyncio, or uvloop (pip install 'gateway[uvloop]')",
                       _one_of("asyncio", "uvloop"))
    gc_freeze: bool = _field(True, "freeze established objects out of the cyclic garbage collector's scans, and "
                             "sweep once many streams have closed: without it a full collection stalls every "
                             "stream (~1 s at 10,000 streams)")
    keep_alive_timeout: float = _field(75 * SECONDS, "seconds a TCP connection (HTTP/1.1 or h2) may sit with no "
                                       "request in flight before it is closed; keep it above the idle timeout "
                                       "of the proxy's upstream keep-alive (nginx: 60 s)", _between(1, 3600, " s"))
    backlog: int = _field(4096, "listen backlog of each TCP listener: connections the kernel queues before "
                          "accepting; reconnect storms after a restart need more than the usual 100",
                          _between(16, 65_535))
    workers: int = _field(1, "processes serving the same listeners (needs a Redis bus: the embedded one cannot "
                          "reach across processes); a worker that dies is restarted", _between(1, 256))
    accept_unverified_server: bool = _field(False, "start even when hypercorn, h11, h2 or aioquic is not the version "
                                            "the gateway's Hypercorn corrections were verified on: each such package "
                                            "is logged as a warning, the corrections relying on its internals and "
                                            "direct writes are switched off")
    post_lane: bool = _field(True, "serve a plain HTTP/1.1 command or hub publish POST (one whole request in one "
                             "read, a Content-Length body) from its connection's read loop, without Hypercorn's "
                             "per-request task and h11 events: the same app, checks and answers, at a fraction of "
                             "the CPU; false sends every request through Hypercorn")
    server_names: list[str] = _field([], "Host header values served, with the port when it is not the "  # noqa: RUF009
                                      "scheme's default (e.g. example.com, example.com:8443); any other Host gets "
                                      "404 from Hypercorn; empty serves any Host")


@dataclass(frozen=True)
class SSESettings:
    heartbeat: float = _field(15 * SECONDS, "seconds between heartbeat comments; stays under HTTP/3's 60 s idle "
                              "timeout and every proxy's read timeout", _between(1, 55, " s"))
    retry: int = _field(2000 * MILLISECONDS, "reconnect delay sent to clients (retry:), milliseconds",
                        _between(0, 600_000, " ms"))
    write_timeout: float = _field(30 * SECONDS, "seconds a write may take before the stream is closed",
                                  _between(1, 3600, " s"))
    slow_client_grace: float = _field(10 * SECONDS, "seconds a stream may keep undelivered events queued before it "
                                      "is cut off as too slow", _between(*GRACE, " s"))
    max_lifetime: float = _field(0 * SECONDS, "seconds after which a stream is ended with a reconnect hint (+-10% "
                                 "jitter, spreads reconnects and rebalances); 0 keeps streams forever",
                                 _between(0, 7 * 86_400, " s"))
    batch_window: float = _field(0.001 * SECONDS, "seconds fan-out gathers events under a burst: a round of writes "
                                 "that would follow the previous one by less than this (or than the previous "
                                 "round took, whichever is longer; at most 0.02) waits, so its events leave in "
                                 "fewer, larger writes. A lone event is never held; 0 keeps only the round's own "
                                 "duration", _between(0, 0.02, " s"))
    direct_writes: bool = _field(True, "fan-out writes events straight to the socket of idle HTTP/1.1 streams "
                                 "(no task wake-up; several events in one write); busy streams always use their own "
                                 "task")
    h2_direct_writes: bool = _field(True, "with direct_writes, fan-out also frames the events of idle HTTP/2 "
                                    "streams itself, within their flow-control windows, in one write per "
                                    "connection and round; false keeps h2 streams on their own task")
    h3_direct_writes: bool = _field(True, "with direct_writes, fan-out also frames the events of idle HTTP/3 "
                                    "streams itself into aioquic's stream buffers (below a high-water mark), "
                                    "flushed once per connection and round; false keeps h3 streams on their own "
                                    "task")
    view_slow_clients: list[ViewRule] = _field([], "ordered rules for views, the first whose path selector "  # noqa: RUF009
                                               "(the path as registered, /prefix* or *) matches applies, over the "
                                               "view's own slow_client=: any of grace (s, instead of "
                                               "slow_client_grace) and max_bytes (bytes behind, the pending render "
                                               "and the socket's buffer, past which a client is cut off; no cap by "
                                               "default); [[sse.view_slow_clients]] tables in a file, a JSON array "
                                               "in the environment")


@dataclass(frozen=True)
class CommandSettings:
    max_body: int = _field(64 * KIB, "largest command body, bytes", _between(2, 64 * 1024 * KIB, " bytes"))
    max_depth: int = _field(32, "deepest JSON nesting accepted in a body", _between(1, 512))
    workers: int = _field(4, "concurrent command handlers per process", _between(1, 1024))
    queue_size: int = _field(10_000, "accepted commands waiting for a worker; beyond it 503",
                             _between(1, 10_000_000))
    idempotency_ttl: float = _field(300 * SECONDS, "seconds an Idempotency-Key is remembered",
                                    _between(0, 86_400, " s"))


@dataclass(frozen=True)
class BusSettings:
    url: str = _field("memory://", "bus backend: memory:// (one process) or redis://HOST:PORT/DB[?namespace=NAME], "
                      "rediss://, unix://, redis+sentinel://HOST:PORT[,HOST:PORT]/MASTER, redis+cluster://HOST:PORT[,HOST:PORT]",
                      _bus_url)
    history: int = _field(1000, "notifications kept per topic for resume", _between(1, 1_000_000))
    timeout: float = _field(2 * SECONDS, "seconds any one Redis call may take before Redis counts as unreachable",
                            _between(0.05, 60, " s"))
    lease: float = _field(30 * SECONDS, "seconds a running command's lease lasts (renewed every third of it); a "
                          "command whose process died is run by another process after this", _between(0.3, 3600, " s"))


def _cookie_name(value: Any) -> str | None:
    ok = value and all(33 <= ord(ch) <= 126 and ch not in '()<>@,;:\\"/[]?={}' for ch in value)
    return None if ok else "must be a cookie name (visible ASCII, no separators)"


def _selectors(value: Any) -> str | None:
    bad = [item for item in value if not (1 <= len(item) <= 256 and all(33 <= ord(ch) <= 126 for ch in item))]
    return f"must be topic selectors (1-256 visible ASCII characters); {bad[0]!r} is not one" if bad else None


def _jwt_key(value: Any) -> str | None:
    from gateway.core.auth import Keys, key_file

    if value == "":
        return None
    path = key_file(value)
    try:
        if path is None:
            Keys.from_secret(value)
        else:
            Keys.from_file_text(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        return f"the key file cannot be read ({exc.strerror})"
    except (ValueError, UnicodeDecodeError) as exc:
        return str(exc)
    return None


def _algorithms(value: Any) -> str | None:
    from gateway.core.auth import ALGORITHMS

    unknown = [v for v in value if v not in ALGORITHMS]
    if unknown or not value:
        return f"must be a non-empty list drawn from {', '.join(sorted(ALGORITHMS))} (never none)"
    return None


def _auth_algorithms_fit(auth: AuthSettings) -> str | None:
    from gateway.core.auth import HMAC_ALGORITHMS, PUBLIC_KEY_ALGORITHMS, key_file

    if not auth.jwt_key:
        return None
    family = PUBLIC_KEY_ALGORITHMS if key_file(auth.jwt_key) else HMAC_ALGORITHMS
    if family.isdisjoint(auth.algorithms):
        return f"none of them suits auth.jwt_key: allow some of {', '.join(sorted(family))}"
    return None


@dataclass(frozen=True)
class HubSettings:
    publish_token: str = _field("", "static bearer token for POST /hub/publish (any topic); tokens whose "
                                "mercure.publish claim covers the topic may publish too (auth.jwt_key); with "
                                "neither, publishing is refused (403)")
    public_topics: list[str] = _field([], "topic selectors anyone may read without a token: exact names, "  # noqa: RUF009
                                      "prefix* or *; every other topic needs a token (auth.jwt_key) whose "
                                      "mercure.subscribe claim covers it", _selectors)
    max_topics: int = _field(32, "topics one subscription may name", _between(1, 1024))
    max_buffered_events: int = _field(1000, "events queued for one slow hub subscriber before it is cut off",
                                      _between(*MAX_EVENTS))
    max_buffered_bytes: int = _field(4 * 1024 * KIB, "bytes queued for one slow hub subscriber",
                                     _between(*MAX_BYTES, " bytes"))
    overflow_policy: str = _field("disconnect", "when a hub subscriber's queue is full: disconnect (it resumes "
                                  "with Last-Event-ID) or drop-oldest (it gets a gap event)",
                                  _one_of("disconnect", "drop-oldest"))
    slow_clients: list[TopicRule] = _field([], "ordered rules for hub topics, the first whose topic selector "  # noqa: RUF009
                                           "(as in public_topics) matches applies: any of overflow, max_events, "
                                           "max_bytes and grace (s) instead of overflow_policy, "
                                           "max_buffered_events, max_buffered_bytes and sse.slow_client_grace; a "
                                           "subscription naming several topics takes the strictest of each "
                                           "(disconnect if any asks for it); [[hub.slow_clients]] tables in a "
                                           "file, a JSON array in the environment")


@dataclass(frozen=True)
class AuthSettings:
    jwt_key: str = _field("", "verifies JWTs (Mercure claims: mercure.subscribe / mercure.publish): an HS secret "
                          "of 32 bytes or more, or the path of a PEM public key or of a JWK set file (re-read "
                          "within a second of a change); empty accepts no token", _jwt_key)
    algorithms: list[str] = _field(["HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256",  # noqa: RUF009
                                    "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"],
                                   "JWT algorithms accepted, further limited by the key: a secret takes only HS*, "
                                   "a public key only the others", _algorithms)
    audience: str = _field("", "required aud claim; empty refuses tokens that name an audience")
    issuer: str = _field("", "required iss claim; empty does not check it")
    leeway: float = _field(5 * SECONDS, "seconds of clock skew allowed when checking exp and nbf",
                           _between(0, 300, " s"))
    cookie: str = _field("gateway_token", "cookie a browser's token is read from (EventSource cannot send "
                         "headers); Authorization: Bearer wins when both come", _cookie_name)


@dataclass(frozen=True)
class CompressionSettings:
    encodings: list[str] = _field(["br", "zstd", "gzip", "identity"],  # noqa: RUF009
                                  "content codings offered on streams, in server preference order", _encodings)
    brotli_quality: int = _field(4, "Brotli quality; 0-1 ignore the window, 4 is the measured sweet spot",
                                 _between(0, 11))
    brotli_lgwin: int = _field(16, "Brotli window, log2 bytes; must exceed one full render", _between(10, 24))
    gzip_level: int = _field(6, "gzip level", _between(1, 9))
    zstd_level: int = _field(3, "zstd level", _between(1, 22))
    zstd_window_log: int = _field(17, "zstd window, log2 bytes", _between(10, 27))
    memory_budget: int = _field(0, "bytes all live compressors may use together; past it new connections get "
                                "cheaper encoders; 0 takes memory_fraction of the host's memory (the cgroup "
                                "limit when one is set, else MemTotal)",
                                _between(0, 1024 * 1024 * 1024 * KIB, " bytes"))
    memory_fraction: float = _field(0.25, "share of the host's memory the budget takes when memory_budget is 0",
                                    _between(0.01, 0.9))
    client_share: float = _field(0.05, "share of the budget one client address may hold; past it that client's new "
                                 "streams get cheaper encoders (1 disables)", _between(0.001, 1))
    cohorts: bool = _field(True, "streams of a view that connect at the same version (and hub subscriptions to "
                           "the same topics from the same point) share one compressor: a render or event is "
                           "compressed once per cohort, not once per connection")
    max_brotli_lgwin: int = _field(22, "largest Brotli window the gateway grows to when renders outgrow the "
                                   "configured one", _between(10, 24))
    max_zstd_window_log: int = _field(23, "largest zstd window the gateway grows to", _between(10, 27))
    min_brotli_quality: int = _field(2, "lowest Brotli quality a budget downgrade may use (0-1 ignore the window)",
                                     _between(0, 11))

    def codec(self) -> CodecSettings:
        return CodecSettings(brotli_quality=self.brotli_quality, brotli_lgwin=self.brotli_lgwin,
                             gzip_level=self.gzip_level, zstd_level=self.zstd_level,
                             zstd_window_log=self.zstd_window_log)


def _addresses(value: Any) -> str | None:
    import ipaddress

    for item in value:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            return f"must be IP addresses or networks (CIDR); {item!r} is neither"
    return None


@dataclass(frozen=True)
class LimitSettings:
    max_streams: int = _field(50_000, "open streams per process; beyond it 503 with Retry-After",
                              _between(1, 10_000_000))
    max_streams_per_client: int = _field(1000, "open streams per client address, beyond it 429; 0 disables. Behind "
                                         "a proxy set trusted_proxies, or every client shares the proxy's address",
                                         _between(0, 10_000_000))
    trusted_proxies: list[str] = _field([], "addresses/networks whose X-Forwarded-For is believed for the client "  # noqa: RUF009
                                        "address (e.g. 127.0.0.1, 10.0.0.0/8)", _addresses)
    header_timeout: float = _field(10 * SECONDS, "seconds a connection may take to send a request head (from "
                                   "accept, or from the first byte of a later request): past it 408 and close "
                                   "(HTTP/1.1; a connection that sent nothing is closed silently)",
                                   _between(0.5, 600, " s"))
    body_timeout: float = _field(30 * SECONDS, "seconds a command or hub publish body may take in total, from its "
                                 "head: past it 408; bodies are at most commands.max_body, so this is a floor "
                                 "on the upload rate", _between(0.5, 3600, " s"))
    max_connections: int = _field(60_000, "open TCP connections per process; the excess is refused at once (503 "
                                  "and close on plain HTTP/1.1, close otherwise); 0 disables",
                                  _between(0, 10_000_000))
    max_connections_per_address: int = _field(1100, "open TCP connections per peer address (trusted_proxies are "
                                              "exempt: they carry many clients); above max_streams_per_client "
                                              "so streams get their 429 first; 0 disables",
                                              _between(0, 10_000_000))
    h2_max_resets: int = _field(200, "stream resets one HTTP/2 client connection may make within h2_reset_window; "
                                "past it the connection gets GOAWAY ENHANCE_YOUR_CALM and is closed (HTTP/2 Rapid "
                                "Reset); a browser closing EventSources resets a few per second at most",
                                _between(1, 1_000_000))
    h2_reset_window: float = _field(10 * SECONDS, "seconds over which h2_max_resets is counted (sliding window)",
                                    _between(0.1, 3600, " s"))
    abuse_strikes: int = _field(3, "connections from one address closed for abuse (an HTTP/2 client over "
                                "h2_max_resets: GOAWAY ENHANCE_YOUR_CALM) within abuse_cooldown that put the "
                                "address in a penalty box, where its new connections are refused at once; "
                                "trusted_proxies are exempt; 0 disables", _between(0, 1000))
    abuse_cooldown: float = _field(30 * SECONDS, "seconds the strikes are counted over, and an address stays in "
                                   "the penalty box", _between(1, 86_400, " s"))
    abuse_kernel_filter: bool = _field(True, "drop the connection attempts of addresses in the penalty box in the "
                                       "kernel (a socket filter on the listening sockets, Linux) instead of "
                                       "accepting and closing each one: a client that reconnects at once then "
                                       "costs the process nothing")
    quic_retry: str = _field("always", "HTTP/3 address validation: always answers a new client's first Initial with "
                             "a Retry and a token it must echo from the same address (one round trip more), so a "
                             "forged source address gets neither the ~3x amplified handshake nor any state; never "
                             "skips it", _one_of("always", "never"))
    max_quic_connections: int = _field(10_000, "open HTTP/3 (QUIC) connections per process; past it a new "
                                       "connection is refused with CONNECTION_REFUSED; 0 disables",
                                       _between(0, 10_000_000))


def _origins(value: Any) -> str | None:
    from gateway.core.origins import normalize

    bad = [item for item in value if normalize(item) is None]
    return f"must be origins, scheme://host[:port] with http or https; {bad[0]!r} is not one" if bad else None


@dataclass(frozen=True)
class SecuritySettings:
    allowed_origins: list[str] = _field([], "origins besides the gateway's own that may send commands and hub "  # noqa: RUF009
                                        "publishes from a browser (e.g. https://app.example.com); the own origin "
                                        "is the request's scheme and Host (X-Forwarded-Proto/-Host from "
                                        "trusted_proxies); cors_origins are allowed too", _origins)
    cors_origins: list[str] = _field([], "origins whose pages may read streams and send commands across origins "  # noqa: RUF009
                                     "(CORS, credentials allowed); never a wildcard", _origins)
    cors_max_age: int = _field(600, "seconds a browser may cache a CORS preflight answer", _between(0, 86_400, " s"))


@dataclass(frozen=True)
class RateLimitSettings:
    commands: float = _field(0.0, "commands per second per client address (token bucket refill); beyond it 429 "
                             "with Retry-After; 0 disables. Per process: under --workers each worker counts alone",
                             _between(0, 1_000_000, " /s"))
    commands_burst: int = _field(50, "commands one client may send at once before the rate applies",
                                 _between(1, 1_000_000))
    publishes: float = _field(0.0, "hub publishes per second per client address; 0 disables",
                              _between(0, 1_000_000, " /s"))
    publishes_burst: int = _field(200, "hub publishes one client may send at once", _between(1, 1_000_000))
    stream_opens: float = _field(0.0, "stream opens (views and hub) per second per client address, against "
                                 "reconnect storms; 0 disables", _between(0, 1_000_000, " /s"))
    stream_opens_burst: int = _field(100, "stream opens one client may make at once", _between(1, 1_000_000))
    max_clients: int = _field(100_000, "client addresses remembered per kind; past it the least recently seen are "
                              "forgotten (they start again with a full burst)", _between(1, 10_000_000))


@dataclass(frozen=True)
class MetricsSettings:
    enabled: bool = _field(True, "serve Prometheus metrics at /metrics")


@dataclass(frozen=True)
class TracingSettings:
    enabled: bool = _field(False, "OpenTelemetry traces of commands (POST, handler, publish, render, first "
                           "delivery: docs/observability.md); needs the otel extra, and costs nothing when off")
    sample_ratio: float = _field(1.0, "share of new traces sampled (a request's traceparent decides its own), with "
                                 "the tracer provider built for otlp_endpoint", _between(0, 1))
    otlp_endpoint: str = _field("", "OTLP/HTTP traces URL (e.g. http://127.0.0.1:4318/v1/traces; needs the otlp "
                                "extra); empty: spans go to the app's own OpenTelemetry tracer provider, if any")


@dataclass(frozen=True)
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    sse: SSESettings = field(default_factory=SSESettings)
    commands: CommandSettings = field(default_factory=CommandSettings)
    bus: BusSettings = field(default_factory=BusSettings)
    hub: HubSettings = field(default_factory=HubSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    compression: CompressionSettings = field(default_factory=CompressionSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    security: SecuritySettings = field(default_factory=SecuritySettings)
    rate_limits: RateLimitSettings = field(default_factory=RateLimitSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    tracing: TracingSettings = field(default_factory=TracingSettings)

    @classmethod
    def load(
        cls,
        config_file: str | Path | None = None,
        environ: Mapping[str, str] | None = None,
        overrides: Mapping[str, tuple[Any, str]] | None = None,
    ) -> Settings:
        """Merge every source in precedence order; raise ``SettingsError`` on the first bad value.

        ``overrides`` maps ``"section.key"`` to ``(value, source)``, where source names the flag for messages.
        """
        values: dict[str, tuple[Any, str]] = {}
        if config_file is not None:
            values.update(_from_toml(Path(config_file)))
        values.update(_from_env(os.environ if environ is None else environ))
        values.update(overrides or {})
        return cls.from_values(values)

    @classmethod
    def from_values(cls, values: Mapping[str, tuple[Any, str]]) -> Settings:
        sections: dict[str, dict[str, Any]] = {}
        known = {key for key, *_ in describe()}
        for key, (raw, source) in values.items():
            if key not in known:
                raise SettingsError(key, raw, "unknown setting; `gateway check` lists them all", source)
        for key, section, name, kind, _default, _help, check in _schema():
            if key in values:
                raw, source = values[key]
                value = _coerce(key, raw, kind, source)
                if check is not None and (allowed := check(value)) is not None:
                    raise SettingsError(key, raw, allowed, source)
                sections.setdefault(section, {})[name] = value
        built = {
            f.name: typing.get_type_hints(Settings)[f.name](**sections.get(f.name, {}))
            for f in dataclasses.fields(Settings)
        }
        settings = cls(**built)
        settings.compression.codec()  # cross-check codec ranges once
        if (problem := _auth_algorithms_fit(settings.auth)) is not None:
            raise SettingsError("auth.algorithms", settings.auth.algorithms, problem,
                                values.get("auth.algorithms", (None, ""))[1])
        if settings.server.workers > 1 and not is_shared(settings.bus.url):
            source = values.get("server.workers", (None, ""))[1]
            raise SettingsError("server.workers", settings.server.workers,
                                "more than one process needs a shared bus: set bus.url to a redis:// URL (the "
                                "memory:// bus lives inside one process, so commands and events would not reach "
                                "the others)", source)
        return settings

    def flat(self) -> dict[str, Any]:
        """``{"section.key": value}`` of the effective settings (for ``gateway check``)."""
        return {key: getattr(getattr(self, section), name) for key, section, name, *_ in _schema()}


def _schema() -> Iterator[tuple[str, str, str, type, Any, str, Check | None]]:
    hints = typing.get_type_hints(Settings)
    for section in dataclasses.fields(Settings):
        cls = hints[section.name]
        sub_hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            factory: Any = f.default_factory
            default = f.default if f.default is not dataclasses.MISSING else factory()
            yield (f"{section.name}.{f.name}", section.name, f.name, sub_hints[f.name], default,
                   f.metadata["help"], f.metadata["check"])


def describe() -> list[tuple[str, type, Any, str]]:
    """``(key, type, default, help)`` for every setting, in declaration order."""
    return [(key, kind, default, help) for key, _s, _n, kind, default, help, _c in _schema()]


def env_name(key: str) -> str:
    return "GATEWAY_" + key.replace(".", "_").upper()


# ``GATEWAY_*`` variables that are not settings, so ``Settings.load`` does not refuse them as misspelt ones:
ENV_NOT_SETTINGS = frozenset({
    "GATEWAY_CONFIG",  # the default of ``--config`` (cli.py)
    "GATEWAY_WORKER_INDEX",  # set by ``gateway serve --workers`` in each worker it spawns (supervisor.py)
    "GATEWAY_INTERFACE",  # CGI's own variable, set by any CGI host
})
ENV_PREFIXES_NOT_SETTINGS = (
    "GATEWAY_TEST_",  # the test suite's switches, inherited by every gateway it spawns (GATEWAY_TEST_STRICT in CI)
    "GATEWAY_LOAD_",  # the load generator's options (benchmarks/locustfile.py)
)


def _from_env(environ: Mapping[str, str]) -> dict[str, tuple[Any, str]]:
    names = {env_name(key): key for key, *_ in describe()}
    found = {}
    for name, value in environ.items():
        if not name.startswith("GATEWAY_") or name in ENV_NOT_SETTINGS or name.startswith(ENV_PREFIXES_NOT_SETTINGS):
            continue
        if name not in names:
            raise SettingsError(name, value, _unknown_env(name, list(names)), "the environment")
        found[names[name]] = (value, name)
    return found


def _unknown_env(name: str, known: list[str]) -> str:
    # Compared without the prefix every name shares, which would make any two names look alike.
    nearest = difflib.get_close_matches(name.removeprefix("GATEWAY_"), [k.removeprefix("GATEWAY_") for k in known], n=1)
    hint = f"did you mean GATEWAY_{nearest[0]}?" if nearest else "`gateway config` lists every setting"
    return f"not a gateway setting; {hint}"


def _from_toml(path: Path) -> dict[str, tuple[Any, str]]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SettingsError("--config", str(path), "the file does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SettingsError("--config", str(path), f"not valid TOML ({exc})") from None
    found: dict[str, tuple[Any, str]] = {}
    for section, table in data.items():
        if not isinstance(table, dict):
            raise SettingsError(section, table, "top-level keys must be [sections]", str(path))
        for name, value in table.items():
            found[f"{section}.{name}"] = (value, str(path))
    return found


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _coerce(key: str, raw: Any, kind: type, source: str) -> Any:
    """Turn a TOML value or an environment string into the declared type, strictly."""
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.strip().lower() in _TRUE | _FALSE:
            return raw.strip().lower() in _TRUE
        raise SettingsError(key, raw, "must be true or false", source)
    if kind is int:
        if isinstance(raw, int) and not isinstance(raw, bool):
            return raw
        if isinstance(raw, str):
            try:
                return int(raw.strip().replace("_", ""))
            except ValueError:
                pass
        raise SettingsError(key, raw, "must be an integer", source)
    if kind is float:
        if isinstance(raw, (int, float)) and not isinstance(raw, bool):
            return float(raw)
        if isinstance(raw, str):
            try:
                value = float(raw.strip())
            except ValueError:
                pass
            else:
                if value == value and value not in (float("inf"), float("-inf")):
                    return value
        raise SettingsError(key, raw, "must be a number", source)
    if kind is str:
        if isinstance(raw, str):
            return raw
        raise SettingsError(key, raw, "must be a string", source)
    if typing.get_origin(kind) is list and issubclass(item := typing.get_args(kind)[0], Rule):
        return _rules(key, raw, item, source)
    if typing.get_origin(kind) is list:
        if isinstance(raw, str):
            return [part.strip() for part in raw.split(",") if part.strip()]
        if isinstance(raw, list) and all(isinstance(v, str) for v in raw):
            return list(raw)
        raise SettingsError(key, raw, "must be a list of strings (comma-separated in the environment)", source)
    raise TypeError(f"unsupported setting type {kind!r} for {key}")  # pragma: no cover


def _rules(key: str, raw: Any, rule: type[Rule], source: str) -> list[Rule]:
    """An ordered rule list: TOML tables from a file, a JSON array of objects from the environment (the
    environment has no syntax of its own for a list of tables). A bad field is named by its place in the list."""
    example = f'[{{"{rule.SELECTOR}": ..., "{rule.FIELDS[0]}": ...}}]'
    if isinstance(raw, str):
        try:
            raw = json.loads(raw) if raw.strip() else []
        except ValueError as exc:
            raise SettingsError(key, raw, f"must be a JSON array of objects, e.g. {example} ({exc})", source) from None
    if not isinstance(raw, list) or not all(isinstance(table, dict) for table in raw):
        raise SettingsError(key, raw, f"must be an array of tables ([[{key}]] in a file; in the environment a JSON "
                            f"array of objects, e.g. {example})", source)
    rules = []
    for index, table in enumerate(raw):
        try:
            rules.append(rule.from_table(table))
        except PolicyError as exc:
            raise SettingsError(f"{key}[{index}].{exc.field}", exc.value, exc.allowed, source) from None
    return rules


def _shown(value: Any, *, toml: bool) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ", ".join(_shown(v, toml=toml) for v in value) + "]" if toml else ", ".join(value)
    if isinstance(value, str):
        return f'"{value}"' if toml or not value else value
    return repr(value)


def defaults_toml() -> str:
    """``config/gateway.toml``: every setting with its default and help, generated from the declaration."""
    lines = [
        "# Every gateway setting with its default. Precedence: defaults < this file (--config) < GATEWAY_*",
        "# environment variables < command-line flags. `gateway check --config config/gateway.toml` validates it.",
        "# Generated by `gateway config --toml`; units (s, ms, bytes) are named in each comment.",
    ]
    section = ""
    for key, _kind, default, help in describe():
        head, name = key.split(".")
        if head != section:
            lines += ["", f"[{head}]"]
            section = head
        lines.append(f"# {help}. Environment: {env_name(key)}")
        lines.append(f"{name} = {_shown(default, toml=True)}")
    return "\n".join(lines) + "\n"


def defaults_markdown() -> str:
    """The README's settings table, generated from the declaration."""
    rows = ["| setting | environment | default | what it does |", "|---|---|---|---|"]
    for key, _kind, default, help in describe():
        rows.append(f"| `{key}` | `{env_name(key)}` | `{_shown(default, toml=False)}` | {help.replace('|', '/')} |")
    return "\n".join(rows) + "\n"
