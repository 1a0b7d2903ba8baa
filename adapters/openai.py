"""OpenAI, and any upstream that speaks the OpenAI Images API.

Bodies and SSE events pass through byte-for-byte: the request is the client's
own JSON with ``model`` rewritten and gateway-only fields removed; the response
is relayed untouched. One translation remains: an upstream that ignores
``stream: true`` and answers with JSON (several "compatible" servers do) has
its images re-emitted as ``image_generation.completed`` events, so the client
still gets the stream it asked for.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import msgspec

from adapters.base import NoOptions, ResponseHead, TranslatorBase, UpstreamRequest
from adapters.openai_wire import Usage, forward_headers, openai_error
from adapters.provider_errors import json_media
from proxy.errors import GatewayError, UpstreamProtocolError
from proxy.schema import ImageGenerationRequest, rewrite_body

__all__ = ["OpenAIAdapter", "OpenAITranslator"]

# A JSON answer to a stream request is re-framed whole; bound what is held.
_MAX_SYNTH_BODY = 256 * 1024 * 1024


class OpenAIAdapter:
    Options: ClassVar[type[msgspec.Struct]] = NoOptions

    @classmethod
    def check(cls, *, base_url: str | None, api_key: str | None, options: msgspec.Struct) -> None:
        if not base_url:
            raise ValueError("base_url: required for the openai adapter (e.g. https://api.openai.com/v1)")
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url: must start with http:// or https://, got {base_url!r}")

    def __init__(
        self, *, name: str, base_url: str | None, api_key: str | None, headers: Mapping[str, str], options: msgspec.Struct
    ) -> None:
        assert base_url is not None
        self.name = name
        self._url = base_url.rstrip("/") + "/images/generations"
        self._headers = {"Content-Type": "application/json", **headers}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"

    def translator(
        self, request: ImageGenerationRequest, body: bytes, upstream_model: str, request_id: str
    ) -> OpenAITranslator:
        headers = {**self._headers, "X-Client-Request-Id": request_id}
        return OpenAITranslator(self.name, self._url, headers, request, body, upstream_model)


# msgspec.Raw cannot sit in a union: an empty Raw stands for "absent".
class _Image(msgspec.Struct):
    b64_json: msgspec.Raw = msgspec.Raw()
    url: msgspec.Raw = msgspec.Raw()


class _ImagesResponse(msgspec.Struct):
    data: list[_Image]
    created: int = 0
    size: str = "auto"
    quality: str = "auto"
    background: str = "auto"
    output_format: str = "png"
    usage: msgspec.Raw = msgspec.Raw()


_images_decoder = msgspec.json.Decoder(_ImagesResponse)
_encoder = msgspec.json.Encoder()


def images_to_events(body: bytes, event_type: str = "image_generation.completed") -> bytes:
    """Re-emit a JSON ``ImagesResponse`` as one completed SSE event per image.

    The base64 strings are carried as ``msgspec.Raw``: never decoded.
    """
    try:
        resp = _images_decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise UpstreamProtocolError(f"upstream answered a stream request with malformed JSON: {exc}") from None
    if not resp.data:
        raise UpstreamProtocolError("upstream answered a stream request with no images")
    out = bytearray()
    last = len(resp.data) - 1
    for i, image in enumerate(resp.data):
        fields: dict[str, object] = {"type": msgspec.Raw(_encoder.encode(event_type))}
        if image.b64_json:
            fields["b64_json"] = image.b64_json
        if image.url:
            fields["url"] = image.url
        fields |= {
            "created_at": resp.created,
            "size": resp.size,
            "quality": resp.quality,
            "background": resp.background,
            "output_format": resp.output_format,
        }
        if i == last and resp.usage:
            fields["usage"] = resp.usage
        out += b"event: " + event_type.encode() + b"\ndata: " + _encoder.encode(fields) + b"\n\n"
    return bytes(out)


class OpenAITranslator(TranslatorBase):
    __slots__ = ("_body", "_buffer", "_headers", "_model", "_provider", "_request", "_url")

    def __init__(
        self,
        provider: str,
        url: str,
        headers: dict[str, str],
        request: ImageGenerationRequest,
        body: bytes,
        upstream_model: str,
    ) -> None:
        self._provider = provider
        self._url = url
        self._headers = headers
        self._request = request
        self._body = body
        self._model = upstream_model
        self._buffer: bytearray | None = None

    def request(self) -> UpstreamRequest:
        return UpstreamRequest("POST", self._url, self._headers, rewrite_body(self._body, self._model))

    def response(self, status: int, headers: Mapping[str, str]) -> ResponseHead:
        content_type = headers.get("Content-Type", "")
        forwarded = forward_headers(headers)
        if content_type.startswith("text/event-stream"):
            return ResponseHead(stream=True, content_type="text/event-stream", headers=forwarded)
        json_media(self._provider, status, headers, expected="JSON or an event stream")
        if self._request.streaming:
            self._buffer = bytearray()
            return ResponseHead(stream=True, content_type="text/event-stream", headers=forwarded, passthrough=False)
        return ResponseHead(stream=False, content_type=content_type, headers=forwarded)

    def feed(self, chunk: bytes) -> bytes | None:
        if self._buffer is None:
            return None
        if len(self._buffer) + len(chunk) > _MAX_SYNTH_BODY:
            raise UpstreamProtocolError("upstream JSON answer to a stream request is too large to re-frame")
        self._buffer += chunk
        return b""

    def finish(self) -> bytes:
        if self._buffer is None:
            return b""
        body, self._buffer = bytes(self._buffer), None
        return images_to_events(body)

    def error(self, status: int, headers: Mapping[str, str], body: bytes) -> GatewayError:
        return openai_error(self._provider, status, headers, body)

    def usage(self) -> Usage | None:
        # Usage stays in the relayed bytes, where the relay's meter reads it.
        return None
