"""A loopback server speaking xAI's images API.

It refuses what xAI refuses (``size``, ``style``: "Argument not supported"),
answers base64 as a data URI like xAI has been seen to, and can withhold
images the way xAI's moderation does (HTTP 200, empty ``b64_json``,
``respect_moderation: false``) or refuse with its HTTP 400.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from tests.providers.common import PNG_B64

MODERATED = {"code": "Client specified an invalid argument",
             "error": "Generated image rejected by content moderation.", "usage": {"cost_in_usd_ticks": 500000000}}


def xai_app(seen: list[dict], *, delay: float = 0.0, moderated: bool = False,
            withhold: frozenset[int] = frozenset()) -> web.Application:
    async def generate(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append({"body": body, "auth": request.headers.get("Authorization")})
        if delay:
            await asyncio.sleep(delay)
        for field in ("size", "style"):
            if field in body:
                return web.json_response({"code": "Client specified an invalid argument",
                                          "error": f"Argument not supported: {field}"}, status=400)
        if moderated:
            return web.json_response(MODERATED, status=400)
        data = []
        for i in range(body.get("n", 1)):
            if i in withhold:
                data.append({"b64_json": "", "mime_type": "image/png", "revised_prompt": "",
                             "respect_moderation": False})
            else:
                data.append({"b64_json": "data:image/png;base64," + PNG_B64, "mime_type": "image/png",
                             "revised_prompt": "A fox.", "respect_moderation": True})
        return web.json_response({"data": data, "usage": {"cost_in_usd_ticks": 200000000 * len(data)}})

    app = web.Application()
    app.router.add_post("/v1/images/generations", generate)
    return app
