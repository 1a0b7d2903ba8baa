"""The floor: a bare aiohttp pass-through proxy, a measuring stick, not a product.

``python -m bench.floor_proxy --port P --upstream http://127.0.0.1:U``

Why it exists: on a small machine the load generator, the upstream and the
proxy share the cores, and aiohttp's client + server path alone copies every
byte several times (kernel -> client parser -> stream buffer -> server writer
-> kernel). So "gateway vs direct" mixes two costs: what any aiohttp proxy
pays for the extra hop, and what the gateway adds on top. ``bench.run``
measures every scenario a third time through this proxy, in the same run and
against the same upstream, to separate the two: gateway vs floor is the
gateway's own overhead, floor vs direct is the price of the hop itself.

It is deliberately the thinnest correct relay for the bench's workload, and
must stay that way. The gateway does strictly more per request: it validates
the request, routes it to a provider, frames and checks SSE events, meters
usage, sends keep-alives on idle streams and translates upstream errors. This
proxy does none of that: it reads the client's body, POSTs it upstream on one
shared ``ClientSession``, and relays the status, ``Content-Type``,
``Content-Length`` (when present) and the body chunk by chunk as they arrive.
There is no error handling beyond not crashing (aiohttp answers 500 for an
exception in a handler), no timeouts, no metrics, no logging per request.
Never point anything but the bench at it.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator

import aiohttp
import uvloop
from aiohttp import web

__all__ = ["create_app", "main"]

# The gateway's read buffer, so both proxies read the upstream in the same bites.
READ_BUFSIZE = 256 * 1024
PATH = "/v1/images/generations"

EDITS = "/v1/images/edits"

SESSION = web.AppKey("session", aiohttp.ClientSession)
UPSTREAM_URL = web.AppKey("upstream_url", str)
EDITS_URL = web.AppKey("edits_url", str)


async def _generations(request: web.Request) -> web.StreamResponse:
    """Forward the body as-is; relay status, type, length and body as-is."""
    body = await request.read()
    headers = {"Content-Type": request.headers.get("Content-Type", "application/json")}
    async with request.app[SESSION].post(request.app[UPSTREAM_URL], data=body, headers=headers) as resp:
        out_headers = {"Content-Type": resp.headers.get("Content-Type", "application/octet-stream")}
        length = resp.headers.get("Content-Length")
        if length is not None:
            # A known length goes out as such; otherwise aiohttp chunks, as the upstream did.
            out_headers["Content-Length"] = length
        out = web.StreamResponse(status=resp.status, headers=out_headers)
        await out.prepare(request)
        async for chunk in resp.content.iter_any():
            await out.write(chunk)
        await out.write_eof()
    return out


async def _edits(request: web.Request) -> web.StreamResponse:
    """An upload streamed through as it arrives (its length kept), the answer relayed as-is."""
    headers = {"Content-Type": request.headers.get("Content-Type", "application/octet-stream")}
    if request.content_length is not None:
        headers["Content-Length"] = str(request.content_length)
    upload = request.content.iter_chunked(READ_BUFSIZE)
    async with request.app[SESSION].post(request.app[EDITS_URL], data=upload, headers=headers) as resp:
        body = await resp.read()
        return web.Response(status=resp.status, body=body, content_type=resp.content_type)


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def create_app(upstream: str, edits_upstream: str | None = None) -> web.Application:
    """The routes, and one upstream session for the app's lifetime."""
    # Uploads are streamed, never read whole: no body size limit applies to them.
    app = web.Application()
    app[UPSTREAM_URL] = upstream.rstrip("/") + PATH
    app[EDITS_URL] = (edits_upstream or upstream).rstrip("/") + EDITS

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None),
            read_bufsize=READ_BUFSIZE,
            # No Accept-Encoding: the upstream answers in identity encoding, so
            # its Content-Length is the length of the bytes relayed.
            skip_auto_headers=("Accept-Encoding",),
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
        )
        app[SESSION] = session
        try:
            yield
        finally:
            await session.close()

    app.cleanup_ctx.append(session_ctx)
    app.router.add_post(PATH, _generations)
    app.router.add_post(EDITS, _edits)
    app.router.add_get("/healthz", _healthz)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.floor_proxy", description="A bare aiohttp pass-through proxy: the bench's floor.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="base URL, e.g. http://127.0.0.1:9090")
    parser.add_argument("--edits-upstream", help="base URL for /v1/images/edits (default: --upstream)")
    args = parser.parse_args(argv)
    # On uvloop, like the gateway and the demo upstream, so the comparison is like for like.
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    web.run_app(create_app(args.upstream, args.edits_upstream), host=args.host, port=args.port, loop=loop, access_log=None)


if __name__ == "__main__":
    main()
