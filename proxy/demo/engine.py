"""The demo provider: an OpenAI Images API upstream that draws locally.

One engine serves both forms of the demo provider: in-process behind the
gateway (``demo://``) and standalone (``pixelgate demo-upstream``). It answers
like OpenAI: a JSON ``ImagesResponse``, or with ``stream: true`` a stream of
``image_generation.partial_image`` events (coarser, sharpening) and one
``image_generation.completed`` event per image, with ``usage`` derived from
OpenAI's published per-image output token counts.

Edits (``/images/edits``: multipart/form-data, or JSON with ``data:`` URLs)
take the same paths with ``image_edit.*`` events and a picture drawn from the
input (``pixelgate.proxy.demo.edit``). The standalone server knows the
operation from the URL; in-process the engine is handed only the body and
headers, so the demo adapter names it in ``X-Demo-Operation``.

A ``demo`` object in the request body (forwarded untouched by the gateway,
like any field it does not know) makes it slow, large or faulty on purpose,
for tests and benchmarks; ``X-Demo-*`` headers set the provider's defaults.
"""

from __future__ import annotations

import asyncio
import base64
import math
import os
import re
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from pixelgate.proxy.demo.edit import EditInput, Refusal, build_scene, parse_form, parse_json
from pixelgate.proxy.demo.render import encode_png, partial_block, render_png

__all__ = ["OPERATION_HEADER", "DemoAnswer", "DemoEngine", "Operation"]

Operation = Literal["generations", "edits"]
# The in-process transport hands the engine no URL: this header names the operation instead.
OPERATION_HEADER = "X-Demo-Operation"

_CHUNK = 256 * 1024


class Knobs(msgspec.Struct, forbid_unknown_fields=True):
    """Per-request behaviour of the demo upstream (the ``demo`` body field)."""

    latency_ms: Annotated[float, Meta(ge=0, le=600_000)] | None = None
    interval_ms: Annotated[float, Meta(ge=0, le=600_000)] | None = None
    # Replace every image with ~this many bytes of base64 (cached noise PNG).
    image_bytes: Annotated[int, Meta(ge=64, le=512 * 1024 * 1024)] | None = None
    # Fixed timestamps make answers byte-for-byte repeatable.
    created: int | None = None
    # Answer with this HTTP error status and an OpenAI envelope.
    error_status: Annotated[int, Meta(ge=400, le=599)] | None = None
    error_code: str = "demo_error"
    error_message: str = "The demo provider was asked to fail."
    # Streams: an `event: error` frame after this many events.
    error_after_events: Annotated[int, Meta(ge=0)] | None = None
    # Streams: drop the connection after this many events (no completed).
    drop_after_events: Annotated[int, Meta(ge=0)] | None = None
    # Bodies: drop the connection after this many bytes.
    drop_after_bytes: Annotated[int, Meta(ge=0)] | None = None


class DemoRequest(msgspec.Struct):
    prompt: Annotated[str, Meta(min_length=1)]
    model: str | None = None
    n: Annotated[int, Meta(ge=1, le=10)] | None = None
    size: str | None = None
    quality: Literal["auto", "low", "medium", "high", "standard", "hd"] | None = None
    background: Literal["transparent", "opaque", "auto"] | None = None
    output_format: str | None = None
    response_format: str | None = None
    stream: bool | None = None
    partial_images: Annotated[int, Meta(ge=0, le=3)] | None = None
    demo: Knobs | None = None


class DemoEditRequest(DemoRequest):
    input_fidelity: Literal["high", "low"] | None = None


class DemoAnswer(msgspec.Struct):
    status: int
    headers: dict[str, str]
    # Whole SSE events when streaming; body pieces otherwise (views of
    # cached payloads: the standalone server writes them without a copy).
    chunks: AsyncGenerator[bytes | memoryview, None]


class DemoFault(Exception):
    """Raised by the chunk iterator where a knob says to drop the connection."""


