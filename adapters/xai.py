"""xAI (Grok Imagine): ``POST {base}/images/generations``, one JSON answer.

The request is OpenAI-like (``model``, ``prompt``, ``n`` 1-10,
``response_format`` ``url``|``b64_json``, ``user``) with xAI's own
``aspect_ratio`` (1:1, 3:4, 4:3, 9:16, 16:9, 2:3, 3:2, 9:19.5, 19.5:9, 9:20,
20:9, 1:2, 2:1, auto), ``resolution`` (``1k`` default, ``2k``) and
``quality`` (low, medium, high). ``size`` and ``style`` are refused by xAI
("Argument not supported"), so ``size`` becomes ``aspect_ratio`` when its
ratio is exactly one of those, plus ``resolution: 2k`` when its long edge is
over 1536 px (xAI picks the pixels; the ``size`` reported to the client is the
one asked for); any other size, ``style``, the legacy qualities, transparent
backgrounds, ``output_compression``, ``moderation: low`` and an
``output_format`` other than the one xAI returns (``options.output_format``,
jpeg by default) go to the ``unsupported`` policy. Fields outside the OpenAI
schema (``aspect_ratio``, ``resolution``, …) pass to xAI unchanged and win
over the mapped ones.

The answer is ``{"data":[{"b64_json"|"url","mime_type","revised_prompt",
"respect_moderation"}],"block_reason"}``; base64 is always asked for unless
the client wants URLs without streaming. Each ``data[i].b64_json`` is tapped
into the client's ``b64_json`` as it arrives. xAI has been seen to send it as
a data URI (``data:image/png;base64,…``, stripped by the AI SDK too): the
prefix is cut, and its media type sets the ``output_format`` reported. No
streaming upstream (a streaming client gets keep-alives, then one completed
event per image) and no token usage (xAI bills per image, the relay counts
them).

Moderation comes three ways:

- HTTP 400 ``{"code":…,"error":"Generated image rejected by content
  moderation."}`` -> ``moderation_blocked``;
- HTTP 200 with ``block_reason`` (input moderation) and no images ->
  ``moderation_blocked`` with that reason;
- HTTP 200 with an image withheld: ``respect_moderation: false`` and no data
  (xai-sdk: "base64 is not available"), or an empty ``b64_json``. Nothing is
  sent for such an image (an image is opened to the client only once its
  first bytes arrive); if no image is left the answer is
  ``moderation_blocked``, otherwise the other images are returned, fewer than
  ``n``, as OpenAI itself sometimes does. Should a flagged image carry data
  anyway, the response is cut with ``moderation_blocked`` once that is known
  (a stream's completed event for it may already have gone out: xAI sends no
  data for flagged images, so this is a fallback).

Edits go to ``POST {base}/images/edits``, which takes JSON only (xAI's docs:
the OpenAI SDK's multipart ``images.edit`` does not work there): the same
fields as a generation, with the input image as ``image: {"url": data URI,
"type": "image_url"}``, or up to three as ``images: [...]``, the base64 read
from the spooled uploads as the body is sent. xAI documents no mask and no
input fidelity: both go to the ``unsupported`` policy, as do more than three
images. A JSON edit whose images are https URLs is refused (the gateway
sends the bytes, it fetches nothing for a client). The answer is the
generation's, tapped the same way, as ``image_edit.completed`` events when
streamed. See docs/edits/xai.md.

An answer with neither images nor a moderation signal is a protocol error.
xAI answers a wrong key with HTTP 400 "Incorrect API key provided: xai-…":
treated as a refused credential, and its words (part of the key) not echoed.
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from pixelgate.adapters.base import AdapterBase, bearer
from pixelgate.adapters.capabilities import Capabilities
from pixelgate.adapters.edit_body import Piece, data_uri, edit_native_fields, json_pieces, streamed
from pixelgate.adapters.images_out import EDIT_COMPLETED, ImageMeta, ImagesWriter
from pixelgate.adapters.jsontap import Close, Open, Path
from pixelgate.adapters.params import Policy, aspect_ratio, native_fields, parse_size, reported_size
from pixelgate.adapters.provider_errors import auth_failed, error_message, malformed, moderation_blocked, provider_error
from pixelgate.adapters.tapped import TappedTranslator
from pixelgate.core.errors import GatewayError, UpstreamProtocolError
from pixelgate.core.request import ImageRequest
from pixelgate.core.translator import Edit, Ending, Generation, ProviderSettings, UpstreamRequest
from pixelgate.core.upload import InputImage

__all__ = ["XaiAdapter", "XaiOptions", "XaiTranslator"]

DEFAULT_URL = "https://api.x.ai/v1"
ASPECT_RATIOS = ("1:1", "3:4", "4:3", "9:16", "16:9", "2:3", "3:2", "9:19.5", "19.5:9", "9:20", "20:9", "1:2", "2:1")
QUALITIES = ("low", "medium", "high")
# Above this long edge a size asks for xAI's 2k tier.
_LONG_EDGE_1K = 1536
# A data URI's head ("data:image/jpeg;base64,") is short; more is not one.
_MAX_DATA_URI_HEAD = 128
_FORMATS = {b"image/png": "png", b"image/jpeg": "jpeg", b"image/jpg": "jpeg", b"image/webp": "webp"}


class XaiOptions(msgspec.Struct, forbid_unknown_fields=True):
    unsupported: Policy = "reject"
    # The format xAI's models return (Grok Imagine: jpeg); a data URI prefix
    # on the answer overrides it in what the client is told.
    output_format: str = "jpeg"


def _ratio(ratio: str) -> float:
    a, _, b = ratio.partition(":")
    return float(a) / float(b)


def size_fields(size: tuple[int, int]) -> dict[str, str] | None:
    """xAI's ``aspect_ratio`` (and ``resolution``) for an exact ratio, else None."""
    width, height = size
    # parse's aspect_ratio() wants integer ratios; 9:19.5 is not one.
    ratio = next((r for r in ASPECT_RATIOS if abs(_ratio(r) - width / height) < 1e-9), None)
    if ratio is None:
        return None
    fields = {"aspect_ratio": ratio}
    if max(width, height) > _LONG_EDGE_1K:
        fields["resolution"] = "2k"
    return fields


