"""A loopback server speaking xAI's images API.

It refuses what xAI refuses (``size``, ``style``: "Argument not supported"),
answers base64 as a data URI like xAI has been seen to, and can withhold
images the way xAI's moderation does (HTTP 200, empty ``b64_json``,
``respect_moderation: false``) or refuse with its HTTP 400.

Edits (``POST /v1/images/edits``) take JSON only, as xAI's do, with the input
as ``image`` or ``images`` (``{"url": data URI, "type": "image_url"}``). Given
``uploads`` (the files the test sends), the fake answers 400 unless each data
URI's base64 is exactly that file's, with its media type.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from tests.providers.common import PNG_B64

MODERATED = {"code": "Client specified an invalid argument",
             "error": "Generated image rejected by content moderation.", "usage": {"cost_in_usd_ticks": 500000000}}


def _invalid(message: str) -> web.Response:
    return web.json_response({"code": "Client specified an invalid argument", "error": message}, status=400)


def _check_inputs(body: dict[str, Any], uploads: Sequence[tuple[bytes, str]]) -> str | None:
    """What is wrong with an edit's input images, if anything."""
    if ("image" in body) == ("images" in body):
        return "Provide exactly one of image and images"
    refs = [body["image"]] if "image" in body else body["images"]
    if not isinstance(refs, list) or not 1 <= len(refs) <= 3:
        return "images takes 1 to 3 entries"
    if len(refs) != len(uploads):
        return f"expected {len(uploads)} input images, got {len(refs)}"
    for i, (ref, (data, media)) in enumerate(zip(refs, uploads, strict=True)):
        if ref.get("type") != "image_url" or not isinstance(ref.get("url"), str):
            return f"image {i}: not an image_url object"
        head, _, b64 = ref["url"].partition(",")
        if head != f"data:{media};base64":
            return f"image {i}: data URI head {head!r}, expected data:{media};base64"
        if b64 != base64.b64encode(data).decode():
            return f"image {i}: the base64 is not the uploaded file's"
    return None


def xai_app(seen: list[dict], *, delay: float = 0.0, moderated: bool = False,
            withhold: frozenset[int] = frozenset(),
            uploads: Sequence[tuple[bytes, str]] = ()) -> web.Application:
    async def generate(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append({"body": body, "auth": request.headers.get("Authorization")})
        return await answer(body)

    async def edit(request: web.Request) -> web.Response:
        if request.content_type != "application/json":
            seen.append({"path": request.path, "content_type": request.content_type})
            return _invalid("Content-Type must be application/json")
        # The gateway sends an edit with its length known (spooled files, read as sent).
        sized = request.content_length is not None and "Transfer-Encoding" not in request.headers
        body = await request.json()
        seen.append({"path": request.path, "body": body, "auth": request.headers.get("Authorization"), "sized": sized})
        if (problem := _check_inputs(body, uploads)) is not None:
            return _invalid(problem)
        if "mask" in body:
            return _invalid("Argument not supported: mask")
        return await answer(body)

    async def answer(body: dict[str, Any]) -> web.Response:
        if delay:
            await asyncio.sleep(delay)
        for field in ("size", "style"):
            if field in body:
                return _invalid(f"Argument not supported: {field}")
        if moderated:
            return web.json_response(MODERATED, status=400)
        n = body.get("n", 1)
        if body.get("response_format", "url") == "url":  # xAI's default
            urls = [{"url": f"https://imgen.x.ai/xai-imgen/xai-tmp-imgen-{i}.jpeg", "revised_prompt": ""} for i in range(n)]
            return web.json_response({"data": urls})
        data = []
        for i in range(n):
            if i in withhold:
                data.append({"b64_json": "", "mime_type": "image/png", "revised_prompt": "",
                             "respect_moderation": False})
            else:
                data.append({"b64_json": "data:image/png;base64," + PNG_B64, "mime_type": "image/png",
                             "revised_prompt": "A fox.", "respect_moderation": True})
        return web.json_response({"data": data, "usage": {"cost_in_usd_ticks": 200000000 * len(data)}})

    app = web.Application()
    app.router.add_post("/v1/images/generations", generate)
    app.router.add_post("/v1/images/edits", edit)
    return app
