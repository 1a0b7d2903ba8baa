"""What every store shares: the stored object's record, object ids, the streaming writer, the ``Storage`` base.

An object id is 44 lowercase hex digits: the creation time in milliseconds
(12 digits) and 128 random bits. The random part makes it unguessable; the
time part makes a listing sorted by name a listing sorted by age, so the
sweeper reads only the expired head of it, and an object past its retention is
refused from its id alone, before any I/O.

A write goes to a backend's ``Sink`` chunk by chunk; the writer counts the
bytes and hashes them as they pass. The object exists only once the
``async with`` block ends without an exception; on any failure (in the block,
or in the store) the sink is aborted and nothing is left behind. A write that
spans calls (a response body written piece by piece) holds the writer from
``open_writer`` and ends it itself with ``commit`` or ``abort``.
"""

from __future__ import annotations

import abc
import hashlib
import re
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import msgspec

from pixelgate.proxy.storage.config import StorageConfig
from pixelgate.proxy.storage.signing import UrlSigner

__all__ = [
    "ObjectTooLarge",
    "ObjectWriter",
    "Opened",
    "Sink",
    "Storage",
    "StorageError",
    "StoredObject",
    "created_ms",
    "is_object_id",
    "new_object_id",
]

_ID = re.compile(r"^[0-9a-f]{44}$")
# type/subtype, no parameters: what the store records and the file route sends.
_CONTENT_TYPE = re.compile(r"^[a-z]+/[a-z0-9][a-z0-9.+-]{0,126}$")


class StorageError(Exception):
    """The store failed (I/O, the S3 service); the object was not written."""


class ObjectTooLarge(StorageError):
    """A write went past ``storage.max_object_bytes``."""


