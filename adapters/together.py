"""Together AI: ``POST /v1/images/generations``, one JSON answer.

OpenAI-like, with differences that matter: ``size`` is ``width``/``height``,
and ``response_format`` takes ``"base64"`` (not ``b64_json``) or ``"url"``.
Base64 images are tapped from ``data[].b64_json`` into the client's shape as
they arrive; URLs (``response_format: url``, non-streaming only) pass as
given. No usage is reported: Together bills per image, counted by the relay.
Fields outside the OpenAI schema (``steps``, ``seed``, ``negative_prompt``,
``guidance_scale``, …) are passed to Together unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from pixelgate.adapters.base import AdapterBase, bearer
from pixelgate.adapters.capabilities import Capabilities
from pixelgate.adapters.images_out import ImageMeta, ImagesWriter
from pixelgate.adapters.jsontap import Path
from pixelgate.adapters.params import Policy, native_fields, parse_size, reported_size
from pixelgate.adapters.provider_errors import error_message, malformed, provider_error
from pixelgate.adapters.tapped import TappedTranslator
from pixelgate.core.errors import GatewayError
from pixelgate.core.translator import Ending, Generation, ProviderSettings, UpstreamRequest

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
    why={
        "quality": "Together has no quality setting (use its native `steps`)",
        "moderation": "Together's safety checker is set with its native `disable_safety_checker`",
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
        fields: dict[str, object] = {**native_fields(body), "model": upstream_model, "prompt": request.prompt}
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
        call = UpstreamRequest(
            "POST", self._url, {**self._headers, "X-Request-Id": request_id}, _encoder.encode(fields)
        )
        return TogetherTranslator(self.name, call, ImagesWriter(request.streaming, meta), _select, headers)