# OpenAI's published output tokens per 1024x1024 image (gpt-image-1 family);
# other sizes scale by area. Each partial image costs ~100 more.
_OUTPUT_TOKENS = {"low": 272, "medium": 1056, "high": 4160}
_PARTIAL_TOKENS = 100
_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(DemoRequest)
# msgspec says where a value was wrong as "... - at `$.n`".
_PATH = re.compile(r" - at `\$\.?([^`]*)`$")
_MISSING = re.compile(r"^Object missing required field `([^`]+)`")


@dataclass(frozen=True, slots=True)
class _Job:
    """One accepted request: what to draw and how to frame it (generations and edits alike)."""

    req: DemoRequest
    knobs: Knobs
    dims: tuple[int, int]
    # The event type prefix: image_generation or image_edit.
    kind: bytes
    # (prompt, width, height, block) -> PNG; runs off the event loop.
    draw: Callable[[str, int, int, int], bytes]
    # Input image tokens (edits), billed once with the prompt's.
    image_tokens: int = 0


def _error(status: int, message: str, code: str, param: str | None = None) -> DemoAnswer:
    body = _encoder.encode({"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}})
    return DemoAnswer(status, {"Content-Type": "application/json"}, _once(body))


async def _once(data: bytes) -> AsyncGenerator[bytes, None]:
    yield data


def _parse_size(size: str | None) -> tuple[int, int] | None:
    if size in (None, "auto"):
        return 1024, 1024
    w, _, h = size.partition("x")
    if not (w.isdigit() and h.isdigit()):
        return None
    width, height = int(w), int(h)
    if not (16 <= width <= 4096 and 16 <= height <= 4096):
        return None
    return width, height


def _param_of(message: str) -> tuple[str | None, str]:
    """msgspec's message split into the parameter it names and the message without the path."""
    if m := _PATH.search(message):
        return m.group(1) or None, message[: m.start()]
    if m := _MISSING.match(message):
        return m.group(1), message
    return None, message


def _ms(value: str | None) -> float:
    try:
        return max(0.0, float(value or 0)) / 1000
    except ValueError:
        return 0.0


class DemoEngine:
    """Stateless but for a small cache of benchmark payloads."""

    def __init__(self, latency_ms: float = 0, interval_ms: float = 0) -> None:
        self._latency = latency_ms / 1000
        self._interval = interval_ms / 1000
        self._payloads: OrderedDict[int, bytes] = OrderedDict()

    def _payload(self, size: int) -> bytes:
        """Base64 of a stored (uncompressed) noise PNG of about ``size`` chars."""
        if (cached := self._payloads.get(size)) is not None:
            self._payloads.move_to_end(size)
            return cached
        raw_len = max(1, size * 3 // 4 - 80)
        width = min(1024, max(1, raw_len // 3))
        height = max(1, raw_len // (width * 3 + 1))
        # One random row, rotated per row: incompressible to deflate level 0.
        pixels = os.urandom(width * 3)
        raw = b"".join(b"\x00" + pixels[i:] + pixels[:i] for i in range(0, 3 * height, 3))
        png = encode_png(width, height, raw, level=0)
        payload = base64.b64encode(png)
        self._payloads[size] = payload
        if len(self._payloads) > 4:
            self._payloads.popitem(last=False)
        return payload

    async def answer(self, body: bytes, headers: Mapping[str, str], operation: Operation | None = None) -> DemoAnswer:
        """Answer one request; ``operation`` is the URL's (standalone), else ``X-Demo-Operation`` says it."""
        decoded = self._decode(operation or headers.get(OPERATION_HEADER, "generations"), body, headers)
        if isinstance(decoded, DemoAnswer):
            return decoded
        req, edit = decoded
        knobs = req.demo or Knobs()
        latency = knobs.latency_ms / 1000 if knobs.latency_ms is not None else _ms(headers.get("X-Demo-Latency-Ms")) or self._latency
        interval = knobs.interval_ms / 1000 if knobs.interval_ms is not None else _ms(headers.get("X-Demo-Interval-Ms")) or self._interval
        if knobs.error_status is not None:
            await asyncio.sleep(latency)
            return _error(knobs.error_status, knobs.error_message, knobs.error_code)
        # An edit without `size` (or with `auto`) keeps its input's dimensions (see EditScene.dims).
        sized = edit is None or req.size not in (None, "auto")
        dims = _parse_size(req.size) if sized else None
        if sized and dims is None:
            return _error(400, f"Invalid size {req.size!r}: use 'auto' or WIDTHxHEIGHT between 16 and 4096.", "invalid_value", "size")
        # What it cannot do, it refuses (as a provider would), never silently ignores.
        if req.output_format not in (None, "png"):
            return _error(400, "The demo provider renders PNG only.", "invalid_value", "output_format")
        if req.background == "transparent":
            return _error(400, "The demo provider renders opaque images only.", "invalid_value", "background")
        if req.response_format not in (None, "b64_json"):
            return _error(400, "The demo provider answers base64 (b64_json) only; it keeps no images to link to.",
                          "invalid_value", "response_format")
        if edit is None:
            assert dims is not None
            job = _Job(req, knobs, dims, b"image_generation", render_png)
        else:
            fidelity = req.input_fidelity if isinstance(req, DemoEditRequest) else None
            try:
                # Decoding input PNGs is pure Python: off the event loop.
                scene = await asyncio.to_thread(build_scene, edit, fidelity)
            except Refusal as refusal:
                return _error(400, refusal.message, refusal.code, refusal.param)
            job = _Job(req, knobs, dims or scene.dims, b"image_edit", scene.render, scene.image_tokens)
        if req.stream:
            return DemoAnswer(200, {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}, self._events(job, latency, interval))
        await asyncio.sleep(latency)
        return await self._body(job)

    @staticmethod
    def _decode(op: str, body: bytes, headers: Mapping[str, str]) -> tuple[DemoRequest, EditInput | None] | DemoAnswer:
        """The request's fields (and an edit's files), or the 400 that refuses them."""
        if op == "generations":
            try:
                return _decoder.decode(body), None
            except msgspec.ValidationError as exc:
                return _error(400, f"Invalid request: {exc}", "invalid_value")
            except msgspec.DecodeError as exc:
                return _error(400, f"Invalid JSON body: {exc}", "invalid_json")
        if op != "edits":
            return _error(400, f"Unknown demo operation {op!r}: generations or edits.", "invalid_value", OPERATION_HEADER)
        try:
            edit = DemoEngine._edit_input(body, headers.get("Content-Type", ""))
            return msgspec.convert(edit.fields, DemoEditRequest, strict=edit.strict), edit
        except Refusal as refusal:
            return _error(400, refusal.message, refusal.code, refusal.param)
        except msgspec.ValidationError as exc:
            param, detail = _param_of(str(exc))
            return _error(400, f"Invalid request: {detail}", "invalid_value", param)

    @staticmethod
    def _edit_input(body: bytes, content_type: str) -> EditInput:
        media = content_type.partition(";")[0].strip().lower()
        if media == "application/json":
            return parse_json(body)
        if media == "multipart/form-data":
            return parse_form(body, content_type)
        raise Refusal(f"An edit is multipart/form-data or application/json, not {media or 'a body without a Content-Type'}.", None, "invalid_request")

    @staticmethod
    def _meta(job: _Job) -> dict[str, object]:
        req, dims = job.req, job.dims
        return {
            "size": f"{dims[0]}x{dims[1]}",
            "quality": req.quality if req.quality in _OUTPUT_TOKENS else "medium",
            "background": "opaque",
            "output_format": "png",
        }

    @staticmethod
    def _usage(job: _Job, quality: str, images: int, partials: int, with_input: bool) -> dict[str, object]:
        dims = job.dims
        per_image = math.ceil(_OUTPUT_TOKENS[quality] * dims[0] * dims[1] / (1024 * 1024))
        output = images * per_image + partials * _PARTIAL_TOKENS
        text = math.ceil(len(job.req.prompt) / 4) if with_input else 0
        image = job.image_tokens if with_input else 0
        return {
            "input_tokens": text + image,
            "input_tokens_details": {"text_tokens": text, "image_tokens": image},
            "output_tokens": output,
            "output_tokens_details": {"text_tokens": 0, "image_tokens": output},
            "total_tokens": text + image + output,
        }

    async def _image(self, job: _Job, index: int, block: int) -> bytes:
        if job.knobs.image_bytes is not None:
            return self._payload(job.knobs.image_bytes)
        # Different images for n > 1; rendering runs off the event loop.
        prompt = job.req.prompt if index == 0 else f"{job.req.prompt}#{index}"
        png = await asyncio.to_thread(job.draw, prompt, job.dims[0], job.dims[1], block)
        return base64.b64encode(png)

    async def _body(self, job: _Job) -> DemoAnswer:
        n = job.req.n or 1
        created = job.knobs.created if job.knobs.created is not None else int(time.time())
        meta = self._meta(job)
        usage = self._usage(job, str(meta["quality"]), n, 0, True)
        images = [await self._image(job, i, 1) for i in range(n)]
        pieces: list[bytes | memoryview] = [b'{"created":%d,"data":[' % created]
        for i, b64 in enumerate(images):
            pieces.append(b'{"b64_json":"' if i == 0 else b'"},{"b64_json":"')
            view = memoryview(b64)
            pieces.extend(view[k : k + _CHUNK] for k in range(0, len(b64), _CHUNK))
        pieces.append(b'"}],' + _encoder.encode({**meta, "usage": usage})[1:])
        length = sum(len(p) for p in pieces)
        headers = {"Content-Type": "application/json", "Content-Length": str(length)}
        return DemoAnswer(200, headers, self._pieces(pieces, job.knobs.drop_after_bytes))

    @staticmethod
    async def _pieces(pieces: list[bytes | memoryview], drop_after: int | None) -> AsyncGenerator[bytes | memoryview, None]:
        sent = 0
        for piece in pieces:
            if drop_after is not None and sent + len(piece) > drop_after:
                yield piece[: drop_after - sent]
                raise DemoFault("dropping the connection mid-body, as asked")
            sent += len(piece)
            yield piece

    async def _events(self, job: _Job, latency: float, interval: float) -> AsyncGenerator[bytes, None]:
        knobs = job.knobs
        n, partials = job.req.n or 1, job.req.partial_images or 0
        created = knobs.created if knobs.created is not None else int(time.time())
        meta = {"created_at": created, **self._meta(job)}
        partial_kind, completed_kind = job.kind + b".partial_image", job.kind + b".completed"
        sent = 0
        await asyncio.sleep(latency)
        for index in range(n):
            for k in range(partials):
                if sent:
                    await asyncio.sleep(interval)
                b64 = await self._image(job, index, partial_block(k, partials))
                yield self._event(partial_kind, b64, {**meta, "partial_image_index": k})
                sent += 1
                if stop := self._fault(knobs, sent):
                    yield stop
                    return
            if sent:
                await asyncio.sleep(interval)
            b64 = await self._image(job, index, 1)
            # Input tokens are billed once, on the first image's event.
            usage = self._usage(job, str(meta["quality"]), 1, partials, index == 0)
            yield self._event(completed_kind, b64, {**meta, "usage": usage})
            sent += 1
            if stop := self._fault(knobs, sent):
                yield stop
                return

    @staticmethod
    def _fault(knobs: Knobs, sent: int) -> bytes | None:
        if knobs.drop_after_events is not None and sent >= knobs.drop_after_events:
            raise DemoFault("dropping the stream, as asked")
        if knobs.error_after_events is not None and sent >= knobs.error_after_events:
            error = {"type": "error", "error": {"type": "server_error", "code": knobs.error_code, "message": knobs.error_message, "param": None}}
            return b"event: error\ndata: " + _encoder.encode(error) + b"\n\n"
        return None

    @staticmethod
    def _event(kind: bytes, b64: bytes, fields: dict[str, object]) -> bytes:
        # The OpenAI field order: type and image first, metadata after.
        rest = _encoder.encode(fields)
        return b"event: %s\ndata: {\"type\":\"%s\",\"b64_json\":\"%s\",%s\n\n" % (kind, kind, b64, rest[1:])
