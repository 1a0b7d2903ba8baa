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

Edits (``/v1/images/edits``) are one multipart call too, the files as uploaded
(``FilePiece``s: never read here), answered like a generation:

- with a mask: ``POST {base}/v2beta/stable-image/edit/inpaint`` (``image``,
  ``mask``, ``prompt``, ``output_format``, native ``negative_prompt``,
  ``grow_mask``, ``seed``, ``style_preset``). Stability reads a mask by its
  brightness (white = edit, black = keep); OpenAI's marks the area to edit
  with transparent pixels. The gateway never decodes an upload, so it cannot
  convert one into the other: a mask is refused (``mask``) unless the operator
  sets ``edit_mask: white``, promising that this deployment's clients send
  Stability's kind.
- without a mask: ``POST {base}/v2beta/stable-image/generate/sd3`` with
  ``mode: image-to-image``, ``image`` and ``strength`` (the ``edit_strength``
  option unless the request gives its own ``strength``): a prompt-driven edit
  of the whole image, which is what an OpenAI edit without a mask asks for.
  The reference gives the image-to-image mode to sd3 only, so a route whose
  model is ``ultra`` or ``core`` refuses a mask-less edit (naming ``mask``).

One input image. An edit keeps its input's aspect ratio (no ``aspect_ratio``
is sent): a ``size`` of another ratio is refused, one of the same ratio is
Stability's to honour in pixels, and the reported size is ``auto``.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator, Mapping, Sequence
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from pixelgate.adapters.b64 import Base64Encoder
from pixelgate.adapters.base import AdapterBase, bearer
from pixelgate.adapters.capabilities import Capabilities
from pixelgate.adapters.images_out import EDIT_COMPLETED, ImageMeta, ImagesWriter
from pixelgate.adapters.params import Policy, aspect_ratio, native_fields, parse_size, reported_size
from pixelgate.adapters.provider_errors import error_message, moderation_blocked, provider_error
from pixelgate.core.errors import GatewayError, InvalidRequest, UpstreamFailure, UpstreamProtocolError
from pixelgate.core.request import GATEWAY_ONLY_FIELDS, ImageEditRequest
from pixelgate.core.translator import Edit, Ending, Generation, Opening, ProviderSettings, ResponseHead, UpstreamRequest
from pixelgate.core.upload import FilePiece, InputImage, StreamedBody

__all__ = ["StabilityAdapter", "StabilityOptions", "edit_multipart", "endpoint_for", "multipart"]

DEFAULT_URL = "https://api.stability.ai"
ASPECT_RATIOS = ("16:9", "1:1", "21:9", "2:3", "3:2", "4:5", "5:4", "9:16", "9:21")

Endpoint = Literal["ultra", "core", "sd3"]


class StabilityOptions(msgspec.Struct, forbid_unknown_fields=True):
    unsupported: Policy = "reject"
    # "auto": from the upstream model name (see the module docstring).
    endpoint: Literal["auto", "ultra", "core", "sd3"] = "auto"
    # Edits: what a client's mask means. "reject": an OpenAI mask (transparent
    # = edit), which Stability would misread, so it is refused; "white": this
    # deployment's clients send Stability's masks (white = edit), sent as they are.
    edit_mask: Literal["reject", "white"] = "reject"
    # Edits without a mask (sd3 image-to-image): how far the result may move
    # from the input, 0 keeping it and 1 ignoring it. A request's own
    # `strength` field wins.
    edit_strength: Annotated[float, Meta(ge=0, le=1)] = 0.6


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
    # An edit's image, mask and input_fidelity too, so an edit's own size check sorts the same way.
    order=("image", "n", "response_format", "quality", "style", "background", "output_compression", "moderation", "size",
           "mask", "input_fidelity"),
    max_n=1,
    aspect_ratios=ASPECT_RATIOS,
    formats=("png", "jpeg", "webp"),
    edits=True,
    max_edit_images=1,
    # Only with the edit_mask option (see capabilities_for).
    mask=False,
    why={
        "response_format": "Stability returns the image itself, not a URL",
        "style": "Stability's styles are its native `style_preset` (core only)",
        "moderation": "Stability's content filter cannot be relaxed",
        "mask": (
            "Stability reads a mask as white = edit and black = keep while an OpenAI mask marks the area to edit "
            "with transparent pixels, and the gateway does not convert images (leave the mask out for an edit of "
            "the whole image; if your masks are white-on-black, ask the gateway operator to set this provider's "
            "options.edit_mask to white)"
        ),
        "input_fidelity": "Stability has no input fidelity setting; its native `strength` sets how far a mask-less edit may move",
    },
)

# Fields an edit's form or JSON carries that are OpenAI's (or the gateway's),
# not Stability's native ones.
_EDIT_KNOWN = frozenset(ImageEditRequest.__struct_fields__) | GATEWAY_ONLY_FIELDS
# Names the gateway fills in an edit's form: a client field cannot replace them.
_EDIT_RESERVED = frozenset({"image", "mask", "mode"})


# Form field names go into a quoted header parameter: nothing that could end it.
_FIELD_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_any = msgspec.json.Decoder()
_raw_map = msgspec.json.Decoder(dict[str, msgspec.Raw])


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


def _text_parts(fields: Mapping[str, str], mark: bytes) -> bytearray:
    out = bytearray()
    for name, value in fields.items():
        out += mark + b'\r\nContent-Disposition: form-data; name="' + name.encode() + b'"\r\n\r\n'
        out += value.encode() + b"\r\n"
    return out


