"""``python -m bench.edit_upstream --port P``: the edits scenario's upstream.

It stands for an OpenAI-compatible edits endpoint at its cheapest: it reads
the whole multipart upload (every byte, as a provider must) and answers a
small fixed image, so the bench measures how the proxies carry 64 MB of
uploads, not how fast a fake provider can edit. Direct, through the gateway
and through the floor all reach this same server.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json

import uvloop
from aiohttp import web

__all__ = ["create_app", "main"]

_READ = 256 * 1024
# A fixed 1 KiB "image": answers are byte-identical on all three paths.
_ANSWER = json.dumps({"created": 0, "data": [{"b64_json": base64.b64encode(bytes(range(256)) * 4).decode()}]}).encode()


async def _edits(request: web.Request) -> web.Response:
    received = 0
    while chunk := await request.content.read(_READ):
        received += len(chunk)
    if request.content_length is not None and received != request.content_length:
        return web.json_response({"error": {"message": "short body", "type": "invalid_request_error"}}, status=400)
    return web.Response(body=_ANSWER, content_type="application/json")


async def _models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": []})


def create_app() -> web.Application:
    app = web.Application()
    app.router.add_post("/v1/images/edits", _edits)
    app.router.add_get("/v1/models", _models)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.edit_upstream", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    web.run_app(create_app(), host=args.host, port=args.port, loop=loop, access_log=None)


if __name__ == "__main__":
    main()
