"""Limit state in Redis, shared by every worker and replica.

Each decision is one Lua script (EVALSHA via ``register_script``), which Redis
runs atomically: two replicas can never both take the last slot. Time is
Redis's own clock (``TIME``), so replicas with skewed clocks agree.

Per key name, under one cluster hash tag (``<prefix>{<name>}:...``) so a
script's keys share a slot:

- ``:req``  sliding log of admitted requests (ZSET, member = ticket id, score = ms);
- ``:img``  sliding log of admitted images (member ``<ticket id>:<i>``);
- ``:streams`` stream-slot leases (member = ticket id, score = lease expiry in ms).
  A replica refreshes its leases every third of ``lease_seconds``; one that dies
  stops refreshing, and its slots free themselves when their leases expire;
- ``:spent:<period>`` the period's spend in micro-USD (INCRBY), expiring a day
  after the period ends.

Every call has a short timeout (``access.redis.timeout``) and at most one
retry, so a dead Redis fails a request in well under a second; the caller
then fails closed or open (``proxy.access.control``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from pixelgate.proxy.access.config import RedisConfig
from pixelgate.proxy.access.limits import (
    WINDOW,
    BackendUnavailable,
    Demand,
    LimitName,
    Period,
    Quota,
    Refused,
    Ticket,
)
from pixelgate.proxy.access.redis_client import connect

__all__ = ["RedisBackend"]

log = logging.getLogger("pixelgate.access_control")

T = TypeVar("T")

_ADMIT = """
-- KEYS: requests log, images log, stream leases, spend counter
-- ARGV: window ms, requests limit, images limit, n, streams limit, lease ms, budget micro-USD, ticket id
-- (a limit of 0 is not enforced)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local rpm, ipm, n = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local streams, lease_ms, budget = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local id = ARGV[8]

local function window_of(key, limit)
  if limit == 0 then return 0, 0 end
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  local count = redis.call('ZCARD', key)
  local reset = 0
  if count > 0 then
    local newest = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
    reset = tonumber(newest[2]) + window - now
  end
  return count, reset
end

local req_count, req_reset = window_of(KEYS[1], rpm)
local img_count, img_reset = window_of(KEYS[2], ipm)
local function refuse(code, wait)
  return {code, wait, req_count, req_reset, img_count, img_reset}
end

if rpm > 0 and req_count + 1 > rpm then
  -- the entry whose expiry frees the slot this request needs
  local e = redis.call('ZRANGE', KEYS[1], req_count - rpm, req_count - rpm, 'WITHSCORES')
  return refuse(1, tonumber(e[2]) + window - now)
end
if ipm > 0 and img_count + n > ipm then
  local wait = window
  if n <= ipm then
    local i = img_count + n - ipm - 1
    local e = redis.call('ZRANGE', KEYS[2], i, i, 'WITHSCORES')
    wait = tonumber(e[2]) + window - now
  end
  return refuse(2, wait)
end
if streams > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  if redis.call('ZCARD', KEYS[3]) >= streams then
    return refuse(3, 1000)
  end
end
if budget > 0 then
  local spent = tonumber(redis.call('GET', KEYS[4]) or '0')
  if spent >= budget then
    return refuse(4, 0)
  end
end

if rpm > 0 then
  redis.call('ZADD', KEYS[1], now, id)
  redis.call('PEXPIRE', KEYS[1], window)
