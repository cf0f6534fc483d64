"""The token verifier, topic selectors and the subscribe/publish decisions of ``gateway.core.auth``, in process;
the key file's reloading by ``gateway.web.auth.Authenticator`` with an injected clock."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.config import AuthSettings, Settings
from gateway.core.auth import (
    Identity,
    Keys,
    Verifier,
    check_publish,
    check_subscribe,
    key_file,
    matches,
    request_token,
)
from gateway.core.errors import InsufficientScope, SettingsError, Unauthorized
from gateway.web.auth import Authenticator
from tests.support.tokens import hs256_by_hand

pytestmark = pytest.mark.unit

SECRET = "s" * 40
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def _pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def _jwks(*pairs: tuple[str, Any]) -> str:
    keys = []
    for kid, key in pairs:
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
        keys.append({**jwk, "kid": kid, "alg": "RS256", "use": "sig"})
    return json.dumps({"keys": keys})


def _claims(**extra: Any) -> dict[str, Any]:
    return {"sub": "ann", "exp": int(time.time()) + 60, "mercure": {"subscribe": ["news"], "publish": []}, **extra}


def hs_verifier(**kw: Any) -> Verifier:
    return Verifier.build(Keys.from_secret(SECRET), ["HS256", "RS256"], **kw)


@pytest.mark.parametrize(("selectors", "topic", "expected"), [
    (["*"], "anything", True),
    (["news"], "news", True),
    (["news"], "news2", False),
    (["public.*"], "public.prices", True),
    (["public.*"], "public", False),
    (["private/{id}"], "private/1", False),  # no URI templates: an exact name like any other
    ([], "news", False),
])
def test_selectors(selectors: list[str], topic: str, expected: bool) -> None:
    assert matches(selectors, topic) is expected


def test_a_valid_token_gives_its_identity() -> None:
    identity = hs_verifier().verify(jwt.encode(_claims(), SECRET, algorithm="HS256"))
    assert identity.subject == "ann"
    assert identity.subscribe == ("news",)
    assert identity.may_subscribe("news")
    assert not identity.may_subscribe("other")
    assert identity.claims["sub"] == "ann"


@pytest.mark.parametrize(("token", "description"), [
    (jwt.encode(_claims(exp=int(time.time()) - 60), SECRET, algorithm="HS256"), "expired"),
    (jwt.encode(_claims(nbf=int(time.time()) + 60), SECRET, algorithm="HS256"), "not valid yet"),
    (jwt.encode(_claims(), "t" * 40, algorithm="HS256"), "signature"),
    # An unsigned token takes the key None (PyJWT's NoneAlgorithm accepts it; encode's annotation leaves it out).
    (jwt.encode(_claims(), None, algorithm="none"), "algorithm 'none'"),  # type: ignore[arg-type]
    (jwt.encode(_claims(), RSA_KEY, algorithm="RS256"), "algorithm 'RS256'"),  # RS token, HS key
    (jwt.encode(_claims(aud="elsewhere"), SECRET, algorithm="HS256"), "audience"),
    (jwt.encode(_claims(mercure={"subscribe": "news"}), SECRET, algorithm="HS256"), "mercure.subscribe"),
    ("not.a.jwt", "well-formed"),
])
def test_bad_tokens_are_invalid(token: str, description: str) -> None:
    with pytest.raises(Unauthorized) as caught:
        hs_verifier().verify(token)
    assert caught.value.error == "invalid_token"
    assert description in caught.value.detail
    challenge = caught.value.headers()["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="gateway", error="invalid_token", error_description="')


def test_leeway_accepts_small_clock_skew() -> None:
    token = jwt.encode(_claims(exp=int(time.time()) - 2), SECRET, algorithm="HS256")
    assert hs_verifier(leeway=10).verify(token).subject == "ann"


def test_a_stream_may_live_until_exp_plus_the_leeway() -> None:
    """As long as the token verifies: ``exp`` read as PyJWT reads it, plus ``auth.leeway``."""
    exp = int(time.time()) + 60
    identity = hs_verifier(leeway=5).verify(jwt.encode(_claims(exp=exp), SECRET, algorithm="HS256"))
    assert identity.expires == exp
    auth = Authenticator(AuthSettings(jwt_key=SECRET, leeway=5))
    assert 64 < (auth.valid_for(identity) or 0) <= 65
    assert auth.valid_for(None) is None  # no token
    assert auth.valid_for(Identity("ann", {"sub": "ann"})) is None  # no exp: only sse.max_lifetime ends it
    assert Identity("ann", {"exp": "1767225600"}).expires == 1767225600  # PyJWT accepts a numeric string
    assert Identity("ann", {"exp": "soon"}).expires is None  # never verified as it is: no deadline


def test_audience_and_issuer_are_required_when_configured() -> None:
    verifier = hs_verifier(audience="gw", issuer="https://idp")
    good = jwt.encode(_claims(aud="gw", iss="https://idp"), SECRET, algorithm="HS256")
    assert verifier.verify(good).subject == "ann"
    for claims, wrong in ((_claims(iss="https://idp"), "aud claim is missing"),
                          (_claims(aud="gw", iss="https://other"), "wrong issuer")):
        with pytest.raises(Unauthorized, match=wrong):
            verifier.verify(jwt.encode(claims, SECRET, algorithm="HS256"))


def test_a_public_key_never_verifies_hs_tokens() -> None:
    """The HS/RS confusion: an HS256 token signed with the public key's PEM text as the secret."""
    pem = _pem(RSA_KEY)
    verifier = Verifier.build(Keys.from_file_text(pem), ["HS256", "RS256"])
    assert verifier.algorithms == {"RS256"}
    assert verifier.verify(jwt.encode(_claims(), RSA_KEY, algorithm="RS256")).subject == "ann"
    forged = hs256_by_hand(_claims(), pem.encode())
    with pytest.raises(Unauthorized, match="algorithm 'HS256'"):
        verifier.verify(forged)


