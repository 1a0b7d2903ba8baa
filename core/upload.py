"""Uploaded images, and upstream bodies that are made of them.

The proxy spools every uploaded file to disk as it arrives (never whole in
memory) and describes it as an ``InputImage``. An adapter, which does no I/O,
describes the upstream body it needs as a ``StreamedBody``: literal bytes and
``FilePiece``s, raw or base64-encoded on the fly. The transport reads the
pieces as it sends them, so a 16 x 4 MB upload costs a read buffer, not 64 MB.
"""

from __future__ import annotations

from typing import Literal

import msgspec

__all__ = ["FilePiece", "InputImage", "StreamedBody", "body_length"]

ImageFormat = Literal["png", "jpeg", "webp"]


class InputImage(msgspec.Struct, frozen=True):
    """One input image of an edit, spooled by the proxy."""

    # The spool file (the proxy's; it lives until the request ends).
    path: str
    size: int
    # What the bytes are (sniffed from their magic, never from the name).
    format: ImageFormat
    width: int
    height: int
    # The client's file name, as given (for re-framed multipart).
    filename: str
    # Whether the format carries an alpha channel (PNG RGBA / LA, WebP with alpha).
    alpha: bool = False

    @property
    def media_type(self) -> str:
        return f"image/{self.format}"


class FilePiece(msgspec.Struct, frozen=True):
    """A spooled file's bytes inside an upstream body."""

    image: InputImage
    # raw: the bytes as uploaded; base64: encoded as they are read (no padding
    # inside: the whole file is one base64 string).
    encoding: Literal["raw", "base64"] = "raw"

    @property
    def length(self) -> int:
        n = self.image.size
        return n if self.encoding == "raw" else 4 * ((n + 2) // 3)


class StreamedBody(msgspec.Struct, frozen=True):
    """An upstream body sent piece by piece; its length is known before the first byte."""

    pieces: tuple[bytes | FilePiece, ...]

    @property
    def length(self) -> int:
        return sum(len(p) if isinstance(p, bytes) else p.length for p in self.pieces)


def body_length(body: bytes | StreamedBody) -> int:
    return len(body) if isinstance(body, bytes) else body.length
