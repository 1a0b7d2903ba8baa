"""A loopback server speaking fal's queue API: submit, status, result, files.

The status, result and file URLs point back at this server (on 127.0.0.1,
which is loopback: the guard allows http there).
"""

from __future__ import annotations

import itertools

from aiohttp import web

from tests.providers.common import PNG


def fal_app(seen: list[dict], *, queued_polls: int = 1, nsfw: list[bool] | None = None,
            result_status: int = 200, result_body: dict | None = None) -> web.Application:
    ids = itertools.count(1)
    jobs: dict[str, dict] = {}

    def record(request: web.Request, **extra: object) -> None:
        seen.append({"path": request.path, "key": request.headers.get("Authorization"), **extra})

    async def submit(request: web.Request) -> web.Response:
        body = await request.json()
        record(request, body=body)
        rid = f"req-{next(ids)}"
        jobs[rid] = {"polls": 0, "n": body.get("num_images", 1)}
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
        return web.json_response({"status": "COMPLETED", "logs": None, "metrics": {"inference_time": 0.1}})

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

    app = web.Application()
    app.router.add_get("/files/{name}", files)
    app.router.add_get("/{owner}/{alias}/requests/{rid}/status", status)
    app.router.add_get("/{owner}/{alias}/requests/{rid}", result)
    app.router.add_post("/{app:.+}", submit)
    return app
