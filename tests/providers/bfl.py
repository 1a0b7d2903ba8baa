"""A loopback server speaking Black Forest Labs' API: submit, poll, deliver.

The polling URL and the signed result URL point back at this server (on
127.0.0.1, which is loopback: the guard allows http there). An edit's images
(``input_image``, ``input_image_2``, …) must be base64 of a whole image, as
BFL decodes them: anything else is a 422, as BFL answers.
"""

from __future__ import annotations

import base64
import binascii
import io
import itertools

from aiohttp import web
from PIL import Image

from tests.providers.common import PNG


def _bad_image(value: object) -> bool:
    if not isinstance(value, str):
        return True
    try:
        with Image.open(io.BytesIO(base64.b64decode(value, validate=True))) as image:
            image.load()
    except (binascii.Error, OSError, ValueError):
        return True
    return False


def bfl_app(seen: list[dict], *, pending_polls: int = 1, status: str = "Ready") -> web.Application:
    ids = itertools.count(1)
    polls: dict[str, int] = {}

    async def submit(request: web.Request) -> web.Response:
        body = await request.json()
        bad = [key for key in body if key.startswith("input_image") and _bad_image(body[key])]
        if bad:
            seen.append({"path": request.path, "body": body, "refused": bad})
            return web.json_response({"detail": [{"loc": ["body", bad[0]], "msg": "Invalid image"}]}, status=422)
        task = f"task-{next(ids)}"
        polls[task] = 0
        seen.append({"path": request.path, "body": body, "key": request.headers.get("x-key")})
        base = f"http://127.0.0.1:{request.url.port}"
        return web.json_response({"id": task, "polling_url": f"{base}/v1/get_result?id={task}", "cost": 4})

    async def get_result(request: web.Request) -> web.Response:
        task = request.query["id"]
        seen.append({"path": request.path, "key": request.headers.get("x-key")})
        polls[task] += 1
        if polls[task] <= pending_polls:
            return web.json_response({"id": task, "status": "Pending", "result": None, "progress": 0.5})
        if status != "Ready":
            return web.json_response({"id": task, "status": status, "result": None})
        sample = f"http://127.0.0.1:{request.url.port}/delivery/{task}.png?sig=signed"
        return web.json_response({"id": task, "status": "Ready", "result": {"sample": sample, "seed": 1}})

    async def delivery(request: web.Request) -> web.Response:
        seen.append({"path": request.path, "key": request.headers.get("x-key")})
        return web.Response(body=PNG, content_type="image/png")

    app = web.Application()
    app.router.add_post("/v1/{model}", submit)
    app.router.add_get("/v1/get_result", get_result)
    app.router.add_get("/delivery/{name}", delivery)
    return app
