"""The Redis store: idempotency keys shared by every worker and replica.

Per key, under one cluster hash tag (``<prefix>idem:{<scope>:<sha256>}:...``):

- ``:meta``  hash: fingerprint, owner token, state (running / done), ending;
- ``:lock``  the owner's token, ``SET NX PX``: held while the request runs and
  refreshed every third of ``access.redis.lease_seconds``; a replica that dies
  stops refreshing it, and the next request with the key finds the record
  running without its lock and marks it lost (a 409, never a second run);
- ``:fence`` ``INCR`` counter: each owner's token is the next value (the
  fencing token). Every write is a Lua script that first checks that the lock
  still holds the writer's token, so an owner that lost its lock (a pause
  longer than the lease) can no longer touch the record;
- ``:body``  a Redis stream: the head, the response's bytes as written (one
  entry per write) and its end, each entry tagged with the owner's token.
  Followers, on any replica, read it from the start with ``XREAD BLOCK``; the
  end entry tells them how it ended. It is bounded by
  ``idempotency.max_response_bytes``: past that, the recording stops (the
  stream is emptied, its end says too_large) and only the owner's own client,
  which reads a spool on the owner's local disk, gets the rest.

So recorded responses live in Redis itself: correct across replicas with no
shared filesystem, at the cost of Redis memory (up to max_response_bytes per
key for the retention). Every call is bounded by ``access.redis.timeout``; a
store that cannot be reached refuses the request with a 503, never runs it
unguarded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from collections import deque
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
from redis.exceptions import RedisError

from pixelgate.proxy.access.config import RedisConfig
from pixelgate.proxy.access.redis_client import connect
from pixelgate.proxy.config import IdempotencyConfig
from pixelgate.proxy.idempotency.spool import Spool
from pixelgate.proxy.idempotency.store import Busy, Claim, Ending, Follow, Head, Own, Refused, StoreUnavailable

__all__ = ["RedisStore"]

log = logging.getLogger("pixelgate.idempotency")

T = TypeVar("T")

_CLAIM = """
-- KEYS: meta, lock, body, fence
-- ARGV: fingerprint, lease ms, hold ms (expiry while running), fence ms
local fp = redis.call('HGET', KEYS[1], 'fp')
if not fp then
  local token = tostring(redis.call('INCR', KEYS[4]))
  redis.call('PEXPIRE', KEYS[4], ARGV[4])
  if not redis.call('SET', KEYS[2], token, 'NX', 'PX', ARGV[2]) then
    return {'busy'}
  end
  -- a previous owner's entries go; the stream keeps its last id, so ids only grow
  redis.call('XTRIM', KEYS[3], 'MAXLEN', 0)
  redis.call('HSET', KEYS[1], 'fp', ARGV[1], 'token', token, 'state', 'running')
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return {'owner', token}
end
if fp ~= ARGV[1] then
  return {'mismatch'}
end
local token = redis.call('HGET', KEYS[1], 'token')
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'running' and redis.call('EXISTS', KEYS[2]) == 0 then
  -- the owner's lease ran out before it finished: it is gone
  redis.call('XADD', KEYS[3], '*', 't', token, 'k', 'e', 'v', 'lost')
  redis.call('PEXPIRE', KEYS[3], ARGV[3])
  redis.call('HSET', KEYS[1], 'state', 'done', 'ending', 'lost')
  state = 'done'
