"""A loopback server speaking Together's images API.

Edits are generations with ``image_url`` (FLUX Kontext): given ``uploads``
(the file the test sends and its media type), the fake answers 400 unless
``image_url`` is a data URI of exactly that file's base64.
"""

from __future__ import annotations

import asyncio
import base64

from aiohttp import web

from tests.providers.common import PNG_B64


def _check_image_url(url: object, upload: tuple[bytes, str] | None) -> str | None:
    """What is wrong with an edit's image_url, if anything."""
    if upload is None:
        return "this model takes no image_url"
    if not isinstance(url, str):
        return "image_url must be a string"
    data, media = upload
    head, _, b64 = url.partition(",")
    if head != f"data:{media};base64":
        return f"image_url: data URI head {head!r}, expected data:{media};base64"
    if b64 != base64.b64encode(data).decode():
        return "image_url: the base64 is not the uploaded file's"
    return None


def together_app(seen: list[dict], *, delay: float = 0.0, status: int = 200,
                 upload: tuple[bytes, str] | None = None) -> web.Application:
    async def generate(request: web.Request) -> web.Response:
        # The gateway sends an edit with its length known (spooled files, read as sent).
        sized = request.content_length is not None and "Transfer-Encoding" not in request.headers
        body = await request.json()
        seen.append({"body": body, "auth": request.headers.get("Authorization"), "sized": sized})
        if delay:
            await asyncio.sleep(delay)
        if status != 200:
            return web.json_response({"error": {"message": "Rate limit exceeded for this model"}}, status=status,
                                     headers={"Retry-After": "3"})
        if "image_url" in body and (problem := _check_image_url(body["image_url"], upload)) is not None:
            return web.json_response({"error": {"message": problem, "type": "invalid_request_error"}}, status=400)
        n = body.get("n", 1)
        data = [{"index": i, "type": "b64_json", "b64_json": PNG_B64} for i in range(n)]
        return web.json_response({"id": "tg-1", "model": body["model"], "object": "list", "data": data})

    app = web.Application()
    app.router.add_post("/v1/images/generations", generate)
    return app
