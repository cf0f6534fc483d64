"""The todo list in Redis: one list for every gateway process on the same Redis bus.

Each operation is one Lua script (Redis runs a script whole, with nothing in between), so two processes racing
for the last free place, or one toggling while another deletes, always leave a state one of them could have made
alone: the id comes from ``INCR`` inside the script that checks the ``MAX_ITEMS`` bound, and the snapshot reads
the items and the done set in one script, so its counts describe its items.

Keys, all under ``{prefix}`` (one hash tag, so a Redis Cluster keeps them in one slot, where a script may use
them together):

- ``{prefix}:next`` — the last id issued (``INCR``): ids only grow, a deleted id is never reused;
- ``{prefix}:text`` — a hash: id -> text, the todos that exist;
- ``{prefix}:done`` — a set of the ids that are done (always a subset of the hash's fields);
- ``{prefix}:once:<command id>`` — what an ``add`` or ``toggle`` with that command id did (with a TTL): a command
  the Redis bus delivers again, after the process running it died, returns that and changes nothing.

The prefix is ``<bus namespace>:demo:todos`` (``gateway:demo:todos`` for a bus URL without ``?namespace=``), so
gateways that keep apart on one Redis by namespace keep their lists apart too.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.bus.redis_layout import RedisTarget, parse_url
from gateway.core.errors import Unavailable
from gateway.demo.store import MAX_ITEMS, Snapshot, Todo, Todos, todos_for

__all__ = ["ONCE_TTL", "RedisTodos", "Snapshot", "Todos", "default_prefix", "todos_for"]

T = TypeVar("T")

SECONDS = 1.0
HOURS = 3600 * SECONDS
#: How long a command id is remembered. The bus redelivers a command within its lease times its delivery limit
#: (minutes), or when a process comes back after every process had died: a day covers both with room to spare.
ONCE_TTL = 24 * HOURS
RETRY_AFTER = 2  # seconds a client is told to wait while Redis is unreachable

_PREFIX = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
_ERRORS = (RedisConnectionError, RedisTimeoutError, TimeoutError, OSError)

# KEYS: next, text, once (or next, when no command id). ARGV: text, MAX_ITEMS, command id or '', TTL ms.
# Returns {1, id} added, {0, id} added before under this command id, {2, 0} the list is full.
ADD = """
if ARGV[3] ~= '' then
  local seen = redis.call('GET', KEYS[3])
  if seen then return {0, tonumber(seen)} end
end
if redis.call('HLEN', KEYS[2]) >= tonumber(ARGV[2]) then return {2, 0} end
local id = redis.call('INCR', KEYS[1])
redis.call('HSET', KEYS[2], id, ARGV[1])
if ARGV[3] ~= '' then redis.call('SET', KEYS[3], id, 'PX', ARGV[4]) end
return {1, id}
"""

# KEYS: text, done, once (or text). ARGV: id, command id or '', TTL ms. Returns 1 flipped, 0 no such todo (or
# what the first run under this command id returned).
TOGGLE = """
if ARGV[2] ~= '' then
  local seen = redis.call('GET', KEYS[3])
  if seen then return tonumber(seen) end
end
local found = 0
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  found = 1
  if redis.call('SREM', KEYS[2], ARGV[1]) == 0 then redis.call('SADD', KEYS[2], ARGV[1]) end
end
if ARGV[2] ~= '' then redis.call('SET', KEYS[3], found, 'PX', ARGV[3]) end
return found
"""

# KEYS: text, done. ARGV: id. Returns 1 removed, 0 no such todo.
DELETE = """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('SREM', KEYS[2], ARGV[1])
return 1
"""

# KEYS: text, done. Returns how many done todos were removed.
CLEAR_COMPLETED = """
local done = redis.call('SMEMBERS', KEYS[2])
for _, id in ipairs(done) do redis.call('HDEL', KEYS[1], id) end
redis.call('DEL', KEYS[2])
return #done
"""

# KEYS: text, done. Returns {flat id/text pairs, done ids}, both read at the same moment.
SNAPSHOT = """
return {redis.call('HGETALL', KEYS[1]), redis.call('SMEMBERS', KEYS[2])}
"""


def default_prefix(bus_url: str) -> str:
    """``<namespace>:demo:todos`` for the bus URL's namespace (``gateway`` when it names none)."""
    return f"{parse_url(bus_url).namespace}:demo:todos"


