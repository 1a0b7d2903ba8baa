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

Edits are refused (``AdapterBase.edit``: 400 ``unsupported_operation``,
before any call). The models this adapter drives (``imagen-*-generate-*``)
only generate; Imagen's editing is another model on Vertex only
(``imagen-3.0-capability-001``, ``:predict`` with ``referenceImages`` and an
``editMode``; google-genai builds ``edit_image`` for Vertex only), whose
request the gateway's wire reference does not document. Route
edits to ``gemini`` (the same Google account edits with Gemini image models).
See docs/edits/imagen.md.

UNCERTAIN: google-genai 3.x calls ``:predict`` Vertex-only (its
``generate_images`` refuses the Gemini API and is deprecated in favour of
Gemini image models); with an API key it may no longer work. ``api:
vertex`` is the dependable form.
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from pixelgate.adapters.base import AdapterBase
from pixelgate.adapters.capabilities import Capabilities
from pixelgate.adapters.google import GoogleOptions, GoogleTarget, check_google, google_error, image_tier
from pixelgate.adapters.images_out import ImageMeta, ImagesWriter
from pixelgate.adapters.jsontap import Path
from pixelgate.adapters.params import aspect_ratio, native_fields, parse_size, reported_size
from pixelgate.adapters.provider_errors import malformed, moderation_blocked
from pixelgate.adapters.tapped import TappedTranslator
from pixelgate.core.errors import GatewayError, UpstreamError
from pixelgate.core.translator import Ending, Generation, ProviderSettings, UpstreamRequest

__all__ = ["ImagenAdapter", "ImagenOptions"]

ASPECT_RATIOS = ("1:1", "3:4", "4:3", "9:16", "16:9")
MAX_IMAGES = 4


class ImagenOptions(GoogleOptions, forbid_unknown_fields=True):
    # Send sampleImageSize "2K" for sizes past 1536 px (Imagen 4 standard and
    # ultra); false for models without it (Imagen 3, Imagen 4 fast).
    image_size: bool = True


CAPABILITIES = Capabilities(
    provider="Imagen",
    max_n=MAX_IMAGES,
    aspect_ratios=ASPECT_RATIOS,
    formats=("png", "jpeg"),
    compression="jpeg",
    moderation_low=True,
    why={"quality": "Imagen has no quality setting (choose a fast or ultra model instead)"},
)


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

    def complete(self, skeleton: bytes) -> Ending:
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
        return Ending(self.writer.finish(None))

    def error(self, status: int, headers: Mapping[str, str], body: bytes) -> GatewayError:
        return google_error(self.provider, status, headers, body)


class ImagenAdapter(AdapterBase[ImagenOptions]):
    Options = ImagenOptions
    capabilities = CAPABILITIES

    @classmethod
    def check(cls, settings: ProviderSettings) -> None:
        check_google(settings)

    def setup(self, settings: ProviderSettings) -> None:
        self.target = GoogleTarget(settings, self.options)

    def generation(self, g: Generation) -> ImagenTranslator:
        request, body, upstream_model = g.request, g.body, g.upstream_model
        headers = self.settle(request)
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
