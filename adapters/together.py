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

import time
from collections.abc import Mapping
from typing import ClassVar

import msgspec

from adapters.base import UpstreamRequest, check_base_url
from adapters.images_out import ImageMeta, ImagesWriter
from adapters.jsontap import Path
from adapters.params import Policy, native_fields, parse_size, reported_size, settle
from adapters.provider_errors import error_message, malformed, provider_error
from adapters.tapped import TappedTranslator
from proxy.errors import GatewayError
from proxy.schema import ImageGenerationRequest

__all__ = ["TogetherAdapter", "TogetherOptions"]

DEFAULT_URL = "https://api.together.xyz/v1"


class TogetherOptions(msgspec.Struct, forbid_unknown_fields=True):
    unsupported: Policy = "reject"
    # Together's own default format is jpeg; OpenAI's is png.
    output_format: str = "png"


def problems(req: ImageGenerationRequest) -> list[tuple[str, str]]:
    out = []
    if req.output_format == "webp":
        out.append(("output_format", "Together returns png or jpeg"))
    if req.quality not in (msgspec.UNSET, None, "auto"):
        out.append(("quality", "Together has no quality setting (use its native `steps`)"))
    if req.style not in (msgspec.UNSET, None):
        out.append(("style", "Together has no style setting"))
    if req.background == "transparent":
        out.append(("background", "Together cannot make transparent backgrounds"))
    if req.output_compression not in (msgspec.UNSET, None):
        out.append(("output_compression", "Together has no compression setting"))
    if req.moderation == "low":
        out.append(("moderation", "Together's safety checker is set with its native `disable_safety_checker`"))
    return out


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

    def complete(self, skeleton: bytes) -> bytes:
        try:
            answer = _answer.decode(skeleton)
        except msgspec.DecodeError as exc:
            raise malformed(self.provider, exc) from None
        out = b""
        if not self.writer.images and not self.writer.stream:
            for item in answer.data:
                if item.url:
                    out += self.writer.url(item.url)
        return out + self.writer.finish(None)

    def error(self, status: int, headers: Mapping[str, str], body: bytes) -> GatewayError:
        return provider_error(self.provider, status, headers, error_message(body))


class TogetherAdapter:
    Options: ClassVar[type[msgspec.Struct]] = TogetherOptions

    @classmethod
    def check(cls, *, base_url: str | None, api_key: str | None, options: msgspec.Struct) -> None:
        check_base_url(base_url)

    def __init__(
        self, *, name: str, base_url: str | None, api_key: str | None, headers: Mapping[str, str], options: msgspec.Struct
    ) -> None:
        assert isinstance(options, TogetherOptions)
        self.name = name
        self.options = options
        self.clock = time.time
        self._url = (base_url or DEFAULT_URL).rstrip("/") + "/images/generations"
        self._headers = {"Content-Type": "application/json", **headers}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"

    def translator(
        self, request: ImageGenerationRequest, body: bytes, upstream_model: str, request_id: str
    ) -> TogetherTranslator:
        headers = settle(self.name, problems(request), self.options.unsupported)
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
