"""The in-process store: one gateway process (the default).

Each key's record is an entry in a dict and a spool file; claims are decided
without an ``await`` between the look-up and the insert, so concurrent
requests in the process agree on one owner. Followers read the owner's spool
itself, live or done. A finished result stays for ``retention`` (a sweeper
removes expired ones, files included); a result too large to keep, or one that
never finished, leaves only its verdict for the retention (for the 409).

Nothing survives a restart, and several worker processes (``--workers``) do
not share keys: use the Redis store for those.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import time
from dataclasses import dataclass

from pixelgate.proxy.config import IdempotencyConfig
from pixelgate.proxy.idempotency.spool import Spool
from pixelgate.proxy.idempotency.store import Claim, Ending, Follow, Head, Own, Refused

__all__ = ["MemoryStore"]

_Key = tuple[str, str]


@dataclass(slots=True)
class _Entry:
    fingerprint: str
    spool: Spool
    # Set by finish(): how it ended (replayable only if COMPLETE), and until when it is kept.
    ending: Ending | None = None
    expires_at: float = float("inf")


class MemoryStore:
    def __init__(self, config: IdempotencyConfig, root: str) -> None:
        self._retention = config.retention
        self.max_response_bytes = config.max_response_bytes
        self._root = root
        self._entries: dict[_Key, _Entry] = {}
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep())

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        for entry in self._entries.values():
            entry.spool.remove()
        self._entries.clear()

    async def claim(self, scope: str, digest: str, fingerprint: str) -> Claim:
        key = (scope, digest)
        entry = self._entries.get(key)
        if entry is not None and entry.expires_at <= time.monotonic():
            self._drop(key, entry)
            entry = None
        if entry is None:
            spool = Spool(os.path.join(self._root, secrets.token_hex(12)))
            entry = self._entries[key] = _Entry(fingerprint, spool)
            return Own(_Owner(self, key, entry))
        if entry.fingerprint != fingerprint:
            return Refused("mismatch")
        if entry.ending is Ending.TOO_LARGE:
            return Refused("too_large")
        if entry.ending is not None and entry.ending is not Ending.COMPLETE:
            return Refused("incomplete")
        return Follow(entry.spool.reader(), live=entry.ending is None)

    def _finished(self, key: _Key, entry: _Entry, ending: Ending) -> None:
        entry.spool.finish(ending)
        if ending is Ending.COMPLETE and entry.spool.size > self.max_response_bytes:
            ending = Ending.TOO_LARGE
        entry.ending = ending
        entry.expires_at = time.monotonic() + self._retention
        if ending is not Ending.COMPLETE:
            # Only the verdict is kept; readers already following finish reading.
            entry.spool.remove()

    def _released(self, key: _Key, entry: _Entry) -> None:
        entry.spool.release()
        self._drop(key, entry)

    def _drop(self, key: _Key, entry: _Entry) -> None:
        if self._entries.get(key) is entry:
            del self._entries[key]
        entry.spool.remove()

    async def _sweep(self) -> None:
        interval = min(60.0, max(self._retention / 4, 0.05))
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for key, entry in [(k, e) for k, e in self._entries.items() if e.expires_at <= now]:
                self._drop(key, entry)


class _Owner:
    __slots__ = ("_entry", "_key", "_store")

    def __init__(self, store: MemoryStore, key: _Key, entry: _Entry) -> None:
        self._store = store
        self._key = key
        self._entry = entry

    @property
    def local(self) -> Spool:
        return self._entry.spool

    async def head(self, head: Head) -> None:
        self._entry.spool.set_head(head)

    async def write(self, data: bytes | memoryview) -> None:
        self._entry.spool.write(data)

    async def finish(self, ending: Ending) -> None:
        if self._entry.ending is None:
            self._store._finished(self._key, self._entry, ending)

    async def release(self) -> None:
        self._store._released(self._key, self._entry)