end
if ipm > 0 then
  local args = {}
  for i = 1, n do
    args[#args + 1] = now
    args[#args + 1] = id .. ':' .. i
  end
  redis.call('ZADD', KEYS[2], unpack(args))
  redis.call('PEXPIRE', KEYS[2], window)
end
if streams > 0 then
  redis.call('ZADD', KEYS[3], now + lease_ms, id)
  redis.call('PEXPIRE', KEYS[3], lease_ms)
end
return {0, 0, req_count + 1, window, img_count + n, window}
"""

# KEYS: spend. ARGV: micro-USD the ledger recorded, ttl ms. The counter only ever rises.
_RECONCILE = """
local spent = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > spent then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
return 0
"""

_SETTLE = """
-- KEYS: images log, stream leases, spend counter
-- ARGV: ticket id, images admitted (0: not counted), images returned, release lease (1/0),
--       cost micro-USD, spend expiry (Unix s), window ms
local id = ARGV[1]
local admitted, actual = tonumber(ARGV[2]), tonumber(ARGV[3])
if admitted > 0 and actual < admitted then
  local members = {}
  for i = actual + 1, admitted do members[#members + 1] = id .. ':' .. i end
  redis.call('ZREM', KEYS[1], unpack(members))
elseif admitted > 0 and actual > admitted then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local args = {}
  for i = admitted + 1, actual do
    args[#args + 1] = now
    args[#args + 1] = id .. ':' .. i
  end
  redis.call('ZADD', KEYS[1], unpack(args))
  redis.call('PEXPIRE', KEYS[1], ARGV[7])
end
if ARGV[4] == '1' then
  redis.call('ZREM', KEYS[2], id)
end
local cost = tonumber(ARGV[5])
if cost > 0 then
  redis.call('INCRBY', KEYS[3], cost)
  redis.call('EXPIREAT', KEYS[3], ARGV[6])
end
return 0
"""

_REFRESH = """
-- KEYS: stream leases; ARGV: lease ms, ticket ids (only leases still held are extended)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expiry = now + tonumber(ARGV[1])
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], 'XX', expiry, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 0
"""

_CODES: dict[int, LimitName] = {1: "requests_per_minute", 2: "images_per_minute", 3: "concurrent_streams", 4: "budget"}
_MICRO = 1_000_000
# More images than asked for are counted, within reason.
_MAX_EXTRA_IMAGES = 100


def _micro(usd: float) -> int:
    return round(usd * _MICRO)


class RedisBackend:
    def __init__(self, config: RedisConfig) -> None:
        self._config = config
        self._timeout = config.timeout
        self._lease_ms = round(config.lease_seconds * 1000)
        self._client: aioredis.Redis = connect(config)
        self._admit = self._client.register_script(_ADMIT)
        self._settle = self._client.register_script(_SETTLE)
        self._refresh = self._client.register_script(_REFRESH)
        self._reconcile = self._client.register_script(_RECONCILE)
        # Stream leases this process holds, by key name (refreshed until settled).
        self._leases: dict[str, set[str]] = {}
        self._pending: set[asyncio.Future[Any]] = set()
        self._refresher: asyncio.Task[None] | None = None

    def _key(self, name: str, part: str) -> str:
        return f"{self._config.prefix}{{{name}}}:{part}"

    async def _call(self, aw: Awaitable[T]) -> T:
        """One Redis call, bounded; every failure becomes BackendUnavailable."""
        try:
            # Connect + command, with one retry: never much more than this.
            async with asyncio.timeout(self._timeout * 4):
                return await aw
        except (RedisError, OSError, TimeoutError) as exc:
            # The exception names host and port, never the URL's password.
            raise BackendUnavailable(f"{type(exc).__name__}: {exc}") from None

    async def start(self) -> None:
        self._refresher = asyncio.create_task(self._refresh_leases())
        try:
            await self._call(self._client.ping())
        except BackendUnavailable as exc:
            log.warning("Redis for access limits is not reachable at start-up (%s); on_backend_error applies", exc)

    async def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        if self._pending:
            await asyncio.wait(self._pending, timeout=self._timeout * 8)
        await self._client.aclose()

    async def reconcile_spend(self, key: str, period: Period, spent_usd: float) -> None:
        """Raise the shared counter to the ledger's figure (never lower it: replicas
        may have charged requests the ledger has not flushed yet)."""
        spend_key = self._key(key, f"spent:{period.id}")
        ttl_ms = max(1, round((period.ends_at - time.time()) * 1000)) + 86_400_000
        await self._call(self._reconcile(keys=[spend_key], args=[_micro(spent_usd), ttl_ms]))

    async def admit(self, demand: Demand, ticket_id: str) -> Ticket | Refused:
        limits, name = demand.limits, demand.key
        holds_stream = demand.stream and limits.concurrent_streams is not None
        spend_key = self._key(name, f"spent:{demand.period.id}") if demand.period else self._key(name, "spent")
        args: list[Any] = [
            round(WINDOW * 1000),
            limits.requests_per_minute or 0,
            limits.images_per_minute or 0,
            demand.images,
            limits.concurrent_streams if holds_stream else 0,
            self._lease_ms,
            _micro(limits.budget_usd) if limits.budget_usd is not None and demand.period is not None else 0,
            ticket_id,
        ]
        keys = [self._key(name, "req"), self._key(name, "img"), self._key(name, "streams"), spend_key]
        code, wait, req_count, req_reset, img_count, img_reset = await self._call(self._admit(keys=keys, args=args))
        rpm, ipm = limits.requests_per_minute, limits.images_per_minute
        requests = Quota(rpm, rpm - int(req_count), int(req_reset) / 1000) if rpm is not None else None
        images = Quota(ipm, ipm - int(img_count), int(img_reset) / 1000) if ipm is not None else None
        if code:
            limit = _CODES[int(code)]
            if limit == "budget" and demand.period is not None:
                return Refused(limit, demand.period.ends_at - time.time(), requests, images)
            return Refused(limit, int(wait) / 1000, requests, images)
        if holds_stream:
            self._leases.setdefault(name, set()).add(ticket_id)
        return Ticket(demand, ticket_id, holds_stream, requests, images)

    async def settle(self, ticket: Ticket, images: int, cost_usd: float) -> None:
        demand = ticket.demand
        if ticket.holds_stream:
            # Stop refreshing at once, whatever happens to the call below.
            held = self._leases.get(demand.key)
            if held is not None:
                held.discard(ticket.id)
                if not held:
                    del self._leases[demand.key]
        admitted = demand.images if demand.limits.images_per_minute is not None else 0
        cost = _micro(cost_usd) if demand.period is not None else 0
        if not (ticket.holds_stream or cost > 0 or (admitted and images != admitted)):
            return
        name = demand.key
        period = demand.period
        keys = [self._key(name, "img"), self._key(name, "streams"), self._key(name, f"spent:{period.id}" if period else "spent")]
        args: list[Any] = [
            ticket.id,
            admitted,
            min(images, admitted + _MAX_EXTRA_IMAGES),
            1 if ticket.holds_stream else 0,
            cost,
            # Kept a day past the period's end, for whoever looks.
            int(period.ends_at) + 86400 if period else 0,
            round(WINDOW * 1000),
        ]
        # Shielded and tracked: a second cancellation of the handler must not
        # cut the release short, and close() waits for it.
        task = asyncio.ensure_future(self._call(self._settle(keys=keys, args=args)))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        await asyncio.shield(task)

    async def _refresh_leases(self) -> None:
        interval = self._lease_ms / 3000
        while True:
            await asyncio.sleep(interval)
            for name, ids in list(self._leases.items()):
                if not ids:
                    continue
                try:
                    await self._call(self._refresh(keys=[self._key(name, "streams")], args=[self._lease_ms, *ids]))
                except BackendUnavailable as exc:
                    log.warning("could not refresh stream leases (%s); they expire in %g s", exc, self._lease_ms / 1000)
