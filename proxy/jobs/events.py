"""A job that asked for partial images runs as a stream; its events become the result a synchronous call answers.

With ``partial_images`` a job is sent upstream with ``stream: true``, so its
record can say how many partial images have come (progress for whoever polls
it). The relay writes the event stream into a ``StreamResultResponse``, which
reads it as it arrives: partial images are counted and dropped, each
completed image goes into the result as it streams (its base64 straight into
the result's ``data[i].b64_json``, or decoded into a stored image for
``response_format: "url"``), and the fields beside the images (``created``,
summed ``usage``, ``size``, ``quality``...) close the body at the end. The
result is what a synchronous call would have answered: one OpenAI
ImagesResponse, never more in memory than an event's small fields.

The stream is parsed as SSE lines (``event:``, ``data:``, comments, blank
lines); a ``data:`` value is JSON, whose ``b64_json`` string is tapped
(``adapters.jsontap``) and whose other fields are decoded at the event's end.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import msgspec

from pixelgate.adapters.jsontap import Close, JsonTap, Open, Path
from pixelgate.core.errors import GatewayError, StorageUnavailable, UpstreamProtocolError
from pixelgate.proxy.jobs.result import OBJECT_REF, ResultResponse
from pixelgate.proxy.storage.b64decode import Base64Error
from pixelgate.proxy.storage.base import Storage, StorageError
from pixelgate.proxy.storage.rehost import ImageSink

__all__ = ["StreamEndedInError", "StreamResultResponse"]

# Bounds on what is kept of one event besides its image (field names, the event name).
_MAX_FIELD = 64
_MAX_EVENT_NAME = 128
# Fields of a completed event that describe the response, not the image.
_RESPONSE_FIELDS = ("size", "quality", "background", "output_format")


class StreamEndedInError(GatewayError):
    """The provider's stream ended with its own ``event: error``."""

    status = 502
    type = "upstream_error"
    code = "upstream_error"
    error_type = "status_5xx"


def _is_b64(path: Path) -> bool:
    return path == ("b64_json",)


def _sum(total: dict[str, Any], more: dict[str, Any]) -> dict[str, Any]:
    """Usage objects added field by field (their details too)."""
    out = dict(total)
    for key, value in more.items():
        if isinstance(value, dict):
            out[key] = _sum(out.get(key) or {}, value)
        elif isinstance(value, int) and isinstance(out.get(key, 0), int):
            out[key] = out.get(key, 0) + value
    return out


class _Event:
    """The event being read: its name, and its data's JSON as it streams."""

    __slots__ = ("completed", "image", "lines", "name", "tap")

    def __init__(self) -> None:
        self.name = bytearray()
        # data: lines so far (SSE joins several with a line break).
        self.lines = 0
        self.tap: JsonTap | None = None
        self.completed = False
        # Where a completed image's base64 goes in url mode.
        self.image: ImageSink | None = None


