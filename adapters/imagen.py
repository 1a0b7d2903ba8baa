"""Google Imagen (``imagen-4.0-generate-001``, ``imagen-3.0-generate-002``, …): ``:predict``.

``POST …/models/{model}:predict`` (Gemini API or Vertex, see ``adapters.google``)::

    {"instances":[{"prompt":"<prompt>"}],
     "parameters":{"sampleCount":2,"aspectRatio":"16:9","includeRaiReason":true,
                   "outputOptions":{"mimeType":"image/jpeg","compressionQuality":80}}}

answers one JSON document ``{"predictions":[{"bytesBase64Encoded","mimeType"}
| {"raiFilteredReason"}]}``, synchronously. ``bytesBase64Encoded`` strings are
tapped into the client's ``b64_json`` as they arrive; a streaming client gets
keep-alives while Imagen works, then one ``image_generation.completed``
event per image.

Safety: ``includeRaiReason`` is always sent, so filtered images leave a
``raiFilteredReason`` entry. When every image was filtered the client gets
``moderation_blocked`` with that reason; when only some were, the others are
returned (fewer than ``n``, as OpenAI itself may do: count ``data``), since
they are paid for and their bytes are already on the way. A 400 about
"Responsible AI practices" (a refused prompt) is ``moderation_blocked`` too.
An answer with no image and no reason is a 502 ``upstream_no_image``.
Entries with neither image nor reason (the prompt's safety attributes, when
``includeSafetyAttributes`` is asked for) are skipped.

Imagen bills per image and reports no tokens: the relay counts the images.

Fields outside the OpenAI schema go into ``parameters`` unchanged:
``negativePrompt``, ``seed``, ``addWatermark``, ``enhancePrompt`` (Vertex
only: the Gemini API refuses them and its 400 is relayed; Vertex needs
``addWatermark: false`` with ``seed``), ``personGeneration``,
``guidanceScale``, ``language``, ``safetySetting``, ``sampleImageSize``, …
A key the adapter sets from the OpenAI fields wins.

UNCERTAIN: google-genai 3.x calls ``:predict`` Vertex-only (its
``generate_images`` refuses the Gemini API and is deprecated in favour of
Gemini image models); with an API key it may no longer work. ``api:
vertex`` is the dependable form.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import ClassVar

import msgspec

from adapters.base import UpstreamRequest
from adapters.google import (
    GoogleOptions,
    GoogleTarget,
    check_google,
    google_error,
    image_tier,
)
from adapters.images_out import ImageMeta, ImagesWriter
from adapters.jsontap import Path
from adapters.params import aspect_ratio, native_fields, parse_size, reported_size, settle
from adapters.provider_errors import malformed, moderation_blocked
from adapters.tapped import TappedTranslator
from proxy.errors import GatewayError, UpstreamError
from proxy.schema import ImageGenerationRequest

__all__ = ["ImagenAdapter", "ImagenOptions"]

ASPECT_RATIOS = ("1:1", "3:4", "4:3", "9:16", "16:9")
MAX_IMAGES = 4


class ImagenOptions(GoogleOptions, forbid_unknown_fields=True):
    # Send sampleImageSize "2K" for sizes past 1536 px (Imagen 4 standard and
    # ultra); false for models without it (Imagen 3, Imagen 4 fast).
    image_size: bool = True


def problems(req: ImageGenerationRequest) -> list[tuple[str, str]]:
    out = []
    if isinstance(req.n, int) and req.n > MAX_IMAGES:
        out.append(("n", f"Imagen makes at most {MAX_IMAGES} images per call"))
    size = parse_size(req.size)
    if size is not None and aspect_ratio(*size, ASPECT_RATIOS) is None:
        out.append(("size", f"Imagen's aspect ratios are {', '.join(ASPECT_RATIOS)}"))
    if req.quality not in (msgspec.UNSET, None, "auto"):
        out.append(("quality", "Imagen has no quality setting (choose a fast or ultra model instead)"))
    if req.style not in (msgspec.UNSET, None):
        out.append(("style", "Imagen has no style setting"))
    if req.background == "transparent":
        out.append(("background", "Imagen cannot make transparent backgrounds"))
    if req.response_format == "url":
        out.append(("response_format", "Imagen returns image bytes, not URLs"))
    if req.output_format == "webp":
        out.append(("output_format", "Imagen returns png or jpeg"))
    if req.output_compression not in (msgspec.UNSET, None) and req.output_format != "jpeg":
        out.append(("output_compression", "Imagen compresses jpeg only"))
    return out


def _select(path: Path) -> bool:
    return len(path) == 3 and path[0] == "predictions" and path[2] == "bytesBase64Encoded"


class _Prediction(msgspec.Struct):
    raiFilteredReason: str | None = None


class _Answer(msgspec.Struct):
    predictions: list[_Prediction] = []


_answer = msgspec.json.Decoder(_Answer)
_encoder = msgspec.json.Encoder()


class ImagenTranslator(TappedTranslator):
    __slots__ = ()

    def __init__(self, provider: str, call: UpstreamRequest, writer: ImagesWriter, headers: dict[str, str]) -> None:
        super().__init__(provider, call, writer, _select, headers)

    def complete(self, skeleton: bytes) -> bytes:
        try:
            answer = _answer.decode(skeleton)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise malformed(self.provider, exc) from None
        if not self.writer.images:
            reasons = [p.raiFilteredReason for p in answer.predictions if p.raiFilteredReason]
            if reasons:
                reason = " ".join(dict.fromkeys(reasons))
                raise moderation_blocked(self.provider, f"Imagen filtered every image: {reason}")
            raise UpstreamError(
                f"Imagen returned no image and no reason (provider {self.provider!r})",
                status=502,
                code="upstream_no_image",
            )
        return self.writer.finish(None)

    def error(self, status: int, headers: Mapping[str, str], body: bytes) -> GatewayError:
        return google_error(self.provider, status, headers, body)


class ImagenAdapter:
    Options: ClassVar[type[msgspec.Struct]] = ImagenOptions

    @classmethod
    def check(cls, *, base_url: str | None, api_key: str | None, options: msgspec.Struct) -> None:
        check_google(base_url, api_key, options)

    def __init__(
        self, *, name: str, base_url: str | None, api_key: str | None, headers: Mapping[str, str], options: msgspec.Struct
    ) -> None:
        assert isinstance(options, ImagenOptions)
        self.name = name
        self.options = options
        self.clock = time.time
        self.target = GoogleTarget(base_url=base_url, api_key=api_key, headers=headers, options=options)

    def translator(
        self, request: ImageGenerationRequest, body: bytes, upstream_model: str, request_id: str
    ) -> ImagenTranslator:
        headers = settle(self.name, problems(request), self.options.unsupported)
        params: dict[str, object] = dict(native_fields(body))
        # Always explicit: Vertex's default sampleCount is 4, not OpenAI's 1.
        n = request.image_count
        params["sampleCount"] = n if n <= MAX_IMAGES else 1
        size = parse_size(request.size)
        if size is not None and (ratio := aspect_ratio(*size, ASPECT_RATIOS)) is not None:
            params["aspectRatio"] = ratio
            if self.options.image_size and (tier := image_tier(*size, ("2K",))) is not None:
                params["sampleImageSize"] = tier
        fmt = str(request.output_format) if request.output_format in ("png", "jpeg") else "png"
        output: dict[str, object] = {"mimeType": f"image/{fmt}"}
        if fmt == "jpeg" and isinstance(request.output_compression, int):
            output["compressionQuality"] = request.output_compression
        params["outputOptions"] = output
        if request.moderation == "low":
            # Imagen's default is BLOCK_MEDIUM_AND_ABOVE; BLOCK_NONE needs an allow-list.
            params["safetySetting"] = "BLOCK_ONLY_HIGH"
        params["includeRaiReason"] = True
        fields = {"instances": [{"prompt": request.prompt}], "parameters": params}
        meta = ImageMeta(
            created=int(self.clock()),
            size=reported_size(request.size),
            output_format=fmt,
        )
        call = self.target.call(upstream_model, "predict", _encoder.encode(fields))
        return ImagenTranslator(self.name, call, ImagesWriter(request.streaming, meta), headers)