class StoredObject(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    """The record of one stored object (also its sidecar file, as JSON)."""

    id: str
    content_type: str
    size: int
    # Hex SHA-256 of the bytes.
    sha256: str
    # Unix seconds.
    created_at: float
    expires_at: float


def new_object_id(now: float) -> str:
    return f"{int(now * 1000):012x}{secrets.token_hex(16)}"


def is_object_id(value: str) -> bool:
    return _ID.fullmatch(value) is not None


def created_ms(object_id: str) -> int:
    """Creation time (ms) of an object, from its id."""
    return int(object_id[:12], 16)


@dataclass(frozen=True, slots=True)
class Opened:
    """An object ready to be served: a local file, or a stream of chunks from the store."""

    content_type: str
    size: int
    path: Path | None = None
    chunks: AsyncGenerator[bytes, None] | None = None


class Sink(Protocol):
    """Where a backend puts the bytes of one object while it is written."""

    async def write(self, data: bytes) -> None: ...

    async def commit(self, record: StoredObject) -> None:
        """Make the object (and its record) visible, atomically enough: a reader
        sees the whole object or none."""

    async def abort(self) -> None:
        """Remove whatever was written; never raises for what is already gone."""


class ObjectWriter:
    """``async with storage.writer(content_type) as w: await w.write(chunk)``; then ``w.object``."""

    __slots__ = ("_created", "_ended", "_hash", "_limit", "_object", "_sink", "_ttl", "content_type", "id", "size")

    def __init__(self, sink: Sink, object_id: str, content_type: str, created: float, ttl: float, limit: int) -> None:
        self._sink = sink
        self._hash = hashlib.sha256()
        self._created = created
        self._ttl = ttl
        self._limit = limit
        self._object: StoredObject | None = None
        self._ended = False
        self.id = object_id
        self.content_type = content_type
        self.size = 0

    async def write(self, data: bytes) -> None:
        if not data:
            return
        if self._object is not None:
            raise RuntimeError("the object is already complete")
        self.size += len(data)
        if self.size > self._limit:
            raise ObjectTooLarge(f"object larger than storage.max_object_bytes ({self._limit})")
        self._hash.update(data)
        await self._sink.write(data)

    @property
    def object(self) -> StoredObject:
        """The record, once the ``async with`` block has ended without an error."""
        if self._object is None:
            raise RuntimeError("the object is not complete")
        return self._object

    def _record(self) -> StoredObject:
        return StoredObject(
            id=self.id, content_type=self.content_type, size=self.size, sha256=self._hash.hexdigest(),
            created_at=self._created, expires_at=self._created + self._ttl,
        )

    async def commit(self) -> StoredObject:
        """Make the object visible; on a failure, nothing is left behind."""
        if self._object is not None:
            return self._object
        self._ended = True
        try:
            record = self._record()
            await self._sink.commit(record)
        except BaseException:
            await self._sink.abort()
            raise
        self._object = record
        return record

    async def abort(self) -> None:
        """Remove what was written (nothing happens once it is committed or aborted)."""
        if not self._ended:
            self._ended = True
            await self._sink.abort()


class Storage(abc.ABC):
    """A store of images with signed or presigned URLs and a retention TTL."""

    def __init__(self, config: StorageConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.signer = UrlSigner(config.signing_keys) if config.signing_keys else None

    # Backends implement these.

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def _sink(self, object_id: str, content_type: str) -> Sink: ...

    @abc.abstractmethod
    async def open(self, object_id: str) -> Opened | None:
        """The object to serve, or None when there is none of that id."""

    @abc.abstractmethod
    async def record(self, object_id: str) -> StoredObject | None:
        """The object's record, or None."""

    @abc.abstractmethod
    async def delete(self, object_id: str) -> None:
        """Remove the object and its record (nothing happens when there is none)."""

    @abc.abstractmethod
    async def sweep(self, cutoff_ms: int, limit: int) -> int:
        """Remove up to ``limit`` objects created before ``cutoff_ms``, oldest
        first, with their records and leftovers of failed writes; the count of
        objects removed."""

    async def presigned_url(self, object_id: str, seconds: int) -> str | None:
        """A URL straight to the store, when this backend gives those (None: gateway URLs)."""
        return None

    # Shared.

    async def open_writer(self, content_type: str) -> ObjectWriter:
        """A writer for one object, ended by its ``commit`` or ``abort`` (see ``writer``)."""
        if not _CONTENT_TYPE.fullmatch(content_type):
            raise ValueError(f"not a plain content type: {content_type!r}")
        now = self.clock()
        object_id = new_object_id(now)
        sink = await self._sink(object_id, content_type)
        return ObjectWriter(sink, object_id, content_type, now, self.config.ttl, self.config.max_object_bytes)

    @asynccontextmanager
    async def writer(self, content_type: str) -> AsyncIterator[ObjectWriter]:
        """Stream one object into the store; see the module docstring."""
        w = await self.open_writer(content_type)
        try:
            yield w
            await w.commit()
        except BaseException:
            # Also on cancellation: a half-written object never stays.
            await w.abort()
            raise

    def expired(self, object_id: str, now: float | None = None) -> bool:
        """Past its retention (whether or not the sweeper has removed it yet)."""
        now = self.clock() if now is None else now
        return created_ms(object_id) + self.config.ttl * 1000 <= now * 1000

    def url_expiry(self, object_id: str, now: float | None = None) -> int:
        """Unix second a URL made now stops working: ``url_ttl`` from now, never past retention."""
        now = self.clock() if now is None else now
        retention_end = (created_ms(object_id) + self.config.ttl * 1000) / 1000
        return int(min(now + self.config.url_ttl, retention_end))

    async def url(self, object_id: str, base_url: str | None = None) -> str:
        """A URL for the object: presigned by the store, or served and signed by the gateway.

        ``base_url`` (the scheme and host a request came in on) is used for
        gateway URLs when ``storage.public_url`` is not set.
        """
        now = self.clock()
        expires = self.url_expiry(object_id, now)
        if expires <= now:
            raise StorageError("the object is past its retention")
        presigned = await self.presigned_url(object_id, expires - int(now))
        if presigned is not None:
            return presigned
        if self.signer is None:  # excluded by check_storage
            raise StorageError("no storage.signing_keys to sign gateway URLs")
        base = self.config.public_url or base_url
        if base is None:
            raise ValueError("a base URL is needed (storage.public_url is not set)")
        return f"{base.rstrip('/')}/files/{object_id}?{self.signer.query(object_id, expires)}"
