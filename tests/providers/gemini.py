"""A loopback server speaking Gemini's generateContent (image output), Gemini API form.

Edits arrive as ``inlineData`` (or ``inline_data``) parts beside the text; the
server decodes each one strictly, as Gemini does, answers 400
INVALID_ARGUMENT for base64 that is not, or for bytes that are not the image
type the part names, and records each input image (its MIME type, base64 text
and decoded length) so tests can compare it with the upload.
"""

from __future__ import annotations

import asyncio
import base64
import binascii

from aiohttp import web

from tests.providers.common import PNG_B64

USAGE = {
    "promptTokenCount": 6,
    "candidatesTokenCount": 1290,
    "totalTokenCount": 1296,
    "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 6}],
    "candidatesTokensDetails": [{"modality": "IMAGE", "tokenCount": 1290}],
}
# Gemini counts an input image as 258 tokens (up to 384 px a side; larger ones in tiles).
IMAGE_TOKENS = 258
_MAGIC = {"image/png": b"\x89PNG\r\n\x1a\n", "image/jpeg": b"\xff\xd8\xff", "image/webp": b"RIFF"}
# Bodies carry whole images as base64: room for a few large uploads.
MAX_BODY = 256 * 1024 * 1024


def _invalid(message: str) -> web.Response:
    error = {"code": 400, "message": message, "status": "INVALID_ARGUMENT"}
    return web.json_response({"error": error}, status=400)


def _inline_images(body: dict) -> list[dict] | str:
    """Every inline image part of the request, checked; or what is wrong with one."""
    images = []
    for content in body.get("contents", []):
        for part in content.get("parts", []):
            blob = part.get("inlineData") or part.get("inline_data")
            if blob is None:
                continue
            mime = blob.get("mimeType") or blob.get("mime_type")
            text = blob.get("data", "")
            try:
                data = base64.b64decode(text, validate=True)
            except (binascii.Error, ValueError):
                return "Invalid value at 'contents[0].parts[1].inline_data.data' (TYPE_BYTES), Base64 decoding failed"
            if mime not in _MAGIC or not data.startswith(_MAGIC[mime]):
                return f"Unable to process input image: bytes are not {mime}"
            images.append({"mime": mime, "b64": text, "bytes": len(data)})
    return images


def gemini_app(seen: list[dict], *, delay: float = 0.0, status: int = 200, finish: str = "STOP") -> web.Application:
    async def generate(request: web.Request) -> web.Response:
        body = await request.json()
        images = _inline_images(body)
        entry = {"model": request.match_info["model"], "body": body, "key": request.headers.get("x-goog-api-key")}
        if images:
            entry["images"] = images
            # The edit's length was declared up front: no chunked upload.
            entry["chunked"] = request.headers.get("Transfer-Encoding") is not None
        seen.append(entry)
        if isinstance(images, str):
            return _invalid(images)
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
        usage = dict(USAGE)
        if images:
            image_tokens = IMAGE_TOKENS * len(images)
            usage["promptTokenCount"] = USAGE["promptTokenCount"] + image_tokens
            usage["totalTokenCount"] = USAGE["totalTokenCount"] + image_tokens
            usage["promptTokensDetails"] = [*USAGE["promptTokensDetails"], {"modality": "IMAGE", "tokenCount": image_tokens}]
        return web.json_response({"candidates": [candidate], "usageMetadata": usage, "modelVersion": "fake-image"})

    app = web.Application(client_max_size=MAX_BODY)
    app.router.add_post("/v1beta/models/{model:[^/:]+}:generateContent", generate)
    return app
