"""The Replicate fake as a process of its own, for memory measurements.

    python -m tests.providers.replicate_server --port N --image-bytes N

Serves ``tests.providers.replicate.replicate_app`` on 127.0.0.1 with result
files of ``--image-bytes`` deterministic bytes (``file_bytes``), so a test
can check what the gateway relays by hash while the file's memory stays out
of the gateway's (and the test's) process. A prediction whose input has
``image_bytes`` gets a file of that size instead (a small warm-up).
``GET /healthz`` answers once it listens.
"""

from __future__ import annotations

import argparse
import random
from functools import cache
from typing import Any

from aiohttp import web

from tests.providers.replicate import replicate_app

__all__ = ["file_bytes"]


@cache
def file_bytes(size: int) -> bytes:
    """``size`` bytes of seeded noise: incompressible, the same in every process."""
    return random.Random(size).randbytes(size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--image-bytes", type=int, default=15_000_000)
    parser.add_argument("--pending-polls", type=int, default=1)
    args = parser.parse_args()

    def files(prediction_input: dict[str, Any]) -> bytes:
        return file_bytes(int(prediction_input.get("image_bytes", args.image_bytes)))

    async def healthz(_request: web.Request) -> web.Response:
        return web.Response(text="ok")

    # The fake's log of calls grows by a few small dicts a prediction: harmless here.
    app = replicate_app([], pending_polls=args.pending_polls, files=files)
    app.router.add_get("/healthz", healthz)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