class StreamResultResponse(ResultResponse):
    """A ``ResultResponse`` whose body is built from the events written into it."""

    def __init__(self, storage: Storage, urls: bool, on_partial: Callable[[int], None], **kwargs: Any) -> None:
        super().__init__(storage, **kwargs)
        self._urls = urls
        self._on_partial = on_partial
        # SSE line state: the field being read (None at a line's start), its name so far.
        self._field: bytes | None = None
        self._name = bytearray()
        # Within a data: line (its value may come in several chunks).
        self._continued = False
        self._event = _Event()
        self.images = 0
        self.partials = 0
        self._usage: dict[str, Any] = {}
        self._fields: dict[str, Any] = {}
        self._created: int | None = None
        # Stored images (url mode), removed if the result is not committed.
        self._stored: list[str] = []
        # The provider's `event: error`, if it ended the stream with one.
        self.error: GatewayError | None = None

    async def start(self) -> None:
        """Nothing yet: the result is opened by its first image (keep-alives may come long before)."""

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        try:
            await self._feed(bytes(data))
        except StorageError as exc:
            raise StorageUnavailable(f"The image store failed while storing the job's result: {exc}") from None
        except Base64Error as exc:
            raise UpstreamProtocolError(f"the provider sent a b64_json that is not base64: {exc}") from None

    async def write_eof(self, data: bytes = b"") -> None:
        if self.object_id is not None or self.error is not None:
            return
        if data:
            await self.write(data)
        if not self.images or self._writer is None:
            raise UpstreamProtocolError("the provider's stream ended before any completed image")
        tail: dict[str, Any] = {"created": self._created or 0, **self._fields}
        if self._usage:
            tail["usage"] = self._usage
        await self._write(b"]," + msgspec.json.encode(tail)[1:])
        await self._commit()

    async def discard(self) -> None:
        """Remove what a result that will not be used wrote."""
        if self._event.image is not None:
            await self._event.image.abort()
        await super().discard()
        for object_id in self._stored:
            with contextlib.suppress(StorageError):  # else the sweeper removes it at its retention
                await self._storage.delete(object_id)
        self._stored.clear()

    # The SSE lines.

    async def _feed(self, data: bytes) -> None:
        pos, end = 0, len(data)
        while pos < end:
            if self._field is None:
                # A line's field name, up to its colon (or the line's end).
                stop = min((i for i in (data.find(b":", pos), data.find(b"\n", pos)) if i >= 0), default=end)
                self._name += data[pos:stop]
                if len(self._name) > _MAX_FIELD:
                    raise UpstreamProtocolError("the provider's event stream has an overlong field name")
                if stop == end:
                    return
                if data[stop] == 0x0A:  # "\n": a line without a colon (a blank line ends the event)
                    name, self._name = bytes(self._name).rstrip(b"\r"), bytearray()
                    if not name:
                        await self._end_event()
                    pos = stop + 1
                    continue
                self._field, self._name = bytes(self._name), bytearray()
                pos = stop + 1
                if pos < end and data[pos] == 0x20:
                    pos += 1
                continue
            stop = data.find(b"\n", pos)
            value = data[pos:] if stop < 0 else data[pos:stop]
            await self._value(self._field, value)
            if stop < 0:
                return
            self._field, self._continued = None, False
            pos = stop + 1

    async def _value(self, field: bytes, value: bytes) -> None:
        event = self._event
        if field == b"event":
            event.name += value
            if len(event.name) > _MAX_EVENT_NAME:
                raise UpstreamProtocolError("the provider's event stream has an overlong event name")
        elif field == b"data":
            if event.tap is None:
                event.tap = JsonTap(_is_b64)
                event.completed = bytes(event.name).rstrip(b"\r").endswith(b".completed")
            elif not self._continued:
                value = b"\n" + value
            self._continued = True
            for piece in event.tap.feed(value):
                if isinstance(piece, Open):
                    if event.completed:
                        await self._open_image()
                elif isinstance(piece, Close):
                    pass
                elif event.completed:
                    await self._image_bytes(piece)
        # Comments (`: keep-alive`), `id:`, `retry:`: nothing to keep.

    async def _write(self, data: bytes) -> None:
        """Bytes of the result body (its writer opened by the first)."""
        await (await self._opened()).write(data)

    async def _open_image(self) -> None:
        if self._writer is None:
            await self._write(b'{"data":[')
        elif self.images:
            await self._write(b",")
        if self._urls:
            self._event.image = ImageSink()
        else:
            await self._write(b'{"b64_json":"')

    async def _image_bytes(self, piece: bytes) -> None:
        if self._event.image is not None:
            await self._event.image.feed(self._storage, piece)
        else:
            await self._write(piece)

    async def _end_event(self) -> None:
        event, self._event = self._event, _Event()
        if event.tap is None:
            return  # a comment or an event without data
        fields: Any = msgspec.json.decode(event.tap.finish())
        if not isinstance(fields, dict):
            raise UpstreamProtocolError("the provider sent an event whose data is not a JSON object")
        name = bytes(event.name).rstrip(b"\r")
        if name == b"error" or "error" in fields:
            found = fields.get("error")
            error: dict[str, Any] = found if isinstance(found, dict) else {}
            err = StreamEndedInError(str(error.get("message") or "The provider's stream ended with an error."))
            if isinstance(error.get("code"), str):
                err.code = error["code"]
            if isinstance(error.get("type"), str):
                err.type = error["type"]
            self.error = err
            return
        if name.endswith(b".partial_image"):
            self.partials += 1
            self._on_partial(self.partials)
            return
        if not event.completed or self._writer is None:
            return
        item: dict[str, Any] = {}
        if event.image is not None:
            object_id = await event.image.close(self._storage)
            self._stored.append(object_id)
            item["url"] = OBJECT_REF + object_id
        if isinstance(fields.get("revised_prompt"), str):
            item["revised_prompt"] = fields["revised_prompt"]
        closing = msgspec.json.encode(item)
        if event.image is not None:
            await self._write(closing)
        else:
            await self._write(b'"' + (b"," + closing[1:] if item else b"}"))
        self.images += 1
        if isinstance(fields.get("usage"), dict):
            self._usage = _sum(self._usage, fields["usage"])
        if self._created is None and isinstance(fields.get("created_at"), int):
            self._created = fields["created_at"]
        for key in _RESPONSE_FIELDS:
            if isinstance(fields.get(key), str):
                self._fields.setdefault(key, fields[key])
