"""Gemini native image generation (``gemini-2.5-flash-image``, ``gemini-3-pro-image-preview``, …).

``POST …/models/{model}:generateContent`` (Gemini API or Vertex, see
``adapters.google``) with::

    {"contents":[{"role":"user","parts":[{"text":"<prompt>"}]}],
     "generationConfig":{"responseModalities":["TEXT","IMAGE"],
                         "imageConfig":{"aspectRatio":"3:2","imageSize":"2K"}}}

The answer is one JSON document; each image is a part
``candidates[i].content.parts[j].inlineData = {mimeType, data}`` (the REST
API writes camelCase; ``inline_data`` is accepted too). The ``data`` strings
are tapped into the client's ``b64_json`` as they arrive; text parts stay in
the skeleton and are not relayed. ``usageMetadata`` comes after the
candidates, so the last image's stream event waits for it
(``usage_last``) and the usage lands in the body or that event:

    promptTokenCount (+ promptTokensDetails by modality)  -> input_tokens (text/image)
    candidatesTokenCount + thoughtsTokenCount             -> output_tokens
    candidatesTokensDetails IMAGE                         -> output_tokens_details.image_tokens
    totalTokenCount                                       -> total_tokens

Streaming uses ``generateContent`` too: an image part arrives whole in one
``streamGenerateContent`` event (there are no partial previews), so the SSE
form would bring nothing earlier, only multi-MB ``data:`` lines to re-frame.
The document is relayed as it arrives either way; a streaming client gets
keep-alives, then one ``image_generation.completed`` event per image.

Failures without an image: ``promptFeedback.blockReason`` and the safety
finish reasons (``IMAGE_SAFETY``, ``SAFETY``, ``PROHIBITED_CONTENT``, …)
become ``moderation_blocked``; ``NO_IMAGE``, ``IMAGE_OTHER``, ``OTHER`` or a
text-only answer become 502 ``upstream_no_image``: the request was valid and
the model is not deterministic, so a retry, or another provider, may well
succeed (the model's own text, if any, is in the message). When some image
was produced, other candidates' finish reasons are not errors.

Thought images: Gemini 3 image models may draft interim images while
thinking; those arrive (as parts with ``thought: true``) only when
``thinkingConfig.includeThoughts`` is set, which this adapter never sends. If
a client sets it through a native field, drafts are relayed as extra images:
``thought`` comes after ``inlineData`` in a part (protobuf field order), so the
tap cannot tell a draft before its bytes have gone out.

Fields outside the OpenAI schema go into ``generationConfig`` (``seed``,
``temperature``, ``thinkingConfig``, …), except ``safetySettings`` and
``systemInstruction``, which are request-level; a key the adapter sets
itself (``responseModalities``, ``imageConfig``) wins.

Edits (``POST /v1/images/edits``) are the same call with the input images as
``inlineData`` parts after the text part (the order of Gemini's REST examples)::

    {"contents":[{"role":"user","parts":[{"text":"<prompt>"},
        {"inlineData":{"mimeType":"image/png","data":"<base64 of the upload>"}}, …]}],
     "generationConfig":{…as for a generation…}}

The body is a ``StreamedBody``: the base64 is encoded from the spooled file
as the transport sends it, so no image is ever held whole. The answer, the
errors and the usage are a generation's (the input images' tokens are
``promptTokensDetails`` IMAGE); streamed events are ``image_edit.completed``.
Gemini edits from the prompt alone: a mask is refused (or, under ``drop``,
left out), as is ``input_fidelity: high``. It takes a few input images:
``options.max_edit_images`` (3 by default, gemini-2.5-flash-image's; Gemini 3
image models take up to 14); more are refused (under ``drop``, the first ones
are sent). Without ``size`` no ``aspectRatio`` is sent: Gemini then matches
the input image's. An edit whose images are https URLs or file ids (JSON) is refused:
the gateway fetches nothing for a client, and Gemini needs the bytes. A
multipart edit's extra text fields are native fields too, each taken as the
JSON it is when that is a number, a boolean or an object (``seed=42`` is the
number 42: SDKs send extra_body values so), else as a string.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from pixelgate.adapters.base import AdapterBase
from pixelgate.adapters.capabilities import Capabilities
from pixelgate.adapters.edit_body import edit_native_fields
from pixelgate.adapters.google import GoogleOptions, GoogleTarget, check_google, format_of, google_error, image_tier
from pixelgate.adapters.images_out import EDIT_COMPLETED, ImageMeta, ImagesWriter
from pixelgate.adapters.jsontap import Path
from pixelgate.adapters.params import aspect_ratio, native_fields, parse_size, reported_size
from pixelgate.adapters.provider_errors import malformed, moderation_blocked
from pixelgate.adapters.tapped import TappedTranslator
from pixelgate.core.errors import GatewayError, UpstreamError
from pixelgate.core.request import MAX_EDIT_IMAGES, ImageRequest
from pixelgate.core.translator import Edit, Ending, Generation, ProviderSettings, UpstreamRequest
from pixelgate.core.upload import FilePiece, StreamedBody
from pixelgate.core.usage import InputTokensDetails, OutputTokensDetails, Usage

__all__ = ["GeminiAdapter", "GeminiOptions"]

# Gemini's documented aspect ratios (google-genai ImageConfig lists all but
# 4:5 and 5:4, which the image-generation guide adds).
ASPECT_RATIOS = ("1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9")
# Input images per edit by default (gemini-2.5-flash-image: "up to 3").
EDIT_IMAGES = 3
_REQUEST_LEVEL = frozenset({"safetySettings", "systemInstruction"})
_BLOCKED = frozenset({
    "IMAGE_SAFETY", "IMAGE_PROHIBITED_CONTENT", "SAFETY", "PROHIBITED_CONTENT", "BLOCKLIST", "SPII",
    "IMAGE_RECITATION", "RECITATION",
})  # fmt: skip


class GeminiOptions(GoogleOptions, forbid_unknown_fields=True):
    # ["IMAGE"] makes the model answer with an image or nothing; ["TEXT",
    # "IMAGE"] also works on older image models that refuse image-only.
    response_modalities: tuple[Literal["TEXT", "IMAGE"], ...] = ("TEXT", "IMAGE")
    # Ratios the model accepts (gemini-3.1-flash-image adds 1:4, 4:1, 1:8, 8:1).
    aspect_ratios: tuple[Annotated[str, Meta(pattern=r"^[1-9][0-9]?:[1-9][0-9]?$")], ...] = ASPECT_RATIOS
    # Send imageConfig.imageSize ("2K", "4K") for sizes past 1536 px (Gemini 3
    # image models); false for models without it (gemini-2.5-flash-image).
    image_size: bool = True
    # Input images per edit: 3 for gemini-2.5-flash-image (its documented
    # best); Gemini 3 image models take up to 14. More are refused up front.
    max_edit_images: Annotated[int, Meta(ge=1, le=MAX_EDIT_IMAGES)] = EDIT_IMAGES


def _images_why(n: int) -> str:
    most = "one input image" if n == 1 else f"at most {n} input images"
    return f"Gemini takes {most} here (the operator can raise options.max_edit_images to 14 for Gemini 3 image models)"


CAPABILITIES = Capabilities(
    provider="Gemini",
    order=("n", "size", "quality", "style", "background", "response_format", "moderation", "output_format", "output_compression"),
    max_n=1,
    aspect_ratios=ASPECT_RATIOS,
    formats=(),
    edits=True,
    max_edit_images=EDIT_IMAGES,
    why={
        "n": "Gemini image models make one image per call (candidateCount > 1 is refused)",
        "image": _images_why(EDIT_IMAGES),
        "mask": "Gemini edits from the prompt; it takes no mask",
        "input_fidelity": "Gemini has no input fidelity setting (say in the prompt what must stay as it is)",
        "moderation": "Gemini's image safety filters cannot be lowered per request",
        "output_format": "the Gemini API chooses the image format itself (Vertex can set it)",
        "output_compression": "the Gemini API has no compression setting (Vertex has)",
    },
)
# Vertex AI's generateContent can set the format, and the jpeg quality.
VERTEX = msgspec.structs.replace(
    CAPABILITIES,
    formats=("png", "jpeg"),
    compression="jpeg",
    why={
        **CAPABILITIES.why,
        "output_format": "Vertex returns png or jpeg",
        "output_compression": "Vertex compresses jpeg only",
    },
)


def _select(path: Path) -> bool:
    # candidates[i].content.parts[j].inlineData.data
    return (
        len(path) == 7
        and path[6] == "data"
        and path[5] in ("inlineData", "inline_data")
        and path[0] == "candidates"
        and path[2] == "content"
        and path[3] == "parts"
    )


# The skeleton: everything but the image data (which is "" here). Field
# names are Gemini's own (camelCase, and snake_case where it is accepted).
class _Blob(msgspec.Struct):
    mimeType: str | None = None
    mime_type: str | None = None


class _Part(msgspec.Struct):
    text: str | None = None
    inlineData: _Blob | None = None
    inline_data: _Blob | None = None
    thought: bool = False


class _Content(msgspec.Struct):
    parts: list[_Part] = []


class _Candidate(msgspec.Struct):
    content: _Content | None = None
    finishReason: str | None = None
    finishMessage: str | None = None


class _Feedback(msgspec.Struct):
    blockReason: str | None = None
    blockReasonMessage: str | None = None


class _Modality(msgspec.Struct):
    modality: str = ""
    tokenCount: int = 0


class _UsageMetadata(msgspec.Struct):
    promptTokenCount: int = 0
    candidatesTokenCount: int = 0
    thoughtsTokenCount: int = 0
    totalTokenCount: int = 0
    promptTokensDetails: list[_Modality] | None = None
    candidatesTokensDetails: list[_Modality] | None = None


class _Answer(msgspec.Struct):
    candidates: list[_Candidate] = []
    promptFeedback: _Feedback | None = None
    usageMetadata: _UsageMetadata | None = None


_answer = msgspec.json.Decoder(_Answer)
_encoder = msgspec.json.Encoder()


def _tokens(details: list[_Modality] | None, modality: str) -> int:
    return sum(d.tokenCount for d in details or () if d.modality == modality)


def to_usage(meta: _UsageMetadata) -> Usage:
    output = meta.candidatesTokenCount + meta.thoughtsTokenCount
    inp = meta.promptTokensDetails
    usage = Usage(
        input_tokens=meta.promptTokenCount,
        output_tokens=output,
        total_tokens=meta.totalTokenCount or meta.promptTokenCount + output,
        input_tokens_details=InputTokensDetails(
            # Without a breakdown the prompt counts as text (an edit's input
            # images cannot be told apart then; Gemini sends the breakdown).
            text_tokens=_tokens(inp, "TEXT") if inp else meta.promptTokenCount,
            image_tokens=_tokens(inp, "IMAGE"),
        ),
    )
    if meta.candidatesTokensDetails is not None:
        images = _tokens(meta.candidatesTokensDetails, "IMAGE")
        usage.output_tokens_details = OutputTokensDetails(text_tokens=output - images, image_tokens=images)
    return usage


def _words(answer: _Answer) -> list[str]:
    """What Gemini said instead of an image: finish messages and text parts."""
    out = []
    for c in answer.candidates:
        out += [c.finishMessage] if c.finishMessage else []
        out += [p.text for p in (c.content.parts if c.content else ()) if p.text and not p.thought]
    return out


class GeminiTranslator(TappedTranslator):
    __slots__ = ()

    def __init__(self, provider: str, call: UpstreamRequest, writer: ImagesWriter, headers: dict[str, str]) -> None:
        super().__init__(provider, call, writer, _select, headers)

    def complete(self, skeleton: bytes) -> Ending:
        try:
            answer = _answer.decode(skeleton)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise malformed(self.provider, exc) from None
        usage = to_usage(answer.usageMetadata) if answer.usageMetadata is not None else None
        if not self.writer.images:
            raise self._no_image(answer)
        # Report the format Gemini actually produced (the first image's).
        for part in (p for c in answer.candidates if c.content for p in c.content.parts):
            blob = part.inlineData or part.inline_data
            if blob is not None and (fmt := format_of(blob.mimeType or blob.mime_type)):
                self.writer.meta.output_format = fmt
                break
        return Ending(self.writer.finish(usage), usage)

    def _no_image(self, answer: _Answer) -> GatewayError:
        feedback = answer.promptFeedback
        if feedback is not None and feedback.blockReason:
            detail = f": {feedback.blockReasonMessage}" if feedback.blockReasonMessage else ""
            return moderation_blocked(self.provider, f"Gemini blocked the prompt ({feedback.blockReason}){detail}")
        reasons = [c.finishReason for c in answer.candidates if c.finishReason]
        said = " ".join(_words(answer))
        blocked = next((r for r in reasons if r in _BLOCKED), None)
        if blocked is not None:
            detail = f": {said}" if said else ""
            return moderation_blocked(self.provider, f"Gemini refused to make the image ({blocked}){detail}")
        why = f"finishReason {', '.join(reasons)}" if reasons else "no candidates"
        detail = f"; the model said: {said}" if said else ""
        return UpstreamError(
            f"Gemini returned no image ({why}){detail[:1000]} (provider {self.provider!r})",
            status=502,
            code="upstream_no_image",
        )

    def error(self, status: int, headers: Mapping[str, str], body: bytes) -> GatewayError:
        return google_error(self.provider, status, headers, body)


class GeminiAdapter(AdapterBase[GeminiOptions]):
    Options = GeminiOptions
    capabilities = CAPABILITIES

    @classmethod
    def capabilities_for(cls, options: msgspec.Struct) -> Capabilities:
        assert isinstance(options, GeminiOptions)
        table = VERTEX if options.api == "vertex" else CAPABILITIES
        if options.aspect_ratios != table.aspect_ratios:
            table = msgspec.structs.replace(table, aspect_ratios=tuple(options.aspect_ratios))
        if options.max_edit_images != table.max_edit_images:
            n = options.max_edit_images
            table = msgspec.structs.replace(table, max_edit_images=n, why={**table.why, "image": _images_why(n)})
        return table

    @classmethod
    def check(cls, settings: ProviderSettings) -> None:
        check_google(settings)

    def setup(self, settings: ProviderSettings) -> None:
        self.target = GoogleTarget(settings, self.options)

    def generation(self, g: Generation) -> GeminiTranslator:
        request = g.request
        headers = self.settle(request)
        config, request_level, fmt = self._config(request, native_fields(g.body))
        fields: dict[str, object] = {
            "contents": [{"role": "user", "parts": [{"text": request.prompt}]}],
            "generationConfig": config,
            **request_level,
        }
        call = self.target.call(g.upstream_model, "generateContent", _encoder.encode(fields))
        writer = ImagesWriter(request.streaming, self._meta(request, fmt), usage_last=True)
        return GeminiTranslator(self.name, call, writer, headers)

    def edit(self, e: Edit) -> GeminiTranslator:
        # The images travel inside the request: without their bytes (https
        # URLs, file ids) there is nothing to send, and nothing else to judge.
        self.require_files(e)
        headers = self.settle_edit(e)
        request = e.request
        config, request_level, fmt = self._config(request, edit_native_fields(e))
        # Under `drop`, images past the limit are left out (the header says `image`);
        # a mask never goes (Gemini has no mask input).
        images = e.images[: self.table.max_edit_images]
        # The JSON around each image's base64, which the transport encodes from
        # the spool as it sends: {"contents":[{"role":"user","parts":[{"text":…},
        # {"inlineData":{"mimeType":…,"data":"<FilePiece>"}},…]}],"generationConfig":…}
        pieces: list[bytes | FilePiece] = [b'{"contents":[{"role":"user","parts":[{"text":' + _encoder.encode(request.prompt) + b"}"]
        for image in images:
            pieces += [
                b',{"inlineData":{"mimeType":' + _encoder.encode(image.media_type) + b',"data":"',
                FilePiece(image, "base64"),
                b'"}}',
            ]
        rest = _encoder.encode({"generationConfig": config, **request_level})
        pieces.append(b"]}]," + rest[1:])
        call = self.target.call(e.upstream_model, "generateContent", StreamedBody(tuple(pieces)))
        writer = ImagesWriter(request.streaming, self._meta(request, fmt), usage_last=True, event=EDIT_COMPLETED)
        return GeminiTranslator(self.name, call, writer, headers)

    def _config(
        self, request: ImageRequest, native: Mapping[str, msgspec.Raw]
    ) -> tuple[dict[str, object], dict[str, object], str]:
        """``generationConfig``, the request-level native fields, and the output format."""
        opts = self.options
        image: dict[str, object] = {}
        size = parse_size(request.size)
        if size is not None and (ratio := aspect_ratio(*size, opts.aspect_ratios)) is not None:
            image["aspectRatio"] = ratio
            if opts.image_size and (tier := image_tier(*size, ("2K", "4K"))) is not None:
                image["imageSize"] = tier
        fmt = "png"
        if opts.api == "vertex" and request.output_format in ("png", "jpeg"):
            fmt = str(request.output_format)
            output: dict[str, object] = {"mimeType": f"image/{fmt}"}
            if fmt == "jpeg" and isinstance(request.output_compression, int):
                output["compressionQuality"] = request.output_compression
            image["imageOutputOptions"] = output
        config: dict[str, object] = {k: v for k, v in native.items() if k not in _REQUEST_LEVEL}
        config["responseModalities"] = opts.response_modalities
        if image:
            config["imageConfig"] = image
        return config, {k: v for k, v in native.items() if k in _REQUEST_LEVEL}, fmt

    def _meta(self, request: ImageRequest, fmt: str) -> ImageMeta:
        return ImageMeta(created=int(self.clock()), size=reported_size(request.size), output_format=fmt)
