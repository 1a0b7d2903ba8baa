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

import msgspec

from pixelgate.adapters.base import AdapterBase, NoOptions, bearer
from pixelgate.adapters.capabilities import Capabilities
from pixelgate.adapters.images_out import EDIT_COMPLETED, GENERATION_COMPLETED
from pixelgate.adapters.openai_wire import edit_call, forward_headers, openai_error
from pixelgate.adapters.provider_errors import json_media
from pixelgate.core.errors import GatewayError, UpstreamProtocolError
from pixelgate.core.request import rewrite_body
from pixelgate.core.translator import DONE, Edit, Ending, Generation, Opening, ProviderSettings, ResponseHead, UpstreamRequest

__all__ = ["PASS_THROUGH", "OpenAIAdapter", "OpenAITranslator", "images_to_events"]

# A JSON answer to a stream request is re-framed whole; bound what is held.
_MAX_SYNTH_BODY = 256 * 1024 * 1024


# An OpenAI-compatible upstream judges the parameters itself: nothing is refused here.
PASS_THROUGH = Capabilities(
    provider="OpenAI",
    judges="upstream",
    edits=True,
    max_edit_images=16,
    mask=True,
    input_fidelity=True,
    qualities=None,
    style=True,
    transparent=True,
    urls=True,
    formats=None,
    compression="any",
    moderation_low=True,
    streaming="native",
)


class OpenAIAdapter(AdapterBase[NoOptions]):
    capabilities = PASS_THROUGH
    __slots__ = ("_headers", "_url")

    @classmethod
    def check(cls, settings: ProviderSettings) -> None:
        base_url = settings.base_url
        if not base_url:
            raise ValueError("base_url: required for the openai adapter (e.g. https://api.openai.com/v1)")
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url: must start with http:// or https://, got {base_url!r}")

    def setup(self, settings: ProviderSettings) -> None:
        assert settings.base_url is not None
        self._url = settings.base_url.rstrip("/")
        self._headers = {**settings.headers, **bearer(settings.api_key)}

    def generation(self, g: Generation) -> OpenAITranslator:
        headers = {"Content-Type": "application/json", **self._headers, "X-Client-Request-Id": g.request_id}
        body = rewrite_body(g.body, g.upstream_model)
        call = UpstreamRequest("POST", self._url + "/images/generations", headers, body)
        return OpenAITranslator(self.name, call, g.request.streaming)

    def edit(self, e: Edit) -> OpenAITranslator:
        call = edit_call(self._url + "/images/edits", {**self._headers, "X-Client-Request-Id": e.request_id}, e)
        return OpenAITranslator(self.name, call, e.request.streaming, EDIT_COMPLETED)


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


def images_to_events(body: bytes, event_type: str = GENERATION_COMPLETED) -> bytes:
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


class OpenAITranslator:
    """Relays an OpenAI-shaped answer as it is, or re-frames a JSON answer to a stream request."""

    __slots__ = ("_buffer", "_call", "_event", "_provider", "_streaming")

    def __init__(self, provider: str, call: UpstreamRequest, streaming: bool, completed_event: str = GENERATION_COMPLETED) -> None:
        self._provider = provider
        self._call = call
        self._streaming = streaming
        self._event = completed_event
        self._buffer: bytearray | None = None

    def request(self) -> Opening:
        return Opening(self._call)

    def response(self, status: int, headers: Mapping[str, str]) -> ResponseHead:
        content_type = headers.get("Content-Type", "")
        forwarded = forward_headers(headers)
        if content_type.startswith("text/event-stream"):
            return ResponseHead(stream=True, content_type="text/event-stream", headers=forwarded)
        json_media(self._provider, status, headers, expected="JSON or an event stream")
        if self._streaming:
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

    def finish(self) -> Ending:
        if self._buffer is None:
            # Usage stays in the relayed bytes, where the relay's meter reads it.
            return DONE
        body, self._buffer = bytes(self._buffer), None
        return Ending(images_to_events(body, self._event))

    def error(self, status: int, headers: Mapping[str, str], body: bytes) -> GatewayError:
        return openai_error(self._provider, status, headers, body)
