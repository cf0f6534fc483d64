"""Several gateway processes on one Redis: one command queue, one event order, no accepted command lost.

Every process here is a real ``gateway serve`` (``tests.scaleout_app``, its state in Redis) talking to a real
Redis: the machine's shared one under a namespace of the test's own, or a private ``redis-server`` for the tests
that stop or kill it. Executions are counted from the per-process record files the app writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import redis

from gateway.core.versions import version_key
from tests.support.metrics import metric
from tests.support.redis import RedisServer, drop_namespace, namespace_of, redis_namespace
from tests.support.server import HUB_TOKEN, ROOT, Server, free_port, start_server
from tests.support.sse_client import SSEReader
from tests.support.wait import poll_until, wait_until

pytestmark = pytest.mark.live

APP = ["--app", "tests.scaleout_app:gw"]
AUTH = {"Authorization": f"Bearer {HUB_TOKEN}"}


def _env(url: str, records: Path, **extra: str) -> dict[str, str]:
    records.mkdir(exist_ok=True)
    return {"GATEWAY_BUS_URL": url, "GATEWAY_TEST_RECORDS": str(records), "GATEWAY_BUS_LEASE": "1",
            "GATEWAY_BUS_TIMEOUT": "0.5", **extra}


def _records(directory: Path) -> Counter[str]:
    """``"kind n"`` -> how many times it ran, over every process that ever served."""
    found: Counter[str] = Counter()
    for file in directory.glob("*.log"):
        found.update(line for line in file.read_text().splitlines() if line)
    return found


def _servers(tmp_path: Path, certs: tuple[Path, Path], count: int, env: dict[str, str],
             args: list[str] | None = None) -> list[Server]:
    started = []
    for i in range(count):
        where = tmp_path / f"gw{i}-{time.monotonic_ns()}"
        where.mkdir()
        started.append(start_server(where, certs, env=env, args=[*APP, *(args or [])]))
    return started


@contextlib.asynccontextmanager
async def sse(client: httpx.AsyncClient, url: str, headers: dict[str, str] | None = None,
              ) -> AsyncIterator[SSEReader]:
    async with client.stream("GET", url, headers={"Accept-Encoding": "br", **(headers or {})}) as response:
        assert response.status_code == 200, await response.aread()
        yield SSEReader(response.aiter_raw(), response.headers.get("content-encoding"))


async def _publish(client: httpx.AsyncClient, server: Server, topic: str, data: str) -> None:
    answer = await client.post(f"{server.http}/hub/publish", json={"topic": topic, "data": data}, headers=AUTH)
    assert answer.status_code == 204, answer.text


@pytest.mark.asyncio
@pytest.mark.timeout(120)
async def test_two_processes_share_commands_views_and_hub_history(tmp_path: Path, certs: tuple[Path, Path]) -> None:
    url = redis_namespace()
    a, b = _servers(tmp_path, certs, 2, _env(url, tmp_path / "records"))
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            # A command POSTed to A wakes the view held on B, which renders the state A's handler wrote.
            async with sse(client, f"{b.http}/count/updates") as view:
                first = await view.next_event()
                assert first.data == "count=0"
                answer = await client.post(f"{a.http}/count/add", json={"n": 1, "by": 5})
                assert answer.status_code == 204
                changed = await view.until(lambda e: e.data == "count=5")
                # The version is the topic Stream's id: the same on every process.
                with redis.Redis.from_url(url.partition("?")[0]) as r:
                    newest = r.xrevrange("{" + namespace_of(url) + "}:topic:view:count", count=1)
                assert changed.id == newest[0][0].decode()

            # A view reconnecting to the other process with the version it holds gets nothing until the next change.
            async with sse(client, f"{a.http}/count/updates", {"Last-Event-ID": changed.id or ""}) as view:
                answer = await client.post(f"{b.http}/count/add", json={"n": 2, "by": 1})
                assert answer.status_code == 204
                following = await view.next_event()
                assert following.data == "count=6", "the state the client already had was sent again"
                assert version_key(following.id or "") > version_key(changed.id or "")

            # A hub event published on B reaches a subscriber on A, in order.
            async with sse(client, f"{a.http}/hub/subscribe?topic=news") as sub:
                for i in range(3):
                    await _publish(client, b, "news", f"e{i}")
                got = [await sub.next_event() for _ in range(3)]
            assert [e.data for e in got] == ["e0", "e1", "e2"]

            # Missed while away; the reconnect lands on the other process and gets exactly those, then live ones.
            for i in (3, 4):
                await _publish(client, a, "news", f"e{i}")
            async with sse(client, f"{b.http}/hub/subscribe?topic=news", {"Last-Event-ID": got[-1].id or ""}) as sub:
                replayed = [await sub.next_event() for _ in range(2)]
                await _publish(client, a, "news", "e5")
                live = await sub.next_event()
            assert [e.data for e in replayed] == ["e3", "e4"]
            assert live.data == "e5"
        assert _records(tmp_path / "records") == Counter({"add 1": 1, "add 2": 1})
    finally:
        for srv in (a, b):
            assert srv.stop() == 0, srv.output()
        await drop_namespace(url)


def _pending(url: str) -> int:
    stream = "{" + namespace_of(url) + "}:commands"
    with redis.Redis.from_url(url.partition("?")[0]) as r:
        try:
            return int(r.xpending(stream, "workers")["pending"])
        except redis.ResponseError:
            return 0


def _backlog(url: str) -> int:
    with redis.Redis.from_url(url.partition("?")[0]) as r:
        return int(r.xlen("{" + namespace_of(url) + "}:commands"))


@pytest.mark.asyncio
@pytest.mark.timeout(120)
async def test_sigkill_before_the_handler_finished_runs_the_command_exactly_once(
        tmp_path: Path, certs: tuple[Path, Path]) -> None:
    url = redis_namespace()
    records = tmp_path / "records"
    (stalling,) = _servers(tmp_path, certs, 1, _env(url, records, GATEWAY_TEST_STALL="1"))
    async with httpx.AsyncClient(timeout=10) as client:
        answer = await client.post(f"{stalling.http}/slow", json={"n": 7})
    assert answer.status_code == 204
    # The accepting process took the command (pending under its consumer) and hangs inside the handler.
    await wait_until(lambda: _pending(url) == 1, 10, what="the command pending under the stalling consumer")
    stalling.proc.send_signal(signal.SIGKILL)
    stalling.proc.wait(10)
    assert _records(records) == Counter(), "the stalled handler must not have recorded anything"

    (rescuer,) = _servers(tmp_path, certs, 1, _env(url, records))
    try:
        async with httpx.AsyncClient(timeout=10) as client, sse(client, f"{rescuer.http}/count/updates") as view:
            await view.next_event()
            # The handler publishes when it runs: the view wakes once the lease (1 s) ran out and it was claimed.
            await view.next_event(timeout=20)
        assert _records(records) == Counter({"slow 7": 1})
        await wait_until(lambda: not _pending(url) and not _backlog(url), 10, what="the command acked and deleted")
        assert "running it here" in rescuer.output()
    finally:
        assert rescuer.stop() == 0, rescuer.output()
        await drop_namespace(url)
    assert _records(records) == Counter({"slow 7": 1})


@pytest.mark.asyncio
@pytest.mark.timeout(150)
async def test_redis_down_for_10s_under_load_loses_no_accepted_command(tmp_path: Path,
                                                                       certs: tuple[Path, Path]) -> None:
    records = tmp_path / "records"
    with RedisServer(persistent=True) as broker:
        url = broker.url + "?namespace=outage"
        (gateway,) = _servers(tmp_path, certs, 1, _env(url, records))
        statuses: dict[int, int] = {}
        refused_without_retry_after: list[int] = []
        stop = asyncio.Event()
        accepted_before = asyncio.Event()

        async def load(client: httpx.AsyncClient) -> None:
            n = 0
            while not stop.is_set():
                n += 1
                try:
                    answer = await client.post(f"{gateway.http}/record", json={"n": n}, timeout=5)
                    statuses[n] = answer.status_code
                    if answer.status_code == 503 and "retry-after" not in answer.headers:
                        refused_without_retry_after.append(n)
                except httpx.TransportError:
                    statuses[n] = -1
                if len([s for s in statuses.values() if s == 204]) >= 50:
                    accepted_before.set()
                await asyncio.sleep(0.01)  # a steady pace of ~80 commands a second, not a synchronisation

        try:
            async with httpx.AsyncClient(timeout=10) as client, sse(client, f"{gateway.http}/count/updates") as view:
                assert (await view.next_event()).data == "count=0"
                loader = asyncio.create_task(load(client))
                async with asyncio.timeout(20):
                    await accepted_before.wait()
                broker.stop()
                down_at = time.monotonic()

                async def ready_is(status: int) -> bool:
                    return (await client.get(f"{gateway.http}/readyz")).status_code == status

                await wait_until(lambda: ready_is(503), 10, what="/readyz 503 once Redis is down")
                await asyncio.sleep(max(0.0, 10 - (time.monotonic() - down_at)))  # the outage under test lasts 10 s
                assert (await client.get(f"{gateway.http}/readyz")).status_code == 503
                broker.start()
                await wait_until(lambda: ready_is(200), 20, what="/readyz 200 once Redis is back")
                after = len(statuses)
                await wait_until(lambda: sum(1 for n, s in statuses.items() if n > after and s == 204) >= 30, 20,
                                 what="30 commands accepted after the outage")
                stop.set()
                await loader
                # The stream opened before the outage is still there and follows the state again.
                answer = await client.post(f"{gateway.http}/count/add", json={"n": 1})
                assert answer.status_code == 204
                assert (await view.until(lambda e: e.data == "count=1", timeout=10)).data == "count=1"
                outages = await metric(gateway.http, "gateway_bus_outages_total")
            accepted = {n for n, s in statuses.items() if s == 204}

            def recorded() -> set[int]:  # the record files of another process
                return {int(k.split()[1]) for k in _records(records) if k.startswith("record")}

            await wait_until(lambda: accepted <= recorded(), 30, what="every accepted command in the record files")
        finally:
            assert gateway.stop() == 0, gateway.output()
    ran = _records(records)
    assert set(Counter(s for s in statuses.values())) <= {204, 503}, Counter(statuses.values())
    refused = [n for n, s in statuses.items() if s == 503]
    assert len(refused) > 10, "the outage should have refused commands"
    assert not refused_without_retry_after
    assert all(ran[f"record {n}"] == 1 for n in accepted), "an accepted command ran twice"
    assert outages >= 1


def _sockets(table: str, port: int, state: str | None = None) -> int:
    """Sockets of ``/proc/net/<table>`` bound to ``port`` on this machine (in ``state``: ``0A`` is LISTEN)."""
    wanted = f":{port:04X}"
    return sum(1 for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]
               if line.split()[1].endswith(wanted) and (state is None or line.split()[3] == state))


def _listeners(port: int) -> int:
    """TCP listeners on ``port`` (one per SO_REUSEPORT worker)."""
    return _sockets("tcp", port, "0A")


def _children(pid: int) -> set[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return {int(p) for p in path.read_text().split()} if path.exists() else set()


@pytest.mark.asyncio
@pytest.mark.timeout(120)
async def test_workers_share_listeners_survive_a_killed_worker_and_aggregate_metrics(
        tmp_path: Path, certs: tuple[Path, Path]) -> None:
    url = redis_namespace()
    (group,) = _servers(tmp_path, certs, 1, _env(url, tmp_path / "records"), args=["--workers", "2"])
    try:
        workers = _children(group.proc.pid)
        assert len(workers) == 2
        # Readiness came from one worker: wait until both listen.
        await wait_until(lambda: _listeners(group.http_port) >= 2, 20, what="both workers listening")
        async with httpx.AsyncClient(timeout=10, limits=httpx.Limits(max_keepalive_connections=0)) as client, \
                contextlib.AsyncExitStack() as stack:
            views = [await stack.enter_async_context(sse(client, f"{group.http}/count/updates")) for _ in range(16)]
            for view in views:
                await view.next_event()
            # Whichever worker answers /metrics answers for both.
            assert await metric(group.http, "gateway_streams_active", kind="view") == 16
            victim = min(workers)
            os.kill(victim, signal.SIGKILL)
            await wait_until(lambda: len(_children(group.proc.pid) - {victim}) >= 2, 20, what="the worker restarted")
            assert (await client.get(f"{group.http}/readyz")).status_code == 200
            answer = await client.post(f"{group.http}/count/add", json={"n": 1})
            assert answer.status_code == 204
            alive = 0
            for view in views:
                with contextlib.suppress(EOFError, httpx.HTTPError):
                    if (await view.until(lambda e: e.data == "count=1", timeout=10)).data == "count=1":
                        alive += 1
            # 16 connections hashed over two SO_REUSEPORT listeners: all on one has a chance of 1 in 32,768.
            assert 0 < alive < 16, f"{alive} of 16 streams got the change: were they all on one worker?"
            assert await metric(group.http, "gateway_streams_active", kind="view") == alive
        assert "restarting" in group.output()
    finally:
        assert group.stop() == 0, group.output()
        await drop_namespace(url)


def test_workers_refuse_the_in_memory_bus() -> None:
    done = subprocess.run([sys.executable, "-m", "gateway", "serve", "--workers", "2", "--bus", "memory://"],
                          capture_output=True, text=True, cwd=ROOT, timeout=60, check=False)
    assert done.returncode == 2
    assert "server.workers" in done.stderr
    assert "redis://" in done.stderr


@pytest.mark.asyncio
@pytest.mark.timeout(90)
async def test_a_gateway_started_before_redis_waits_not_ready_then_serves(tmp_path: Path,
                                                                         certs: tuple[Path, Path]) -> None:
    """Start order must not matter: Redis coming up after the gateway turns it ready, with working streams."""
    records = tmp_path / "records"
    broker = RedisServer()
    url = broker.url + "?namespace=late"
    where = tmp_path / "gw"
    where.mkdir()
    port = free_port()
    log = where / f"gateway-{port}.log"  # start_server's log of the gateway on that port

    def start_broker_once_the_gateway_is_up_without_it() -> None:
        # The gateway says it started without Redis, then Redis comes: on a busy machine a fixed delay could let
        # Redis come first. Reading the log is the only way to see another process's state; bounded.
        poll_until(lambda: log.exists() and "unreachable at start" in log.read_text(errors="replace"), 30,
                   what="the gateway starting without Redis")
        broker.start()

    starter = threading.Thread(target=start_broker_once_the_gateway_is_up_without_it)
    starter.start()
    try:
        gateway = start_server(where, certs, env=_env(url, records), args=APP, http_port=port)
    finally:
        starter.join()
    try:
        assert "unreachable at start" in gateway.output()
        async with httpx.AsyncClient(timeout=10) as client, sse(client, f"{gateway.http}/count/updates") as view:
            assert (await view.next_event()).data == "count=0"
            answer = await client.post(f"{gateway.http}/count/add", json={"n": 1, "by": 2})
            assert answer.status_code == 204
            assert (await view.until(lambda e: e.data == "count=2")).data == "count=2"
            assert await metric(gateway.http, "gateway_bus_up") == 1
    finally:
        assert gateway.stop() == 0, gateway.output()
        broker.__exit__(None, None, None)


@pytest.mark.asyncio
@pytest.mark.timeout(90)
async def test_workers_bind_one_quic_socket_and_all_advertise_it(tmp_path: Path, certs: tuple[Path, Path]) -> None:
    """QUIC keeps a connection's state in one process: one UDP socket for the group, Alt-Svc from every worker."""
    url = redis_namespace()
    (group,) = _servers(tmp_path, certs, 1, _env(url, tmp_path / "records"), args=["--workers", "2"])
    try:
        await wait_until(lambda: _listeners(group.tls_port) >= 2, 20, what="both workers listening on TLS")
        assert _sockets("udp", group.tls_port) == 1
        advertised = set()
        tls = ssl.create_default_context(cafile=str(certs[0]))
        async with contextlib.AsyncExitStack() as stack:
            for _ in range(16):  # separate connections, hashed over both workers' TLS listeners
                client = await stack.enter_async_context(httpx.AsyncClient(verify=tls, timeout=10))
                answer = await client.get(f"{group.https}/healthz")
                advertised.add(answer.headers.get("alt-svc"))
        assert advertised == {f'h3=":{group.tls_port}"; ma=3600'}
    finally:
        assert group.stop() == 0, group.output()
        await drop_namespace(url)


def test_worker_config_quic_only_on_worker_zero(certs: tuple[Path, Path]) -> None:
    from gateway.config import Settings
    from gateway.web.server import hypercorn_config

    settings = Settings.load(environ={}, overrides={
        "server.certfile": (str(certs[0]), "test"), "server.keyfile": (str(certs[1]), "test"),
        "server.tls_bind": ("127.0.0.1:0", "test"), "server.quic_bind": ("127.0.0.1:4433", "test"),
        "server.workers": ("2", "test"), "bus.url": ("redis://127.0.0.1:6379/0", "test")})
    first, other = hypercorn_config(settings, 0), hypercorn_config(settings, 1)
    assert first.quic_bind == ["127.0.0.1:4433"]
    assert other.quic_bind == []
    assert other.workers > 1  # Hypercorn then sets SO_REUSEPORT on the TCP listeners it creates
    sockets = other.create_sockets()
    try:
        assert sockets.quic_sockets == []
        assert (b"alt-svc", b'h3=":4433"; ma=3600') in other.response_headers("h2")
    finally:
        for sock in [*sockets.secure_sockets, *sockets.insecure_sockets]:
            sock.close()
