"""A loopback server speaking Replicate's predictions API.

``POST /v1/models/{owner}/{name}/predictions`` (or ``/v1/predictions`` with a
version) answers a prediction: ``succeeded`` at once when the sync wait
covers the work, else ``starting`` with ``urls.get`` pointing back here; the
output URLs point at ``/delivery/...`` on this server (127.0.0.1 is loopback:
the guard allows http there). Failures and HTTP errors are injected by
arguments.

``POST /v1/predictions/{id}/cancel`` (the prediction's ``urls.cancel``)
answers as Replicate does: the prediction, now ``canceled`` (one that had
already finished keeps its status), recorded in ``seen`` like every call;
``cancel_status`` forces an HTTP error and ``cancel_delay`` makes it hang
first. A slow prediction is ``pending_polls`` large.

Edits put their images in ``input`` as ``data:`` URIs (a string, or a list
of them). The fake decodes every such value strictly (Replicate refuses a
broken one with a 422), keeps the bytes as the prediction's ``uploads``
(recorded in ``seen`` too) and, like Replicate since 2022, does not echo data
URIs in the prediction's ``input`` (each becomes ``"<media type>:<bytes>"``).
``expect_uploads`` makes it refuse any upload that is not exactly the bytes
the client sent.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

from aiohttp import web

from tests.providers.common import PNG, decode_data_uri

# A file from the prediction's input and its decoded uploads (input name -> bytes, or a list).
Files = Callable[[dict[str, Any], dict[str, Any]], bytes]
def take_uploads(model_input: dict[str, Any]) -> dict[str, Any]:
    """Decode the input's data: URIs, replacing each with ``"<media type>:<size>"``."""
    uploads: dict[str, Any] = {}
    for name, value in model_input.items():
        values = value if isinstance(value, list) else [value]
        if not values or not all(isinstance(v, str) and v.startswith("data:") for v in values):
            continue
        decoded = [decode_data_uri(v) for v in values]
        shown = [f"{media}:{len(data)}" for media, data in decoded]
        uploads[name] = [data for _, data in decoded] if isinstance(value, list) else decoded[0][1]
        model_input[name] = shown if isinstance(value, list) else shown[0]
    return uploads


def replicate_app(
    seen: list[dict],
    *,
    pending_polls: int = 0,
    status: str = "succeeded",
    error: str | None = None,
    single: bool = False,
    http_status: int = 201,
    delay: float = 0.0,
    files: Files = lambda _input, _uploads: PNG,
    expect_uploads: dict[str, Any] | Callable[[dict[str, Any]], bool] | None = None,
    cancel_status: int | None = None,
    cancel_delay: float = 0.0,
) -> web.Application:
    """``pending_polls``: how many answers, the create call's first, say the
    prediction is still working (``starting``, then ``processing``); 0 is
    sync mode finishing in time. ``single``: the output is one URL string,
    not a list. ``files`` makes a file's bytes from the prediction's input
    and uploads. ``expect_uploads``: input name -> the bytes (a list for a
    list input) the gateway must have sent, or a check of the uploads;
    anything else is answered 422."""
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
        if p.get("canceled"):
            doc["status"] = "canceled"
            return doc
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
        try:
            uploads = take_uploads(body.get("input", {}))
        except ValueError as exc:
            return web.json_response({"title": "Input validation failed", "status": 422, "detail": str(exc)}, status=422)
        seen.append({"path": request.path, "body": body, "auth": request.headers.get("Authorization"),
                     "prefer": request.headers.get("Prefer"), "uploads": uploads})
        if expect_uploads is not None and not (
            expect_uploads(uploads) if callable(expect_uploads) else uploads == expect_uploads
        ):
            return web.json_response({"title": "Input validation failed", "status": 422,
                                      "detail": "the uploads differ from the files the client sent"}, status=422)
        if delay:
            await asyncio.sleep(delay)
        if http_status >= 400:
            problem = {"title": "Request was throttled", "status": http_status,
                       "detail": "Request was throttled. Your rate limit resets in ~3s."}
            return web.json_response(problem, status=http_status, headers={"Retry-After": "3"},
                                     content_type="application/problem+json")
        pid = f"p{next(ids)}"
        model = f"{request.match_info['owner']}/{request.match_info['name']}" if "owner" in request.match_info else None
        predictions[pid] = {"input": body["input"], "model": model, "version": body.get("version"), "polls": 0,
                            "uploads": uploads}
        return web.json_response(answer(request, pid), status=http_status)

    async def get(request: web.Request) -> web.Response:
        pid = request.match_info["id"]
        seen.append({"path": request.path, "auth": request.headers.get("Authorization")})
        predictions[pid]["polls"] += 1
        return web.json_response(answer(request, pid))

    async def cancel(request: web.Request) -> web.Response:
        pid = request.match_info["id"]
        seen.append({"path": request.path, "method": request.method, "auth": request.headers.get("Authorization")})
        if cancel_delay:
            await asyncio.sleep(cancel_delay)
        if cancel_status is not None:
            return web.json_response({"title": "Cancel failed", "status": cancel_status, "detail": "cancel failed"},
                                     status=cancel_status, content_type="application/problem+json")
        if pid not in predictions:
            return web.json_response({"title": "Not found", "status": 404, "detail": "Not found."}, status=404,
                                     content_type="application/problem+json")
        p = predictions[pid]
        if p["polls"] < pending_polls:
            p["canceled"] = True
        return web.json_response(answer(request, pid))

    async def delivery(request: web.Request) -> web.Response:
        pid = request.match_info["id"]
        seen.append({"path": request.path, "auth": request.headers.get("Authorization")})
        return web.Response(body=files(predictions[pid]["input"], predictions[pid]["uploads"]), content_type="image/png")

    # Edits carry their images inside the JSON: more than aiohttp's default 1 MiB.
    app = web.Application(client_max_size=256 * 1024 * 1024)
    app.router.add_post("/v1/models/{owner}/{name}/predictions", create)
    app.router.add_post("/v1/predictions", create)
    app.router.add_get("/v1/predictions/{id}", get)
    app.router.add_post("/v1/predictions/{id}/cancel", cancel)
    app.router.add_get("/delivery/{id}/{name}", delivery)
    return app
