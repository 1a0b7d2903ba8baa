"""A small PNG decoder for the demo provider's edits: 8-bit, non-interlaced.

Grey, grey+alpha, RGB, RGBA and palette images are read (the kinds Pillow,
browsers and screenshots write); 16-bit, sub-byte and interlaced ones are
reported as unsupported (``None``) so the caller can fall back instead of
guessing. Corrupt data raises ``PngError``.

Pure Python, so the filters are where the time goes: Up is one big-integer
add per row and Sub a log-step prefix sum over the row as one integer (both
C speed); Average and Paeth depend on the byte just decoded and run as Python
loops (~0.4 s per megapixel of RGB for Paeth). The demo's inputs are test-sized, and
``max_pixels`` bounds the rest.
"""

from __future__ import annotations

import struct
import zlib

import msgspec

__all__ = ["PngError", "Raster", "decode_png"]

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Colour type -> bytes per pixel at 8 bits.
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


class PngError(ValueError):
    """The bytes claim to be a PNG but cannot be decoded."""


class Raster(msgspec.Struct, frozen=True):
    """Decoded pixels, one ``bytes`` per row and channel (so rows can be sampled and recoloured at C speed)."""

    width: int
    height: int
    red: list[bytes]
    green: list[bytes]
    blue: list[bytes]
    # None: fully opaque (no alpha channel, no tRNS).
    alpha: list[bytes] | None


def decode_png(data: bytes, max_pixels: int) -> Raster | None:
    """The image's pixels; ``None`` for a PNG this decoder does not read (or over ``max_pixels``)."""
    if not data.startswith(_SIGNATURE):
        raise PngError("not a PNG")
    header, palette, transparency, idat = _chunks(data)
    if len(header) != 13:
        raise PngError("a PNG without a valid IHDR")
    width, height, depth, colour, compression, filtering, interlace = struct.unpack(">IIBBBBB", header)
    if width == 0 or height == 0 or compression != 0 or filtering != 0 or colour not in _CHANNELS:
        raise PngError("a PNG with an invalid IHDR")
    if depth != 8 or interlace != 0 or width * height > max_pixels:
        return None
    if colour == 3 and not palette:
        raise PngError("a palette PNG without a PLTE chunk")
    bpp = _CHANNELS[colour]
    stride = width * bpp
    expected = (stride + 1) * height
    try:
        # Bounded: a few KB of deflate cannot expand past what IHDR promised.
        raw = zlib.decompressobj().decompress(idat, expected)
    except zlib.error as exc:
        raise PngError(f"a PNG whose image data does not inflate ({exc})") from None
    if len(raw) < expected:
        raise PngError("a PNG whose image data is truncated")
    rows = _unfilter(raw, stride, height, bpp)
    return _split(rows, width, colour, palette, transparency)


def _chunks(data: bytes) -> tuple[bytes, bytes, bytes, bytes]:
    pos = len(_SIGNATURE)
    header = palette = transparency = b""
    idat: list[bytes] = []
    while pos + 8 <= len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        if len(body) != length:
            raise PngError("a PNG with a truncated chunk")
        pos += 12 + length
        if kind == b"IHDR":
            header = body
        elif kind == b"PLTE":
            palette = body
        elif kind == b"tRNS":
            transparency = body
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    if not idat:
        raise PngError("a PNG without image data")
    return header, palette, transparency, b"".join(idat)


