"""Who a request is and which hub topics it may read or publish: JWTs verified with PyJWT, Mercure's claims.

A token is a JWT whose ``mercure`` claim lists topic selectors (``{"mercure": {"subscribe": [...], "publish":
[...]}}``, as a Mercure hub reads them); its verified form is an ``Identity``. The rules:

- **Keys decide the algorithm family.** A shared secret verifies only HS256/384/512; a public key (PEM, or a JWK
  set) only RS*, PS*, ES* and EdDSA. ``none`` is never accepted, so a token cannot choose to be unsigned, and an
  RS-signed token can never be checked with a public key used as an HMAC secret (the HS/RS confusion).
  ``auth.algorithms`` narrows the list further. A JWK set picks its key by the token's ``kid`` (or its only key)
  and a key verifies only the one algorithm it is bound to.
- **Claims**: ``exp`` and ``nbf`` are checked when present, with ``leeway`` seconds of clock skew; ``aud`` and
  ``iss`` must match when configured, and a token naming an audience is refused when none is configured (RFC
  7519: a recipient that is not in ``aud`` must reject the token).
- **Topic selectors**: ``*`` matches every topic, a selector ending in ``*`` every topic that starts with what
  precedes it (``public.*``), any other selector only the topic of that exact name. Mercure's URI templates are
  not expanded: a selector with ``{`` in it is an exact name like any other.
- **A subscription is all or nothing**: every topic it names must be public or covered by the token, or the
  whole request is refused (403 ``insufficient_scope``, naming the uncovered topics) before anything is sent or
  replayed. A client never gets a stream that silently lacks some of what it asked for.

Errors follow RFC 6750: ``Unauthorized`` (401) without ``error`` when no token came, with
``error="invalid_token"`` when it did not verify; ``InsufficientScope`` (403) when it verified but does not cover
the request. This module does no I/O: key files are read by the caller (``gateway.config`` at start-up,
``gateway.web.auth`` when they change) and handed over as text.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import jwt
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from gateway.core.errors import InsufficientScope, Unauthorized

HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
PUBLIC_KEY_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384",
                                   "ES512", "EdDSA"})
ALGORITHMS = HMAC_ALGORITHMS | PUBLIC_KEY_ALGORITHMS
MIN_SECRET_BYTES = 32  # RFC 7518 3.2: an HS256 key must be at least as long as the hash output
_FILE_SUFFIXES = (".pem", ".json", ".jwks", ".key", ".pub")


def matches(selectors: Iterable[str], topic: str) -> bool:
    """Whether any of ``selectors`` covers ``topic`` (``*``, a ``prefix*``, or the exact name)."""
    for selector in selectors:
        if selector == topic or (selector.endswith("*") and topic.startswith(selector[:-1])):
            return True
    return False


@dataclass(frozen=True, slots=True)
class Identity:
    """A verified token: who (``sub``), every claim, and the topic selectors it may subscribe and publish to."""

    subject: str | None
    claims: Mapping[str, Any] = field(compare=False)
    subscribe: tuple[str, ...] = ()
    publish: tuple[str, ...] = ()

    @classmethod
    def from_claims(cls, claims: Mapping[str, Any]) -> Identity:
        """The identity of verified ``claims``; a malformed ``mercure`` claim makes the token invalid."""
        mercure = claims.get("mercure", {})
        if not isinstance(mercure, Mapping):
            raise _invalid("the mercure claim must be an object")
        subject = claims.get("sub")
        if subject is not None and not isinstance(subject, str):
            raise _invalid("the sub claim must be a string")
        return cls(subject, dict(claims), _selectors(mercure, "subscribe"), _selectors(mercure, "publish"))

    @property
    def expires(self) -> float | None:
        """The token's ``exp`` in seconds since the epoch, read as PyJWT read it to verify the token (``int()``
        of a number or a numeric string); None without one."""
        exp = self.claims.get("exp")
        try:
            return None if exp is None else float(int(exp))
        except (TypeError, ValueError, OverflowError):
            return None  # never verified as it is (a hand-made Identity): it sets no deadline

    def may_subscribe(self, topic: str) -> bool:
        return matches(self.subscribe, topic)

    def may_publish(self, topic: str) -> bool:
        return matches(self.publish, topic)


def _selectors(mercure: Mapping[str, Any], name: str) -> tuple[str, ...]:
    value = mercure.get(name, [])
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise _invalid(f"mercure.{name} must be a list of topic selectors")
    return tuple(value)


def _invalid(description: str) -> Unauthorized:
    return Unauthorized(f"invalid token: {description}", error="invalid_token")


def _uncovered(identity: Identity | None, topics: Iterable[str], public: Iterable[str]) -> list[str]:
    public = tuple(public)
    return [t for t in topics if not matches(public, t) and (identity is None or not identity.may_subscribe(t))]


def needs_token(topics: Iterable[str], public: Iterable[str]) -> bool:
    """Whether reading ``topics`` needs a token: some of them are not public."""
    return bool(_uncovered(None, topics, public))


def check_subscribe(identity: Identity | None, topics: Iterable[str], public: Iterable[str]) -> None:
    """Refuse a subscription unless every topic is public or covered: 401 without a token, 403 with one."""
    uncovered = _uncovered(identity, topics, public)
    if not uncovered:
        return
    names = ", ".join(uncovered)
    if identity is None:
        raise Unauthorized(f"a token is required to read {names}")
    raise InsufficientScope(f"the token does not allow reading {names}")


def check_publish(identity: Identity, topic: str) -> None:
    if not identity.may_publish(topic):
        raise InsufficientScope(f"the token does not allow publishing to {topic}")


# -- tokens in requests -----------------------------------------------------------------------------------------


def request_token(authorization: str | None, cookie: str | None, cookie_name: str) -> str | None:
    """The bearer token of a request: the ``Authorization: Bearer`` header first, else the cookie. Never the
    query string (it ends up in logs, browser history and Referer headers)."""
    if authorization:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() == "bearer":
            if not value.strip():
                raise _invalid("the Bearer credentials are empty")
            return value.strip()
    if cookie and cookie_name:
        return parse_cookies(cookie).get(cookie_name) or None
    return None


def parse_cookies(cookie: str | None) -> dict[str, str]:
    """The ``Cookie`` header's name=value pairs (the first non-empty value of a repeated name; quotes removed)."""
    cookies: dict[str, str] = {}
    # HTTP/2 and HTTP/3 may send cookies as separate fields, which header joining puts together with ", ".
    for part in (cookie or "").replace(",", ";").split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name and not cookies.get(name):
            cookies[name] = value.strip('"')
    return cookies


