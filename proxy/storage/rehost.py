"""``response_format: "url"`` from any provider: the images of an answer go into storage, the client gets URLs.

A provider that returns base64 (or bytes, which its adapter turns into an
OpenAI ``b64_json`` body) is asked for ``b64_json``; the relay writes that body
into a ``StoringResponse`` instead of the client's socket. The body is read as
it streams (``adapters.jsontap``): each ``data[i].b64_json`` string is decoded
chunk by chunk (``storage.b64decode``) straight into a storage writer, so an
image is never whole in memory; the rest of the body, its skeleton (``created``,
``usage``, ``revised_prompt``...), is small and kept. When the body ends, every
image is committed, and the client gets the skeleton with each ``b64_json``
replaced by the image's ``url``: one small JSON body, sent only then, so a
failure while storing is still a real HTTP status (and the images already
stored are removed).

A ``url`` already in the answer (a provider that gives URLs itself) passes
through untouched.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

from pixelgate.adapters.jsontap import Close, JsonTap, Open, Path
from pixelgate.core.errors import StorageUnavailable, UpstreamProtocolError
from pixelgate.core.image_headers import NotAnImage, read_head
from pixelgate.metrics import Metrics
from pixelgate.proxy.detached import Detached, start
from pixelgate.proxy.storage.b64decode import Base64Error, Base64ToBytes
from pixelgate.proxy.storage.base import ObjectWriter, Storage, StorageError

__all__ = ["ImageSink", "ImagesToStorage", "StoringResponse", "settle", "storing"]

log = logging.getLogger("pixelgate.storage")

# Decoded bytes held before an image's writer opens: enough to tell PNG, JPEG and WebP apart.
_SNIFF = 32
_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


def _is_image(path: Path) -> bool:
    return len(path) == 3 and path[0] == "data" and isinstance(path[1], int) and path[2] == "b64_json"


def _content_type(head: bytes) -> str:
    try:
        return _TYPES[read_head(head, complete=True).format]
    except NotAnImage:
        # Not an image format the gateway knows: stored as bytes, served as such.
        return "application/octet-stream"


class ImageSink:
    """One ``b64_json`` string on its way into the store."""

    __slots__ = ("_decoder", "_head", "writer")

    def __init__(self) -> None:
        self._decoder = Base64ToBytes(json_escapes=True)
        self._head = b""
        self.writer: ObjectWriter | None = None

    async def feed(self, storage: Storage, data: bytes) -> None:
        await self._put(storage, self._decoder.feed(data))

    async def close(self, storage: Storage) -> str:
        """Commit the image; its object id."""
        await self._put(storage, self._decoder.finish(), last=True)
        assert self.writer is not None
        return (await self.writer.commit()).id

    async def abort(self) -> None:
        if self.writer is not None:
            await self.writer.abort()

    async def _put(self, storage: Storage, data: bytes, last: bool = False) -> None:
        if self.writer is None:
            self._head += data
            if len(self._head) < _SNIFF and not last:
                return
            data, self._head = self._head, b""
            self.writer = await storage.open_writer(_content_type(data))
        await self.writer.write(data)


class ImagesToStorage:
    """Reads an OpenAI ImagesResponse body as it streams; stores its ``b64_json`` images; answers with URLs."""

    __slots__ = ("_current", "_provider", "_storage", "_stored", "_tap", "_url", "sizes")

    def __init__(self, storage: Storage, provider: str, url: Callable[[str], Awaitable[str]]) -> None:
        self._storage = storage
        self._provider = provider
        # What the client reads in place of a stored image: its URL (a job's result: a reference).
        self._url = url
        self._tap = JsonTap(_is_image)
        self._current: ImageSink | None = None
        # data index -> object id, for the images committed so far.
        self._stored: dict[int, str] = {}
        # The size of each image stored (for the storage metrics).
        self.sizes: list[int] = []

    async def feed(self, chunk: bytes) -> None:
        try:
            for piece in self._tap.feed(chunk):
                if isinstance(piece, Open):
                    self._current = ImageSink()
                elif isinstance(piece, Close):
                    image, self._current = self._current, None
                    assert image is not None
                    index = piece.path[1]
                    assert isinstance(index, int)
                    self._stored[index] = await image.close(self._storage)
                    self.sizes.append(image.writer.size if image.writer else 0)
                else:
                    assert self._current is not None
                    await self._current.feed(self._storage, piece)
        except Base64Error as exc:
            raise UpstreamProtocolError(f"provider {self._provider!r} sent a b64_json that is not base64: {exc}") from None
        except StorageError as exc:
            raise StorageUnavailable(f"The image store failed while storing an image: {exc}") from None

    async def finish(self) -> bytes:
        """The body the client gets: the skeleton, each stored image as its ``url``."""
        skeleton = self._tap.finish()
        try:
            body: Any = msgspec.json.decode(skeleton)
        except msgspec.DecodeError as exc:
            raise UpstreamProtocolError(f"provider {self._provider!r} answered with malformed JSON: {exc}") from None
        data = body.get("data") if isinstance(body, dict) else None
        for index, object_id in self._stored.items():
            assert isinstance(data, list)
            item = data[index]
            del item["b64_json"]
            try:
                item["url"] = await self._url(object_id)
            except StorageError as exc:
                raise StorageUnavailable(f"The image store failed while signing an image's URL: {exc}") from None
        return msgspec.json.encode(body)

    async def discard(self) -> None:
        """Remove whatever this answer stored (it will not reach the client)."""
        if self._current is not None:
            image, self._current = self._current, None
            await image.abort()
        stored, self._stored = self._stored, {}
        for object_id in stored.values():
            try:
                await self._storage.delete(object_id)
            except StorageError as exc:
                # The sweeper removes it at its retention.
                log.warning("storage: could not remove an unused image: %s", exc)


class StoringResponse(Detached):
    """Where the relay writes an answer whose images go to storage; the client's
    response (``inner``) is made and sent at ``write_eof``, with the URLs.

    Until then ``prepared`` is False: the relay still answers a failure with a
    real status, and may fail over.
    """

    def __init__(self, images: ImagesToStorage, make: Callable[..., web.StreamResponse], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.images = images
        self._make = make
        self._request: web.BaseRequest | None = None
        self.inner: web.StreamResponse | None = None

    @property
    def prepared(self) -> bool:
        return self.inner is not None and self.inner.prepared

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        self._request = request
        return None

    async def start(self) -> None:
        """A job's run: the inner response is detached too."""

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        await self.images.feed(bytes(data))

    async def write_eof(self, data: bytes = b"") -> None:
        if self.inner is not None:
            return
        if data:
            await self.images.feed(data)
        body = await self.images.finish()
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("content-length", "content-type")}
        inner = self._make(status=self.status, headers=headers)
        inner.content_type = "application/json"
        inner.content_length = len(body)
        self.inner = inner
        await start(inner, self._request)
        await inner.write(body)
        await inner.write_eof()


async def settle(stored: list[StoringResponse], metrics: Metrics) -> None:
    """After a request: the images of attempts that did not reach the client removed, the rest counted."""
    for attempt in stored:
        if attempt.inner is None:
            # An attempt that failed (or was cut) leaves none of its images behind.
            await attempt.images.discard()
        for size in attempt.images.sizes:
            metrics.stored("image", size)


def storing(
    storage: Storage,
    url: Callable[[str], Awaitable[str]],
    make: Callable[..., web.StreamResponse],
    made: list[StoringResponse],
) -> Callable[..., web.StreamResponse]:
    """A response factory for the relay (``RelaySettings.response``) that stores images; ``made`` collects each
    attempt's response, so the handler can discard what a failed one stored."""

    def response(**kwargs: Any) -> web.StreamResponse:
        provider = str(kwargs.get("headers", {}).get("x-pixelgate-provider", "the provider"))
        r = StoringResponse(ImagesToStorage(storage, provider, url), make, **kwargs)
        made.append(r)
        return r

    return response