def multipart(fields: Mapping[str, str], boundary: str) -> bytes:
    """``multipart/form-data`` with one text part per field (RFC 7578)."""
    mark = b"--" + boundary.encode()
    return bytes(_text_parts(fields, mark) + mark + b"--\r\n")


def edit_multipart(fields: Mapping[str, str], files: Sequence[tuple[str, InputImage]], boundary: str) -> StreamedBody:
    """``multipart/form-data`` with the text parts, then each file's bytes as
    uploaded (the transport reads them from the spool as it sends).

    File names are the gateway's (``image.png``): Stability reads the type
    from the bytes, and a client's name would need quoting in the header.
    """
    mark = b"--" + boundary.encode()
    pieces: list[bytes | FilePiece] = [bytes(_text_parts(fields, mark))]
    for name, image in files:
        pieces.append(
            mark + b'\r\nContent-Disposition: form-data; name="' + name.encode() + b'"; filename="'
            + f"{name}.{image.format}".encode() + b'"\r\nContent-Type: ' + image.media_type.encode() + b"\r\n\r\n"
        )
        pieces.append(FilePiece(image))
        pieces.append(b"\r\n")
    pieces.append(mark + b"--\r\n")
    return StreamedBody(tuple(pieces))


def _edit_natives(e: Edit) -> Iterator[tuple[str, str]]:
    """The edit's fields outside the OpenAI schema, as form text: a form's as
    they came, a JSON body's as ``_form_value`` spells them."""
    if e.json_body is not None:
        for key, raw in _raw_map.decode(e.json_body).items():
            if key not in _EDIT_KNOWN and (value := _form_value(key, raw)) is not None:
                yield key, value
    else:
        yield from ((key, value) for key, value in e.fields if key not in _EDIT_KNOWN)


def _edit_size_problem(size: object, image: InputImage) -> list[tuple[str, str]]:
    """An edit's output keeps its input's aspect ratio: a size of another one cannot be honoured."""
    wanted = parse_size(size)
    if wanted is None or aspect_ratio(*wanted, (f"{image.width}:{image.height}",)) is not None:
        return []
    return [("size", f"Stability's edits keep the input image's aspect ratio ({image.width}x{image.height})")]


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

    @classmethod
    def capabilities_for(cls, options: msgspec.Struct) -> Capabilities:
        assert isinstance(options, StabilityOptions)
        # A mask is honoured only when the operator says clients send Stability's kind.
        return msgspec.structs.replace(cls.capabilities, mask=True) if options.edit_mask == "white" else cls.capabilities

    def setup(self, settings: ProviderSettings) -> None:
        self._base = self.base_url + "/v2beta/stable-image/generate/"
        self._edit_base = self.base_url + "/v2beta/stable-image/edit/"
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

    def edit(self, e: Edit) -> StabilityTranslator:
        self.require_files(e)
        request, image = e.request, e.images[0]
        # The table's size rule is generation's (Stability's aspect ratios);
        # an edit's is its input's ratio, checked here in its place.
        unsized = msgspec.structs.replace(e, request=msgspec.structs.replace(request, size=None))
        headers = self.settle_edit(unsized, _edit_size_problem(request.size, image))
        # Under the drop policy a refused mask has been dropped (and said so).
        mask = e.mask if self.table.mask else None
        fmt = request.output_format if request.output_format in ("png", "jpeg", "webp") else "png"
        natives: dict[str, str] = {}
        for key, value in _edit_natives(e):
            if not _FIELD_NAME.fullmatch(key):
                raise InvalidRequest(f"`{key[:64]}` is not a field name Stability accepts.", code="invalid_value")
            if key in _EDIT_RESERVED:
                raise InvalidRequest(
                    f"`{key}` is set by the gateway for a Stability edit (the files go in `image` and `mask`); leave it out.",
                    param=key,
                    code="invalid_value",
                )
            natives[key] = value
        files: list[tuple[str, InputImage]] = [("image", image)]
        if mask is not None:
            url = self._edit_base + "inpaint"
            fields = {"prompt": request.prompt, **natives, "output_format": str(fmt)}
            files.append(("mask", mask))
        else:
            endpoint, model = endpoint_for(e.upstream_model, self.options.endpoint)
            if model is None:
                # Only offer the mask where this provider would take one.
                way = "send a mask (white = edit), or ask" if self.table.mask else "ask"
                raise InvalidRequest(
                    f"Provider {self.name!r} edits without a mask through sd3's image-to-image mode, and this route's "
                    f"model is Stability's {endpoint} endpoint, which has none: {way} the gateway operator to route "
                    "edits to an sd3 model.",
                    param="mask",
                    code="missing_required_parameter",
                )
            url = self._base + endpoint
            fields = {
                "prompt": request.prompt,
                "strength": str(self.options.edit_strength),
                **natives,
                "mode": "image-to-image",
                "output_format": str(fmt),
                "model": model,
            }
        # Random per request: no field value can contain what it cannot predict.
        boundary = f"pixelgate-{secrets.token_hex(16)}"
        call = UpstreamRequest(
            "POST",
            url,
            {**self._headers, "Content-Type": f"multipart/form-data; boundary={boundary}"},
            edit_multipart(fields, files, boundary),
        )
        # Stability picks the pixels (near the input's): nothing to report but auto.
        meta = ImageMeta(created=int(self.clock()), output_format=str(fmt))
        writer = ImagesWriter(request.streaming, meta, event=EDIT_COMPLETED)
        return StabilityTranslator(self.name, call, writer, headers)
