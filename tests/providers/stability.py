"""A loopback server speaking Stability AI's v2beta Stable Image API.

It parses the multipart body the way Stability's server does and answers
``accept: image/*`` with the raw PNG and a ``finish-reason`` header. Edits
(``generate/sd3`` with ``mode: image-to-image``, ``edit/inpaint``) must bring
their files: each is recorded byte for byte and opened as an image, as
Stability would, so a file mangled on the way is a 400 here.
"""

from __future__ import annotations

import io

from aiohttp import web
from PIL import Image

from tests.providers.common import PNG


def _is_image(data: bytes) -> bool:
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
    except Exception:
        return False
    return True


def stability_app(seen: list[dict], *, finish_reason: str = "SUCCESS", status: int = 200,
                  error_name: str = "bad_request") -> web.Application:
    async def generate(request: web.Request) -> web.Response:
        form = await request.post()
        record: dict = {
            "path": request.path,
            "fields": {name: value for name, value in form.items() if isinstance(value, str)},
            "auth": request.headers.get("Authorization"),
            "accept": request.headers.get("Accept"),
            "content_type": request.content_type,
        }
        files = {name: {"filename": value.filename, "content_type": value.content_type, "data": value.file.read()}
                 for name, value in form.items() if isinstance(value, web.FileField)}
        if files:
            record["files"] = files
        seen.append(record)
        problem = _refusal(request.match_info["endpoint"], record["fields"], files)
        if problem:
            return web.json_response({"id": "e0", "name": "bad_request", "errors": [problem]}, status=400)
        if status != 200:
            return web.json_response({"id": "e1", "name": error_name, "errors": ["Your request was refused."]},
                                     status=status, headers={"Retry-After": "4"} if status == 429 else {})
        return web.Response(body=PNG, content_type="image/png",
                            headers={"finish-reason": finish_reason, "seed": str(form.get("seed", "1"))})

    app = web.Application()
    app.router.add_post("/v2beta/stable-image/generate/{endpoint}", generate)
    app.router.add_post("/v2beta/stable-image/edit/{endpoint}", generate)
    return app


def _refusal(endpoint: str, fields: dict[str, str], files: dict[str, dict]) -> str | None:
    """What Stability's validation would say of this form, if anything."""
    for name, part in files.items():
        if not _is_image(part["data"]):
            return f"{name}: not a valid image"
    if endpoint == "inpaint":
        if "image" not in files:
            return "image: required"
    elif fields.get("mode") == "image-to-image":
        if "image" not in files or "strength" not in fields:
            return "image-to-image needs image and strength"
        if "aspect_ratio" in fields:
            return "aspect_ratio: not used in image-to-image mode"
    elif files:
        return "files are for image-to-image mode"
    return None
