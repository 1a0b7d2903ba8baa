"""A loopback server speaking Imagen's :predict, Vertex form (project/location path, Bearer token)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from tests.providers.common import PNG_B64

PREFIX = "/v1/projects/test-project/locations/us-central1/publishers/google/models"


def imagen_app(seen: list[dict], *, delay: float = 0.0, status: int = 200, filtered: int = 0) -> web.Application:
    async def predict(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append({"model": request.match_info["model"], "body": body, "auth": request.headers.get("Authorization")})
        if delay:
            await asyncio.sleep(delay)
        if status != 200:
            error = {"code": status, "message": "Quota exceeded for online_prediction_requests_per_base_model.",
                     "status": "RESOURCE_EXHAUSTED"}
            return web.json_response({"error": error}, status=status, headers={"Retry-After": "3"})
        n = body["parameters"].get("sampleCount", 4)
        predictions: list[dict] = [
            {"bytesBase64Encoded": PNG_B64, "mimeType": "image/png"} for _ in range(n - filtered)
        ]
        if filtered:
            predictions.append({"raiFilteredReason": f"Your current safety filter threshold filtered out {filtered} "
                                                     "generated images."})
        return web.json_response({"predictions": predictions})

    app = web.Application()
    app.router.add_post(PREFIX + "/{model:[^/:]+}:predict", predict)
    return app
