"""The translator for providers that answer one JSON document with base64 inside.

Gemini, Imagen, Together, xAI and Stability (JSON mode) all do. The document
runs through a ``JsonTap``: the image strings go straight into the client's
``b64_json`` (body or completed events) as they arrive, and the rest, the
skeleton, is decoded when the document ends, by the adapter's ``complete``,
which turns finish reasons, filters and usage into OpenAI's terms.

Their edits go up the same way they come back: one JSON document with the
images inside as base64 (``json_object`` and ``data_uri`` build it from the
spooled uploads, read as the body is sent), and ``edit_native_fields`` gives
the client's own provider fields of an edit, as ``native_fields`` does for a
generation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from pixelgate.adapters.images_out import ImagesWriter
from pixelgate.adapters.jsontap import Close, JsonTap, Open, Path
from pixelgate.adapters.provider_errors import json_media
from pixelgate.core.errors import GatewayError
from pixelgate.core.translator import Ending, Opening, ResponseHead, UpstreamRequest

__all__ = ["TappedTranslator"]


class TappedTranslator:
    """Subclasses set ``select`` (which strings are images) and ``complete``."""

    __slots__ = ("_opening", "_tap", "provider", "writer")

    def __init__(
        self,
        provider: str,
        call: UpstreamRequest,
        writer: ImagesWriter,
        select: Callable[[Path], bool],
        headers: dict[str, str],
    ) -> None:
        self.provider = provider
        self.writer = writer
        self._tap = JsonTap(select)
        # The answer comes whole: a streaming client waits with keep-alives.
        self._opening = Opening(call, headers, waits=writer.stream)

    def request(self) -> Opening:
        return self._opening

    def response(self, status: int, headers: Mapping[str, str]) -> ResponseHead:
        json_media(self.provider, status, headers)
        return self.writer.head()

    def feed(self, chunk: bytes) -> bytes:
        pieces = self._tap.feed(chunk)
        if len(pieces) == 1 and type(pieces[0]) is bytes:
            return pieces[0]  # the common case: the middle of an image
        out = bytearray()
        for piece in pieces:
            if isinstance(piece, Open):
                out += self.writer.open()
            elif isinstance(piece, Close):
                out += self.writer.close()
            else:
                out += piece
        return bytes(out)

    def finish(self) -> Ending:
        return self.complete(self._tap.finish())

    def complete(self, skeleton: bytes) -> Ending:
        """The end of the answer: raise its error, or return the closing bytes
        (and the usage the skeleton reported)."""
        raise NotImplementedError

    def error(self, status: int, headers: Mapping[str, str], body: bytes) -> GatewayError:
        raise NotImplementedError
