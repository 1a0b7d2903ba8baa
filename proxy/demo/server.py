"""``pixelgate demo-upstream``: the demo provider as a standalone OpenAI-compatible server.

Tests and benchmarks point the gateway at it to exercise the real HTTP path.
It serves ``/v1/images/generations`` and ``/v1/images/edits`` (and the same
without ``/v1``); the route tells the engine which operation a body is.
Streamed answers go out through aiohttp-sse's ``EventSourceResponse``: the
events are whole ones this server makes itself, each handed to the transport
in one write, so its ping task (the keep-alives a real provider sends while
it thinks) can only ever land between two events.
"""

from __future__ import annotations

import asyncio

import msgspec
from aiohttp import web
from aiohttp_sse import EventSourceResponse

from pixelgate.proxy.demo.engine import DemoEngine, DemoFault, Operation
from pixelgate.proxy.loop import new_event_loop

__all__ = ["create_demo_app"]

ENGINE = web.AppKey("engine", DemoEngine)
PING_INTERVAL = web.AppKey("ping_interval", float)


async def _serve(operation: Operation, request: web.Request) -> web.StreamResponse:
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        # In OpenAI's envelope, as every other refusal of this server.
        error = {"message": f"The request body is over the demo provider's limit of {request.client_max_size} bytes.",
                 "type": "invalid_request_error", "param": None, "code": "request_too_large"}
        return web.Response(status=413, body=msgspec.json.encode({"error": error}), content_type="application/json")
    answer = await request.app[ENGINE].answer(body, request.headers, operation)
    if answer.headers.get("Content-Type") == "text/event-stream":
        resp: web.StreamResponse = EventSourceResponse(
            sep="\n", allow_all_methods=True, ping_interval=request.app[PING_INTERVAL]
        )
    else:
        resp = web.StreamResponse(status=answer.status, headers=answer.headers)
    await resp.prepare(request)
    try:
        async for chunk in answer.chunks:
            await resp.write(chunk)
    except DemoFault:
        # Asked to fail mid-answer: break the connection, no clean end.
        if request.transport is not None:
            request.transport.abort()
        return resp
    if isinstance(resp, EventSourceResponse):
        resp.stop_streaming()
    await resp.write_eof()
    return resp


async def _generations(request: web.Request) -> web.StreamResponse:
    return await _serve("generations", request)


async def _edits(request: web.Request) -> web.StreamResponse:
    return await _serve("edits", request)


async def _models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [{"id": "demo-image", "object": "model", "created": 0, "owned_by": "pixelgate-demo"}]})


def create_demo_app(latency_ms: float = 0, interval_ms: float = 0, ping_interval: float = 15.0) -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[ENGINE] = DemoEngine(latency_ms=latency_ms, interval_ms=interval_ms)
    app[PING_INTERVAL] = ping_interval
    for prefix in ("/v1", ""):
        app.router.add_post(f"{prefix}/images/generations", _generations)
        app.router.add_post(f"{prefix}/images/edits", _edits)
        app.router.add_get(f"{prefix}/models", _models)
    return app


def run_demo(host: str, port: int, latency_ms: float, interval_ms: float) -> None:
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    web.run_app(create_demo_app(latency_ms, interval_ms), host=host, port=port, loop=loop, access_log=None)
