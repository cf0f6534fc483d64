"""The gateway's exception tree; errors carry the data the HTTP boundary needs.

    GatewayError                  status 500, the root: anything the gateway refuses on purpose
    ├── BadRequest                400  malformed JSON, NaN/Infinity, nesting too deep, bad query value
    ├── Unauthorized              401  missing or invalid bearer token (carries the RFC 6750 ``error``)
    ├── Forbidden                 403  the action is switched off by configuration, or refused by the app
    │   └── InsufficientScope     403  a valid token that does not cover the topic or route
    ├── NotFound                  404  no route
    ├── MethodNotAllowed          405  route exists, method does not (carries ``allowed``)
    ├── RequestTimeout            408  the request body did not arrive within its deadline
    ├── PayloadTooLarge           413  body over the configured limit
    ├── UnsupportedMediaType      415  not JSON, or a compressed request body
    ├── ValidationFailed          422  JSON is fine but a field is missing or wrong (carries ``field``)
    ├── TooManyRequests           429  a per-client limit (carries ``retry_after``)
    └── Unavailable               503  cannot accept now: queue full, draining (carries ``retry_after``)
    SettingsError                 a configuration value is invalid (names the key, the value, what is allowed)

The web layer turns a ``GatewayError`` into ``{"error": code, "detail": text}`` with its status; nothing else
needs to know about HTTP.
"""

from __future__ import annotations

from typing import Any, ClassVar


class GatewayError(Exception):
    """A refusal with an HTTP status, a stable machine-readable code and a human-readable detail."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def body(self) -> dict[str, Any]:
        """The JSON body every error response carries."""
        return {"error": self.code, "detail": self.detail}

    def headers(self) -> dict[str, str]:
        """Extra response headers (``Allow``, ``Retry-After``...)."""
        return {}


class BadRequest(GatewayError):
    status = 400
    code = "bad_request"


def _challenge(error: str | None, description: str) -> str:
    """An RFC 6750 ``WWW-Authenticate`` value; the description keeps only the characters the RFC allows."""
    if error is None:
        return 'Bearer realm="gateway"'
    text = "".join(ch for ch in description if 32 <= ord(ch) <= 126 and ch not in '"\\')[:200]
    return f'Bearer realm="gateway", error="{error}", error_description="{text}"'


class Unauthorized(GatewayError):
    """No token (``error`` None: the client should authenticate), or one that is not valid (``invalid_token``)."""

    status = 401
    code = "unauthorized"

    def __init__(self, detail: str, error: str | None = None) -> None:
        super().__init__(detail)
        self.error = error

    def body(self) -> dict[str, Any]:
        body = super().body()
        if self.error is not None:
            body["error"] = self.error
        return body

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": _challenge(self.error, self.detail)}


class Forbidden(GatewayError):
    status = 403
    code = "forbidden"


class InsufficientScope(Forbidden):
    """A valid token that does not cover the request (RFC 6750 ``insufficient_scope``)."""

    code = "insufficient_scope"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": _challenge(self.code, self.detail)}


class NotFound(GatewayError):
    status = 404
    code = "not_found"


class MethodNotAllowed(GatewayError):
    status = 405
    code = "method_not_allowed"

    def __init__(self, detail: str, allowed: tuple[str, ...]) -> None:
        super().__init__(detail)
        self.allowed = allowed

    def headers(self) -> dict[str, str]:
        return {"Allow": ", ".join(self.allowed)}


class RequestTimeout(GatewayError):
    status = 408
    code = "request_timeout"


class PayloadTooLarge(GatewayError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(GatewayError):
    status = 415
    code = "unsupported_media_type"


class ValidationFailed(GatewayError):
    status = 422
    code = "validation_failed"

    def __init__(self, detail: str, field: str | None = None, errors: list[dict[str, Any]] | None = None):
        super().__init__(detail)
        self.field = field
        self.errors = errors or []

    def body(self) -> dict[str, Any]:
        body = super().body()
        if self.field is not None:
            body["field"] = self.field
        if self.errors:
            body["errors"] = self.errors
        return body


class _RetryLater(GatewayError):
    def __init__(self, detail: str, retry_after: int = 1) -> None:
        super().__init__(detail)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class TooManyRequests(_RetryLater):
    status = 429
    code = "too_many_requests"


class Unavailable(_RetryLater):
    status = 503
    code = "unavailable"


def _secret(key: str, value: object) -> bool:
    """Settings whose value is a secret: the publish token, and ``auth.jwt_key`` unless it names a key file."""
    if key == "hub.publish_token":
        return True
    return key == "auth.jwt_key" and "/" not in str(value)


class SettingsError(ValueError):
    """An invalid configuration value; ``str()`` is the one line the CLI prints before exiting with 2."""

    def __init__(self, key: str, value: object, allowed: str, source: str = "") -> None:
        where = f" (from {source})" if source else ""
        shown = "'***'" if _secret(key, value) else repr(value)  # the line is printed and logged
        super().__init__(f"invalid setting {key}={shown}{where}: {allowed}")
        self.key = key
        self.value = value
        self.allowed = allowed
        self.source = source
