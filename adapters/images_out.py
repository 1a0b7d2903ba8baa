"""OpenAI's client shape, written piece by piece: a JSON body or SSE events.

Translating adapters know an image is coming before they have it whole; the
writer gives them the bytes that open an image's ``b64_json`` string, they
pass the base64 through as it arrives, and the writer closes it with the
fields OpenAI sends beside it:

- body:   ``{"created":…,"data":[{"b64_json":"…"},…],"size":…,"usage":{…}}``
- stream: one completed event per image (``image_generation.completed``, or
  ``image_edit.completed`` for an edit: the name is the writer's ``event``)
  with every field the SDKs declare (``type`` first, so the relay can
  classify the event from its first bytes, ``b64_json``, ``created_at``,
  ``size``, ``quality``, ``background``, ``output_format``, ``usage``).

A provider that reports usage only after its images (Gemini) sets
``usage_last``: the last event's tail then waits for ``finish`` so it can
carry the usage; earlier events carry zero usage, so sums stay right.
"""

from __future__ import annotations

import msgspec

from pixelgate.core.errors import UpstreamProtocolError
from pixelgate.core.translator import ResponseHead
from pixelgate.core.usage import Usage

__all__ = ["EDIT_COMPLETED", "GENERATION_COMPLETED", "ImageMeta", "ImagesWriter", "usage_fields"]

# The completed event's name (and its `type`), as OpenAI names it per operation.
GENERATION_COMPLETED = "image_generation.completed"
EDIT_COMPLETED = "image_edit.completed"
_encoder = msgspec.json.Encoder()


def usage_fields(usage: Usage | None) -> dict[str, object]:
    """OpenAI's usage object with every field present (``Usage`` omits zeros)."""
    u = usage or Usage()
    inp = u.input_tokens_details
    fields: dict[str, object] = {
        "input_tokens": u.input_tokens,
        "input_tokens_details": {
            "image_tokens": inp.image_tokens if inp else 0,
            "text_tokens": inp.text_tokens if inp else u.input_tokens,
        },
        "output_tokens": u.output_tokens,
        "total_tokens": u.total_tokens or u.input_tokens + u.output_tokens,
    }
    if (out := u.output_tokens_details) is not None:
        fields["output_tokens_details"] = {"image_tokens": out.image_tokens, "text_tokens": out.text_tokens}
    return fields


class ImageMeta(msgspec.Struct):
    """The per-response fields OpenAI sends with images."""

    created: int
    size: str = "auto"
    quality: str = "auto"
    background: str = "opaque"
    output_format: str = "png"


class ImagesWriter:
    __slots__ = ("_event_head", "_open", "_pending", "_usage_last", "images", "meta", "stream")

    def __init__(
        self, stream: bool, meta: ImageMeta, *, usage_last: bool = False, event: str = GENERATION_COMPLETED
    ) -> None:
        self.stream = stream
        self._usage_last = usage_last
        # What opens each event, up to its b64_json string (built once: the
        # name is part of every event, and comes from the adapter, not a client).
        name = event.encode()
        self._event_head = b"event: " + name + b'\ndata: {"type":"' + name + b'","b64_json":"'
        self.meta = meta
        self.images = 0
        self._open = False
        # Stream mode with usage_last: the last image's event awaits its tail.
        self._pending = False

    def head(self, *, collect: bool = False) -> ResponseHead:
        """How the relay treats the provider's answer that this writer translates."""
        content_type = "text/event-stream" if self.stream else "application/json"
        return ResponseHead(stream=self.stream, content_type=content_type, passthrough=False, collect=collect)

    def open(self) -> bytes:
        """Bytes that start the next image's ``b64_json`` string."""
        assert not self._open
        out = self._tail(None) if self._pending else b""
        self._pending = False
        self._open = True
        self.images += 1
        if self.stream:
            return out + self._event_head
        return out + (b'{"created":' + str(self.meta.created).encode() + b',"data":[' if self.images == 1 else b",") + (
            b'{"b64_json":"'
        )

    def close(self) -> bytes:
        """Bytes that end the current image's string (and its event, unless usage comes last)."""
        assert self._open
        self._open = False
        if not self.stream:
            return b'"}'
        if self._usage_last:
            self._pending = True
            return b""
        return self._tail(None)

    def url(self, url: str) -> bytes:
        """A whole image given as a URL (JSON body only: events carry base64)."""
        assert not self.stream and not self._open
        self.images += 1
        head = b'{"created":' + str(self.meta.created).encode() + b',"data":[' if self.images == 1 else b","
        return head + b'{"url":' + _encoder.encode(url) + b"}"

    def finish(self, usage: Usage | None) -> bytes:
        """The end of the response; ``usage`` is the whole request's, if known."""
        if self._open:
            raise UpstreamProtocolError("the provider's answer ended inside an image")
        if not self.images:
            raise UpstreamProtocolError("the provider's answer held no image")
        if self.stream:
            if self._pending:
                self._pending = False
                return self._tail(usage)
            return b""
        m = self.meta
        fields: dict[str, object] = {
            "background": m.background,
            "output_format": m.output_format,
            "quality": m.quality,
            "size": m.size,
        }
        if usage is not None:
            fields["usage"] = usage_fields(usage)
        return b"]," + _encoder.encode(fields)[1:]

    def _tail(self, usage: Usage | None) -> bytes:
        m = self.meta
        fields = {
            "created_at": m.created,
            "size": m.size,
            "quality": m.quality,
            "background": m.background,
            "output_format": m.output_format,
            "usage": usage_fields(usage),
        }
        return b'",' + _encoder.encode(fields)[1:] + b"\n\n"