CAPABILITIES = Capabilities(
    provider="xAI",
    # Exactly these ratios (sizes it knows are sent as pixels): size_problems judges.
    aspect_ratios=ASPECT_RATIOS,
    exact_ratios=True,
    order=("size", "quality", "style", "output_format", "background", "output_compression", "moderation"),
    qualities=QUALITIES,
    urls=True,
    formats=("jpeg",),
    # xAI's edits take up to three images (grok-imagine-image-pro takes one,
    # and xAI refuses more itself); xAI documents no mask or input fidelity.
    edits=True,
    max_edit_images=3,
    why={
        "quality": "xAI's qualities are low, medium and high",
        "moderation": "xAI's moderation cannot be relaxed",
        "image": "xAI edits at most 3 input images at a time",
        "mask": "xAI's edits take no mask (say in the prompt what to change)",
    },
)


def size_problems(req: ImageRequest, native: Mapping[str, object]) -> list[tuple[str, str]]:
    """xAI takes pixel sizes it knows or aspect ratios: not a table's rule."""
    size = parse_size(req.size)
    if size is None or "aspect_ratio" in native or size_fields(size) is not None:
        return []
    near = aspect_ratio(*size, [r for r in ASPECT_RATIOS if "." not in r])
    hint = f" (nearest: {near})" if near else ""
    return [("size", f"xAI takes only the aspect ratios {', '.join(ASPECT_RATIOS)}{hint}")]


def _select(path: Path) -> bool:
    return len(path) == 3 and path[0] == "data" and type(path[1]) is int and path[2] == "b64_json"


class _Item(msgspec.Struct):
    url: str | None = None
    respect_moderation: bool | None = None


class _Answer(msgspec.Struct):
    data: list[_Item] = []
    block_reason: str | None = None


