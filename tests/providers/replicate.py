"""A loopback server speaking Replicate's predictions API.

``POST /v1/models/{owner}/{name}/predictions`` (or ``/v1/predictions`` with a
version) answers a prediction: ``succeeded`` at once when the sync wait
covers the work, else ``starting`` with ``urls.get`` pointing back here; the
output URLs point at ``/delivery/...`` on this server (127.0.0.1 is loopback:
the guard allows http there). Failures and HTTP errors are injected by
arguments.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

from aiohttp import web

from tests.providers.common import PNG

Files = Callable[[dict[str, Any]], bytes]


def replicate_app(
    seen: list[dict],
    *,
    pending_polls: int = 0,
    status: str = "succeeded",
    error: str | None = None,
    single: bool = False,
    http_status: int = 201,
    delay: float = 0.0,
    files: Files = lambda _input: PNG,
) -> web.Application:
    """``pending_polls``: how many answers, the create call's first, say the
    prediction is still working (``starting``, then ``processing``); 0 is
    sync mode finishing in time. ``single``: the output is one URL string,
    not a list. ``files`` makes a file's bytes from the prediction's input."""
    ids = itertools.count(1)
    predictions: dict[str, dict[str, Any]] = {}

    def base(request: web.Request) -> str:
        return f"http://127.0.0.1:{request.url.port}"

    def answer(request: web.Request, pid: str) -> dict[str, Any]:
        p = predictions[pid]
        doc: dict[str, Any] = {
            "id": pid, "model": p["model"], "version": p["version"], "input": p["input"], "logs": "",
            "output": None, "error": None, "status": "starting", "data_removed": False,
            "created_at": "2026-01-01T00:00:00.000Z",
            "urls": {"get": f"{base(request)}/v1/predictions/{pid}", "cancel": f"{base(request)}/v1/predictions/{pid}/cancel",
                     "web": f"https://replicate.com/p/{pid}"},
        }
        if p["polls"] < pending_polls:
            doc["status"] = "starting" if p["polls"] == 0 and request.method == "POST" else "processing"
            return doc
        doc["status"] = status
        if status == "failed":
            doc["error"] = error
        elif status == "succeeded":
            n = int(p["input"].get("num_outputs", 1))
            ext = p["input"].get("output_format", "webp")
            urls = [f"{base(request)}/delivery/{pid}/out-{i}.{ext}" for i in range(n)]
            doc["output"] = urls[0] if single else urls
            doc["metrics"] = {"predict_time": 0.5}
        return doc

    async def create(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append({"path": request.path, "body": body, "auth": request.headers.get("Authorization"),
                     "prefer": request.headers.get("Prefer")})
        if delay:
            await asyncio.sleep(delay)
        if http_status >= 400:
            problem = {"title": "Request was throttled", "status": http_status,
                       "detail": "Request was throttled. Your rate limit resets in ~3s."}
            return web.json_response(problem, status=http_status, headers={"Retry-After": "3"},
                                     content_type="application/problem+json")
        pid = f"p{next(ids)}"
        model = f"{request.match_info['owner']}/{request.match_info['name']}" if "owner" in request.match_info else None
        predictions[pid] = {"input": body["input"], "model": model, "version": body.get("version"), "polls": 0}
        return web.json_response(answer(request, pid), status=http_status)

    async def get(request: web.Request) -> web.Response:
        pid = request.match_info["id"]
        seen.append({"path": request.path, "auth": request.headers.get("Authorization")})
        predictions[pid]["polls"] += 1
        return web.json_response(answer(request, pid))

    async def delivery(request: web.Request) -> web.Response:
        pid = request.match_info["id"]
        seen.append({"path": request.path, "auth": request.headers.get("Authorization")})
        return web.Response(body=files(predictions[pid]["input"]), content_type="image/png")

    app = web.Application()
    app.router.add_post("/v1/models/{owner}/{name}/predictions", create)
    app.router.add_post("/v1/predictions", create)
    app.router.add_get("/v1/predictions/{id}", get)
    app.router.add_get("/delivery/{id}/{name}", delivery)
    return app
