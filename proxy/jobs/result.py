"""Where a job's run writes its answer: an object in ``storage``, not a client.

The relay writes the provider's (OpenAI-shaped) response body into a
``ResultResponse``, which streams it into a storage writer as it comes, so a
20 MB ``b64_json`` result is never whole in memory. Like ``StoringResponse``
it is not ``prepared`` until the body is whole and committed: until then a
failure is still an error the relay raises (with its status), which is what a
failed job reports, and dispatch may still fail over.

With ``response_format: "url"`` the images were stored apart (see
``storage.rehost``) and the body carries ``object_ref(id)`` in place of each
URL; ``signed_result`` turns those into URLs when the job is read, so a URL
handed out hours after the run is as fresh as one handed out at once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
from aiohttp.abc import AbstractStreamWriter
from aiohttp.web import BaseRequest

from pixelgate.core.errors import StorageUnavailable
from pixelgate.proxy.detached import Detached
from pixelgate.proxy.storage.base import ObjectWriter, Storage, StorageError

__all__ = ["OBJECT_REF", "ResultResponse", "object_ref", "signed_result"]

_T = TypeVar("_T")

# What a stored result says in place of an image URL (never shown to a client).
OBJECT_REF = "pixelgate-object:"


async def object_ref(object_id: str) -> str:
    return OBJECT_REF + object_id


class ResultResponse(Detached):
    """The response body, as it comes, into one stored object (``proxy.jobs.events``
    writes a stream's result through the same object)."""

    def __init__(self, storage: Storage, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._storage = storage
        self._writer: ObjectWriter | None = None
        # Set once the body is whole and stored.
        self.object_id: str | None = None
        self.size = 0

    @property
    def prepared(self) -> bool:
        return self.object_id is not None

    async def prepare(self, request: BaseRequest) -> AbstractStreamWriter | None:
        raise TypeError("a job's result has no client request")

    async def start(self) -> None:
        await self._opened()

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        await _storing((await self._opened()).write(bytes(data)))

    async def write_eof(self, data: bytes = b"") -> None:
        if self.object_id is not None:
            return
        if data:
            await self.write(data)
        await self._commit()

    async def discard(self) -> None:
        """Remove a half-written result (a failed attempt)."""
        if self._writer is not None:
            await self._writer.abort()

    async def _opened(self) -> ObjectWriter:
        """The result's writer, opened by the first call."""
        if self._writer is None:
            self._writer = await _storing(self._storage.open_writer("application/json"))
        return self._writer

    async def _commit(self) -> None:
        stored = await _storing((await self._opened()).commit())
        self.object_id, self.size = stored.id, stored.size


async def _storing(work: Awaitable[_T]) -> _T:
    try:
        return await work
    except StorageError as exc:
        raise StorageUnavailable(f"The image store failed while storing the job's result: {exc}") from None


async def signed_result(body: bytes, url: Callable[[str], Awaitable[str]]) -> bytes:
    """A stored URL-format result with each ``object_ref`` replaced by ``await url(object_id)``."""
    doc = msgspec.json.decode(body)
    for item in doc.get("data") or ():
        ref = item.get("url")
        if isinstance(ref, str) and ref.startswith(OBJECT_REF):
            item["url"] = await url(ref[len(OBJECT_REF):])
    return msgspec.json.encode(doc)
