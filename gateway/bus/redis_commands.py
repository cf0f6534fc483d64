"""This process's share of the command Stream: take commands as workers come free, run them, acknowledge them.

Every process reads the one command Stream through the consumer group, so each command goes to one process. A
command is acknowledged and deleted after its handler (failed or not); while it runs, its lease is renewed every
third of ``lease``. A command whose lease ran out belongs to a process that died: it is claimed (``XAUTOCLAIM``)
and run here, unless it was delivered more than ``MAX_DELIVERIES`` times (it kills whoever runs it), in which
case it goes to the dead-letter Stream with its delivery count. Malformed entries go there too.

A drain (``stop``) takes no new command beyond the last one accepted when it began and waits for those running.
It does not wait for the blocking reader, which may be waiting for new commands, for a free worker or for Redis to
come back: it cancels it and takes what was accepted with reads of its own that never block. With nothing accepted
left to run it ends at once; when Redis does not answer, what is in the Stream stays there for another process.
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
from gateway.bus.redis_link import ERRORS, RedisLink, cancel_and_wait, stop_requested
from gateway.core.errors import Unavailable
from gateway.core.versions import VersionKey, version_key

log = logging.getLogger("gateway.bus")

COMMAND_BLOCK = 1.0  # the reader's wait for new commands (a drain cancels it: it need not end first)
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
        self._acknowledging: set[str] = set()  # of those, the ones whose handler returned
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
        """Finish what was accepted before now (up to ``timeout``); returns the tasks left to cancel.

        "Accepted before now" is the Stream up to its last id at this moment, read while Redis answers. The reader
        is cancelled first, whatever it waits for: a drain must not wait a blocking read's second, nor for a worker
        or a Redis that may not come back (it used to, for the whole deadline when Redis was gone). The drain then
        reads for itself (``_take_accepted``). Commands running are waited for until the deadline; one still
        running then is logged: it stays in the Stream and another process runs it.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if not self._tasks:
            return []
        link = self._link
        if link.up:  # down: nothing can be read, so no bound is needed (nor a call that would only time out)
            with contextlib.suppress(Unavailable, ResponseError):
                info = await link.io(lambda: link.client.xinfo_stream(self._keys.commands))
                self._drain_until = version_key(text(info["last-generated-id"]))
        self._draining = True
        await cancel_and_wait(self._tasks[:1], min(link.timeout, max(0.0, deadline - loop.time())))
        if self._drain_until is not None:
            await self._take_accepted(deadline)
        running = list(self._running.values())
        if running:
            await asyncio.wait(running, timeout=max(0.0, deadline - loop.time()))
        for command_id in self._running:
            if command_id in self._acknowledging:
                log.warning("command %s ran, but its acknowledgement did not reach Redis by the drain deadline: it "
                            "stays in the command Stream and runs again (its handler gets the same command id)",
                            command_id)
            else:
                log.warning("command %s unfinished at the drain deadline: it stays in the command Stream, and "
                            "another process runs it once its lease (%.0f s) runs out", command_id, self._lease)
        return [*self._tasks, *self._burying, *self._running.values()]

    async def _take_accepted(self, deadline: float) -> None:
        """The drain's reads, none blocking: first the entries delivered to this consumer but never started (a
        read that the cancel cut short after Redis handed it entries), then the group's undelivered entries up to
        ``_drain_until``, as workers come free. Ends at the deadline, when Redis fails or when nothing is left."""
        link, group, stream = self._link, self._keys.group, self._keys.commands
        loop = asyncio.get_running_loop()
        cursor = "0"  # an id: this consumer's pending entries after it; then ">": entries never delivered
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0 or not link.up:  # a command started now could not finish; Redis fails: it stays
                return
            if not self._slot_free.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await self._slot_free.wait()
                continue
            free = self._workers - len(self._running)
            try:
                reply = await link.io(partial(link.client.xreadgroup, group, self.name, {stream: cursor}, count=free))
            except (Unavailable, ResponseError):
                return
            entries = reply[0][1] if reply else []
            for entry_id, fields in entries:
                if fields:  # a pending entry deleted meanwhile comes back empty: nothing to run
                    self._run(text(entry_id), fields)  # those already running are skipped there
            if cursor != ">":
                cursor = text(entries[-1][0]) if len(entries) >= free else ">"
                continue
            assert self._drain_until is not None
            if not entries or version_key(text(entries[-1][0])) >= self._drain_until:
                return

    # -- reading and running ----------------------------------------------------------------------------------

    async def _read(self) -> None:
        """Take commands from the group as workers come free, waiting up to ``COMMAND_BLOCK`` for new ones, until a
        drain begins (``stop`` cancels it then; should a cancel be lost, it ends at its next turn anyway)."""
        link, group, stream = self._link, self._keys.group, self._keys.commands
        while not self._draining and not stop_requested():
            await self._slot_free.wait()
            if not await link.wait_up() or self._draining:
                return
            free = self._workers - len(self._running)
            try:
                async with link.read_bound(COMMAND_BLOCK + link.timeout):
                    reply = await link.blocking.xreadgroup(group, self.name, {stream: ">"}, count=free,
                                                           block=int(COMMAND_BLOCK * 1000))
            except ResponseError as exc:
                # Redis lost its data: NOGROUP on a new connection, UNBLOCKED for a read blocked when the Stream
                # was deleted (a flush). Either way, start a new group.
                if "NOGROUP" not in str(exc) and "UNBLOCKED" not in str(exc):
                    raise
                with contextlib.suppress(Unavailable, ResponseError):
                    await self.ensure_group()
                continue
            except ERRORS as exc:
                if not self._draining:
                    link.failed(exc)
                continue
            for entry_id, fields in reply[0][1] if reply else []:
                self._run(text(entry_id), fields)  # delivered to this consumer: run, even if a drain began since

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
            self._acknowledging.add(command_id)
            await self._acknowledge(command_id)
        finally:
            self._acknowledging.discard(command_id)
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
        # Renewing through a drain, so that nobody claims what still runs here.
        while not self._link.closed and not stop_requested():
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
