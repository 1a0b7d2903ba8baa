"""Together AI: ``POST /v1/images/generations``, one JSON answer.

OpenAI-like, with differences that matter: ``size`` is ``width``/``height``,
and ``response_format`` takes ``"base64"`` (not ``b64_json``) or ``"url"``.
Base64 images are tapped from ``data[].b64_json`` into the client's shape as
they arrive; URLs (``response_format: url``, non-streaming only) pass as
given. No usage is reported: Together bills per image, counted by the relay.
Fields outside the OpenAI schema (``steps``, ``seed``, ``negative_prompt``,
``guidance_scale``, …) are passed to Together unchanged.

Edits are generations with an image reference: Together's image-reference
models (FLUX.1 Kontext) take the input image as ``image_url`` in the same
``/images/generations`` body, a URL or a data URI. The first uploaded image
goes as a data URI whose base64 is read from the spool as the body is sent;
more than one image, a mask and input fidelity go to the ``unsupported``
policy (Kontext takes one image and edits from the prompt alone). A JSON edit
whose images are https URLs is refused: the gateway sends the bytes, it
fetches nothing for a client. Streamed, the events are
``image_edit.completed``. See docs/edits/together.md.
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from pixelgate.adapters.base import AdapterBase, bearer
from pixelgate.adapters.capabilities import Capabilities
from pixelgate.adapters.edit_body import data_uri, edit_native_fields, json_pieces, streamed
from pixelgate.adapters.images_out import EDIT_COMPLETED, ImageMeta, ImagesWriter
from pixelgate.adapters.jsontap import Path
from pixelgate.adapters.params import Policy, native_fields, parse_size, reported_size
from pixelgate.adapters.provider_errors import error_message, malformed, provider_error
from pixelgate.adapters.tapped import TappedTranslator
from pixelgate.core.errors import GatewayError
from pixelgate.core.request import ImageRequest
from pixelgate.core.translator import Edit, Ending, Generation, ProviderSettings, UpstreamRequest

__all__ = ["TogetherAdapter", "TogetherOptions"]

DEFAULT_URL = "https://api.together.xyz/v1"


class TogetherOptions(msgspec.Struct, forbid_unknown_fields=True):
    unsupported: Policy = "reject"
    # Together's own default format is jpeg; OpenAI's is png.
    output_format: str = "png"


CAPABILITIES = Capabilities(
    provider="Together",
    order=("output_format", "quality", "style", "background", "output_compression", "moderation"),
    urls=True,
    formats=("png", "jpeg"),
    # Edits: one reference image (`image_url`), no mask.
    edits=True,
    max_edit_images=1,
    why={
        "quality": "Together has no quality setting (use its native `steps`)",
        "moderation": "Together's safety checker is set with its native `disable_safety_checker`",
        "image": "Together's image-reference models (FLUX Kontext) take one input image",
        "mask": "Together's image-reference models take no mask (say in the prompt what to change)",
    },
)


def _select(path: Path) -> bool:
    return len(path) == 3 and path[0] == "data" and path[2] == "b64_json"


class _Item(msgspec.Struct):
    url: str | None = None


class _Answer(msgspec.Struct):
    data: list[_Item] = []


_answer = msgspec.json.Decoder(_Answer)
_encoder = msgspec.json.Encoder()


class TogetherTranslator(TappedTranslator):
    __slots__ = ()

    def complete(self, skeleton: bytes) -> Ending:
        try:
            answer = _answer.decode(skeleton)
        except msgspec.DecodeError as exc:
            raise malformed(self.provider, exc) from None
        out = b""
        if not self.writer.images and not self.writer.stream:
            for item in answer.data:
                if item.url:
                    out += self.writer.url(item.url)
        return Ending(out + self.writer.finish(None))

    def error(self, status: int, headers: Mapping[str, str], body: bytes) -> GatewayError:
        return provider_error(self.provider, status, headers, error_message(body))


class TogetherAdapter(AdapterBase[TogetherOptions]):
    Options = TogetherOptions
    default_url = DEFAULT_URL
    capabilities = CAPABILITIES

    def setup(self, settings: ProviderSettings) -> None:
        self._url = self.base_url + "/images/generations"
        self._headers = {"Content-Type": "application/json", **settings.headers, **bearer(settings.api_key)}

    def generation(self, g: Generation) -> TogetherTranslator:
        request, body, upstream_model, request_id = g.request, g.body, g.upstream_model, g.request_id
        headers = self.settle(request)
        fields, meta = self._fields(request, upstream_model, native_fields(body))
        call = UpstreamRequest(
            "POST", self._url, {**self._headers, "X-Request-Id": request_id}, _encoder.encode(fields)
        )
        return TogetherTranslator(self.name, call, ImagesWriter(request.streaming, meta), _select, headers)

    def edit(self, e: Edit) -> TogetherTranslator:
        self.require_files(e)
        headers = self.settle_edit(e)
        # `image_url` is the gateway's to fill (with the upload), not the client's.
        fields, meta = self._fields(e.request, e.upstream_model, edit_native_fields(e, exclude=frozenset({"image_url"})))
        # Only the first image: under the drop policy the others are left out.
        body = streamed(*json_pieces([("image_url", data_uri(e.images[0]))], fields))
        call = UpstreamRequest("POST", self._url, {**self._headers, "X-Request-Id": e.request_id}, body)
        writer = ImagesWriter(e.request.streaming, meta, event=EDIT_COMPLETED)
        return TogetherTranslator(self.name, call, writer, _select, headers)

    def _fields(
        self, request: ImageRequest, upstream_model: str, native: Mapping[str, object]
    ) -> tuple[dict[str, object], ImageMeta]:
        """The body fields generations and edits share, and the reported meta."""
        fields: dict[str, object] = {**native, "model": upstream_model, "prompt": request.prompt}
        if isinstance(request.n, int):
            fields["n"] = request.n
        size = parse_size(request.size)
        if size is not None:
            fields["width"], fields["height"] = size
        url_wanted = request.response_format == "url" and not request.streaming
        fields["response_format"] = "url" if url_wanted else "base64"
        fmt = request.output_format if request.output_format in ("png", "jpeg") else self.options.output_format
        fields["output_format"] = fmt
        meta = ImageMeta(
            created=int(self.clock()),
            size=reported_size(request.size),
            quality="auto",
            output_format=str(fmt),
        )
        return fields, meta
