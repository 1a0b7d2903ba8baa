"""A loopback server speaking Together's images API."""

from __future__ import annotations

import asyncio

from aiohttp import web

from tests.providers.common import PNG_B64


def together_app(seen: list[dict], *, delay: float = 0.0, status: int = 200) -> web.Application:
    async def generate(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append({"body": body, "auth": request.headers.get("Authorization")})
        if delay:
            await asyncio.sleep(delay)
        if status != 200:
            return web.json_response({"error": {"message": "Rate limit exceeded for this model"}}, status=status,
                                     headers={"Retry-After": "3"})
        n = body.get("n", 1)
        data = [{"index": i, "type": "b64_json", "b64_json": PNG_B64} for i in range(n)]
        return web.json_response({"id": "tg-1", "model": body["model"], "object": "list", "data": data})

    app = web.Application()
    app.router.add_post("/v1/images/generations", generate)
    return app
