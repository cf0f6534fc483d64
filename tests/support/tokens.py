"""Tokens PyJWT refuses to make: an attacker's HS256 signature with a public key's text as the secret."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256_by_hand(claims: dict[str, Any], secret: bytes) -> str:
    """An HS256 JWT signed with ``secret`` whatever it is (PyJWT refuses PEM and JWK text as HMAC secrets)."""
    signing = f"{_b64(json.dumps({'alg': 'HS256', 'typ': 'JWT'}).encode())}.{_b64(json.dumps(claims).encode())}"
    return f"{signing}.{_b64(hmac.new(secret, signing.encode(), hashlib.sha256).digest())}"