end
return {'follow', token, state, redis.call('HGET', KEYS[1], 'ending') or ''}
"""

_APPEND = """
-- KEYS: lock, body; ARGV: token, kind, value, hold ms
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('XADD', KEYS[2], '*', 't', ARGV[1], 'k', ARGV[2], 'v', ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return 1
"""

_FINISH = """
-- KEYS: lock, body, meta; ARGV: token, ending, retention ms, drop the bytes (1/0)
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[4] == '1' then redis.call('XTRIM', KEYS[2], 'MAXLEN', 0) end
redis.call('XADD', KEYS[2], '*', 't', ARGV[1], 'k', 'e', 'v', ARGV[2])
redis.call('HSET', KEYS[3], 'state', 'done', 'ending', ARGV[2])
redis.call('PEXPIRE', KEYS[3], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('DEL', KEYS[1])
return 1
"""

_RELEASE = """
-- KEYS: lock, body, meta; ARGV: token, ms the end entry stays for followers
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('XADD', KEYS[2], '*', 't', ARGV[1], 'k', 'e', 'v', 'released')
redis.call('PEXPIRE', KEYS[2], ARGV[2])
redis.call('DEL', KEYS[3], KEYS[1])
return 1
"""

_REFRESH = """
-- KEYS: lock, meta, body; ARGV: token, lease ms, hold ms
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('PEXPIRE', KEYS[3], ARGV[3])
return 1
"""

_CHECK = """
-- KEYS: meta, lock, body; ARGV: token, hold ms
-- For a follower that heard nothing for a while: is its owner still there?
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then return 'gone' end
if redis.call('HGET', KEYS[1], 'state') ~= 'running' then return 'done' end
if redis.call('EXISTS', KEYS[2]) == 1 then return 'alive' end
redis.call('XADD', KEYS[3], '*', 't', ARGV[1], 'k', 'e', 'v', 'lost')
redis.call('PEXPIRE', KEYS[3], ARGV[2])
redis.call('HSET', KEYS[1], 'state', 'done', 'ending', 'lost')
return 'lost'
"""

# A follower blocks this long per read, then checks that its owner lives.
_BLOCK_MS = 1000
# Entries per read (each at most one relay write, a few hundred KiB).
_COUNT = 8
# A released key's end entry stays this long for followers to read it.
_RELEASED_MS = 60_000
_ENDINGS = {e.value.encode(): e for e in Ending}


@dataclass(frozen=True, slots=True)
class _Keys:
    meta: str
    lock: str
    body: str
    fence: str


class RedisStore:
    def __init__(self, redis: RedisConfig, config: IdempotencyConfig, root: str) -> None:
        self._prefix = redis.prefix
        self._timeout = redis.timeout
        self._lease_ms = round(redis.lease_seconds * 1000)
        self._retention_ms = round(config.retention * 1000)
        # A running record must outlive its lock, whatever the retention.
        self._hold_ms = max(self._retention_ms, 2 * self._lease_ms)
        self.max_response_bytes = config.max_response_bytes
        self._root = root
        self._client = connect(redis)
        # Followers' XREAD BLOCK waits longer than a command may take.
        self._blocking = connect(redis, _BLOCK_MS / 1000 + redis.timeout * 4)
        self._claim = self._client.register_script(_CLAIM)
        self._append = self._client.register_script(_APPEND)
        self._finish = self._client.register_script(_FINISH)
        self._release = self._client.register_script(_RELEASE)
        self._refresh = self._client.register_script(_REFRESH)
        self._check = self._client.register_script(_CHECK)
        self._owners: set[_Owner] = set()
        self._pending: set[asyncio.Future[Any]] = set()
        self._refresher: asyncio.Task[None] | None = None

    def _keys(self, scope: str, digest: str) -> _Keys:
        base = f"{self._prefix}idem:{{{scope}:{digest}}}:"
        return _Keys(base + "meta", base + "lock", base + "body", base + "fence")

    async def _call(self, aw: Awaitable[T], timeout: float | None = None) -> T:
        """One Redis call, bounded; every failure becomes StoreUnavailable."""
        try:
            async with asyncio.timeout(timeout or self._timeout * 4):
                return await aw
        except (RedisError, OSError, TimeoutError) as exc:
            # The exception names host and port, never the URL's password.
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from None

    async def _settled(self, aw: Awaitable[Any]) -> Any:
        """A call that must not be cut short by the caller's cancellation (close() waits for it)."""
        task = asyncio.ensure_future(self._call(aw))
        self._pending.add(task)
        task.add_done_callback(self._done)
        try:
            return await asyncio.shield(task)
        except StoreUnavailable as exc:
            log.warning("idempotency: could not record a result in Redis (%s); retries will find it lost", exc)
            return None

    def _done(self, task: asyncio.Future[Any]) -> None:
        self._pending.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved (and logged by _settled when someone waited)

    async def start(self) -> None:
        self._refresher = asyncio.create_task(self._refresh_locks())
        try:
            await self._call(self._client.ping())
        except StoreUnavailable as exc:
            log.warning("Redis for idempotency keys is not reachable at start-up (%s); requests with a key get 503", exc)

    async def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        if self._pending:
            await asyncio.wait(self._pending, timeout=self._timeout * 8)
        await self._client.aclose()
        await self._blocking.aclose()

    async def claim(self, scope: str, digest: str, fingerprint: str) -> Claim:
        keys = self._keys(scope, digest)
        args: list[Any] = [fingerprint, self._lease_ms, self._hold_ms, 2 * self._hold_ms]
        reply = await self._call(self._claim(keys=[keys.meta, keys.lock, keys.body, keys.fence], args=args))
        kind = reply[0]
        if kind == b"owner":
            owner = _Owner(self, keys, reply[1], Spool(os.path.join(self._root, secrets.token_hex(12))))
            self._owners.add(owner)
            return Own(owner)
        if kind == b"busy":
            return Busy()
        if kind == b"mismatch":
            return Refused("mismatch")
        token, state, ending = reply[1], reply[2], reply[3]
        if state == b"done" and ending != b"complete":
            return Refused("too_large" if ending == b"too_large" else "incomplete")
        return Follow(_Source(self, keys, token), live=state != b"done")

    async def _read(self, body: str, last: bytes) -> list[tuple[bytes, dict[bytes, bytes]]]:
        timeout = _BLOCK_MS / 1000 + self._timeout * 8
        reply: Any = await self._call(self._blocking.xread({body: last}, count=_COUNT, block=_BLOCK_MS), timeout)
        # RESP2: [[stream, [(id, {field: value}), ...]]], nothing when the block timed out.
        return list(reply[0][1]) if reply else []

    async def _status(self, keys: _Keys, token: bytes) -> bytes:
        """For a follower that heard nothing: alive, lost (marked so now), done, or gone (no longer this owner's)."""
        status: bytes = await self._call(self._check(keys=[keys.meta, keys.lock, keys.body], args=[token, self._hold_ms]))
        return status

    async def _refresh_locks(self) -> None:
        interval = self._lease_ms / 3000
        while True:
            await asyncio.sleep(interval)
            for owner in list(self._owners):
                await owner.refresh()


class _Owner:
    __slots__ = ("_keys", "_local", "_recording", "_size", "_store", "_token")

    def __init__(self, store: RedisStore, keys: _Keys, token: bytes, local: Spool) -> None:
        self._store = store
        self._keys = keys
        self._token = token
        self._local = local
        self._size = 0
        # Still writing to Redis (stops at the end, past the size limit, or when the lock is lost).
        self._recording = True

    @property
    def local(self) -> Spool:
        return self._local

    async def head(self, head: Head) -> None:
        self._local.set_head(head)
        await self._add(b"h", msgspec.json.encode(head))

    async def write(self, data: bytes | memoryview) -> None:
        self._local.write(data)
        if not self._recording:
            return
        self._size += memoryview(data).nbytes
        if self._size > self._store.max_response_bytes:
            await self._end(Ending.TOO_LARGE)
            return
        await self._add(b"d", bytes(data))

    async def finish(self, ending: Ending) -> None:
        self._local.finish(ending)
        if self._recording:
            await self._end(ending)
        self._local.remove()

    async def release(self) -> None:
        self._local.release()
        if self._recording:
            self._stop()
            store, keys = self._store, self._keys
            await store._settled(store._release(keys=[keys.lock, keys.body, keys.meta], args=[self._token, _RELEASED_MS]))
        self._local.remove()

    async def refresh(self) -> None:
        store, keys = self._store, self._keys
        try:
            held = await store._call(
                store._refresh(keys=[keys.lock, keys.meta, keys.body], args=[self._token, store._lease_ms, store._hold_ms])
            )
        except StoreUnavailable as exc:
            log.warning("idempotency: could not refresh a key's lock (%s); it expires in %g s", exc, store._lease_ms / 1000)
            return
        if not held and self._recording:
            self._stop("lost its lock in Redis (it expired)")

    async def _end(self, ending: Ending) -> None:
        self._stop()
        store, keys = self._store, self._keys
        drop = "0" if ending is Ending.COMPLETE else "1"
        await store._settled(
            store._finish(keys=[keys.lock, keys.body, keys.meta], args=[self._token, ending.value, store._retention_ms, drop])
        )

    async def _add(self, kind: bytes, value: bytes) -> None:
        if not self._recording:
            return
        store, keys = self._store, self._keys
        try:
            ok = await store._call(store._append(keys=[keys.lock, keys.body], args=[self._token, kind, value, store._hold_ms]))
        except StoreUnavailable as exc:
            self._stop(f"could not write to Redis ({exc})")
            return
        if not ok:
            self._stop("lost its lock in Redis (it expired)")

    def _stop(self, why: str | None = None) -> None:
        if why is not None and self._recording:
            log.warning("idempotency: a request %s; its own client gets the whole response, retries will not", why)
        self._recording = False
        self._store._owners.discard(self)


class _Source:
    """A recorded response in Redis, read from its start, following it while it runs."""

    __slots__ = ("_entries", "_keys", "_last", "_store", "_token", "ending")

    def __init__(self, store: RedisStore, keys: _Keys, token: bytes) -> None:
        self._store = store
        self._keys = keys
        self._token = token
        self._last = b"0"
        self._entries: deque[dict[bytes, bytes]] = deque()
        self.ending: Ending | None = None

    async def _next(self) -> tuple[bytes, bytes] | None:
        """The next entry of this owner: (kind, value); None once there is none to come
        (``ending`` None: the record is no longer this owner's; LOST: its entries are gone)."""
        while not self._entries:
            batch = await self._store._read(self._keys.body, self._last)
            for entry_id, fields in batch:
                self._last = entry_id
                self._entries.append(fields)
            if batch:
                break
            status = await self._store._status(self._keys, self._token)
            if status == b"gone":
                return None
            if status == b"done":
                # Done, yet no end entry to read: the stream expired before its record.
                self.ending = Ending.LOST
                return None
        fields = self._entries.popleft()
        if fields.get(b"t") != self._token:
            return None
        return fields[b"k"], fields[b"v"]

    async def head(self) -> Head | None:
        while True:
            entry = await self._next()
            if entry is None:
                return None  # ending None: released (or replaced), claim again
            kind, value = entry
            if kind == b"h":
                return msgspec.json.decode(value, type=Head)
            if kind == b"e":
                self.ending = _ENDINGS.get(value)
                return None

    async def read(self) -> bytes | None:
        while True:
            entry = await self._next()
            if entry is None:
                self.ending = Ending.LOST
                return None
            kind, value = entry
            if kind == b"d":
                return value
            if kind == b"e":
                # "released" after the head: the gateway stopped it (shutdown).
                self.ending = _ENDINGS.get(value, Ending.LOST)
                return None

    def close(self) -> None:
        pass
