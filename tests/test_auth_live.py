"""Authorization against running gateways: private hub topics need a token whose claims cover them (header or
cookie, never the query string), replay is authorized like live events, public topics are open, publishing takes
the static token or a publish claim, rotated JWK sets are followed, and apps' ``authorize`` hooks apply."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support.metrics import metric, wait_metric
from tests.support.raw_stream import RawStream
from tests.support.server import HUB_TOKEN, QueryList, Server, start_server
from tests.support.sse_client import SSEReader
from tests.support.tokens import hs256_by_hand
from tests.support.wait import wait_until

pytestmark = [pytest.mark.live, pytest.mark.asyncio]

SECRET = "live-secret-" + "k" * 32
AUDIENCE = "gateway-tests"
STATIC = {"authorization": f"Bearer {HUB_TOKEN}"}


def _token(key: Any = SECRET, alg: str = "HS256", headers: dict[str, str] | None = None, **claims: Any) -> str:
    payload = {"sub": "ann", "aud": AUDIENCE, "exp": int(time.time()) + 300, **claims}
    return jwt.encode(payload, key, algorithm=alg, headers=headers)


def _reader(subscribe: list[str] | None = None, **claims: Any) -> str:
    return _token(mercure={"subscribe": subscribe or [], "publish": []}, **claims)


def _topic(prefix: str = "") -> str:
    return f"{prefix}t-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def hs(tmp_path_factory: pytest.TempPathFactory, certs: tuple[Path, Path]) -> Iterator[Server]:
    env = {"GATEWAY_AUTH_JWT_KEY": SECRET, "GATEWAY_AUTH_AUDIENCE": AUDIENCE, "GATEWAY_HUB_PUBLIC_TOPICS": "public.*"}
    srv = start_server(tmp_path_factory.mktemp("auth"), certs, env=env, args=["--app", "tests.support.auth_app:gw"])
    yield srv
    assert srv.stop() == 0, srv.output()


async def _get(base: str, path: str, headers: dict[str, str] | None = None,
               params: QueryList | None = None) -> httpx.Response:
    """A stream request expected to be refused: its whole (short) answer."""
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.get(base + path, headers=headers, params=params)


async def _publish(base: str, topic: str, data: object, headers: dict[str, str] = STATIC) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.post(base + "/hub/publish", json={"topic": topic, "data": data}, headers=headers)


def _challenge(response: httpx.Response) -> str:
    return cast(str, response.headers.get("www-authenticate", ""))  # httpx types Headers.get as Any


async def test_a_private_topic_needs_a_token(hs: Server) -> None:
    response = await _get(hs.http, "/hub/subscribe", params=[("topic", "news")])
    assert response.status_code == 401
    assert _challenge(response) == 'Bearer realm="gateway"'
    assert response.json()["error"] == "unauthorized"


async def test_a_token_for_other_topics_is_refused_403(hs: Server) -> None:
    headers = {"authorization": f"Bearer {_reader(['sports'])}"}
    response = await _get(hs.http, "/hub/subscribe", headers, [("topic", "news"), ("topic", "sports")])
    assert response.status_code == 403
    assert 'error="insufficient_scope"' in _challenge(response)
    assert response.json()["error"] == "insufficient_scope"
    assert "news" in response.json()["detail"]


@pytest.mark.parametrize("carrier", ["header", "cookie"])
async def test_a_matching_token_is_served(hs: Server, carrier: str) -> None:
    topic = _topic("news-")
    token = _reader(["news-*"])
    headers = {"authorization": f"Bearer {token}"} if carrier == "header" else {"cookie": f"a=b; gateway_token={token}"}
    async with httpx.AsyncClient(timeout=10) as client, client.stream(
            "GET", hs.http + "/hub/subscribe", params={"topic": topic}, headers=headers) as response:
        assert response.status_code == 200
        reader = SSEReader(response.aiter_raw(), response.headers.get("content-encoding"))
        assert (await _publish(hs.http, topic, "hello")).status_code == 204
        assert (await reader.next_event()).data == "hello"


async def test_a_token_in_the_query_string_is_ignored(hs: Server) -> None:
    token = _reader(["*"])
    params: QueryList = [("topic", "news"), ("access_token", token), ("authorization", token), ("token", token)]
    response = await _get(hs.http, "/hub/subscribe", params=params)
    assert response.status_code == 401
    assert _challenge(response) == 'Bearer realm="gateway"'


@pytest.mark.parametrize(("token", "why"), [
    (_reader(["*"], exp=int(time.time()) - 120), "expired"),
    # An unsigned token takes the key None (PyJWT's NoneAlgorithm accepts it; encode's annotation leaves it out).
    (jwt.encode({"aud": AUDIENCE, "mercure": {"subscribe": ["*"]}}, None, algorithm="none"),  # type: ignore[arg-type]
     "algorithm"),
    (_token(rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256",
            mercure={"subscribe": ["*"]}), "algorithm"),
    (_reader(["*"], aud="somebody-else"), "audience"),
    (_token("x" * 40, mercure={"subscribe": ["*"]}), "signature"),
])
async def test_bad_tokens_are_refused_as_invalid(hs: Server, token: str, why: str) -> None:
    response = await _get(hs.http, "/hub/subscribe", {"authorization": f"Bearer {token}"}, [("topic", "news")])
    assert response.status_code == 401
    assert _challenge(response).startswith('Bearer realm="gateway", error="invalid_token", error_description="')
    assert why in _challenge(response)
    assert response.json()["error"] == "invalid_token"


async def test_replay_is_authorized_like_live_events(hs: Server) -> None:
    topic = _topic("vault-")
    secret_data = f"secret-{uuid.uuid4().hex}"
    assert (await _publish(hs.http, topic, secret_data)).status_code == 204
    replay: QueryList = [("topic", topic)]
    for headers in ({"last-event-id": "0"},
                    {"last-event-id": "0", "authorization": f"Bearer {_reader(['other'])}"}):
        response = await _get(hs.http, "/hub/subscribe", headers, replay)
        assert response.status_code in (401, 403)
        assert secret_data not in response.text
    headers = {"last-event-id": "0", "authorization": f"Bearer {_reader([topic])}"}
    async with httpx.AsyncClient(timeout=10) as client, client.stream(
            "GET", hs.http + "/hub/subscribe", params=replay, headers=headers) as response:
        assert response.status_code == 200
        reader = SSEReader(response.aiter_raw(), response.headers.get("content-encoding"))
        assert (await reader.until(lambda e: e.data == secret_data)).data == secret_data


async def test_public_topics_are_open_but_not_what_they_are_mixed_with(hs: Server) -> None:
    public = _topic("public.")
    async with httpx.AsyncClient(timeout=10) as client, client.stream(
            "GET", hs.http + "/hub/subscribe", params={"topic": public}) as response:
        assert response.status_code == 200
        reader = SSEReader(response.aiter_raw(), response.headers.get("content-encoding"))
        assert (await _publish(hs.http, public, "for everyone")).status_code == 204
        assert (await reader.next_event()).data == "for everyone"
    mixed = await _get(hs.http, "/hub/subscribe", params=[("topic", public), ("topic", "news")])
    assert mixed.status_code == 401


async def test_publishing_takes_a_publish_claim_or_the_static_token(hs: Server) -> None:
    publisher = {"authorization": f"Bearer {_token(mercure={'publish': ['prices']})}"}
    assert (await _publish(hs.http, "prices", 1, publisher)).status_code == 204
    refused = await _publish(hs.http, "news", 1, publisher)
    assert refused.status_code == 403
    assert refused.json()["error"] == "insufficient_scope"
    reader_only = {"authorization": f"Bearer {_reader(['prices'])}"}
    assert (await _publish(hs.http, "prices", 1, reader_only)).status_code == 403
    assert (await _publish(hs.http, "anything", 1, STATIC)).status_code == 204
    assert (await _publish(hs.http, "prices", 1, {})).status_code == 401


async def test_authorize_hooks_guard_views_and_commands(hs: Server) -> None:
    admin = {"authorization": f"Bearer {_token(role='admin')}"}
    user = {"authorization": f"Bearer {_token(role='user')}"}
    assert (await _get(hs.http, "/admin/panel")).status_code == 401
    assert (await _get(hs.http, "/admin/panel", user)).status_code == 403
    async with httpx.AsyncClient(timeout=10) as client:
        async with client.stream("GET", hs.http + "/admin/panel", headers=admin) as response:
            assert response.status_code == 200
            reader = SSEReader(response.aiter_raw(), response.headers.get("content-encoding"))
            assert "the admin panel" in (await reader.next_event()).data
        for headers, status in (({}, 401), (user, 403), (admin, 204)):
            response = await client.post(hs.http + "/admin/reset", json={}, headers=headers)
            assert response.status_code == status, response.text
        closed = await client.post(hs.http + "/closed", json={}, headers=admin)
        assert closed.status_code == 403
        assert "maintenance" in closed.json()["detail"]


def _jwks(*pairs: tuple[str, Any]) -> str:
    keys = [{**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key())), "kid": kid, "alg": "RS256"}
            for kid, key in pairs]
    return json.dumps({"keys": keys})


async def test_a_rotated_jwk_set_is_followed(tmp_path: Path, certs: tuple[Path, Path]) -> None:
    old, new = (rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(2))
    keys = tmp_path / "jwks.json"
    keys.write_text(_jwks(("old", old)))
    srv = start_server(tmp_path, certs, env={"GATEWAY_AUTH_JWT_KEY": str(keys), "GATEWAY_AUTH_AUDIENCE": AUDIENCE,
                                             "GATEWAY_HUB_PUBLIC_TOPICS": ""})
    claims = {"mercure": {"subscribe": ["news"]}}
    old_token = _token(old, "RS256", {"kid": "old"}, **claims)
    new_token = _token(new, "RS256", {"kid": "new"}, **claims)
    key_set_text = keys.read_text().encode()

    async def status(token: str) -> int:
        """The status of a request expected to be refused (one served would end in a read timeout)."""
        response = await _get(srv.http, "/hub/subscribe", {"authorization": f"Bearer {token}"}, [("topic", "news")])
        return response.status_code

    try:
        # An HS256 token "signed" with the public key set's own text is refused: a public key is never a secret.
        forged = hs256_by_hand({"aud": AUDIENCE, "exp": int(time.time()) + 300, **claims}, key_set_text)
        assert await status(forged) == 401
        assert await _stream_opens(srv, old_token)
        assert await status(new_token) == 401
        replacement = tmp_path / "jwks.json.new"
        replacement.write_text(_jwks(("new", new)))
        replacement.replace(keys)  # an atomic rotation
        await wait_until(lambda: _stream_opens(srv, new_token), 5, what="the new key set to be in force")
        assert await status(old_token) == 401
    finally:
        assert srv.stop() == 0, srv.output()


async def _stream_opens(srv: Server, token: str) -> bool:
    async with httpx.AsyncClient(timeout=10) as client, client.stream(
            "GET", srv.http + "/hub/subscribe", params={"topic": "news"},
            headers={"authorization": f"Bearer {token}"}) as response:
        return response.status_code == 200


# -- streams end when their token expires -----------------------------------------------------------------------

LEEWAY = 0.5  # seconds of auth.leeway for the expiry tests: a stream lives until exp + leeway


@pytest.fixture(scope="module")
def expiring(tmp_path_factory: pytest.TempPathFactory, certs: tuple[Path, Path]) -> Iterator[Server]:
    env = {"GATEWAY_AUTH_JWT_KEY": SECRET, "GATEWAY_AUTH_AUDIENCE": AUDIENCE, "GATEWAY_AUTH_LEEWAY": str(LEEWAY),
           "GATEWAY_HUB_PUBLIC_TOPICS": "public.*"}
    srv = start_server(tmp_path_factory.mktemp("expiry"), certs, env=env,
                       args=["--app", "tests.support.auth_app:gw"])
    yield srv
    assert srv.stop() == 0, srv.output()


async def _until_token_expiry(stream: RawStream, exp: int) -> float:
    """Read ``stream`` to its end, which must come at its token's expiry (exp + leeway, wall clock); when it came."""
    await stream.until_end(timeout=exp + LEEWAY + 5 - time.time())
    return time.time()


