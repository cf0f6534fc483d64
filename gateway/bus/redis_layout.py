"""The Redis bus's data layout, URL options and scripts, and the pure rules it reads them with (no I/O here).

Keys (every key of one namespace carries the hash tag ``{namespace}``, so a namespace lives in one Cluster slot and
the multi-key scripts and multi-stream reads below stay legal wherever the keys are):

- ``{ns}:topic:<topic>`` — a Stream per topic, capped at the history size; the entry id *is* the version.
- ``{ns}:last`` — the newest version issued on any topic; ``{ns}:born`` — the first version issued since the data
  was created (a Redis that lost its data starts a new "lifetime": an older client id may have missed events).
- ``{ns}:evicted`` — a hash: topic -> the newest version trimmed out of that topic's Stream (exact gap detection).
- ``{ns}:commands`` — the command Stream, read by the consumer group ``workers``; an entry is deleted once handled,
  so its length is the commands accepted and not yet finished. ``{ns}:dead`` keeps commands that failed delivery
  too often (the process handling them died each time).
- ``{ns}:idem:<hash>`` — an ``Idempotency-Key`` -> the id of the command it was first accepted as (with a TTL).

Versions are Stream ids ``<ms>-<n>`` issued by one script from one counter, so they increase across *all* topics
(what lets one ``Last-Event-ID`` resume several topics, see ``gateway.core.versions``). They are built from the
Redis server's clock: after a Redis restart that lost everything, new versions are still greater than the old
ones, and clients holding an old id get a ``Gap`` instead of silence.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from gateway.core.versions import VersionKey, version_key

DEFAULT_NAMESPACE = "gateway"
GROUP = "workers"
_NAMESPACE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """Where the bus connects. ``url`` is what redis-py receives (our own query options removed)."""

    url: str
    namespace: str
    sentinels: tuple[tuple[str, int], ...] = ()
    service: str = ""  # the Sentinel master name
    cluster: tuple[tuple[str, int], ...] = ()  # Cluster start-up nodes
    db: int = 0
    password: str | None = None
    username: str | None = None


def _hosts(netloc: str, default_port: int) -> list[tuple[str, int]]:
    hosts = []
    for item in netloc.rpartition("@")[2].split(","):
        host, _, port = item.rpartition(":") if ":" in item else (item, "", str(default_port))
        if not host or not port.isdigit():
            raise ValueError(f"address {item!r} is not HOST:PORT")
        hosts.append((host.strip("[]"), int(port)))
    return hosts


def parse_url(url: str) -> RedisTarget:
    """``redis://``, ``rediss://``, ``unix://``, ``redis+sentinel://h1:26379,h2:26379/<master>[/<db>]`` or
    ``redis+cluster://h1:7000,h2:7001`` (start-up nodes of a Redis Cluster).

    ``?namespace=NAME`` (default ``gateway``) separates several gateways sharing one Redis. ValueError says what
    is wrong.
    """
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    namespace = DEFAULT_NAMESPACE
    rest = []
    for key, value in query:
        if key == "namespace":
            namespace = value
        else:
            rest.append((key, value))
    if not _NAMESPACE.fullmatch(namespace):
        raise ValueError(f"namespace must be 1-64 of A-Z a-z 0-9 _ . : - (got {namespace!r})")
    clean = urlunsplit(parts._replace(query=urlencode(rest)))
    if parts.scheme in ("redis", "rediss", "unix"):
        if parts.scheme != "unix" and not parts.hostname:
            raise ValueError("a redis:// URL needs a host")
        return RedisTarget(clean, namespace)
    userinfo = parts.netloc.rpartition("@")[0]
    user, _, password = userinfo.partition(":")
    if parts.scheme == "redis+cluster":
        if parts.path.strip("/") not in ("", "0"):
            raise ValueError("a Redis Cluster has only database 0")
        return RedisTarget(clean, namespace, cluster=tuple(_hosts(parts.netloc, 6379)),
                           password=unquote(password) or None, username=unquote(user) or None)
    if parts.scheme == "redis+sentinel":
        hosts = _hosts(parts.netloc, 26379)
        path = [p for p in parts.path.split("/") if p]
        if not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
            raise ValueError("a sentinel URL names the master: redis+sentinel://HOST:PORT[,HOST:PORT]/MASTER[/DB]")
        return RedisTarget(clean, namespace, sentinels=tuple(hosts), service=path[0],
                           db=int(path[1]) if len(path) == 2 else 0,
                           password=unquote(password) or None, username=unquote(user) or None)
    raise ValueError("must be memory://, redis://, rediss://, unix://, redis+sentinel:// or redis+cluster://")


def redacted(url: str) -> str:
    """The URL for logs: any password replaced by ``***``."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    userinfo, _, hosts = parts.netloc.rpartition("@")
    user, sep, _password = userinfo.partition(":")
    return urlunsplit(parts._replace(netloc=f"{user}{sep}{'***' if sep else ''}@{hosts}"))


class Keys:
    """Key names of one namespace."""

    def __init__(self, namespace: str) -> None:
        tag = "{" + namespace + "}"
        self._tag = tag
        self.last = f"{tag}:last"
        self.born = f"{tag}:born"
        self.evicted = f"{tag}:evicted"
        self.commands = f"{tag}:commands"
        self.dead = f"{tag}:dead"
        self.group = GROUP

    def topic(self, name: str) -> str:
        return f"{self._tag}:topic:{name}"

    def idempotency(self, key: str) -> str:
        # Hashed: the header is client input of up to 255 characters; the key stays short and inert.
        return f"{self._tag}:idem:{hashlib.blake2b(key.encode(), digest_size=16).hexdigest()}"


