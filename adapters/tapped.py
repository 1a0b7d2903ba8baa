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

from collections.abc import Callable, Mapping, Sequence

import msgspec

from pixelgate.adapters.images_out import ImagesWriter
from pixelgate.adapters.jsontap import Close, JsonTap, Open, Path
from pixelgate.adapters.provider_errors import json_media
from pixelgate.core.errors import GatewayError
from pixelgate.core.request import GATEWAY_ONLY_FIELDS, ImageEditRequest
from pixelgate.core.translator import Edit, Ending, Opening, ResponseHead, UpstreamRequest
from pixelgate.core.upload import FilePiece, InputImage, StreamedBody

__all__ = ["Piece", "TappedTranslator", "data_uri", "edit_native_fields", "json_object"]


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


# A piece of an upstream body built here: literal bytes, or a spooled file's.
Piece = bytes | FilePiece


def data_uri(image: InputImage) -> list[Piece]:
    """A JSON string holding ``image`` as a ``data:`` URI, as body pieces: the
    base64 is encoded from the spool file while the body is sent, so the
    adapter never holds the image. Base64 needs no JSON escaping."""
    return [b'"data:' + image.media_type.encode() + b";base64,", FilePiece(image, "base64"), b'"']


_encoder = msgspec.json.Encoder()


def json_object(members: Sequence[tuple[str, Sequence[Piece]]], fields: Mapping[str, object]) -> StreamedBody:
    """A JSON object: ``members`` first (a name and its value as pieces, such as
    ``data_uri``'s), then ``fields`` as msgspec encodes them. The caller keeps
    the names apart (a name in both would be sent twice)."""
    pieces: list[Piece] = [b"{"]
    for i, (name, value) in enumerate(members):
        pieces += [b"," if i else b"", _encoder.encode(name) + b":", *value]
    if fields:
        # msgspec writes an object as {...} with no whitespace: its inside is spliced in.
        pieces += [b"," if members else b"", _encoder.encode(fields)[1:-1]]
    pieces.append(b"}")
    # Adjacent bytes joined: fewer, larger writes for the transport.
    joined: list[Piece] = []
    for piece in pieces:
        if isinstance(piece, bytes) and joined and isinstance(joined[-1], bytes):
            joined[-1] += piece
        else:
            joined.append(piece)
    return StreamedBody(tuple(joined))


# An edit's fields that are the gateway's to read; the rest are the provider's own.
# `style` is a generation parameter, not an edit's: never a provider's own field
# (xAI, for one, refuses it with a 400 where an edit should just go without it).
_EDIT_KNOWN = frozenset(ImageEditRequest.__struct_fields__) | GATEWAY_ONLY_FIELDS | {"style"}
_raw_map = msgspec.json.Decoder(dict[str, msgspec.Raw])
_any = msgspec.json.Decoder()


def edit_native_fields(e: Edit, exclude: frozenset[str] = frozenset()) -> dict[str, msgspec.Raw]:
    """The client's fields of an edit outside the OpenAI schema (``seed``,
    ``steps``, ``resolution``, …), as JSON values for a flat provider body,
    less ``exclude`` (the names the adapter fills with the images).

    A JSON edit's values go as they came. A form carries only text: a value
    that is JSON other than a string (``42``, ``1.5``, ``true`` as the SDKs
    send booleans, an object or a list) goes as that JSON, anything else as
    a string, so ``seed=42`` reaches the provider as the number it takes.
    """
    skip = _EDIT_KNOWN | exclude
    if e.json_body is not None:
        return {k: v for k, v in _raw_map.decode(e.json_body).items() if k not in skip}
    out: dict[str, msgspec.Raw] = {}
    for name, value in e.fields:
        if name in skip:
            continue
        try:
            parsed = _any.decode(value)
        except msgspec.DecodeError:
            parsed = value
        if isinstance(parsed, str) or parsed is None:
            out[name] = msgspec.Raw(_encoder.encode(value))
        else:
            out[name] = msgspec.Raw(value.strip().encode())
    return out
