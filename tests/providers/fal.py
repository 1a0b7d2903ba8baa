"""A loopback server speaking fal's queue API: submit, status, result, cancel, files.

The status, result, cancel and file URLs point back at this server (on
127.0.0.1, which is loopback: the guard allows http there).

``PUT …/requests/{id}/cancel`` answers as fal does (202
``CANCELLATION_REQUESTED``, or 400 ``ALREADY_COMPLETED`` once the status
said COMPLETED), recorded in ``seen`` like every call; ``cancel_status``
forces another status and ``cancel_delay`` makes it hang first. A slow job
is ``queued_polls`` large: every poll says IN_QUEUE, then IN_PROGRESS.

Edit apps take their images as ``data:`` URIs in ``image_url``,
``image_urls`` and ``mask_url``. The fake decodes each strictly (fal would
refuse a broken one with a 422), records the bytes in ``uploads`` (the
recorded ``body`` keeps only the URI's media type and size), and, given
``expect_uploads``, refuses any upload that is not exactly those bytes.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from aiohttp import web

from tests.providers.common import PNG, decode_data_uri

FILE_INPUTS = ("image_url", "image_urls", "mask_url")
def fal_app(seen: list[dict], *, queued_polls: int = 1, nsfw: list[bool] | None = None,
            result_status: int = 200, result_body: dict | None = None,
            expect_uploads: dict[str, Any] | None = None,
            cancel_status: int | None = None, cancel_delay: float = 0.0) -> web.Application:
    """``expect_uploads``: input name -> the bytes (a list for ``image_urls``)
    the gateway must have sent; anything else is answered 422."""
    ids = itertools.count(1)
    jobs: dict[str, dict] = {}

    def record(request: web.Request, **extra: object) -> None:
        seen.append({"path": request.path, "key": request.headers.get("Authorization"), **extra})

    async def submit(request: web.Request) -> web.Response:
        body = await request.json()
        uploads: dict[str, Any] = {}
        try:
            for name in FILE_INPUTS:
                if name not in body:
                    continue
                values = body[name] if isinstance(body[name], list) else [body[name]]
                decoded = [decode_data_uri(v) for v in values]
                uploads[name] = [d for _, d in decoded] if isinstance(body[name], list) else decoded[0][1]
                # What the body said, without megabytes of base64 in the log.
                shown = [f"{media}:{len(d)}" for media, d in decoded]
                body[name] = shown if isinstance(body[name], list) else shown[0]
        except ValueError as exc:
            return web.json_response({"detail": [{"loc": ["body"], "msg": str(exc), "type": "value_error"}]}, status=422)
        record(request, body=body, uploads=uploads)
        if expect_uploads is not None and uploads != expect_uploads:
            return web.json_response({"detail": [{"loc": ["body"], "msg": "uploads differ from the files sent",
                                                  "type": "value_error"}]}, status=422)
        rid = f"req-{next(ids)}"
        jobs[rid] = {"polls": 0, "n": body.get("num_images", 1), "completed": False}
        # Status and result live under the app id, without the subpath.
        app_id = "/".join(request.match_info["app"].split("/")[:2])
        base = f"http://127.0.0.1:{request.url.port}/{app_id}/requests/{rid}"
        return web.json_response({"status": "IN_QUEUE", "request_id": rid, "response_url": base,
                                  "status_url": f"{base}/status", "cancel_url": f"{base}/cancel",
                                  "queue_position": 0})

    async def status(request: web.Request) -> web.Response:
        record(request)
        job = jobs[request.match_info["rid"]]
        job["polls"] += 1
        if job["polls"] <= queued_polls:
            return web.json_response({"status": "IN_QUEUE" if job["polls"] == 1 else "IN_PROGRESS",
                                      "queue_position": 0, "logs": None})
        job["completed"] = True
        return web.json_response({"status": "COMPLETED", "logs": None, "metrics": {"inference_time": 0.1}})

    async def cancel(request: web.Request) -> web.Response:
        record(request, method=request.method)
        if cancel_delay:
            await asyncio.sleep(cancel_delay)
        job = jobs.get(request.match_info["rid"])
        if cancel_status is not None:
            return web.json_response({"detail": "cancel failed"}, status=cancel_status)
        if job is None:
            return web.json_response({"detail": "Request not found"}, status=404)
        if job["completed"]:
            return web.json_response({"status": "ALREADY_COMPLETED"}, status=400)
        job["cancelled"] = True
        return web.json_response({"status": "CANCELLATION_REQUESTED"}, status=202)

    async def result(request: web.Request) -> web.Response:
        record(request)
        rid = request.match_info["rid"]
        if result_status != 200:
            return web.json_response(result_body, status=result_status)
        port = request.url.port
        n = jobs[rid]["n"]
        images = [{"url": f"http://127.0.0.1:{port}/files/{rid}-{i}.png", "width": 64, "height": 64,
                   "content_type": "image/png"} for i in range(n)]
        return web.json_response({"images": images, "seed": 7, "prompt": "p", "timings": {"inference": 0.1},
                                  "has_nsfw_concepts": nsfw if nsfw is not None else [False] * n})

    async def files(request: web.Request) -> web.Response:
        record(request)
        return web.Response(body=PNG, content_type="image/png")

    # Edits carry their images inside the JSON: more than aiohttp's default 1 MiB.
    app = web.Application(client_max_size=256 * 1024 * 1024)
    app.router.add_get("/files/{name}", files)
    app.router.add_get("/{owner}/{alias}/requests/{rid}/status", status)
    app.router.add_get("/{owner}/{alias}/requests/{rid}", result)
    app.router.add_put("/{owner}/{alias}/requests/{rid}/cancel", cancel)
    app.router.add_post("/{app:.+}", submit)
    return app
