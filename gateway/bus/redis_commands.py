"""This process's share of the command Stream: take commands as workers come free, run them, acknowledge them.

Every process reads the one command Stream through the consumer group, so each command goes to one process. A
command is acknowledged and deleted after its handler (failed or not); while it runs, its lease is renewed every
third of ``lease``. A command whose lease ran out belongs to a process that died: it is claimed (``XAUTOCLAIM``)
and run here, unless it was delivered more than ``MAX_DELIVERIES`` times (it kills whoever runs it), in which
case it goes to the dead-letter Stream with its delivery count. Malformed entries go there too.

A drain (``stop``) takes no new command beyond the last one accepted when it began and waits for those running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
from functools import partial
from typing import Any

import orjson
from redis.exceptions import ResponseError

from gateway.bus.base import Command, CommandHandler
from gateway.bus.redis_layout import BURY, FINISH, Keys, text
from gateway.bus.redis_link import ERRORS, RedisLink
from gateway.core.errors import Unavailable
from gateway.core.versions import VersionKey, version_key

log = logging.getLogger("gateway.bus")

COMMAND_BLOCK = 1.0  # the reader's wait for new commands: also how soon it notices a drain
MAX_DELIVERIES = 5  # a command delivered this often (its processes died each time) goes to the dead Stream


class CommandConsumer:
    def __init__(self, link: RedisLink, keys: Keys, handler: CommandHandler, *, workers: int, lease: float) -> None:
        self._link = link
        self._keys = keys
        self._handler = handler
        self._workers = workers
        self._lease = lease
        self._finish = link.client.register_script(FINISH)
        self._bury = link.client.register_script(BURY)
        self.name = f"{socket.gethostname()}-{os.getpid()}-{random.getrandbits(32):08x}"
        self._running: dict[str, asyncio.Task[None]] = {}
        self._burying: set[asyncio.Task[None]] = set()
        self._slot_free = asyncio.Event()
        self._slot_free.set()
        self._drain_until: VersionKey | None = None
        self._draining = False
        self._tasks: list[asyncio.Task[None]] = []

    async def ensure_group(self) -> None:
        """The consumer group, created (from the Stream's start) if Redis does not have it."""
        try:
            await self._link.io(lambda: self._link.client.xgroup_create(self._keys.commands, self._keys.group,
                                                                        id="0", mkstream=True))
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._read(), name="gateway-redis-commands"),
                       asyncio.create_task(self._leases(), name="gateway-redis-leases")]

    async def stop(self, timeout: float) -> list[asyncio.Task[None]]:
        """Finish what was accepted before now (up to ``timeout``); returns the tasks left to cancel."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if self._tasks:
            with contextlib.suppress(Unavailable, ResponseError):
                info = await self._link.io(lambda: self._link.client.xinfo_stream(self._keys.commands))
                self._drain_until = version_key(text(info["last-generated-id"]))
            self._draining = True
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, deadline - loop.time())):
                    await self._tasks[0]
            running = list(self._running.values())
            if running:
                await asyncio.wait(running, timeout=max(0.0, deadline - loop.time()))
            for command_id in self._running:
                log.warning("command %s unfinished at the drain deadline: it stays in the command Stream, and "
                            "another process runs it once its lease (%.0f s) runs out", command_id, self._lease)
        return [*self._tasks, *self._burying, *self._running.values()]

    # -- reading and running ----------------------------------------------------------------------------------

    async def _read(self) -> None:
        """Take commands from the group as workers come free; in a drain, only up to the last one accepted."""
        link, group, stream = self._link, self._keys.group, self._keys.commands
        while True:
            await self._slot_free.wait()
            if self._draining and (self._drain_until is None or not link.up):
                return
            if not await link.wait_up():
                return
            free = self._workers - len(self._running)
            block = None if self._draining else int(COMMAND_BLOCK * 1000)
            try:
                async with asyncio.timeout(COMMAND_BLOCK + link.timeout):
                    reply = await link.blocking.xreadgroup(group, self.name, {stream: ">"}, count=free, block=block)
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                with contextlib.suppress(Unavailable, ResponseError):  # Redis lost its data: start a new group
                    await self.ensure_group()
                continue
            except ERRORS as exc:
                if self._draining:
                    return
                link.failed(exc)
                continue
            entries = reply[0][1] if reply else []
            for entry_id, fields in entries:
                self._run(text(entry_id), fields)
            if self._draining:
                last = version_key(text(entries[-1][0])) if entries else None
                assert self._drain_until is not None
                if last is None or last >= self._drain_until:
                    return

    def _run(self, command_id: str, fields: dict[bytes, bytes], delivery: int = 1) -> None:
        if command_id in self._running:
            return
        try:
            context = orjson.loads(fields.get(b"c", b"{}"))
            if not isinstance(context, dict):
                raise ValueError("the context is not an object")
            command = Command(text(fields[b"n"]), orjson.loads(fields[b"a"]), text(fields.get(b"k", b"")) or None,
                              context=context, delivery=delivery)
        except (KeyError, ValueError, orjson.JSONDecodeError):
            log.error("command %s is malformed; moving it to %s", command_id, self._keys.dead)
            task = asyncio.create_task(self._bury_it(command_id, 0))
            self._burying.add(task)
            task.add_done_callback(self._burying.discard)
            return
        self._running[command_id] = asyncio.create_task(self._handle(command_id, command),
                                                        name=f"gateway-command-{command_id}")
        if len(self._running) >= self._workers:
            self._slot_free.clear()

    async def _handle(self, command_id: str, command: Command) -> None:
        try:
            try:
                await self._handler(command_id, command)
            except asyncio.CancelledError:
                raise  # not acknowledged: its lease runs out and another process runs it
            except Exception:  # the handler wrapper logs; this guards the worker itself
                log.exception("command %s (%s) failed", command_id, command.name)
            await self._acknowledge(command_id)
        finally:
            self._running.pop(command_id, None)
            self._slot_free.set()

    async def _acknowledge(self, command_id: str) -> None:
        """Ack and delete, retried while Redis is away for up to one lease (after that the command is run again
        elsewhere anyway)."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self._lease
        while True:
            try:
                await self._link.io(lambda: self._finish(keys=[self._keys.commands],
                                                         args=[self._keys.group, command_id]))
                return
            except Unavailable:
                if loop.time() > give_up or not await self._link.wait_up():
                    log.error("command %s ran but could not be acknowledged; it will run again", command_id)
                    return

    async def _bury_it(self, command_id: str, deliveries: int) -> None:
        with contextlib.suppress(Unavailable):
            await self._link.io(lambda: self._bury(keys=[self._keys.commands, self._keys.dead],
                                                   args=[self._keys.group, command_id, deliveries]))

    # -- leases -------------------------------------------------------------------------------------------------

    async def _leases(self) -> None:
        """Renew the leases of running commands; claim the commands whose lease ran out elsewhere."""
        interval = self._lease / 3
        while True:
            await asyncio.sleep(interval)
            if not self._link.up:
                continue
            try:
                await self._renew_and_claim()
            except Unavailable:
                continue
            except ResponseError as exc:
                log.warning("lease upkeep failed: %s", exc)

    async def _renew_and_claim(self) -> None:
        client: Any = self._link.client
        stream, group, me = self._keys.commands, self._keys.group, self.name
        running = list(self._running)
        if running:  # JUSTID: resets the idle time without counting a delivery
            await self._link.io(partial(client.xclaim, stream, group, me, 0, running, justid=True))
        free = self._workers - len(self._running)
        if free <= 0 or self._draining:
            return
        reply = await self._link.io(partial(client.xautoclaim, stream, group, me, int(self._lease * 1000), "0-0",
                                            count=free))
        for entry_id, fields in reply[1]:
            command_id = text(entry_id)
            if command_id in self._running or not fields:
                continue
            pending = await self._link.io(partial(client.xpending_range, stream, group, command_id, command_id, 1))
            deliveries = int(pending[0]["times_delivered"]) if pending else 1
            if deliveries > MAX_DELIVERIES:
                log.error("command %s was delivered %d times without finishing; moving it to %s",
                          command_id, deliveries, self._keys.dead)
                await self._bury_it(command_id, deliveries)
                continue
            log.warning("command %s: its process stopped before finishing it; running it here", command_id)
            self._run(command_id, fields, deliveries)
