"""Real, viewable PNGs for the demo provider, fast enough to be a benchmark upstream.

A picture is built from one row of colour bands computed per pixel column,
rotated row by row into waves (slicing, C speed), with a disc on top; prompt
bytes pick the colours, wave and disc. Partial images use coarser blocks, so
they sharpen visibly towards the final image. A 1024x1024 image takes ~25 ms.
"""

from __future__ import annotations

import hashlib
import math
import struct
import zlib

__all__ = ["encode_png", "partial_block", "pattern_rows", "render_png"]


def partial_block(index: int, count: int) -> int:
    """Block size in pixels of partial ``index`` (0-based) of ``count`` partials."""
    return (64, 32, 16)[3 - count + index]


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_png(width: int, height: int, raw: bytes, level: int = 1) -> bytes:
    """A PNG of 8-bit RGB rows (each with its filter byte) deflated at ``level``."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(raw, level)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def _palette(seed: bytes) -> tuple[bytes, bytes, bytes]:
    return seed[0:3], seed[3:6], bytes(min(255, 96 + c) for c in seed[6:9])


def render_png(prompt: str, width: int, height: int, block: int = 1) -> bytes:
    """A ``width`` x ``height`` PNG for ``prompt``, drawn in ``block``-pixel cells."""
    rows = pattern_rows(prompt, width, height, block)
    return encode_png(width, height, b"".join((b"\x00" + row) * min(block, height - i * block) for i, row in enumerate(rows)))


def pattern_rows(prompt: str, width: int, height: int, block: int = 1) -> list[bytes]:
    """The picture for ``prompt`` as RGB rows without filter bytes, one per
    ``block`` rows (an edit blends it over its input)."""
    seed = hashlib.sha256(prompt.encode("utf-8")).digest()
    c1, c2, sun = _palette(seed)
    freq = 1.5 + seed[9] / 64  # colour bands across the picture
    phase = seed[10] / 40
    wave = 0.5 + seed[11] / 128  # wave periods down the picture
    amp = 0.08 + seed[12] / 1600
    # One row of bands, computed per block column.
    cells = []
    for x in range(0, width, block):
        t = 0.5 + 0.5 * math.sin(2 * math.pi * freq * x / width + phase)
        cells.append(bytes(int(a + (b - a) * t) for a, b in zip(c1, c2, strict=True)) * block)
    base = b"".join(cells)[: width * 3]
    cx, cy = width * (0.25 + seed[13] / 512), height * (0.25 + seed[14] / 512)
    radius = min(width, height) * (0.12 + seed[15] / 1700)
    rows = []
    for y in range(0, height, block):
        yc = y + block / 2
        shift = int(amp * width * math.sin(2 * math.pi * wave * yc / height + phase)) // block * block
        k = (shift % width) * 3
        row = base[k:] + base[:k]
        dy = yc - cy
        if abs(dy) < radius:
            half = math.sqrt(radius * radius - dy * dy)
            x0 = max(0, int(cx - half) // block * block)
            x1 = min(width, -(-int(cx + half) // block) * block)
            row = row[: x0 * 3] + sun * (x1 - x0) + row[x1 * 3 :]
        rows.append(row)
    return rows
