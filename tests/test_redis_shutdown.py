"""SIGTERM soon after a gateway on the Redis bus started: with nothing accepted pending it exits 0 within ``BOUND``
seconds, whether Redis answers, is gone, never was there, or stops answering, and whatever the moment of the signal.

Ways it used to hang past the drain deadline, or for ever, instead:
- the command reader waited for Redis to come back (``wait_up``) while the drain waited for the reader, so a
  drain with Redis unreachable took the whole ``server.drain_timeout`` (30 s by default) for nothing;
- closing the link awaited the cancelled health-check task without a bound, and on Python 3.11 a cancellation
  can be swallowed by ``asyncio.wait_for`` inside redis-py (``tests.support.swallowed_cancel_app`` says how), after
  which the health check went on for ever and the process never logged "stopped";
- when serving fails after the bus started there is no drain: ``asyncio.Runner`` cancels the tasks left and awaits
  them without a bound, that same health check included.

The drain no longer waits for the blocking reader (it cancels it and reads for itself without blocking), so one
test checks what that must not lose: an entry Redis handed the read it cut short is run by the drain.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis.asyncio

from gateway.bus import Command
from gateway.bus.redisbus import RedisBus
from tests.support.redis import RedisServer, drop_namespace, namespace_of, redis_namespace
from tests.support.server import Server
from tests.support.shutdown import Exit, launch, readyz, sigterm, wait_for_line
from tests.support.wait import poll_until, wait_until

pytestmark = pytest.mark.live

BOUND = 5.0  # seconds from SIGTERM to exit with nothing accepted pending (a fixed gateway takes well under one)
START = 30.0  # seconds a gateway may take to start while several start at once on a small machine
APP = ["--app", "tests.support.drain_app:gw"]


def _ready(server: Server) -> None:
    poll_until(lambda: readyz(server) == 200 or server.proc.poll() is not None, START, what="/readyz 200")
    if server.proc.poll() is not None:
        raise RuntimeError(f"gateway exited with {server.proc.returncode}:\n{server.output()}")


def _all(jobs: dict[str, Callable[[], Exit]]) -> dict[str, Exit]:
    """Run the jobs at once (each starts and stops its own gateway), so the test takes as long as the slowest."""
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = {label: pool.submit(job) for label, job in jobs.items()}
        return {label: future.result(timeout=START + BOUND + 30) for label, future in futures.items()}


def _check(exits: dict[str, Exit]) -> None:
    slow = [e.describe(label) for label, e in exits.items() if e.code != 0 or e.seconds > BOUND]
    assert not slow, "\n\n".join(slow)
    for label, e in exits.items():
        assert "stopped" in e.log, e.describe(label)


def test_sigterm_at_any_moment_of_the_start_exits_promptly(tmp_path: Path, certs: tuple[Path, Path]) -> None:
    url = redis_namespace()
    env = {"GATEWAY_BUS_URL": url, "GATEWAY_TEST_RECORDS": str(tmp_path)}

    def job(label: str, until: str, delay: float) -> Callable[[], Exit]:
        def run() -> Exit:
            where = tmp_path / label
            where.mkdir()
            server = launch(where, certs, env=env, args=APP)
            try:
                if until == "ready":
                    _ready(server)
                else:
                    wait_for_line(server, until, START)
                time.sleep(delay)
                return sigterm(server, BOUND)
            finally:
                if server.proc.poll() is None:
                    server.proc.kill()
                    server.proc.wait(10)
        return run

    try:
        # Listening: the signal handler is in place, the bus not started yet (the drain begins as soon as it is).
        # The health check and the reader's blocking read both come round about every second: at +1.0 the drain
        # closes the link while they are under way (the moment of the hang in CI, where it was rare).
        exits = _all({
            "listening": job("listening", "listening on", 0.0),
            "ready+0.3": job("ready-0.3", "ready", 0.3),
            "ready+1.0": job("ready-1.0", "ready", 1.0),
        })
    finally:
        asyncio.run(drop_namespace(url))
    _check(exits)


def test_sigterm_with_redis_gone_exits_promptly(tmp_path: Path, certs: tuple[Path, Path]) -> None:
    def job(label: str, broken: Callable[[Server, RedisServer], None], *, start_redis: bool = True,
            env: dict[str, str] | None = None) -> Callable[[], Exit]:
        def run() -> Exit:
            where = tmp_path / label
            where.mkdir()
            with RedisServer() as broker:
                if not start_redis:
                    broker.stop()  # nothing listens on its port any more
                server = launch(where, certs, args=APP, env={
                    "GATEWAY_BUS_URL": broker.url + "?namespace=shutdown", "GATEWAY_TEST_RECORDS": str(where),
                    **(env or {})})
                try:
                    broken(server, broker)
                    return sigterm(server, BOUND)
                finally:
                    if server.proc.poll() is None:
                        server.proc.kill()
                        server.proc.wait(10)
                    if broker.proc is not None and broker.proc.poll() is None:
                        broker.proc.send_signal(signal.SIGCONT)  # a stopped server is killed just the same
        return run

    def killed_and_noticed(server: Server, broker: RedisServer) -> None:
        _ready(server)
        broker.stop()
        poll_until(lambda: readyz(server) == 503, 10, what="/readyz 503 once Redis is gone")

    def killed_at_the_signal(server: Server, broker: RedisServer) -> None:
        _ready(server)
        broker.stop()

    def never_there(server: Server, broker: RedisServer) -> None:
        wait_for_line(server, "gateway started", START)
        time.sleep(0.5)

    def stops_answering(server: Server, broker: RedisServer) -> None:
        _ready(server)
        assert broker.proc is not None
        broker.proc.send_signal(signal.SIGSTOP)  # connections stay open, nothing answers: every call times out
        time.sleep(0.3)

    exits = _all({
        "killed, noticed": job("killed-noticed", killed_and_noticed),
        "killed at the signal": job("killed-signal", killed_at_the_signal),
        "never there": job("never-there", never_there, start_redis=False),
        "stops answering": job("stops-answering", stops_answering, env={"GATEWAY_BUS_TIMEOUT": "0.5"}),
    })
    _check(exits)
    assert "unreachable" in exits["killed, noticed"].log


def test_a_health_check_that_swallows_its_cancellation_does_not_hold_the_exit(
        tmp_path: Path, certs: tuple[Path, Path]) -> None:
    url = redis_namespace()
    server = launch(tmp_path, certs, env={"GATEWAY_BUS_URL": url, "GATEWAY_TEST_RECORDS": str(tmp_path)},
                    args=["--app", "tests.support.swallowed_cancel_app:gw"])
    try:
        _ready(server)
        time.sleep(0.3)
        exits = {"swallowed cancel": sigterm(server, BOUND)}
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait(10)
        asyncio.run(drop_namespace(url))
    _check(exits)


def test_serving_that_fails_after_the_bus_started_exits_with_2(tmp_path: Path, certs: tuple[Path, Path]) -> None:
    """No drain then: ``asyncio.Runner`` cancels what is left and awaits it without a bound, the health check
    with its lost cancel included."""
    url = redis_namespace()
    server = launch(tmp_path, certs, args=["--app", "tests.support.swallowed_cancel_app:gw"], env={
        "GATEWAY_BUS_URL": url, "GATEWAY_TEST_RECORDS": str(tmp_path), "GATEWAY_TEST_TAKE_PORT": "1"})
    try:
        try:
            code: int | None = server.proc.wait(START)
        except subprocess.TimeoutExpired:
            code = None
        assert code == 2, f"exit {code}:\n{server.output()[-2500:]}"
        assert "gateway started" in server.output()
        assert "address already in use" in server.output().lower()
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait(10)
        asyncio.run(drop_namespace(url))


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_the_drain_runs_what_redis_handed_the_read_it_cut_short() -> None:
    url = redis_namespace()
    ran: list[str] = []

    async def handler(command_id: str, command: Command) -> None:
        ran.append(command_id)

    bus = RedisBus(url, workers=2, timeout=0.5)
    await bus.start(handler)
    plain = redis.asyncio.Redis.from_url(url.partition("?")[0])
    stream = "{" + namespace_of(url) + "}:commands"
    try:
        # The bus's consumer exists in the group once its reader was handed a command.
        first = await bus.submit(Command("first"))
        await wait_until(lambda: ran == [first], 10, what="the first command run")
        (name,) = await _consumers(plain, stream)
        # Added and handed to that consumer in one transaction, as if its blocking read got it just before the
        # drain cancelled the read: the bus's own reader never sees it.
        async with plain.pipeline(transaction=True) as pipe:
            pipe.xadd(stream, {"n": "cut-short", "a": "{}", "k": "", "c": "{}"})
            pipe.xreadgroup("workers", name, {stream: ">"}, count=1)
            added, _handed = await pipe.execute()
        async with asyncio.timeout(10):
            assert await bus.close(5) == []
        assert ran == [first, added.decode()]
        assert (await plain.xpending(stream, "workers"))["pending"] == 0, "run and acknowledged"
    finally:
        async with asyncio.timeout(10):
            await bus.close(5)  # (again, after a failure: a closed bus returns at once)
        await plain.aclose()
        await drop_namespace(url)


async def _consumers(client: redis.asyncio.Redis, stream: str) -> list[str]:
    return [c["name"].decode() for c in await client.xinfo_consumers(stream, "workers")]
