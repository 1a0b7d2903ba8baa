"""A loopback server speaking Gemini's generateContent (image output), Gemini API form."""

from __future__ import annotations

import asyncio

from aiohttp import web

from tests.providers.common import PNG_B64

USAGE = {
    "promptTokenCount": 6,
    "candidatesTokenCount": 1290,
    "totalTokenCount": 1296,
    "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 6}],
    "candidatesTokensDetails": [{"modality": "IMAGE", "tokenCount": 1290}],
}


def gemini_app(seen: list[dict], *, delay: float = 0.0, status: int = 200, finish: str = "STOP") -> web.Application:
    async def generate(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append({"model": request.match_info["model"], "body": body, "key": request.headers.get("x-goog-api-key")})
        if delay:
            await asyncio.sleep(delay)
        if status != 200:
            error = {"code": status, "message": "Resource has been exhausted (e.g. check quota).",
                     "status": "RESOURCE_EXHAUSTED",
                     "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "3s"}]}
            return web.json_response({"error": error}, status=status)
        parts: list[dict] = [{"text": "Here is the image you asked for."}]
        if finish == "STOP":
            parts.append({"inlineData": {"mimeType": "image/png", "data": PNG_B64}})
        candidate = {"content": {"role": "model", "parts": parts}, "finishReason": finish, "index": 0}
        return web.json_response({"candidates": [candidate], "usageMetadata": USAGE, "modelVersion": "fake-image"})

    app = web.Application()
    app.router.add_post("/v1beta/models/{model:[^/:]+}:generateContent", generate)
    return app