# KEYS: last, born, evicted, topic stream. ARGV: topic name, payload, history size.
# Issues the next version (server clock in ms, a sequence within one ms), never below the newest id already in
# the topic's Stream (should ``last`` be lost alone), records what the cap trims, appends, returns the version.
PUBLISH = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ms, seq = now, 0
local function later(id)
  local a, b = string.match(id, '^(%d+)%-(%d+)$')
  a = tonumber(a); b = tonumber(b)
  if a > ms or (a == ms and b >= seq) then ms = a; seq = b + 1 end
end
local last = redis.call('GET', KEYS[1])
if last then later(last) end
local top = redis.call('XREVRANGE', KEYS[4], '+', '-', 'COUNT', 1)
if top[1] then later(top[1][1]) end
local id = string.format('%d-%d', ms, seq)
local cap = tonumber(ARGV[3])
local len = redis.call('XLEN', KEYS[4])
if len >= cap then
  local old = redis.call('XRANGE', KEYS[4], '-', '+', 'COUNT', len - cap + 1)
  redis.call('HSET', KEYS[3], ARGV[1], old[#old][1])
end
redis.call('XADD', KEYS[4], 'MAXLEN', cap, id, 'p', ARGV[2])
redis.call('SET', KEYS[1], id)
redis.call('SET', KEYS[2], id, 'NX')
return id
"""

# KEYS: born, last. Marks where this data's lifetime began, on every connect (a no-op once set): "now" for data
# that is empty (a new namespace, or a Redis that lost everything: older client ids may have missed events), and
# the lowest id for data that already has versions but no mark (nothing known to be lost).
MARK_BORN = """
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('SET', KEYS[1], '0-1', 'NX')
else
  local t = redis.call('TIME')
  redis.call('SET', KEYS[1], string.format('%d-0', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)), 'NX')
end
return redis.call('GET', KEYS[1])
"""

# KEYS: commands stream, idempotency key. ARGV: name, args JSON, idempotency key or '', key TTL ms, queue size,
# group, context JSON. Entry fields: n name, a args, k key, c context (entries written without c stay readable:
# their context is empty). Returns {1, id} accepted, {0, id} a retry of an accepted command, {2, waiting} the
# queue is full.
# "Waiting" is what no worker has taken yet: the Stream's length minus the entries being handled (pending).
SUBMIT = """
if ARGV[3] ~= '' then
  local seen = redis.call('GET', KEYS[2])
  if seen then return {0, seen} end
end
local waiting = redis.call('XLEN', KEYS[1])
local ok, pending = pcall(redis.call, 'XPENDING', KEYS[1], ARGV[6])
if ok then waiting = waiting - pending[1] end
if waiting >= tonumber(ARGV[5]) then return {2, tostring(waiting)} end
local id = redis.call('XADD', KEYS[1], '*', 'n', ARGV[1], 'a', ARGV[2], 'k', ARGV[3], 'c', ARGV[7])
if ARGV[3] ~= '' then redis.call('SET', KEYS[2], id, 'PX', ARGV[4]) end
return {1, id}
"""

# KEYS: commands stream. ARGV: group, id. Acknowledge and delete in one step (the length is the backlog).
FINISH = """
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
return redis.call('XDEL', KEYS[1], ARGV[2])
"""

# KEYS: commands stream, dead stream. ARGV: group, id, deliveries. Move a command that keeps killing its
# consumers out of the way, with what is known about it.
BURY = """
local entry = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])
if entry[1] then
  local fields = entry[1][2]
  table.insert(fields, 'id'); table.insert(fields, ARGV[2])
  table.insert(fields, 'deliveries'); table.insert(fields, ARGV[3])
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', 10000, '*', unpack(fields))
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
return redis.call('XDEL', KEYS[1], ARGV[2])
"""


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def exclusive(version: str) -> str:
    """The XRANGE start "after ``version``" (Redis 6.2+ exclusive ranges)."""
    return "(" + stream_id(version)


def stream_id(version: str) -> str:
    """A version as a full Stream id: the in-memory form ``"41"`` and ``"0"`` become ``"41-0"``, ``"0-0"``."""
    return version if "-" in version else version + "-0"


def is_start(key: VersionKey) -> bool:
    return key == (0, 0)


def gap_topics(cursors: Sequence[tuple[str, VersionKey]], evicted: Sequence[bytes | str | None],
               born: bytes | str | None) -> list[tuple[str, str | None]]:
    """The topics whose notifications after their cursor may be gone, each with where what is left begins.

    A topic lost some when its trim watermark is past its cursor; the watermark is then the cursor to go on from.
    Every topic may have lost some when its cursor is older than this data's first version (Redis lost its data
    since the cursor was issued): those go on from their cursor (None: nothing to skip). From the very start
    (``0``) only real trims count: a new namespace owes nobody anything.
    """
    first = version_key(text(born)) if born is not None else None
    lost: list[tuple[str, str | None]] = []
    for (topic, after), mark in zip(cursors, evicted, strict=True):
        if mark is not None and version_key(text(mark)) > after:
            lost.append((topic, text(mark)))
        elif first is not None and not is_start(after) and after < first:
            lost.append((topic, None))
    return lost


def horizon(batches: dict[str, list[tuple[VersionKey, str, bytes]]], count: int) -> VersionKey | None:
    """How far a multi-Stream read may be delivered in order.

    Each Stream answers at most ``count`` entries. A Stream that answered ``count`` may hold more right after its
    last one, older than what other Streams answered: only entries up to the smallest such last id are safe to
    deliver now (the rest comes with the next read). None: everything answered is safe.
    """
    full = [entries[-1][0] for entries in batches.values() if len(entries) >= count]
    return min(full) if full else None