# -- keys and verification --------------------------------------------------------------------------------------


def key_file(value: str) -> str | None:
    """The path ``auth.jwt_key`` names, or None when it is a shared secret (or empty).

    A value with a ``/`` or a key-file suffix is a path and must exist: a mistyped path is never taken as a
    (guessable) secret."""
    return value if "/" in value or value.endswith(_FILE_SUFFIXES) else None


@dataclass(frozen=True, slots=True)
class Keys:
    """The verification keys: one shared secret, one public key, or a JWK set of public keys."""

    kind: Literal["secret", "public", "jwks"]
    secret: bytes = b""
    public: PublicKeyTypes | None = None
    jwks: tuple[jwt.PyJWK, ...] = ()

    @classmethod
    def from_secret(cls, secret: str) -> Keys:
        data = secret.encode()
        if len(data) < MIN_SECRET_BYTES:
            raise ValueError(f"an HS secret must be at least {MIN_SECRET_BYTES} bytes (got {len(data)})")
        return cls("secret", secret=data)

    @classmethod
    def from_file_text(cls, text: str) -> Keys:
        """Keys from a file's contents: a PEM public key, or a JWK set (``{"keys": [...]}``) of public keys."""
        stripped = text.strip()
        if stripped.startswith("-----BEGIN"):
            try:
                return cls("public", public=load_pem_public_key(stripped.encode()))
            except (ValueError, TypeError) as exc:
                raise ValueError(f"not a PEM public key ({exc})") from None
        try:
            document = json.loads(stripped)
            key_set = jwt.PyJWKSet.from_dict(document) if isinstance(document, dict) else None
        except (ValueError, jwt.PyJWTError) as exc:
            raise ValueError(f"neither a PEM public key nor a JWK set ({exc})") from None
        if key_set is None:
            raise ValueError("a JWK set is a JSON object with a keys list")
        if any(k.key_type == "oct" for k in key_set.keys):
            raise ValueError("a JWK set may hold only public keys (RSA, EC, OKP), not shared secrets (oct)")
        return cls("jwks", jwks=tuple(key_set.keys))

    @property
    def family(self) -> frozenset[str]:
        return HMAC_ALGORITHMS if self.kind == "secret" else PUBLIC_KEY_ALGORITHMS

    def for_token(self, header: Mapping[str, Any]) -> Any:
        """The key that verifies a token with this header (``kid`` chooses within a JWK set)."""
        if self.kind == "secret":
            return self.secret
        if self.kind == "public":
            return self.public
        kid = header.get("kid")
        found = [k for k in self.jwks if k.key_id == kid] if kid is not None else list(self.jwks)
        if len(found) != 1:
            raise _invalid("no key for this kid" if kid is not None else "the token names no kid")
        return found[0]


@dataclass(frozen=True, slots=True)
class Verifier:
    """Verifies tokens against ``keys`` under the configured algorithms, audience, issuer and leeway."""

    keys: Keys
    algorithms: frozenset[str]
    audience: str = ""
    issuer: str = ""
    leeway: float = 0.0

    @classmethod
    def build(cls, keys: Keys, algorithms: Iterable[str], *, audience: str = "", issuer: str = "",
              leeway: float = 0.0) -> Verifier:
        allowed = frozenset(algorithms) & keys.family
        if not allowed:
            raise ValueError(f"none of the allowed algorithms suits a {keys.kind} key: allow some of "
                             f"{', '.join(sorted(keys.family))}")
        return cls(keys, allowed, audience, issuer, leeway)

    def verify(self, token: str) -> Identity:
        """The identity of a valid token; ``Unauthorized(error="invalid_token")`` says what is wrong otherwise."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _invalid("not a well-formed JWT") from None
        alg = header.get("alg")
        if alg not in self.algorithms:
            raise _invalid(f"algorithm {str(alg)[:16]!r} is not accepted")
        try:
            claims = jwt.decode(
                token, self.keys.for_token(header), algorithms=[alg], audience=self.audience or None,
                issuer=self.issuer or None, leeway=self.leeway,
                options={"enforce_minimum_key_length": True, "require": _required(self.audience, self.issuer)})
        except jwt.ExpiredSignatureError:
            raise _invalid("the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise _invalid("the token is not valid yet") from None
        except (jwt.InvalidAudienceError, jwt.InvalidIssuerError) as exc:
            raise _invalid(f"wrong {'audience' if isinstance(exc, jwt.InvalidAudienceError) else 'issuer'}") from None
        except jwt.MissingRequiredClaimError as exc:
            raise _invalid(f"the {exc.claim} claim is missing") from None
        except (jwt.PyJWTError, ValueError, TypeError):
            raise _invalid("the signature does not verify") from None
        return Identity.from_claims(claims)


def _required(audience: str, issuer: str) -> list[str]:
    return [name for name, wanted in (("aud", audience), ("iss", issuer)) if wanted]
