"""A scriptable fake upstream for the fault-injection suite.

Each ``ScriptedUpstream`` is a real aiohttp server on loopback. Its script is a
list of actions, one per request received (the last one repeats); every
request is logged with its body, so a test can assert exactly which
deployments were tried, in which order.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

Action = Callable[[web.Request], Awaitable[web.StreamResponse]]

USAGE = {"input_tokens": 3, "output_tokens": 272, "total_tokens": 275}
META = {"created_at": 1, "size": "1024x1024", "quality": "low", "background": "opaque", "output_format": "png"}


def event(kind: str, b64: str = "QUFB", **fields: Any) -> bytes:
    data = {"type": kind, "b64_json": b64, **META, **fields}
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


PARTIAL = event("image_generation.partial_image", partial_image_index=0)
COMPLETED = event("image_generation.completed", usage=USAGE)
IMAGES = {"created": 1, "data": [{"b64_json": "QUFB"}], "usage": USAGE}


def ok() -> Action:
    """A JSON ImagesResponse, or a stream of one partial and one completed event."""

    async def act(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if body.get("stream"):
            return await _stream(request, [PARTIAL, COMPLETED])
        return web.json_response(IMAGES)

    return act


def status(code: int, message: str = "upstream says no", error_code: str | None = None, headers: dict[str, str] | None = None) -> Action:
    async def act(request: web.Request) -> web.StreamResponse:
        envelope = {"error": {"message": message, "type": "server_error" if code >= 500 else "invalid_request_error", "param": None, "code": error_code}}
        return web.json_response(envelope, status=code, headers=headers)

    return act


def hang(seconds: float = 30) -> Action:
    """Accept the request and say nothing (a hang before the headers)."""

    async def act(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(seconds)
        return web.json_response(IMAGES)

    return act


def raw(chunks: list[bytes], content_type: str = "text/event-stream", then: str = "end", delay: float = 0.0) -> Action:
    """Write ``chunks``; then end cleanly ("end"), hang ("hang") or drop the connection ("drop")."""

    async def act(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": content_type})
        await resp.prepare(request)
        for chunk in chunks:
            if delay:
                await asyncio.sleep(delay)
            await resp.write(chunk)
        if then == "hang":
            await asyncio.sleep(30)
        elif then == "drop":
            assert request.transport is not None
            request.transport.abort()
            return resp
        await resp.write_eof()
        return resp

    return act


async def _stream(request: web.Request, events: list[bytes]) -> web.StreamResponse:
    return await raw(events)(request)


@dataclass
class ScriptedUpstream:
    name: str
    script: list[Action]
    log: list[dict[str, Any]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.log.append(body)
        action = self.script[min(len(self.log), len(self.script)) - 1]
        return await action(request)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/images/generations", self.handle)
        return app