def _said_token_expired(stream: RawStream) -> None:
    """The goodbye: a retry hint, then a comment that says why, so the client reconnects with a fresh token."""
    assert stream.ended  # the final chunk: ended on purpose, not cut
    assert stream.decoded.endswith(b": token expired: reconnect with a fresh token\n\n"), stream.decoded[-200:]
    assert stream.parser.retry is not None


async def test_a_hub_stream_ends_when_its_token_expires(expiring: Server) -> None:
    """Events flow until the token's exp (+ leeway); then the stream says goodbye. The same token is refused on
    reconnect, a fresh one is served: a token's holder never reads past its expiry."""
    topic = _topic()
    exp = int(time.time()) + 3
    auth = {"authorization": f"Bearer {_reader([topic], exp=exp)}"}
    before = await metric(expiring.http, "gateway_streams_closed_total", kind="hub", reason="token_expired")
    stream = await RawStream.open(expiring.http_port, f"/hub/subscribe?topic={topic}", headers=auth)
    try:
        assert stream.status == 200
        assert (await _publish(expiring.http, topic, "before")).status_code == 204
        data, _ = await stream.next_event(timeout=5)
        assert "before" in data
        ended = await _until_token_expiry(stream, exp)
    finally:
        stream.close()
    _said_token_expired(stream)
    assert exp + LEEWAY - 0.2 <= ended < exp + LEEWAY + 2, (exp, ended)
    again = await _get(expiring.http, "/hub/subscribe", auth, [("topic", topic)])
    assert again.status_code == 401
    assert 'error="invalid_token"' in _challenge(again)
    fresh = await RawStream.open(expiring.http_port, f"/hub/subscribe?topic={topic}",
                                 headers={"authorization": f"Bearer {_reader([topic])}"})
    fresh.close()
    assert fresh.status == 200
    await wait_metric(expiring.http, "gateway_streams_closed_total", before + 1, kind="hub", reason="token_expired")