_answer = msgspec.json.Decoder(_Answer)
_encoder = msgspec.json.Encoder()


class XaiTranslator(TappedTranslator):
    """The tapped translator, opening an image only at its first payload byte."""

    __slots__ = ("_at", "_head", "_open", "_sent", "_urls", "_withheld")

    def __init__(
        self, provider: str, call: UpstreamRequest, writer: ImagesWriter, headers: dict[str, str], urls: bool
    ) -> None:
        super().__init__(provider, call, writer, _select, headers)
        self._urls = urls
        # The tapped image: its index, the bytes held before the writer opens
        # it (to see a data URI's head), and whether it is open.
        self._at = 0
        self._head = bytearray()
        self._open = False
        self._sent: set[int] = set()
        self._withheld = 0

    def feed(self, chunk: bytes) -> bytes:
        pieces = self._tap.feed(chunk)
        if self._open and len(pieces) == 1 and type(pieces[0]) is bytes:
            return pieces[0]  # the middle of an image
        out = bytearray()
        for piece in pieces:
            if isinstance(piece, Open):
                self._at = int(piece.path[1])  # an int: see _select
                self._head.clear()
            elif isinstance(piece, Close):
                if not self._open:
                    out += self._start(final=True)
                if self._open:
                    self._open = False
                    out += self.writer.close()
                else:
                    self._withheld += 1  # an empty string: the image was withheld
            elif self._open:
                out += piece
            else:
                self._head += piece
                out += self._start(final=False)
        return bytes(out)

    def _start(self, *, final: bool) -> bytes:
        """Open the image once its head shows whether a data URI prefix is to be cut."""
        head = self._head
        if head.startswith(b"data:"):
            comma = head.find(b",")
            if comma < 0:
                if final or len(head) > _MAX_DATA_URI_HEAD:
                    raise UpstreamProtocolError(f"provider {self.provider!r} sent an image as a malformed data URI")
                return b""
            media = bytes(head[5:comma]).replace(b"\\/", b"/").partition(b";")[0].lower()
            if (fmt := _FORMATS.get(media)) is not None:
                self.writer.meta.output_format = fmt
            del head[: comma + 1]
        elif not final and len(head) < 5 and b"data:".startswith(head):
            return b""  # too short to tell yet
        if not head:
            return b""
        self._open = True
        self._sent.add(self._at)
        out = self.writer.open() + head
        head.clear()
        return out

    def complete(self, skeleton: bytes) -> Ending:
        try:
            answer = _answer.decode(skeleton)
        except msgspec.DecodeError as exc:
            raise malformed(self.provider, exc) from None
        if answer.block_reason:
            raise moderation_blocked(self.provider, f"xAI blocked the request: {answer.block_reason}")
        flagged = {i for i, item in enumerate(answer.data) if item.respect_moderation is False}
        if flagged & self._sent:
            raise moderation_blocked(self.provider, "xAI flagged a generated image as against its moderation rules")
        out = b""
        if self._urls and not self.writer.images:
            for i, item in enumerate(answer.data):
                if item.url and i not in flagged:
                    out += self.writer.url(item.url)
        if not self.writer.images and (flagged or self._withheld):
            raise moderation_blocked(self.provider, "xAI withheld the generated image under its moderation rules")
        return Ending(out + self.writer.finish(None))

    def error(self, status: int, headers: Mapping[str, str], body: bytes) -> GatewayError:
        message = error_message(body)
        text = (message or "").lower()
        if status == 400 and "api key" in text:
            return auth_failed(self.provider, status)
        if status in (400, 422) and "moderat" in text + _code(body).lower():
            return moderation_blocked(self.provider, message or "xAI's content moderation refused the request", headers)
        return provider_error(self.provider, status, headers, message)


class _Coded(msgspec.Struct):
    code: str | int | None = None


_coded = msgspec.json.Decoder(_Coded)


def _code(body: bytes) -> str:
    """xAI's top-level ``code`` (``imagine:content-moderated``, …), if any."""
    try:
        code = _coded.decode(body).code
    except (msgspec.DecodeError, msgspec.ValidationError):
        return ""
    return "" if code is None else str(code)


