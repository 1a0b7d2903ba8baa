"""The Redis job store: job records shared by every worker and replica.

Keys (``<prefix>`` is ``access.redis.prefix``):

- ``job:<id>``  hash: ``rec``, the record whole (msgpack, ``store.encode``),
  and the columns beside it (``key``, ``created``, ``status``, ``fin``,
  ``owner``, ``lease``, ``cancel``; see ``proxy.jobs.store``). A field that is
  None is absent;
- ``jobs:key:<k>``  zset of the key's job ids by created_at, for ``list``
  (``<k>`` is ``=<name>``, or ``-`` for jobs without a key);
- ``jobs:active:<k>``  set of the key's non-final job ids, for the cap;
- ``jobs:leases``  zset of every non-final job id by lease_until, for
  ``recoverable``;
- ``jobs:finished``  zset of every final job id by finished_at, for ``sweep``;
- ``jobs:counts``  hash: jobs per status, for ``count_by_status``.

Every operation that changes a record is one Lua script (EVALSHA through
``register_script``), which Redis runs atomically: a claim's "is it free?" and
its write, a capped create's count and its insert, an update's owner check and
its write can never be split by another replica's call, and the indexes and
counts change in the same step as the record, so they never disagree with it.
There is no TTL on a record: a final job is removed by ``sweep``, which returns
it so that the caller deletes its stored objects (an expiry would drop the
record and leak the objects it names).

Scripts name the records they touch from ids (``list``, ``renew`` and
``sweep`` touch many), so the store needs one Redis (a primary, as every other
shared backend of the gateway), not a Redis Cluster.

Numbers go to Redis as Python's ``repr`` of the float and come back through
``float()``; scripts compare them with ``tonumber`` but store the strings they
were given, never Lua's 14-digit ``tostring``, so times round-trip exactly.

Every call is bounded (``timeout``, beyond the client's own socket timeouts);
a connection error, a timeout, or a Redis that refuses writes (read-only
replica, out of memory) is ``JobStoreUnavailable``, whose message names host
and port, never the URL's password. Any other Redis error is a bug and is
raised as it is.
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import Awaitable, Iterable, Sequence
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis import exceptions as redis_errors

from pixelgate.proxy.jobs.model import FINAL, Job, JobStatus
from pixelgate.proxy.jobs.store import Columns, JobStoreUnavailable, check_record, decode, encode

__all__ = ["RedisJobStore"]

T = TypeVar("T")

# Redis gone, slow, or refusing writes (a replica, out of memory); other Redis errors are bugs.
_UNAVAILABLE = (
    redis_errors.ConnectionError, redis_errors.TimeoutError, redis_errors.ReadOnlyError, redis_errors.OutOfMemoryError,
    redis_errors.ClusterDownError, OSError, TimeoutError,
)

# The hash fields a script returns for a record, in Columns' order, then the record.
_FIELDS = ("key", "created", "status", "fin", "owner", "lease", "cancel", "rec")

# Shared by every script. ARGV[1] is always the prefix.
_LIB = (
    "local FINAL = {" + ", ".join(f"{s.value} = true" for s in sorted(FINAL, key=list(JobStatus).index)) + "}\n"
    + f"local QUEUED, CANCELLED = '{JobStatus.QUEUED.value}', '{JobStatus.CANCELLED.value}'\n"
    + "local FIELDS = {" + ", ".join(f"'{f}'" for f in _FIELDS) + "}\n"
    + """
local KEY, CREATED, STATUS, FIN, OWNER, LEASE, CANCEL = 1, 2, 3, 4, 5, 6, 7
local P = ARGV[1]
local LEASES, FINISHED, COUNTS = P .. 'jobs:leases', P .. 'jobs:finished', P .. 'jobs:counts'

-- An optional string as the caller sends it: '' for None, '=' and the value otherwise.
local function opt(s)
  if s == '' then return false end
  return string.sub(s, 2)
end
local function record_key(id) return P .. 'job:' .. id end
local function tag(key)
  if key then return '=' .. key end
  return '-'
