"""The request side of authorization: which key verifies tokens now, and who a request is.

``gateway.core.auth`` decides (verification, selectors, RFC 6750 errors) without I/O; this module reads what it
needs: the request's ``Authorization`` and ``Cookie`` headers, and the key file named by ``auth.jwt_key``, which is
looked at (one ``stat``) at most once a second and re-read when it changed, so a rotated JWK set or public key is
in force within about a second without a restart. A file that cannot be read or parsed (a rotation caught
half-written) leaves the previous keys in force, with a warning, until it changes again.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path

from gateway.config import AuthSettings
from gateway.core.auth import Identity, Keys, Verifier, check_subscribe, key_file, needs_token, request_token
from gateway.core.errors import InsufficientScope, Unauthorized
from gateway.web.asgi_util import StreamRequest

log = logging.getLogger("gateway.auth")

RECHECK_SECONDS = 1.0  # how stale the key file may be; one stat per second costs nothing
AuthorizeHook = Callable[[Identity | None, StreamRequest], bool | Awaitable[bool]]

_Stamp = tuple[int, int, int]


def _stamp(path: str) -> _Stamp | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


class Authenticator:
    """Verifies the tokens of requests with the configured key, following changes of its file."""

    def __init__(self, settings: AuthSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self._settings = settings
        self._clock = clock
        self._path = key_file(settings.jwt_key) if settings.jwt_key else None
        self._checked = clock()
        self._stamp = _stamp(self._path) if self._path else None
        self._verifier: Verifier | None = None
        if self._path is not None:
            self._verifier = self._build(Keys.from_file_text(Path(self._path).read_text(encoding="utf-8")))
        elif settings.jwt_key:
            self._verifier = self._build(Keys.from_secret(settings.jwt_key))

    def _build(self, keys: Keys) -> Verifier:
        s = self._settings
        return Verifier.build(keys, s.algorithms, audience=s.audience, issuer=s.issuer, leeway=s.leeway)

    @property
    def verifier(self) -> Verifier | None:
        """The verifier in force; the key file is re-read here when it changed (checked once a second)."""
        if self._path is not None and self._clock() - self._checked >= RECHECK_SECONDS:
            self._checked = self._clock()
            stamp = _stamp(self._path)
            if stamp is not None and stamp != self._stamp:
                self._stamp = stamp
                self._reload(self._path)
        return self._verifier

    def _reload(self, path: str) -> None:
        try:
            self._verifier = self._build(Keys.from_file_text(Path(path).read_text(encoding="utf-8")))
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            log.warning("auth.jwt_key %s changed but cannot be used (%s): the previous keys stay in force",
                        path, exc)
            return
        log.info("auth.jwt_key %s re-read: new keys in force", path)

    def identify(self, headers: Mapping[str, str]) -> Identity | None:
        """The verified identity of a request, None when it carries no token; 401 for a token that fails."""
        token = request_token(headers.get("authorization"), headers.get("cookie"), self._settings.cookie)
        if token is None:
            return None
        verifier = self.verifier
        if verifier is None:
            raise Unauthorized("this gateway verifies no tokens (auth.jwt_key is not set)", error="invalid_token")
        return verifier.verify(token)

    def valid_for(self, identity: Identity | None) -> float | None:
        """Seconds from now until ``identity``'s token stops verifying (its ``exp`` plus ``auth.leeway``, as the
        verifier judges it), None when it never does (no token, no ``exp``). A stream it authorized ends then:
        ending at ``exp`` itself would let the same token reconnect within the leeway, onto a stream that would
        end at once, again and again."""
        expires = identity.expires if identity is not None else None
        return None if expires is None else expires + self._settings.leeway - time.time()

    def authorize_subscribe(self, headers: Mapping[str, str], topics: Iterable[str],
                            public: Iterable[str]) -> Identity | None:
        """Refuse (401/403) unless every topic is public or covered by the request's token. A subscription to
        public topics only is served without looking at any token."""
        topics, public = tuple(topics), tuple(public)
        if not needs_token(topics, public):
            return None
        identity = self.identify(headers)
        check_subscribe(identity, topics, public)
        return identity


async def run_hook(hook: AuthorizeHook, identity: Identity | None, request: StreamRequest) -> None:
    """Apply an application's ``authorize`` hook: False refuses, 401 without a token and 403 with one."""
    allowed = hook(identity, request)
    if not isinstance(allowed, bool):
        allowed = await allowed
    if allowed:
        return
    if identity is None:
        raise Unauthorized(f"a token is required for {request.path}")
    raise InsufficientScope(f"the token does not allow {request.path}")


__all__ = ["Authenticator", "AuthorizeHook", "run_hook"]