def _unfilter(raw: bytes, stride: int, height: int, bpp: int) -> list[bytes]:
    # Bytewise addition mod 256 of whole rows held as integers: add the low
    # 7 bits of every byte (no carry can cross a byte), then put each byte's
    # top bit back as the XOR of the two top bits.
    low = int.from_bytes(b"\x7f" * stride, "little")
    high = int.from_bytes(b"\x80" * stride, "little")
    full = (1 << 8 * stride) - 1

    def add(a: int, b: int) -> int:
        return ((a & low) + (b & low)) ^ ((a ^ b) & high)

    rows: list[bytes] = []
    prev = bytes(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind = raw[start]
        line = raw[start + 1 : start + 1 + stride]
        if kind == 0:
            row = line
        elif kind == 1:
            # Each byte plus the one bpp to its left, cumulatively: a prefix
            # sum per channel, done in log2(width) whole-row steps.
            x, shift = int.from_bytes(line, "little"), bpp
            while shift < stride:
                x = add(x, (x << 8 * shift) & full)
                shift *= 2
            row = x.to_bytes(stride, "little")
        elif kind == 2:
            row = add(int.from_bytes(line, "little"), int.from_bytes(prev, "little")).to_bytes(stride, "little")
        elif kind == 3:
            row = _average(line, prev, bpp)
        elif kind == 4:
            row = _paeth(line, prev, bpp)
        else:
            raise PngError(f"a PNG with an unknown row filter {kind}")
        rows.append(row)
        prev = row
    return rows


def _average(line: bytes, prev: bytes, bpp: int) -> bytes:
    # One channel at a time, so "left" is a local variable rather than an
    # index into the row being written (twice as fast in CPython).
    out = bytearray(len(line))
    for channel in range(bpp):
        left = 0
        decoded: list[int] = []
        keep = decoded.append
        for x, up in zip(line[channel::bpp], prev[channel::bpp], strict=True):
            left = (x + ((left + up) >> 1)) & 255
            keep(left)
        out[channel::bpp] = bytes(decoded)
    return bytes(out)


def _paeth(line: bytes, prev: bytes, bpp: int) -> bytes:
    out = bytearray(len(line))
    for channel in range(bpp):
        left = upper_left = 0
        decoded: list[int] = []
        keep = decoded.append
        for x, up in zip(line[channel::bpp], prev[channel::bpp], strict=True):
            # The PNG predictor: whichever of left, up, upper-left is nearest
            # to left + up - upper-left (ties in that order).
            pa = up - upper_left
            pb = left - upper_left
            pc = pa + pb
            if pa < 0:
                pa = -pa
            if pb < 0:
                pb = -pb
            if pc < 0:
                pc = -pc
            if pa <= pb and pa <= pc:
                left = (x + left) & 255
            elif pb <= pc:
                left = (x + up) & 255
            else:
                left = (x + upper_left) & 255
            keep(left)
            upper_left = up
        out[channel::bpp] = bytes(decoded)
    return bytes(out)


def _split(rows: list[bytes], width: int, colour: int, palette: bytes, transparency: bytes) -> Raster:
    height = len(rows)
    if colour == 2:
        alpha = _key_alpha(rows, transparency, 3) if len(transparency) == 6 else None
        return Raster(width, height, [r[0::3] for r in rows], [r[1::3] for r in rows], [r[2::3] for r in rows], alpha)
    if colour == 6:
        return Raster(width, height, [r[0::4] for r in rows], [r[1::4] for r in rows], [r[2::4] for r in rows], [r[3::4] for r in rows])
    if colour == 4:
        grey = [r[0::2] for r in rows]
        return Raster(width, height, grey, grey, grey, [r[1::2] for r in rows])
    if colour == 0:
        alpha = _key_alpha(rows, transparency, 1) if len(transparency) == 2 else None
        return Raster(width, height, rows, rows, rows, alpha)
    # Palette: each index byte through one 256-entry table per channel
    # (bytes.translate); indices past the palette read as black.
    entries = palette[: len(palette) // 3 * 3].ljust(768, b"\x00")
    red, green, blue = entries[0::3], entries[1::3], entries[2::3]
    alpha_table = transparency[:256].ljust(256, b"\xff") if transparency else None
    return Raster(
        width,
        height,
        [r.translate(red) for r in rows],
        [r.translate(green) for r in rows],
        [r.translate(blue) for r in rows],
        [r.translate(alpha_table) for r in rows] if alpha_table is not None else None,
    )


def _key_alpha(rows: list[bytes], transparency: bytes, bpp: int) -> list[bytes]:
    """tRNS for grey/RGB: the one colour that is transparent (8-bit samples in 16-bit fields)."""
    key = bytes(transparency[1::2][:bpp])
    out = []
    for row in rows:
        alpha = bytearray(b"\xff" * (len(row) // bpp))
        start = row.find(key)
        while start != -1:
            if start % bpp == 0:
                alpha[start // bpp] = 0
            start = row.find(key, start + 1)
        out.append(bytes(alpha))
    return out
