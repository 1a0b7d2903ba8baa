"""Stability AI v2beta Stable Image: one multipart call, the image as raw bytes.

``POST {base}/v2beta/stable-image/generate/{ultra|core|sd3}`` (base
``https://api.stability.ai``) with ``authorization: Bearer <key>``. The body
must be ``multipart/form-data`` even though it carries no file: it is built
here, one text part per field, with a random boundary per request (a
boundary derived from something the client knows, such as the request id,
could be planted in a prompt to forge fields).

Which endpoint: the ``endpoint`` option, or by default the upstream model
name: ``ultra`` / ``stable-image-ultra`` → ``/ultra``, ``core`` /
``stable-image-core`` → ``/core``, anything else (``sd3.5-large``,
``sd3.5-medium``, ``sd3.5-large-turbo``, …) → ``/sd3`` with that name in the
``model`` field.

The call asks for ``accept: image/*``: the answer is the image itself, which
is base64-encoded as it arrives (``adapters.b64``) into the client's
``b64_json``, and the verdict comes in the ``finish-reason`` header, so a
``CONTENT_FILTERED`` image becomes ``moderation_blocked`` before a byte of it
goes out. (The JSON mode, ``accept: application/json``, puts the image in one
JSON document as base64, a third bigger on the wire, with ``finish_reason``
in the same document, possibly after the image has been relayed.)

Mapping: ``size`` → ``aspect_ratio`` (16:9 1:1 21:9 2:3 3:2 4:5 5:4 9:16
9:21; Stability picks the pixels), ``output_format`` png|jpeg|webp. Fields
outside the OpenAI schema (``negative_prompt``, ``seed``, ``style_preset``
(core only), ``cfg_scale``, …) become form fields unchanged. One image per
call: ``n`` > 1 is unsupported. Errors are ``{"id","name","errors":[…]}``;
``name: content_moderation`` (sent with 403) is ``moderation_blocked``, not a
credentials failure. Stability bills credits per image and reports no tokens.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from typing import Literal

import msgspec

from pixelgate.adapters.b64 import Base64Encoder
from pixelgate.adapters.base import AdapterBase, bearer
from pixelgate.adapters.capabilities import Capabilities
from pixelgate.adapters.images_out import ImageMeta, ImagesWriter
from pixelgate.adapters.params import Policy, aspect_ratio, native_fields, parse_size, reported_size
from pixelgate.adapters.provider_errors import error_message, moderation_blocked, provider_error
from pixelgate.core.errors import GatewayError, InvalidRequest, UpstreamFailure, UpstreamProtocolError
from pixelgate.core.translator import Ending, Generation, Opening, ProviderSettings, ResponseHead, UpstreamRequest

__all__ = ["StabilityAdapter", "StabilityOptions", "endpoint_for", "multipart"]

DEFAULT_URL = "https://api.stability.ai"
ASPECT_RATIOS = ("16:9", "1:1", "21:9", "2:3", "3:2", "4:5", "5:4", "9:16", "9:21")

Endpoint = Literal["ultra", "core", "sd3"]


class StabilityOptions(msgspec.Struct, forbid_unknown_fields=True):
    unsupported: Policy = "reject"
    # "auto": from the upstream model name (see the module docstring).
    endpoint: Literal["auto", "ultra", "core", "sd3"] = "auto"


def endpoint_for(model: str, option: str) -> tuple[Endpoint, str | None]:
    """The endpoint, and the ``model`` field to send (sd3 only)."""
    name = model.removeprefix("stable-image-") if option == "auto" else option
    if name == "ultra":
        return "ultra", None
    if name == "core":
        return "core", None
    return "sd3", model


CAPABILITIES = Capabilities(
    provider="Stability",
    order=("n", "response_format", "quality", "style", "background", "output_compression", "moderation", "size"),
    max_n=1,
    aspect_ratios=ASPECT_RATIOS,
    formats=("png", "jpeg", "webp"),
    why={
        "response_format": "Stability returns the image itself, not a URL",
        "style": "Stability's styles are its native `style_preset` (core only)",
        "moderation": "Stability's content filter cannot be relaxed",
    },
)


# Form field names go into a quoted header parameter: nothing that could end it.
_FIELD_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_any = msgspec.json.Decoder()


def _form_value(name: str, raw: msgspec.Raw) -> str | None:
    """A client field as form text: strings as they are, numbers and booleans
    as JSON spells them; null means absent."""
    value = _any.decode(raw)
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, int, float)):
        return bytes(raw).decode().strip()
    raise InvalidRequest(
        f"`{name}` must be a string, number or boolean: Stability takes form fields, not JSON objects or arrays.",
        param=name,
        code="invalid_value",
    )


def multipart(fields: Mapping[str, str], boundary: str) -> bytes:
    """``multipart/form-data`` with one text part per field (RFC 7578)."""
    out = bytearray()
    mark = b"--" + boundary.encode()
    for name, value in fields.items():
        out += mark + b'\r\nContent-Disposition: form-data; name="' + name.encode() + b'"\r\n\r\n'
        out += value.encode() + b"\r\n"
    return bytes(out + mark + b"--\r\n")


class _ErrorDoc(msgspec.Struct):
    name: str | None = None


_error_doc = msgspec.json.Decoder(_ErrorDoc)


class StabilityTranslator:
    __slots__ = ("_encoder", "_opened", "_opening", "provider", "writer")

    def __init__(self, provider: str, call: UpstreamRequest, writer: ImagesWriter, headers: dict[str, str]) -> None:
        self.provider = provider
        self.writer = writer
        # Stability cannot stream: a streaming client gets keep-alives meanwhile.
        self._opening = Opening(call, headers, waits=writer.stream)
        self._encoder = Base64Encoder()
        self._opened = False

    def request(self) -> Opening:
        return self._opening

    def response(self, status: int, headers: Mapping[str, str]) -> ResponseHead:
        # The verdict is a header: checked before any image byte is relayed.
        reason = headers.get("finish-reason", "SUCCESS").strip().upper()
        if reason == "CONTENT_FILTERED":
            raise moderation_blocked(
                self.provider, "CONTENT_FILTERED: the image was refused by Stability's content filter.", headers
            )
        if reason != "SUCCESS":
            raise UpstreamFailure(f"provider {self.provider!r} did not finish the image: {reason[:100]}")
        media = headers.get("Content-Type", "").partition(";")[0].strip().lower()
        if not media.startswith("image/"):
            raise UpstreamProtocolError(
                f"provider {self.provider!r} answered HTTP {status} with Content-Type {media or 'none'!r}, not an image"
            )
        return self.writer.head()

    def feed(self, chunk: bytes) -> bytes:
        out = self._encoder.feed(chunk)
        if not self._opened:
            self._opened = True
            return self.writer.open() + out
        return out

    def finish(self) -> Ending:
        if not self._opened:
            raise UpstreamProtocolError(f"provider {self.provider!r} answered with an empty image")
        return Ending(self._encoder.finish() + self.writer.close() + self.writer.finish(None))

    def error(self, status: int, headers: Mapping[str, str], body: bytes) -> GatewayError:
        message = error_message(body)
        try:
            name = _error_doc.decode(body).name
        except (msgspec.DecodeError, msgspec.ValidationError):
            name = None
        # Before provider_error: its 403 means bad credentials, this 403 does not.
        if name == "content_moderation":
            return moderation_blocked(self.provider, message or "Refused by Stability's content moderation.", headers)
        return provider_error(self.provider, status, headers, message)


class StabilityAdapter(AdapterBase[StabilityOptions]):
    Options = StabilityOptions
    default_url = DEFAULT_URL
    capabilities = CAPABILITIES

    def setup(self, settings: ProviderSettings) -> None:
        self._base = self.base_url + "/v2beta/stable-image/generate/"
        self._headers = {**settings.headers, "Accept": "image/*", **bearer(settings.api_key)}

    def generation(self, g: Generation) -> StabilityTranslator:
        request, body, upstream_model = g.request, g.body, g.upstream_model
        headers = self.settle(request)
        endpoint, model = endpoint_for(upstream_model, self.options.endpoint)
        fields: dict[str, str] = {"prompt": request.prompt}
        for key, raw in native_fields(body).items():
            if not _FIELD_NAME.fullmatch(key):
                raise InvalidRequest(f"`{key[:64]}` is not a field name Stability accepts.", code="invalid_value")
            if (value := _form_value(key, raw)) is not None:
                fields[key] = value
        size = parse_size(request.size)
        ratio = aspect_ratio(*size, ASPECT_RATIOS) if size is not None else None
        if ratio is not None:
            fields["aspect_ratio"] = ratio
        fmt = request.output_format if request.output_format in ("png", "jpeg", "webp") else "png"
        fields["output_format"] = str(fmt)
        if model is not None:
            fields["model"] = model
        # Random per request: a prompt cannot contain what it cannot predict.
        boundary = f"pixelgate-{secrets.token_hex(16)}"
        call = UpstreamRequest(
            "POST",
            self._base + endpoint,
            {**self._headers, "Content-Type": f"multipart/form-data; boundary={boundary}"},
            multipart(fields, boundary),
        )
        meta = ImageMeta(
            created=int(self.clock()),
            # The size asked for (Stability picks pixels near it), unless it was dropped.
            size=reported_size(request.size) if ratio is not None else "auto",
            output_format=str(fmt),
        )
        return StabilityTranslator(self.name, call, ImagesWriter(request.streaming, meta), headers)