end
local function list_key(key) return P .. 'jobs:key:' .. tag(key) end
local function active_key(key) return P .. 'jobs:active:' .. tag(key) end

-- The record's fields (FIELDS order; false where absent), or nil when there is no such job.
local function read(id)
  local h = redis.call('HMGET', record_key(id), unpack(FIELDS))
  if not h[CREATED] then return nil end
  return h
end

-- A job's status changed from old to new: counts, and the indexes of non-final and final jobs.
local function moved(id, key, old, new, fin)
  if old ~= new then
    redis.call('HINCRBY', COUNTS, old, -1)
    redis.call('HINCRBY', COUNTS, new, 1)
  end
  if FINAL[new] and not FINAL[old] then
    redis.call('ZREM', LEASES, id)
    redis.call('SREM', active_key(key), id)
    redis.call('ZADD', FINISHED, fin, id)
  end
end
"""
)

_CREATE = _LIB + """
-- ARGV: prefix, id, record, key?, created, status, fin?, owner?, lease, cancel, cap ('' for none)
local id, key, created, status, fin, owner, lease = ARGV[2], opt(ARGV[4]), ARGV[5], ARGV[6], opt(ARGV[7]), opt(ARGV[8]), ARGV[9]
local rk = record_key(id)
local cap = tonumber(ARGV[11])
if cap and redis.call('SCARD', active_key(key)) >= cap then return 0 end
if redis.call('EXISTS', rk) == 1 then return -1 end
local fields = {'rec', ARGV[3], 'created', created, 'status', status, 'lease', lease, 'cancel', ARGV[10]}
if key then table.insert(fields, 'key'); table.insert(fields, key) end
if fin then table.insert(fields, 'fin'); table.insert(fields, fin) end
if owner then table.insert(fields, 'owner'); table.insert(fields, owner) end
redis.call('HSET', rk, unpack(fields))
redis.call('ZADD', list_key(key), created, id)
redis.call('HINCRBY', COUNTS, status, 1)
if FINAL[status] then
  redis.call('ZADD', FINISHED, fin, id)
else
  redis.call('SADD', active_key(key), id)
  redis.call('ZADD', LEASES, lease, id)
end
return 1
"""

_CLAIM = _LIB + """
-- ARGV: prefix, id, owner, lease_until, now
local id, owner, lease = ARGV[2], ARGV[3], ARGV[4]
local h = read(id)
if not h or FINAL[h[STATUS]] then return false end
if h[OWNER] and h[OWNER] ~= owner and tonumber(h[LEASE]) >= tonumber(ARGV[5]) then return false end
redis.call('HSET', record_key(id), 'owner', owner, 'lease', lease)
redis.call('ZADD', LEASES, lease, id)
h[OWNER], h[LEASE] = owner, lease
return h
"""

# The lease is the owner's (claim, renew) unless the record gives the job up, and a cancel
# request stays: see proxy.jobs.store.
_UPDATE = _LIB + """
-- ARGV: prefix, id, owner, record, status, fin?, cancel, release (the lease_until it leaves, or '')
local id, status, fin, release = ARGV[2], ARGV[5], opt(ARGV[6]), opt(ARGV[8])
local h = read(id)
if not h or h[OWNER] ~= ARGV[3] or FINAL[h[STATUS]] then return 0 end
local rk = record_key(id)
local cancel = '0'
if h[CANCEL] == '1' or ARGV[7] == '1' then cancel = '1' end
redis.call('HSET', rk, 'rec', ARGV[4], 'status', status, 'cancel', cancel)
if fin then redis.call('HSET', rk, 'fin', fin) else redis.call('HDEL', rk, 'fin') end
if release then
  redis.call('HDEL', rk, 'owner')
  redis.call('HSET', rk, 'lease', release)
  if not FINAL[status] then redis.call('ZADD', LEASES, release, id) end
