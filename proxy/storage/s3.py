"""The S3 store (AWS S3, R2, MinIO, SeaweedFS, GCS interoperability), through obstore.

Why obstore (not aiobotocore): both are maintained and on PyPI. obstore is
one self-contained, typed wheel (the
Rust ``object_store`` crate, which Apache Arrow, DataFusion and Delta Lake use;
its only Python dependency is typing-extensions). aiobotocore pins a narrow
botocore range (botocore brings urllib3, jmespath and dateutil, and a large
set of service descriptions) and needs separate stubs for mypy. obstore streams
a write as a multipart upload with a bounded buffer and back-pressure
(``open_writer_async``: at most ``part_size`` buffered and ``upload_concurrency``
parts in flight; aborted on failure), presigns GET URLs locally (``sign_async``),
lists in key order, and does its HTTP on its own threads, off the event loop.
Its one wart is handled in ``close()``.

Keys under ``storage.s3.prefix``::

    <prefix><id>        the bytes (Content-Type and x-amz-meta-pixelgate-expires-at set)
    <prefix><id>.json   the record (StoredObject), put once the upload completed

The sweeper needs no lifecycle rule: it lists the prefix (in key order, which
is creation order: ids start with the creation time) and stops at the first
object too young. A bucket lifecycle rule that aborts incomplete multipart
uploads after a day is still worth having: a gateway killed mid-upload cannot
abort its own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator
from datetime import timedelta
from typing import TYPE_CHECKING

import msgspec
import obstore
from obstore.exceptions import BaseError
from obstore.store import S3Store

from pixelgate.proxy.storage.base import Opened, Sink, Storage, StorageError, StoredObject, created_ms, is_object_id

if TYPE_CHECKING:
    from obstore import AsyncWritableFile
    from obstore.store import ClientConfig, S3Config

__all__ = ["S3Storage"]

log = logging.getLogger("pixelgate.storage")

_decode_record = msgspec.json.Decoder(StoredObject).decode
# Chunks of a gateway-served download.
_READ_CHUNK = 256 * 1024
# See close().
_SETTLE = 0.25
# How many keys a sweep may look at beyond the ones it removes (names not ours).
_FOREIGN_KEYS = 1000


def _fail(what: str, exc: Exception) -> StorageError:
    # obstore's messages carry the URL and the store's answer, never the credentials.
    return StorageError(f"s3 {what}: {exc}")


class _S3Sink:
    __slots__ = ("_closed", "_key", "_store", "_writer")

    def __init__(self, store: S3Store, key: str, writer: AsyncWritableFile) -> None:
        self._store = store
        self._key = key
        self._writer = writer
        self._closed = False

    async def write(self, data: bytes) -> None:
        try:
            await self._writer.write(data)
        except (BaseError, OSError) as exc:
            raise _fail("upload", exc) from None

    async def commit(self, record: StoredObject) -> None:
        try:
            self._closed = True
            await self._writer.close()
            await obstore.put_async(
                self._store, f"{self._key}.json", msgspec.json.encode(record), attributes={"Content-Type": "application/json"}
            )
        except (BaseError, OSError) as exc:
            raise _fail("upload", exc) from None

    async def abort(self) -> None:
        try:
            if not self._closed:
                # obstore aborts the multipart upload when its context exits with an error.
                await self._writer.__aexit__(StorageError, StorageError("aborted"), None)
            else:
                await obstore.delete_async(self._store, [self._key, f"{self._key}.json"])
        except Exception as exc:
            log.warning("s3: could not clean up a failed write of %s: %s", self._key, exc)


class S3Storage(Storage):
    _store: S3Store

    async def start(self) -> None:
        s3 = self.config.s3
        assert s3 is not None  # check_storage
        config: S3Config = {"region": s3.region, "virtual_hosted_style_request": s3.virtual_hosted_style}
        if s3.endpoint is not None:
            config["endpoint"] = s3.endpoint
        if s3.access_key_id is not None and s3.secret_access_key is not None:
            config["access_key_id"] = s3.access_key_id
            config["secret_access_key"] = s3.secret_access_key
        if s3.session_token is not None:
            config["session_token"] = s3.session_token
        client: ClientConfig = {"connect_timeout": timedelta(seconds=10), "timeout": timedelta(seconds=300)}
        if s3.endpoint is not None and s3.endpoint.startswith("http://"):
            client["allow_http"] = True
        try:
            self._store = S3Store(s3.bucket, config=config, client_options=client)
        except (BaseError, ValueError) as exc:
            raise _fail("configuration", exc) from None
        self._prefix = s3.prefix

    async def close(self) -> None:
        # obstore completes each call on its own (tokio) threads, which then take the
        # GIL to hand the result back; one that does so while the interpreter is
        # finalizing aborts the process. A moment's pause lets calls that just
        # ended (or were cancelled with the app) settle before the process may exit.
        await asyncio.sleep(_SETTLE)

    def _key(self, object_id: str) -> str:
        return f"{self._prefix}{object_id}"

    async def _sink(self, object_id: str, content_type: str) -> Sink:
        s3 = self.config.s3
        assert s3 is not None
        key = self._key(object_id)
        expires_at = created_ms(object_id) / 1000 + self.config.ttl
        writer = obstore.open_writer_async(
            self._store, key,
            attributes={"Content-Type": content_type, "pixelgate-expires-at": f"{expires_at:.3f}"},
            buffer_size=s3.part_size, max_concurrency=s3.upload_concurrency,
        )
        return _S3Sink(self._store, key, writer)

    async def presigned_url(self, object_id: str, seconds: int) -> str | None:
        assert self.config.s3 is not None
        if self.config.s3.urls != "presigned":
            return None
        try:
            return await obstore.sign_async(self._store, "GET", self._key(object_id), timedelta(seconds=seconds))
        except (BaseError, OSError, ValueError) as exc:
            raise _fail("presign", exc) from None

    async def record(self, object_id: str) -> StoredObject | None:
        try:
            result = await obstore.get_async(self._store, f"{self._key(object_id)}.json")
            data = await result.bytes_async()
        except FileNotFoundError:
            return None
        except (BaseError, OSError) as exc:
            raise _fail("read", exc) from None
        try:
            return _decode_record(bytes(data))
        except msgspec.DecodeError:
            return None

    async def open(self, object_id: str) -> Opened | None:
        try:
            result = await obstore.get_async(self._store, self._key(object_id))
        except FileNotFoundError:
            return None
        except (BaseError, OSError) as exc:
            raise _fail("read", exc) from None
        content_type = str(result.attributes.get("Content-Type", "application/octet-stream"))

        async def chunks() -> AsyncGenerator[bytes, None]:
            try:
                async for chunk in result.stream(min_chunk_size=_READ_CHUNK):
                    yield bytes(chunk)
            except (BaseError, OSError) as exc:
                raise _fail("read", exc) from None

        return Opened(content_type=content_type, size=result.meta["size"], chunks=chunks())

    async def delete(self, object_id: str) -> None:
        key = self._key(object_id)
        try:
            await obstore.delete_async(self._store, [key, f"{key}.json"])
        except FileNotFoundError:
            return
        except (BaseError, OSError) as exc:
            raise _fail("delete", exc) from None

    async def sweep(self, cutoff_ms: int, limit: int) -> int:
        try:
            doomed = await self._expired_keys(cutoff_ms, limit)
            if doomed:
                await obstore.delete_async(self._store, doomed)
        except (BaseError, OSError) as exc:
            raise _fail("sweep", exc) from None
        return sum(1 for key in doomed if is_object_id(key[len(self._prefix):]))

    async def _expired_keys(self, cutoff_ms: int, limit: int) -> list[str]:
        """Keys of the oldest ``limit`` expired objects (with their records), in key order."""
        doomed: list[str] = []
        objects = foreign = 0
        last_id = ""
        async for batch in obstore.list(self._store, self._prefix.rstrip("/") or None, chunk_size=min(1000, 2 * limit + 1)):
            for meta in batch:
                key = meta["path"]
                object_id = key[len(self._prefix):][:44]
                if not is_object_id(object_id):
                    # Not ours (another tool's key under the prefix): skipped, within a bound.
                    foreign += 1
                    if foreign > _FOREIGN_KEYS:
                        return doomed
                    continue
                if created_ms(object_id) >= cutoff_ms:
                    return doomed
                if object_id != last_id:
                    if objects >= limit:
                        return doomed
                    objects, last_id = objects + 1, object_id
                doomed.append(key)
        return doomed
