"""Upstream bodies for edits, made of spooled uploads without holding them.

Providers that take an edit's images inside JSON (as base64 or ``data:``
URIs) get a body of pieces: literal bytes, and ``FilePiece``s that the
transport base64-encodes from the spool file while it sends
(``pixelgate.core.upload``). The adapter never holds an image, and the body's
length is known before the first byte. Also here: an edit's own fields, the
ones outside the OpenAI schema that a provider takes beside the prompt.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import msgspec

from pixelgate.core.request import GATEWAY_ONLY_FIELDS, ImageEditRequest
from pixelgate.core.translator import Edit
from pixelgate.core.upload import FilePiece, InputImage, StreamedBody

__all__ = ["FileInput", "Piece", "data_uri", "data_uris", "edit_native_fields", "json_pieces", "streamed"]

# A piece of an upstream body: literal bytes, or a spooled file's.
Piece = bytes | FilePiece
# One upload (an input that takes one URI) or several (an input that takes a list).
FileInput = InputImage | Sequence[InputImage]

_encoder = msgspec.json.Encoder()
_raw_map = msgspec.json.Decoder(dict[str, msgspec.Raw])
_any = msgspec.json.Decoder()

# An edit's fields that are the gateway's to read; the rest are the provider's own.
# `style` is a generation parameter, not an edit's: never a provider's own field
# (xAI, for one, refuses it with a 400 where an edit should just go without it).
_EDIT_KNOWN = frozenset(ImageEditRequest.__struct_fields__) | GATEWAY_ONLY_FIELDS | {"style"}


def data_uri(image: InputImage) -> list[Piece]:
    """A JSON string holding ``image`` as a ``data:`` URI. The media type is the
    sniffed format's; base64 needs no JSON escaping."""
    return [b'"data:' + image.media_type.encode() + b";base64,", FilePiece(image, "base64"), b'"']


def data_uris(images: FileInput) -> list[Piece]:
    """One image as a data: URI string, several as a JSON list of them."""
    if isinstance(images, InputImage):
        return data_uri(images)
    pieces: list[Piece] = [b"["]
    for i, image in enumerate(images):
        pieces += [b"," if i else b"", *data_uri(image)]
    return [*pieces, b"]"]


def json_pieces(members: Sequence[tuple[str, Sequence[Piece]]], fields: Mapping[str, object]) -> list[Piece]:
    """A JSON object: ``members`` first (a name and its value as pieces, such
    as ``data_uris``'), then ``fields`` as msgspec encodes them. A field named
    like a member is left out: the upload is what the client meant, and JSON
    keys must not repeat."""
    names = {name for name, _ in members}
    rest = {k: v for k, v in fields.items() if k not in names}
    pieces: list[Piece] = [b"{"]
    for i, (name, value) in enumerate(members):
        pieces += [b"," if i else b"", _encoder.encode(name) + b":", *value]
    if rest:
        # msgspec writes an object as {...} with no whitespace: its inside is spliced in.
        pieces += [b"," if members else b"", _encoder.encode(rest)[1:-1]]
    return [*pieces, b"}"]


def streamed(*parts: Piece) -> StreamedBody:
    """A body of these pieces, adjacent bytes joined (fewer, larger writes)."""
    pieces: list[Piece] = []
    for part in parts:
        if isinstance(part, bytes):
            if not part:
                continue
            if pieces and isinstance(pieces[-1], bytes):
                pieces[-1] = pieces[-1] + part
                continue
        pieces.append(part)
    return StreamedBody(tuple(pieces))


def edit_native_fields(e: Edit, exclude: frozenset[str] = frozenset()) -> dict[str, msgspec.Raw]:
    """The client's fields of an edit outside the OpenAI schema (``seed``,
    ``steps``, ``strength``, …), as JSON values for a provider's body, less
    ``exclude`` (the names the adapter fills with the images).

    A JSON edit's values go as they came. A form carries only text: a value
    that is JSON other than a string or null (``42``, ``1.5``, ``true`` as the
    SDKs send booleans, an object or a list) goes as that JSON, anything else
    as a string, so ``seed=42`` reaches the provider as the number it takes. A
    client that needs the string ``"1"`` sends the edit as JSON.
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
