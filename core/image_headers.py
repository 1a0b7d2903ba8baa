"""What an image file is, read from its first bytes: format, size, alpha.

Never decodes pixels: PNG's IHDR, a JPEG's SOF marker and WebP's VP8/VP8L/VP8X
headers carry the dimensions. A JPEG's SOF can sit after large metadata
segments, so the JPEG reader walks segment lengths over the bytes it is given
and says when it needs more.
"""

from __future__ import annotations

import struct
from typing import Literal

import msgspec

__all__ = ["HEAD_BYTES", "ImageHead", "NeedMore", "NotAnImage", "read_head"]

# Enough for PNG and WebP headers; a JPEG may need more (NeedMore says how much).
HEAD_BYTES = 64 * 1024
# Past this a JPEG without a frame header is given up on.
MAX_JPEG_SCAN = 1024 * 1024


class ImageHead(msgspec.Struct, frozen=True):
    format: Literal["png", "jpeg", "webp"]
    width: int
    height: int
    alpha: bool = False


class NotAnImage(ValueError):
    """The bytes are not a PNG, JPEG or WebP image (or their header is broken)."""


class NeedMore(Exception):
    """More bytes are needed to find the header (a JPEG's frame after metadata)."""


_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


def read_head(data: bytes, *, complete: bool = False) -> ImageHead:
    """The image's header from its first bytes.

    ``complete``: ``data`` is the whole file, so a header that is not there
    never will be. Raises ``NotAnImage``, or ``NeedMore`` for a JPEG whose frame
    header lies further in.
    """
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return _png(data)
    if data.startswith(b"\xff\xd8\xff"):
        return _jpeg(data, complete)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp(data)
    raise NotAnImage("not a PNG, JPEG or WebP image")


def _png(data: bytes) -> ImageHead:
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise NotAnImage("a PNG without its IHDR header")
    width, height, _depth, color = struct.unpack(">IIBB", data[16:26])
    if not width or not height:
        raise NotAnImage("a PNG of zero width or height")
    # Colour types 4 (grey + alpha) and 6 (RGBA) have alpha; tRNS is not looked for.
    return ImageHead("png", width, height, alpha=color in (4, 6))


def _jpeg(data: bytes, complete: bool) -> ImageHead:
    i = 2
    while True:
        # Markers may be padded with 0xFF fill bytes.
        while i < len(data) and data[i] == 0xFF:
            i += 1
        if i + 3 > len(data):
            break
        marker = data[i]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 1
            continue
        if marker in (0xD9, 0xDA):
            raise NotAnImage("a JPEG whose image data starts before any frame header")
        length = int.from_bytes(data[i + 1 : i + 3], "big")
        if length < 2:
            raise NotAnImage("a JPEG with a broken segment")
        if marker in _SOF:
            if i + 8 > len(data):
                break
            height, width = struct.unpack(">HH", data[i + 4 : i + 8])
            if not width or not height:
                raise NotAnImage("a JPEG of zero width or height")
            return ImageHead("jpeg", width, height)
        i += 1 + length
    if complete or len(data) >= MAX_JPEG_SCAN:
        raise NotAnImage("a JPEG without a frame header")
    raise NeedMore


def _webp(data: bytes) -> ImageHead:
    chunk = data[12:16]
    if chunk == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", data[26:30])
        width, height = width & 0x3FFF, height & 0x3FFF
        alpha = False
    elif chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        width, height = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        alpha = bool(bits >> 28 & 1)
    elif chunk == b"VP8X" and len(data) >= 30:
        alpha = bool(data[20] & 0x10)
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
    else:
        raise NotAnImage("a WebP without a readable VP8/VP8L/VP8X header")
    if not width or not height:
        raise NotAnImage("a WebP of zero width or height")
    return ImageHead("webp", width, height, alpha=alpha)
