"""A loopback server speaking Azure OpenAI's images API.

Both URL forms: ``/openai/deployments/{deployment}/images/generations`` (which
insists on ``api-version`` and an ``api-key``) and
``/openai/v1/images/generations`` (deployment in the body, Entra ID bearer
token accepted). JSON answers, or OpenAI's SSE events for ``stream: true``;
Azure's own headers (``apim-request-id``, ``x-ms-*``) on every answer.
"""

from __future__ import annotations

import json

from aiohttp import web

from tests.providers.common import PNG_B64

AZURE_HEADERS = {"apim-request-id": "0d2f6a1e-azure", "x-ms-region": "Sweden Central",
                 "x-ms-client-request-id": "echo", "x-ratelimit-remaining-requests": "59"}
CONTENT_FILTER = {"error": {"code": "contentFilter",
                            "message": "Your task failed as a result of our safety system."}}


def _usage() -> dict:
    return {"input_tokens": 9, "input_tokens_details": {"image_tokens": 0, "text_tokens": 9},
            "output_tokens": 272, "total_tokens": 281}


def _fields(body: dict) -> dict:
    return {"size": body.get("size", "1024x1024"), "quality": body.get("quality", "medium"),
            "background": "opaque", "output_format": body.get("output_format", "png")}


async def _answer(request: web.Request, body: dict, filtered: bool) -> web.StreamResponse:
    if filtered:
        return web.json_response(CONTENT_FILTER, status=400, headers=AZURE_HEADERS)
    n = body.get("n", 1)
    if not body.get("stream"):
        data = [{"b64_json": PNG_B64} for _ in range(n)]
        return web.json_response({"created": 1700000123, "data": data, **_fields(body), "usage": _usage()},
                                 headers=AZURE_HEADERS)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", **AZURE_HEADERS})
    await response.prepare(request)
    for _ in range(n):
        for i in range(body.get("partial_images") or 0):
            event = {"type": "image_generation.partial_image", "b64_json": PNG_B64, "created_at": 1700000123,
                     **_fields(body), "partial_image_index": i}
            await response.write(b"event: image_generation.partial_image\ndata: " + json.dumps(event).encode() + b"\n\n")
        event = {"type": "image_generation.completed", "b64_json": PNG_B64, "created_at": 1700000123,
                 **_fields(body), "usage": _usage()}
        await response.write(b"event: image_generation.completed\ndata: " + json.dumps(event).encode() + b"\n\n")
    await response.write_eof()
    return response


def azure_app(seen: list[dict], *, filtered: bool = False) -> web.Application:
    async def deployments(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        seen.append({"path": request.path, "query": dict(request.query), "body": body,
                     "api-key": request.headers.get("api-key"), "auth": request.headers.get("Authorization")})
        if "api-version" not in request.query:
            return web.json_response({"error": {"code": "404", "message": "Resource not found"}}, status=404)
        if request.headers.get("api-key") != "provider-secret":
            return web.json_response({"error": {"code": "401", "message": "Access denied"}}, status=401)
        return await _answer(request, body, filtered)

    async def v1(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        seen.append({"path": request.path, "query": dict(request.query), "body": body,
                     "api-key": request.headers.get("api-key"), "auth": request.headers.get("Authorization")})
        if request.headers.get("Authorization") != "Bearer entra-token" and \
                request.headers.get("api-key") != "provider-secret":
            return web.json_response({"error": {"code": "401", "message": "Access denied"}}, status=401)
        return await _answer(request, body, filtered)

    app = web.Application()
    app.router.add_post("/openai/deployments/{deployment}/images/generations", deployments)
    app.router.add_post("/openai/v1/images/generations", v1)
    return app
