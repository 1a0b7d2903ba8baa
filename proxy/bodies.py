"""Upstream bodies made of spooled uploads, read as they are sent.

A ``StreamedBody`` (``pixelgate.core.upload``) is literal bytes and pieces of
spooled files; this turns it into the chunks a transport sends. Files are
read with plain blocking reads: the spool was written moments ago, so the
reads come from the page cache in microseconds, and a thread hop per chunk
would cost more than it saves. Base64 pieces are read in multiples of 3
bytes, so each chunk encodes on its own and the chunks join into the base64
of the whole file.
"""

from __future__ import annotations

import binascii
from collections.abc import AsyncIterator

from pixelgate.core.upload import FilePiece, StreamedBody

__all__ = ["CHUNK", "chunks", "read_all"]

# 3 x 64 KiB: a multiple of 3 (base64 groups) near aiohttp's write sizes.
CHUNK = 3 * 64 * 1024


async def chunks(body: StreamedBody) -> AsyncIterator[bytes]:
    for piece in body.pieces:
        if isinstance(piece, bytes):
            if piece:
                yield piece
            continue
        async for chunk in _file(piece):
            yield chunk


async def _file(piece: FilePiece) -> AsyncIterator[bytes]:
    encode = piece.encoding == "base64"
    with open(piece.image.path, "rb", buffering=0) as f:
        while chunk := f.read(CHUNK):
            yield binascii.b2a_base64(chunk, newline=False) if encode else chunk


async def read_all(body: bytes | StreamedBody) -> bytes:
    """The whole body, for the in-process demo engine only (its uploads are small)."""
    if isinstance(body, bytes):
        return body
    return b"".join([chunk async for chunk in chunks(body)])
