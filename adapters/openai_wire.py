"""OpenAI Images wire shapes shared by every adapter that speaks or emits them.

Every adapter's client-facing output is OpenAI-shaped, so usage, header
forwarding and error-envelope handling live here once.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping

import msgspec

from pixelgate.core.errors import GatewayError, UpstreamError, UpstreamFailure, UpstreamProtocolError
from pixelgate.core.request import GATEWAY_ONLY_FIELDS, rewrite_body
from pixelgate.core.translator import Edit, UpstreamRequest
from pixelgate.core.upload import FilePiece, InputImage, StreamedBody

__all__ = ["FORWARDED_ERROR_HEADERS", "edit_call", "forward_headers", "multipart_edit", "openai_error"]


# Upstream response headers a client may rely on. An allow-list: anything else
# (cookies, hop-by-hop headers, provider-internal ids) stays at the gateway.
_FORWARDED = frozenset({"openai-processing-ms", "openai-version", "retry-after", "retry-after-ms", "x-should-retry"})
FORWARDED_ERROR_HEADERS = frozenset({"retry-after", "retry-after-ms", "x-should-retry"})


def forward_headers(headers: Mapping[str, str], allowed: frozenset[str] = _FORWARDED) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in headers.items():
        lower = name.lower()
        if lower in allowed or lower.startswith("x-ratelimit-"):
            out[lower] = value
        elif lower == "x-request-id":
            # The gateway's own x-request-id identifies the exchange to the
            # client; the provider's is kept for support tickets.
            out["x-upstream-request-id"] = value
    return out


class _LenientError(msgspec.Struct):
    message: str
    type: str | None = None
    param: str | None = None
    code: str | int | None = None


class _LenientEnvelope(msgspec.Struct):
    error: _LenientError


_envelope_decoder = msgspec.json.Decoder(_LenientEnvelope)
_raw_error_decoder = msgspec.json.Decoder(dict[str, dict[str, msgspec.Raw]])
_ENVELOPE_KEYS = frozenset({"message", "type", "param", "code"})


def openai_error(provider: str, status: int, headers: Mapping[str, str], body: bytes) -> GatewayError:
    """Translate an OpenAI-compatible error response into a gateway error."""
    relayed = {k: v for k, v in forward_headers(headers, FORWARDED_ERROR_HEADERS).items() if k != "x-upstream-request-id"}
    if status < 400:
        # A redirect from an API call is never followed, nor passed on as the client's status.
        return UpstreamProtocolError(f"Provider {provider!r} answered HTTP {status}, neither a success nor an error.")
    if status in (401, 403):
        # The provider rejected the *gateway's* credentials: the client cannot
        # fix that, and the upstream message may echo part of the key.
        return UpstreamFailure(
            f"Provider {provider!r} rejected the gateway's credentials (HTTP {status}); "
            "the gateway operator must fix the provider configuration.",
            code="upstream_auth_failed",
        )
    try:
        envelope = _envelope_decoder.decode(body)
    except msgspec.DecodeError:
        return UpstreamError(
            f"Provider {provider!r} returned HTTP {status} without an OpenAI error body.",
            status=status,
            code=f"upstream_http_{status}",
            headers=relayed,
        )
    err = envelope.error
    raw: bytes | None = None
    try:
        if _raw_error_decoder.decode(body)["error"].keys() >= _ENVELOPE_KEYS:
            raw = body
    except (msgspec.DecodeError, KeyError):
        pass
    return UpstreamError(
        err.message,
        status=status,
        type=err.type,
        param=err.param,
        code=None if err.code is None else str(err.code),
        raw=raw,
        headers=relayed,
    )


def edit_call(url: str, headers: Mapping[str, str], e: Edit) -> UpstreamRequest:
    """An edit as the OpenAI Images API takes it: the client's JSON as it came
    (``model`` rewritten), or its form re-framed around the spooled files."""
    if e.json_body is not None:
        body = rewrite_body(e.json_body, e.upstream_model)
        return UpstreamRequest("POST", url, {"Content-Type": "application/json", **headers}, body)
    # Random per request: no field value can contain what it cannot predict.
    boundary = "pixelgate-" + secrets.token_hex(16)
    content_type = f"multipart/form-data; boundary={boundary}"
    return UpstreamRequest("POST", url, {"Content-Type": content_type, **headers}, multipart_edit(e, boundary))


def multipart_edit(e: Edit, boundary: str) -> StreamedBody:
    """The client's text fields in their order (``model`` rewritten, gateway-only
    fields left out), then the images and the mask, each file's bytes as uploaded."""
    dash = b"--" + boundary.encode() + b"\r\n"
    pieces: list[bytes | FilePiece] = []
    text = bytearray()
    has_model = False
    for name, value in e.fields:
        if name in GATEWAY_ONLY_FIELDS:
            continue
        if name == "model":
            value, has_model = e.upstream_model, True
        text += dash + _disposition(name) + b"\r\n\r\n" + value.encode() + b"\r\n"
    if not has_model:
        text += dash + _disposition("model") + b"\r\n\r\n" + e.upstream_model.encode() + b"\r\n"
    pieces.append(bytes(text))
    field = "image[]" if len(e.images) > 1 else "image"
    files = [(field, image) for image in e.images]
    if e.mask is not None:
        files.append(("mask", e.mask))
    for name, image in files:
        pieces.append(dash + _file_head(name, image))
        pieces.append(FilePiece(image))
        pieces.append(b"\r\n")
    pieces.append(b"--" + boundary.encode() + b"--\r\n")
    return StreamedBody(tuple(pieces))


def _quoted(value: str) -> bytes:
    # The HTML form encoding of a name in Content-Disposition: " CR LF percent-encoded.
    return value.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A").encode()


def _disposition(name: str) -> bytes:
    return b'Content-Disposition: form-data; name="' + _quoted(name) + b'"'


def _file_head(name: str, image: InputImage) -> bytes:
    return (
        _disposition(name) + b'; filename="' + _quoted(image.filename) + b'"\r\n'
        b"Content-Type: " + image.media_type.encode() + b"\r\n\r\n"
    )
