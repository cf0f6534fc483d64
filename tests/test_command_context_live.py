"""The command context and path parameters over real sockets: what a handler is told about its request."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson
import pytest

from tests.support.redis import drop_namespace, redis_namespace
from tests.support.server import Server, start_server
from tests.support.sse_client import SSEReader
from tests.support.wait import wait_until

pytestmark = [pytest.mark.live, pytest.mark.asyncio]

APP = ["--app", "tests.support.context_app:gw"]
SECRET = "context-secret-" + "k" * 32
AUDIENCE = "gateway-tests"


def _records(directory: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for file in sorted(directory.glob("*.jsonl"))
            for line in file.read_bytes().splitlines() if line]


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("records")


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, certs: tuple[Path, Path], records: Path) -> Iterator[Server]:
    env = {"GATEWAY_AUTH_JWT_KEY": SECRET, "GATEWAY_AUTH_AUDIENCE": AUDIENCE,
           "GATEWAY_LIMITS_TRUSTED_PROXIES": "127.0.0.1", "GATEWAY_TEST_RECORDS": str(records)}
    server = start_server(tmp_path_factory.mktemp("context"), certs, env=env, args=APP)
    yield server
    assert server.stop() == 0, server.output()


def _token() -> str:
    return jwt.encode({"sub": "ann", "aud": AUDIENCE, "exp": int(time.time()) + 300, "role": "editor"}, SECRET,
                      algorithm="HS256")


async def test_the_handler_records_its_context(srv: Server, records: Path) -> None:
    token = _token()
    headers = {"Authorization": f"Bearer {token}", "X-Forwarded-For": "203.0.113.9", "Idempotency-Key": "ctx-1",
               "X-Trace": "t-1", "Cookie": f"gateway_token={token}; theme=dark"}
    async with httpx.AsyncClient(timeout=10) as client:
        answer = await client.post(f"{srv.http}/items/7/touch", json={"note": "hi"}, headers=headers)
    assert answer.status_code == 204, answer.text
    await wait_until(lambda: any(r.get("note") == "hi" for r in _records(records)), 10, what="the handler's record")
    (seen,) = [r for r in _records(records) if r.get("note") == "hi"]
    assert seen["command_id"] == answer.headers["command-id"]
    assert seen["idempotency_key"] == "ctx-1"
    assert seen["client"] == "203.0.113.9"  # the peer, 127.0.0.1, is a trusted proxy
    assert (seen["item"], seen["path_params"]) == (7, {"item": "7"})
    assert (seen["subject"], seen["claims"]["role"]) == ("ann", "editor")
    assert seen["delivery"] == 1
    assert seen["clients"] == ["cache", "db"]  # opened by the app's startup hooks before any command ran
    assert seen["headers"]["x-trace"] == "t-1"
    # The token itself never reaches the handler: neither its header nor its cookie.
    assert not {"authorization", "cookie"} & set(seen["headers"])
    assert seen["cookies"] == {"theme": "dark"}
    assert token not in orjson.dumps(seen).decode()


async def test_path_values_are_validated_and_unknown_paths_are_404(srv: Server) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        bad = await client.post(f"{srv.http}/items/seven/touch", json={"note": "x"})
        in_body = await client.post(f"{srv.http}/items/7/touch", json={"note": "x", "item": 8})
        nowhere = await client.post(f"{srv.http}/items/7/untouch", json={"note": "x"})
        empty = await client.post(f"{srv.http}/items//touch", json={"note": "x"})
    assert bad.status_code == 422
    assert bad.json()["field"] == "item"
    assert in_body.status_code == 422
    assert in_body.json()["field"] == "item"
    assert nowhere.status_code == 404
    assert empty.status_code == 404


async def test_a_view_gets_its_path_values(srv: Server) -> None:
    async with httpx.AsyncClient(timeout=10) as client, client.stream("GET", f"{srv.http}/rooms/blue/updates") as r:
        assert r.status_code == 200
        event = await SSEReader(r.aiter_raw(), r.headers.get("content-encoding")).next_event()
    assert event.data == "room=blue"


async def test_a_view_gets_its_path_values_typed(srv: Server) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        async with client.stream("GET", f"{srv.http}/boards/x/cards/3") as r:
            assert r.status_code == 200
            event = await SSEReader(r.aiter_raw(), r.headers.get("content-encoding")).next_event()
        bad = await client.get(f"{srv.http}/boards/x/cards/three")
    assert event.data == "board=x n=3"
    assert bad.status_code == 422
    assert bad.json()["field"] == "n"


async def test_a_bad_token_is_refused_not_passed_on_as_anonymous(srv: Server) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        answer = await client.post(f"{srv.http}/items/1/touch", json={"note": "forged"},
                                   headers={"Authorization": "Bearer not-a-token"})
    assert answer.status_code == 401


async def test_lifespan_hooks_open_and_close_the_apps_clients(tmp_path: Path, certs: tuple[Path, Path]) -> None:
    records = tmp_path / "records"
    records.mkdir()
    server = start_server(tmp_path, certs, env={"GATEWAY_TEST_RECORDS": str(records)}, args=APP)
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            answer = await client.post(f"{server.http}/items/3/touch", json={"note": "life"})
        assert answer.status_code == 204
    finally:
        assert server.stop() == 0, server.output()
    # SIGTERM drains: the accepted command ran, then the shutdown hook, then the lifespan's exit.
    assert [r.get("hook") or r["note"] for r in _records(records)] == ["startup", "life", "shutdown",
                                                                      "lifespan-exit"]
    assert _records(records)[-1]["db_closed"] is True


async def test_a_failing_startup_hook_fails_the_start_with_its_message(tmp_path: Path,
                                                                      certs: tuple[Path, Path]) -> None:
    env = {"GATEWAY_TEST_RECORDS": str(tmp_path), "GATEWAY_TEST_FAIL_STARTUP": "1"}
    with pytest.raises(RuntimeError, match="gateway exited") as caught:
        start_server(tmp_path, certs, env=env, args=APP, ready_timeout=20)
    assert "startup hook open_client failed: no database at db.invalid" in str(caught.value)
    assert not _records(tmp_path), "nothing ran"


@pytest.mark.timeout(120)
async def test_a_redelivered_command_is_recognisable_by_its_id(tmp_path: Path, certs: tuple[Path, Path]) -> None:
    """Redis bus: the process running the command dies before acknowledging it; the process that runs it again
    sees the same command id, a higher delivery count and the same context (it crossed the bus with the command)."""
    url = redis_namespace()
    records = tmp_path / "records"
    records.mkdir()
    env = {"GATEWAY_BUS_URL": url, "GATEWAY_BUS_LEASE": "1", "GATEWAY_BUS_TIMEOUT": "0.5",
           "GATEWAY_AUTH_JWT_KEY": SECRET, "GATEWAY_AUTH_AUDIENCE": AUDIENCE,
           "GATEWAY_LIMITS_TRUSTED_PROXIES": "127.0.0.1", "GATEWAY_TEST_RECORDS": str(records)}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    stalling = start_server(tmp_path / "a", certs, env={**env, "GATEWAY_TEST_STALL": "1"}, args=APP)
    rescuer: Server | None = None
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            answer = await client.post(f"{stalling.http}/items/5/touch", json={"note": "again"},
                                       headers={"Authorization": f"Bearer {_token()}",
                                                "X-Forwarded-For": "198.51.100.4"})
        assert answer.status_code == 204, answer.text
        command_id = answer.headers["command-id"]

        def runs() -> list[dict[str, Any]]:
            return [r for r in _records(records) if r.get("note") == "again"]

        # The handler recorded its run and hangs: the command is taken, not acknowledged.
        await wait_until(lambda: len(runs()) == 1, 10, what="the first run's record")
        stalling.proc.send_signal(signal.SIGKILL)
        stalling.proc.wait(10)
        rescuer = start_server(tmp_path / "b", certs, env=env, args=APP)
        # Claimed once its lease (1 s) ran out.
        await wait_until(lambda: len(runs()) == 2, 20, what="the redelivered run's record")
        first, again = sorted(runs(), key=lambda run: int(run["delivery"]))  # files are per process
        assert first["command_id"] == again["command_id"] == command_id
        assert (first["delivery"], again["delivery"]) == (1, 2)
        for run in (first, again):
            assert (run["item"], run["client"], run["subject"]) == (5, "198.51.100.4", "ann")
    finally:
        if rescuer is not None:
            assert rescuer.stop() == 0, rescuer.output()
        if stalling.proc.poll() is None:
            stalling.stop()
        await drop_namespace(url)