end
moved(id, h[KEY], h[STATUS], status, fin)
return 1
"""

_RENEW = _LIB + """
-- ARGV: prefix, owner, lease_until, id...; returns the renewed ids with a cancel request
local owner, lease = ARGV[2], ARGV[3]
local cancelled = {}
for i = 4, #ARGV do
  local id = ARGV[i]
  local rk = record_key(id)
  local h = redis.call('HMGET', rk, 'owner', 'status', 'cancel')
  if h[1] == owner and not FINAL[h[2]] then
    redis.call('HSET', rk, 'lease', lease)
    redis.call('ZADD', LEASES, lease, id)
    if h[3] == '1' then table.insert(cancelled, id) end
  end
end
return cancelled
"""

_CANCEL = _LIB + """
-- ARGV: prefix, id, now
local id, now = ARGV[2], ARGV[3]
local h = read(id)
if not h then return false end
if FINAL[h[STATUS]] then return h end
local rk = record_key(id)
if h[STATUS] == QUEUED and (not h[OWNER] or tonumber(h[LEASE]) < tonumber(now)) then
  -- Nobody runs it: it ends here.
  redis.call('HSET', rk, 'status', CANCELLED, 'fin', now)
  redis.call('HDEL', rk, 'owner')
  moved(id, h[KEY], h[STATUS], CANCELLED, now)
  h[STATUS], h[FIN], h[OWNER] = CANCELLED, now, false
else
  -- Its owner stops it (it learns at its next renewal), or whoever recovers it does.
  redis.call('HSET', rk, 'cancel', '1')
  h[CANCEL] = '1'
end
return h
"""

_LIST = _LIB + """
-- ARGV: prefix, key?, max (exclusive), limit
local ids = redis.call('ZREVRANGEBYSCORE', list_key(opt(ARGV[2])), ARGV[3], '-inf', 'LIMIT', 0, ARGV[4])
local out = {}
for _, id in ipairs(ids) do
  local h = read(id)
  if h then table.insert(out, h) end
end
return out
"""

# One script: two sweepers never both get (and both delete the objects of) one job.
_SWEEP = _LIB + """
-- ARGV: prefix, finished before (exclusive), limit
local ids = redis.call('ZRANGEBYSCORE', FINISHED, '-inf', ARGV[2], 'LIMIT', 0, ARGV[3])
local out = {}
for _, id in ipairs(ids) do
  local h = read(id)
  redis.call('ZREM', FINISHED, id)
  if h then
    redis.call('DEL', record_key(id))
    redis.call('ZREM', list_key(h[KEY]), id)
    redis.call('HINCRBY', COUNTS, h[STATUS], -1)
    table.insert(out, h)
  end
