"""The Replicate fake as a process of its own, for memory measurements.

    python -m tests.providers.replicate_server --port N --image-bytes N

Serves ``tests.providers.replicate.replicate_app`` on 127.0.0.1 with result
files of ``--image-bytes`` deterministic bytes (``file_bytes``), so a test
can check what the gateway relays by hash while the file's memory stays out
of the gateway's (and the test's) process. A prediction whose input has
``image_bytes`` gets a file of that size instead (a small warm-up).
``GET /healthz`` answers once it listens.

Edits: every upload must be ``upload_bytes(n)`` for its own ``n`` (the fake
checks the decoded data: URI byte for byte and answers 422 otherwise), and a
prediction with an upload answers with the upload itself as its file, so
the client's ``b64_json`` shows the bytes made the whole round trip.
"""

from __future__ import annotations

import argparse
import random
import struct
import zlib
from functools import cache
from typing import Any

from aiohttp import web

from tests.providers.replicate import replicate_app

__all__ = ["PNG_HEAD", "file_bytes", "upload_bytes"]


@cache
def file_bytes(size: int) -> bytes:
    """``size`` bytes of seeded noise: incompressible, the same in every process."""
    return random.Random(size).randbytes(size)


def _png_head(width: int, height: int) -> bytes:
    ihdr = b"IHDR" + struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + ihdr + struct.pack(">I", zlib.crc32(ihdr))


# A PNG signature and header (what the gateway sniffs: 1024x1024 RGBA); the pixels are never decoded.
PNG_HEAD = _png_head(1024, 1024)


@cache
def upload_bytes(size: int) -> bytes:
    """An edit's upload of ``size`` bytes: a PNG header, then seeded noise."""
    return PNG_HEAD + file_bytes(size - len(PNG_HEAD))


def _each(uploads: dict[str, Any]) -> list[bytes]:
    """Every upload, in input order (a list input's in its order)."""
    return [data for value in uploads.values() for data in (value if isinstance(value, list) else [value])]


def _is_upload(data: Any) -> bool:
    return isinstance(data, bytes) and len(data) > len(PNG_HEAD) and data == upload_bytes(len(data))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--image-bytes", type=int, default=15_000_000)
    parser.add_argument("--pending-polls", type=int, default=1)
    args = parser.parse_args()

    def files(prediction_input: dict[str, Any], uploads: dict[str, Any]) -> bytes:
        if uploads:
            return _each(uploads)[0]
        return file_bytes(int(prediction_input.get("image_bytes", args.image_bytes)))

    def expected(uploads: dict[str, Any]) -> bool:
        return all(_is_upload(data) for data in _each(uploads))

    async def healthz(_request: web.Request) -> web.Response:
        return web.Response(text="ok")

    # The fake's log of calls grows by a few small dicts a prediction: harmless here.
    app = replicate_app([], pending_polls=args.pending_polls, files=files, expect_uploads=expected)
    app.router.add_get("/healthz", healthz)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
