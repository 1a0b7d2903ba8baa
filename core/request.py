"""The client-facing request: decoded once, validated, then forwarded.

The Struct covers the union of the seed APIs' fields for
``POST /v1/images/generations``. Validation is the gateway's; the body that goes
upstream is the client's own bytes with only ``model`` rewritten and the
gateway-only fields removed (see ``rewrite_body``), so fields OpenAI adds
later pass through byte-for-byte.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal, TypeVar

import msgspec
from msgspec import UNSET, Meta, UnsetType

from pixelgate.core.errors import InvalidRequest

__all__ = [
    "GATEWAY_ONLY_FIELDS",
    "MAX_EDIT_IMAGES",
    "ImageEditRequest",
    "ImageGenerationRequest",
    "ImageReference",
    "ImageRequest",
    "ProviderPreferences",
    "convert_edit_form",
    "decode_edit",
    "decode_request",
    "rewrite_body",
    "with_field",
    "with_user",
]

ProviderName = Annotated[str, Meta(min_length=1, max_length=128)]
_T = TypeVar("_T")


class ProviderPreferences(msgspec.Struct, forbid_unknown_fields=True):
    """The gateway's own routing options (seed APIs' ``provider`` object)."""

    order: list[ProviderName] | None = None
    only: list[ProviderName] | None = None
    ignore: list[ProviderName] | None = None
    include_alpha: bool = False
    allow_fallbacks: bool = True


Size = Annotated[str, Meta(pattern=r"^(auto|[1-9][0-9]{1,4}x[1-9][0-9]{1,4})$")]
# An enumerated OpenAI value, bounded but not enumerated here: OpenAI adds
# values (a new quality, a new format), and an OpenAI-compatible upstream is
# the one to judge them. Translating adapters check them against what their
# provider takes (``pixelgate.adapters.capabilities``).
Value = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")]
# A model name goes into response headers (x-pixelgate-upstream-model, for a
# "*" route) and logs: no control characters (CR, LF, NUL, DEL, ...), bounded.
ModelName = Annotated[str, Meta(min_length=1, max_length=256, pattern=r"^[^\x00-\x1f\x7f]+$")]


class ImageRequest(msgspec.Struct, kw_only=True):
    """What generations and edits share."""

    prompt: Annotated[str, Meta(min_length=1)]
    model: ModelName | UnsetType | None = UNSET
    n: Annotated[int, Meta(ge=1, le=10)] | UnsetType | None = UNSET
    size: Size | UnsetType | None = UNSET
    quality: Value | UnsetType | None = UNSET
    response_format: Literal["url", "b64_json"] | UnsetType | None = UNSET
    # Nullable like every other optional field (generated clients send null).
    user: str | UnsetType | None = UNSET
    background: Value | UnsetType | None = UNSET
    moderation: Value | UnsetType | None = UNSET
    output_format: Value | UnsetType | None = UNSET
    output_compression: Annotated[int, Meta(ge=0, le=100)] | UnsetType | None = UNSET
    stream: bool | UnsetType | None = UNSET
    partial_images: Annotated[int, Meta(ge=0, le=3)] | UnsetType | None = UNSET
    provider: ProviderPreferences | UnsetType = UNSET

    @property
    def streaming(self) -> bool:
        return self.stream is True

    @property
    def image_count(self) -> int:
        return self.n if isinstance(self.n, int) else 1


class ImageGenerationRequest(ImageRequest, kw_only=True):
    """``POST /v1/images/generations``."""

    style: Value | UnsetType | None = UNSET


# The most input images an edit takes (OpenAI's limit for GPT image models).
MAX_EDIT_IMAGES = 16


class ImageReference(msgspec.Struct, forbid_unknown_fields=True):
    """An input image of a JSON edit: a URL (``https://`` or ``data:``) or an uploaded file's id."""

    image_url: Annotated[str, Meta(min_length=1)] | None = None
    file_id: Annotated[str, Meta(min_length=1)] | None = None


class ImageEditRequest(ImageRequest, kw_only=True):
    """``POST /v1/images/edits``: its fields other than the files.

    From a multipart form the files arrive apart (``pixelgate.core.upload``);
    from a JSON body they are ``images`` and ``mask`` here.
    """

    input_fidelity: Value | UnsetType | None = UNSET
    images: Annotated[list[ImageReference], Meta(min_length=1, max_length=MAX_EDIT_IMAGES)] | UnsetType = UNSET
    mask: ImageReference | UnsetType | None = UNSET


# Fields that are the gateway's and never reach an upstream.
GATEWAY_ONLY_FIELDS: frozenset[str] = frozenset({"provider"})

_decoder = msgspec.json.Decoder(ImageGenerationRequest)
_edit_decoder = msgspec.json.Decoder(ImageEditRequest)
_raw_map_decoder = msgspec.json.Decoder(dict[str, msgspec.Raw])
_encoder = msgspec.json.Encoder()

# msgspec says where a value was wrong as "... - at `$.provider.only[0]`".
_PATH = re.compile(r" - at `\$\.?([^`]*)`$")
_MISSING = re.compile(r"^Object missing required field `([^`]+)`")
_UNKNOWN = re.compile(r"^Object contains unknown field `([^`]+)`")


def _param_of(message: str) -> tuple[str | None, str]:
    """Split msgspec's message into (OpenAI ``param``, message without the path)."""
    path = None
    if m := _PATH.search(message):
        path = m.group(1) or None
        message = message[: m.start()]
    field = None
    if m := (_MISSING.match(message) or _UNKNOWN.match(message)):
        field = m.group(1)
    if field and path:
        return f"{path}.{field}", message
    return field or path, message


def decode_request(body: bytes) -> ImageGenerationRequest:
    """Validate a generations body; raise ``InvalidRequest`` naming the field."""
    return _decode(_decoder, body)


def decode_edit(body: bytes) -> ImageEditRequest:
    """Validate a JSON edits body (its images are ``images``, as URLs or file ids)."""
    edit = _decode(_edit_decoder, body)
    if edit.images is UNSET:
        raise InvalidRequest(
            "An edit needs `images` (or, as multipart/form-data, `image` files).",
            param="images",
            code="missing_required_parameter",
        )
    return edit


def convert_edit_form(fields: dict[str, str]) -> ImageEditRequest:
    """Validate a multipart edit's text fields (``"2"`` is taken for ``n: 2``)."""
    for name in ("images", "mask"):
        if name in fields:
            raise InvalidRequest(
                f"`{name}` as a form field is for JSON bodies; send files as `image`/`image[]` and `mask` parts.",
                param=name,
                code="invalid_value",
            )
    try:
        return msgspec.convert(fields, ImageEditRequest, strict=False)
    except msgspec.ValidationError as exc:
        param, detail = _param_of(str(exc))
        where = f" in `{param}`" if param else ""
        raise InvalidRequest(f"Invalid request{where}: {detail}", param=param, code="invalid_value") from None


def _decode(decoder: msgspec.json.Decoder[_T], body: bytes) -> _T:
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        param, detail = _param_of(str(exc))
        where = f" in `{param}`" if param else ""
        raise InvalidRequest(f"Invalid request{where}: {detail}", param=param, code="invalid_value") from None
    except msgspec.DecodeError as exc:
        raise InvalidRequest(
            f"We could not parse the JSON body of your request: {exc}. "
            "Send a JSON object with Content-Type: application/json.",
            code="invalid_json",
        ) from None


def rewrite_body(body: bytes, upstream_model: str, drop: frozenset[str] = GATEWAY_ONLY_FIELDS) -> bytes:
    """The client's body with ``model`` set and gateway-only fields removed.

    Untouched values are ``msgspec.Raw`` views of the input, so they are
    re-emitted byte-for-byte (whitespace between tokens is normalised).
    """
    fields = _raw_map_decoder.decode(body)
    for name in drop:
        fields.pop(name, None)
    fields["model"] = msgspec.Raw(_encoder.encode(upstream_model))
    return _encoder.encode(fields)


def with_user(body: bytes, user: str) -> bytes:
    """The client's body with ``user`` set (the gateway key's name, so providers
    can attribute abuse); everything else is re-emitted as it came. Applied
    before the adapter's ``rewrite_body``, which keeps it."""
    return with_field(body, "user", user)


def with_field(body: bytes, name: str, value: str | bool | None) -> bytes:
    """The client's body with one field set (``None``: removed); everything else re-emitted as it came."""
    fields = _raw_map_decoder.decode(body)
    if value is None:
        fields.pop(name, None)
    else:
        fields[name] = msgspec.Raw(_encoder.encode(value))
    return _encoder.encode(fields)