def _client(target: RedisTarget, timeout: float) -> Any:
    """A client for ``target`` (plain, Sentinel or Cluster), as the bus makes its own.

    One retry, on a connection error only: a pooled connection may point at a Redis that restarted since, and the
    second attempt takes a fresh one. A timeout is not retried, since the script may have run (an ``add`` without
    a command id would then run twice). Typed ``Any`` for the reason ``gateway.bus.redis_link.clients`` gives.
    """
    common: dict[str, Any] = {"protocol": 2, "decode_responses": True, "socket_timeout": timeout,
                              "socket_connect_timeout": timeout,
                              "retry": Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))}
    if target.cluster:
        nodes = [ClusterNode(host, port) for host, port in target.cluster]
        return RedisCluster(startup_nodes=nodes, username=target.username, password=target.password, **common)
    if target.sentinels:
        sentinel = Sentinel(list(target.sentinels),
                            sentinel_kwargs={"socket_timeout": timeout, "socket_connect_timeout": timeout},
                            password=target.password, username=target.username)
        return sentinel.master_for(target.service, db=target.db, **common)
    return Redis.from_url(target.url, **common)


class RedisTodos:
    """``Todos`` in Redis, shared by every process that names the same Redis and prefix."""

    def __init__(self, url: str, *, prefix: str | None = None, timeout: float = 2.0) -> None:
        """``url``: a bus URL (``gateway.bus.redis_layout.parse_url`` reads it; ``ValueError`` says what is wrong
        with it). ``prefix``: the keys' prefix (default ``default_prefix(url)``). ``timeout``: seconds any one
        call may take. No I/O here: the first call connects."""
        if timeout <= 0:
            raise ValueError(f"timeout must be positive (got {timeout})")
        self.prefix = prefix if prefix is not None else default_prefix(url)
        if not _PREFIX.fullmatch(self.prefix):
            raise ValueError(f"prefix must be 1-128 of A-Z a-z 0-9 _ . : - (got {self.prefix!r})")
        tag = "{" + self.prefix + "}"
        self._next, self._text, self._done, self._seen = f"{tag}:next", f"{tag}:text", f"{tag}:done", f"{tag}:once:"
        self._timeout = timeout
        self._redis = _client(parse_url(url), timeout)
        self._add = self._redis.register_script(ADD)
        self._toggle = self._redis.register_script(TOGGLE)
        self._delete = self._redis.register_script(DELETE)
        self._clear = self._redis.register_script(CLEAR_COMPLETED)
        self._snapshot = self._redis.register_script(SNAPSHOT)

    async def _call(self, call: Callable[[], Awaitable[T]]) -> T:
        """One bounded call; an unreachable or stalled Redis becomes ``Unavailable``, naming the store."""
        try:
            async with asyncio.timeout(self._timeout):
                return await call()
        except _ERRORS as exc:
            raise Unavailable(f"the todo store in Redis is unreachable ({type(exc).__name__})",
                              RETRY_AFTER) from exc

    def _once(self, command_id: str | None) -> tuple[str, str]:
        """The key and the script argument for ``command_id`` (the ``next`` key stands in when there is none: a
        script's keys must all exist as names, and in a Cluster all in one slot)."""
        return (self._seen + command_id, command_id) if command_id else (self._next, "")

    async def add(self, text: str, *, command_id: str | None = None) -> Todo:
        """See ``Todos.add``. The todo returned for a repeated command id is the one the first call added."""
        once_key, once = self._once(command_id)
        keys = [self._next, self._text, once_key]
        args = [text, MAX_ITEMS, once, int(ONCE_TTL * 1000)]
        status, todo_id = await self._call(lambda: self._add(keys=keys, args=args))
        if int(status) == 2:
            raise ValueError(f"the list is full ({MAX_ITEMS} items)")
        return Todo(id=int(todo_id), text=text, done=False)

    async def toggle(self, todo_id: int, *, command_id: str | None = None) -> bool:
        """See ``Todos.toggle``."""
        once_key, once = self._once(command_id)
        keys = [self._text, self._done, once_key]
        args = [todo_id, once, int(ONCE_TTL * 1000)]
        return bool(await self._call(lambda: self._toggle(keys=keys, args=args)))

    async def delete(self, todo_id: int) -> bool:
        """See ``Todos.delete``."""
        return bool(await self._call(lambda: self._delete(keys=[self._text, self._done], args=[todo_id])))

    async def clear_completed(self) -> int:
        """See ``Todos.clear_completed``."""
        return int(await self._call(lambda: self._clear(keys=[self._text, self._done])))

    async def snapshot(self) -> Snapshot:
        """See ``Todos.snapshot``: one script reads the texts and the done set together."""
        pairs, done_ids = await self._call(lambda: self._snapshot(keys=[self._text, self._done]))
        done = {int(i) for i in done_ids}
        return Snapshot.of(Todo(id=int(i), text=text, done=int(i) in done)
                           for i, text in zip(pairs[0::2], pairs[1::2], strict=True))

    async def aclose(self) -> None:
        """Close the connections; the list stays in Redis for the other processes (and the next start)."""
        await self._redis.aclose()