def test_a_jwk_set_picks_the_key_by_kid() -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    verifier = Verifier.build(Keys.from_file_text(_jwks(("a", RSA_KEY), ("b", other))), ["RS256"])
    for kid, key in (("a", RSA_KEY), ("b", other)):
        token = jwt.encode(_claims(), key, algorithm="RS256", headers={"kid": kid})
        assert verifier.verify(token).subject == "ann"
    with pytest.raises(Unauthorized, match="no key for this kid"):
        verifier.verify(jwt.encode(_claims(), RSA_KEY, algorithm="RS256", headers={"kid": "gone"}))
    with pytest.raises(Unauthorized, match="signature"):
        verifier.verify(jwt.encode(_claims(), RSA_KEY, algorithm="RS256", headers={"kid": "b"}))


def test_ec_keys_verify_es_tokens_only() -> None:
    verifier = Verifier.build(Keys.from_file_text(_pem(EC_KEY)), ["ES256", "RS256"])
    assert verifier.verify(jwt.encode(_claims(), EC_KEY, algorithm="ES256")).subject == "ann"


@pytest.mark.parametrize(("text", "problem"), [
    ('{"keys": [{"kty": "oct", "k": "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"}]}', "only public keys"),
    ("-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----", "not a PEM public key"),
    ("hello", "neither"),
    ('{"keys": []}', "neither"),
])
def test_bad_key_files_are_refused(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        Keys.from_file_text(text)


def test_short_secrets_and_mistyped_paths_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        Keys.from_secret("short")
    assert key_file("keys/jwks.json") == "keys/jwks.json"
    assert key_file(SECRET) is None
    with pytest.raises(SettingsError, match="cannot be read"):
        Settings.load(environ={"GATEWAY_AUTH_JWT_KEY": str(tmp_path / "missing.pem")})
    with pytest.raises(SettingsError, match=r"auth\.algorithms"):
        Settings.load(environ={"GATEWAY_AUTH_JWT_KEY": SECRET, "GATEWAY_AUTH_ALGORITHMS": "RS256"})
    with pytest.raises(SettingsError, match="never none"):
        Settings.load(environ={"GATEWAY_AUTH_ALGORITHMS": "none"})


def test_tokens_come_from_the_header_or_the_cookie_only() -> None:
    assert request_token("Bearer abc", "gateway_token=def", "gateway_token") == "abc"
    assert request_token(None, "a=1; gateway_token=def", "gateway_token") == "def"
    assert request_token(None, "a=1, gateway_token=def", "gateway_token") == "def"  # h2 cookie fields joined
    assert request_token("Basic xyz", None, "gateway_token") is None
    assert request_token(None, "other=1", "gateway_token") is None
    with pytest.raises(Unauthorized):
        request_token("Bearer ", None, "gateway_token")


def test_subscriptions_are_all_or_nothing() -> None:
    ann = Identity("ann", {}, subscribe=("news",))
    check_subscribe(None, ["public.x"], ["public.*"])
    check_subscribe(ann, ["news", "public.x"], ["public.*"])
    with pytest.raises(Unauthorized) as caught:
        check_subscribe(None, ["news", "public.x"], ["public.*"])
    assert caught.value.error is None
    assert caught.value.headers() == {"WWW-Authenticate": 'Bearer realm="gateway"'}
    with pytest.raises(InsufficientScope) as scoped:
        check_subscribe(ann, ["news", "secret"], [])
    assert scoped.value.status == 403
    assert "secret" in scoped.value.detail
    assert "news," not in scoped.value.detail
    assert 'error="insufficient_scope"' in scoped.value.headers()["WWW-Authenticate"]


def test_publish_needs_the_publish_claim() -> None:
    check_publish(Identity("p", {}, publish=("prices",)), "prices")
    with pytest.raises(InsufficientScope):
        check_publish(Identity("p", {}, subscribe=("prices",)), "prices")


def test_the_key_file_is_reread_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    new = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path.write_text(_jwks(("old", RSA_KEY)))
    now = [0.0]
    auth = Authenticator(AuthSettings(jwt_key=str(path)), clock=lambda: now[0])
    old_token = jwt.encode(_claims(), RSA_KEY, algorithm="RS256", headers={"kid": "old"})
    new_token = jwt.encode(_claims(), new, algorithm="RS256", headers={"kid": "new"})
    assert auth.identify({"authorization": f"Bearer {old_token}"}) is not None
    path.write_text(_jwks(("new", new)))
    now[0] = 0.5  # within the second: not looked at yet
    with pytest.raises(Unauthorized):
        auth.identify({"authorization": f"Bearer {new_token}"})
    now[0] = 1.5
    assert auth.identify({"authorization": f"Bearer {new_token}"}) is not None
    with pytest.raises(Unauthorized):
        auth.identify({"authorization": f"Bearer {old_token}"})
    path.write_text("{half written")  # a broken rotation keeps the keys in force
    now[0] = 3.0
    assert auth.identify({"authorization": f"Bearer {new_token}"}) is not None