end
return out
"""


def _num(value: float) -> str:
    # repr() is the shortest string that reads back as the same float.
    return repr(float(value))


def _opt(value: str | float | None) -> str:
    """An optional value for a script (see ``opt`` in the scripts)."""
    if value is None:
        return ""
    return "=" + (value if isinstance(value, str) else _num(value))


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode()


def _ids(values: Iterable[Any]) -> list[str]:
    return [value.decode() for value in values]


def _job(fields: Sequence[Any]) -> Job:
    key, created, status, fin, owner, lease, cancel, record = fields
    # A script returns a record only when it exists (created is set), and these are written with it.
    assert created is not None and status is not None and lease is not None and record is not None
    columns = Columns(
        _text(key), float(created), JobStatus(status.decode()), None if fin is None else float(fin),
        _text(owner), float(lease), cancel == b"1",
    )
    return decode(record, columns)


class RedisJobStore:
    """Needs a client that answers bytes in RESP2 (``decode_responses`` off, the default protocol: as
    ``proxy.access.redis_client.connect`` makes it). The store takes the client over: ``close`` closes it."""

    def __init__(self, client: aioredis.Redis, prefix: str, *, timeout: float = 1.0) -> None:
        self._client = client
        self._prefix = prefix
        # The longest one call may take, whatever the client's socket timeouts and retries.
        self._timeout = timeout
        kwargs = client.connection_pool.connection_kwargs
        # Redacted from messages as a last guard (redis-py's own messages name only host and port).
        self._secrets = tuple(s for s in (kwargs.get("password"), kwargs.get("username")) if s)
        self._create = client.register_script(_CREATE)
        self._claim = client.register_script(_CLAIM)
        self._update = client.register_script(_UPDATE)
        self._renew = client.register_script(_RENEW)
        self._cancel = client.register_script(_CANCEL)
        self._list = client.register_script(_LIST)
        self._sweep = client.register_script(_SWEEP)

    async def _call(self, aw: Awaitable[T]) -> T:
        """One Redis call, bounded; a Redis that cannot be reached or written is JobStoreUnavailable."""
        try:
            async with asyncio.timeout(self._timeout):
                return await aw
        except _UNAVAILABLE as exc:
            message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            for secret in self._secrets:
                message = message.replace(secret, "***")
            raise JobStoreUnavailable(f"the Redis job store cannot be reached: {message}") from None

    async def start(self) -> None:
        await self._call(self._client.ping())

    async def close(self) -> None:
        await self._client.aclose()

    async def create(self, job: Job, max_active_per_key: int | None) -> bool:
        check_record(job)
        args: list[str | bytes] = [
            self._prefix, job.id, encode(job), _opt(job.key), _num(job.created_at), job.status.value, _opt(job.finished_at),
            _opt(job.owner), _num(job.lease_until), "1" if job.cancel_requested else "0",
            "" if max_active_per_key is None else str(max_active_per_key),
        ]
        created = await self._call(self._create(args=args))
        if created == -1:
            raise ValueError(f"job {job.id} exists already")
        return bool(created)

    async def get(self, job_id: str) -> Job | None:
        fields = await self._call(self._client.hmget(f"{self._prefix}job:{job_id}", _FIELDS))
        return _job(fields) if fields[1] is not None else None

    async def list(self, key: str | None, limit: int, before: float | None = None) -> builtins.list[Job]:
        if limit <= 0:
            return []  # a count below 0 would be no limit at all
        until = "+inf" if before is None else "(" + _num(before)
        rows = await self._call(self._list(args=[self._prefix, _opt(key), until, limit]))
        return [_job(row) for row in rows]

    async def claim(self, job_id: str, owner: str, lease_until: float, now: float) -> Job | None:
        row = await self._call(self._claim(args=[self._prefix, job_id, owner, _num(lease_until), _num(now)]))
        return _job(row) if row else None

    async def update(self, job: Job, owner: str) -> bool:
        check_record(job)
        args: list[str | bytes] = [
            self._prefix, job.id, owner, encode(job), job.status.value, _opt(job.finished_at),
            "1" if job.cancel_requested else "0", _opt(job.lease_until if job.owner is None else None),
        ]
        return bool(await self._call(self._update(args=args)))

    async def renew(self, job_ids: builtins.list[str], owner: str, lease_until: float) -> builtins.list[str]:
        if not job_ids:
            return []
        cancelled = await self._call(self._renew(args=[self._prefix, owner, _num(lease_until), *job_ids]))
        return _ids(cancelled)

    async def request_cancel(self, job_id: str, now: float) -> Job | None:
        row = await self._call(self._cancel(args=[self._prefix, job_id, _num(now)]))
        return _job(row) if row else None

    async def recoverable(self, now: float, limit: int) -> builtins.list[str]:
        if limit <= 0:
            return []
        ids = await self._call(self._client.zrangebyscore(f"{self._prefix}jobs:leases", "-inf", "(" + _num(now), start=0, num=limit))
        return _ids(ids)

    async def sweep(self, finished_before: float, limit: int) -> builtins.list[Job]:
        if limit <= 0:
            return []
        rows = await self._call(self._sweep(args=[self._prefix, "(" + _num(finished_before), limit]))
        return [_job(row) for row in rows]

    async def count_by_status(self) -> dict[JobStatus, int]:
        counts = await self._call(self._client.hgetall(f"{self._prefix}jobs:counts"))
        return {status: int(counts.get(status.value.encode(), 0)) for status in JobStatus}