class XaiAdapter(AdapterBase[XaiOptions]):
    Options = XaiOptions
    default_url = DEFAULT_URL
    capabilities = CAPABILITIES

    @classmethod
    def capabilities_for(cls, options: msgspec.Struct) -> Capabilities:
        assert isinstance(options, XaiOptions)
        return msgspec.structs.replace(cls.capabilities, formats=(options.output_format,))

    def setup(self, settings: ProviderSettings) -> None:
        self._url = self.base_url + "/images/generations"
        self._edit_url = self.base_url + "/images/edits"
        self._headers = {"Content-Type": "application/json", **settings.headers, **bearer(settings.api_key)}

    def generation(self, g: Generation) -> XaiTranslator:
        request, body, upstream_model, request_id = g.request, g.body, g.upstream_model, g.request_id
        native = native_fields(body)
        headers = self.settle(request, size_problems(request, native), own=("size",))
        fields, urls, meta = self._fields(request, upstream_model, native)
        call = UpstreamRequest("POST", self._url, {**self._headers, "X-Request-Id": request_id}, _encoder.encode(fields))
        return XaiTranslator(self.name, call, ImagesWriter(request.streaming, meta), headers, urls)

    def edit(self, e: Edit) -> XaiTranslator:
        self.require_files(e)
        request = e.request
        # `image` is the gateway's to fill (with the uploads), not the client's.
        native = edit_native_fields(e, exclude=frozenset({"image"}))
        # As `own=("size",)` does for a generation: the table only describes
        # size (its exact-ratio rule cannot read 9:19.5), size_problems judges it.
        unsized = msgspec.structs.replace(e, request=msgspec.structs.replace(request, size=msgspec.UNSET))
        headers = self.settle_edit(unsized, size_problems(request, native))
        fields, urls, meta = self._fields(request, e.upstream_model, native)
        # Under the drop policy, images past what xAI takes are left out.
        images = e.images[: self.table.max_edit_images]
        member = ("image", _image_ref(images[0])) if len(images) == 1 else ("images", _image_refs(images))
        body = streamed(*json_pieces([member], fields))
        call = UpstreamRequest("POST", self._edit_url, {**self._headers, "X-Request-Id": e.request_id}, body)
        writer = ImagesWriter(request.streaming, meta, event=EDIT_COMPLETED)
        return XaiTranslator(self.name, call, writer, headers, urls)

    def _fields(
        self, request: ImageRequest, upstream_model: str, native: Mapping[str, object]
    ) -> tuple[dict[str, object], bool, ImageMeta]:
        """The body fields generations and edits share, whether URLs go back, and the reported meta."""
        fields: dict[str, object] = {"model": upstream_model, "prompt": request.prompt}
        if isinstance(request.n, int):
            fields["n"] = request.n
        size = parse_size(request.size)
        if size is not None and (mapped := size_fields(size)) is not None:
            fields.update(mapped)
        if request.quality in QUALITIES:
            fields["quality"] = request.quality
        if isinstance(request.user, str):
            fields["user"] = request.user
        urls = request.response_format == "url" and not request.streaming
        fields["response_format"] = "url" if urls else "b64_json"
        fields.update(native)
        meta = ImageMeta(
            created=int(self.clock()),
            size=reported_size(request.size),
            quality=str(request.quality) if request.quality in QUALITIES else "auto",
            output_format=self.options.output_format,
        )
        return fields, urls, meta


def _image_ref(image: InputImage) -> list[Piece]:
    """One input image as xAI's edits take it: an image_url object around a data URI."""
    return [b'{"url":', *data_uri(image), b',"type":"image_url"}']


def _image_refs(images: tuple[InputImage, ...]) -> list[Piece]:
    pieces: list[Piece] = [b"["]
    for i, image in enumerate(images):
        pieces += [b"," if i else b"", *_image_ref(image)]
    return [*pieces, b"]"]