async def test_a_view_stream_authorized_by_a_hook_ends_when_its_token_expires(expiring: Server) -> None:
    exp = int(time.time()) + 3
    admin = {"authorization": f"Bearer {_token(role='admin', exp=exp)}"}
    stream = await RawStream.open(expiring.http_port, "/admin/panel", headers=admin)
    try:
        assert stream.status == 200
        data, _ = await stream.next_event(timeout=5)
        assert "admin panel" in data
        ended = await _until_token_expiry(stream, exp)
    finally:
        stream.close()
    _said_token_expired(stream)
    assert exp + LEEWAY - 0.2 <= ended < exp + LEEWAY + 2, (exp, ended)
    assert await metric(expiring.http, "gateway_streams_closed_total", kind="view", reason="token_expired") >= 1


async def test_streams_without_an_expiring_token_are_not_ended(expiring: Server) -> None:
    """A public topic (no token looked at) and a token without exp: both streams outlive the others' tokens, and
    still deliver."""
    topic = _topic()
    forever = {"authorization": f"Bearer {jwt.encode({'aud': AUDIENCE, 'mercure': {'subscribe': [topic]}}, SECRET)}"}
    public = await RawStream.open(expiring.http_port, "/hub/subscribe?topic=public.x", headers=forever)
    private = await RawStream.open(expiring.http_port, f"/hub/subscribe?topic={topic}", headers=forever)
    # A token that expires now, on a third stream, is the clock: when it has ended, the others were due too.
    exp = int(time.time()) + 2
    clock = await RawStream.open(expiring.http_port, f"/hub/subscribe?topic={topic}",
                                 headers={"authorization": f"Bearer {_reader([topic], exp=exp)}"})
    try:
        assert (public.status, private.status, clock.status) == (200, 200, 200)
        await _until_token_expiry(clock, exp)
        _said_token_expired(clock)
        assert (await _publish(expiring.http, "public.x", "p")).status_code == 204
        assert (await _publish(expiring.http, topic, "q")).status_code == 204
        assert "p" in (await public.next_event(timeout=5))[0]
        assert "q" in (await private.next_event(timeout=5))[0]
        assert not public.ended
        assert not private.ended
    finally:
        for stream in (public, private, clock):
            stream.close()
