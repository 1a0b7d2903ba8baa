"""A loopback server speaking Stability AI's v2beta Stable Image API.

It parses the multipart body the way Stability's server does and answers
``accept: image/*`` with the raw PNG and a ``finish-reason`` header.
"""

from __future__ import annotations

from aiohttp import web

from tests.providers.common import PNG


def stability_app(seen: list[dict], *, finish_reason: str = "SUCCESS", status: int = 200,
                  error_name: str = "bad_request") -> web.Application:
    async def generate(request: web.Request) -> web.Response:
        form = await request.post()
        seen.append({
            "path": request.path,
            "fields": {name: str(value) for name, value in form.items()},
            "auth": request.headers.get("Authorization"),
            "accept": request.headers.get("Accept"),
            "content_type": request.content_type,
        })
        if status != 200:
            return web.json_response({"id": "e1", "name": error_name, "errors": ["Your request was refused."]},
                                     status=status, headers={"Retry-After": "4"} if status == 429 else {})
        return web.Response(body=PNG, content_type="image/png",
                            headers={"finish-reason": finish_reason, "seed": form.get("seed", "1")})

    app = web.Application()
    app.router.add_post("/v2beta/stable-image/generate/{endpoint}", generate)
    return app
