"""Edits for the demo provider: the input image, recoloured by the prompt where the mask allows.

The inputs come as OpenAI sends them: a multipart/form-data body (files
``image`` or ``image[]``, optional ``mask``, text fields) or a JSON body whose
``images`` and ``mask`` are ``data:`` URLs. The demo is the upstream here, and
its uploads are test-sized, so the body is parsed whole, in memory.

What an edit looks like:

- the first image, resampled to the output size, each channel mapped through
  a curve between two colours taken from the prompt's hash, with the prompt's
  generation picture (``render.pattern_rows``) blended faintly over it;
- the other input images as thumbnails along the bottom edge, right to left;
- with a mask (a PNG the size of the first image), only its transparent
  pixels (alpha below 128) change; elsewhere the first image shows as it is;
- ``input_fidelity: high`` keeps more of the input's own colours.

PNGs are decoded by ``png.decode_png`` (8-bit, non-interlaced). JPEG and WebP
inputs (no decoder here), and PNGs it does not read or that are too large to
decode quickly, are drawn as the generation picture of their bytes' SHA-256:
still a different picture for every input, at the input's dimensions. Masks
are always decoded: a mask the demo cannot read is refused, not ignored.
"""

from __future__ import annotations

import binascii
import email.message
import email.parser
import email.utils
import hashlib
import math
import re
from collections.abc import Callable
from operator import itemgetter
from typing import Any

import msgspec

from pixelgate.core.image_headers import NotAnImage, read_head
from pixelgate.proxy.demo.png import PngError, Raster, decode_png
from pixelgate.proxy.demo.render import encode_png, pattern_rows

__all__ = ["MAX_IMAGES", "EditInput", "EditScene", "Refusal", "Upload", "build_scene", "parse_form", "parse_json"]

# OpenAI's limit for GPT image models.
MAX_IMAGES = 16
# Decoding is pure Python (~0.4 s per megapixel at worst): larger PNGs are
# drawn from their hash, and so is every input once the request has used its budget.
DECODE_PIXELS = 1 << 21
DECODE_BUDGET = 1 << 22
# Without `size`, the output has the first image's dimensions, scaled down to fit this.
MAX_SIDE = 1024
_IMAGE_FIELDS = ("image", "image[]")
_DATA_URL = re.compile(r"^data:image/[A-Za-z0-9.+-]+((?:;[A-Za-z0-9=.+-]+)*);base64,", re.I)
_KNOB_FIELD = re.compile(r"^demo\[([A-Za-z_]+)\]$")


class Refusal(Exception):
    """What the demo will not take: a 400 naming the parameter."""

    def __init__(self, message: str, param: str | None, code: str = "invalid_value") -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


class Upload(msgspec.Struct, frozen=True):
    """One input file, its kind and dimensions read from its header."""

    data: bytes
    format: str
    width: int
    height: int
    param: str


class EditInput(msgspec.Struct, frozen=True):
    """An edit's text fields (as a dict to convert) and its files."""

    fields: dict[str, Any]
    images: list[Upload]
    mask: Upload | None
    # Form fields are all strings ("2", "true"): convert them leniently.
    strict: bool


def _upload(data: bytes, param: str) -> Upload:
    if not data:
        raise Refusal(f"`{param}` is an empty file.", param, "empty_file")
    try:
        head = read_head(data, complete=True)
    except NotAnImage as exc:
        raise Refusal(
            f"`{param}` is not an image the demo provider takes ({exc}): it takes PNG, JPEG and WebP.", param, "invalid_image_format"
        ) from None
    return Upload(data, head.format, head.width, head.height, param)


def _check(images: list[Upload], mask: Upload | None) -> None:
    if not images:
        raise Refusal("An edit needs at least one `image` file.", "image", "missing_required_parameter")
    if mask is None:
        return
    if mask.format != "png":
        raise Refusal(f"The mask must be a PNG image; this one is {mask.format}.", "mask")
    first = images[0]
    if (mask.width, mask.height) != (first.width, first.height):
        raise Refusal(
            f"The mask is {mask.width}x{mask.height} but the first image is {first.width}x{first.height}; they must be the same size.",
            "mask",
        )


def _disposition(headers: email.message.Message, name: str) -> str | None:
    value = headers.get_param(name, header="content-disposition")
    if value is None or isinstance(value, str):
        return value
    return email.utils.collapse_rfc2231_value(value)


def parse_form(body: bytes, content_type: str) -> EditInput:
    """A multipart/form-data edit, split at its boundary (files are never scanned for anything else)."""
    header = email.message.Message()
    header["Content-Type"] = content_type
    boundary = header.get_param("boundary")
    if header.get_content_type() != "multipart/form-data" or not isinstance(boundary, str) or not boundary:
        raise Refusal("An edit is multipart/form-data with a boundary, or application/json.", None, "invalid_request")
    # Every delimiter but the first follows a CRLF; prefixing one makes them all alike.
    sections = (b"\r\n" + body).split(b"\r\n--" + boundary.encode("latin-1"))
    if len(sections) < 2 or not sections[-1].startswith(b"--"):
        raise Refusal("The multipart body is malformed: no closing boundary.", None, "invalid_request")
    fields: dict[str, Any] = {}
    knobs: dict[str, str] = {}
    images: list[Upload] = []
    mask: Upload | None = None
    parser = email.parser.HeaderParser()
    for section in sections[1:-1]:
        # The delimiter line's end (after optional padding), then the part's headers, a blank line, its bytes.
        line_end = section.find(b"\r\n")
        head_end = section.find(b"\r\n\r\n", line_end)
        if line_end == -1 or head_end == -1:
            raise Refusal("The multipart body is malformed: a part without headers.", None, "invalid_request")
        headers = parser.parsestr(section[line_end + 2 : head_end + 2].decode("utf-8", "replace"))
        content = section[head_end + 4 :]
        name = _disposition(headers, "name") or ""
        filename = _disposition(headers, "filename")
        if filename is None:
            value = content.decode("utf-8", "replace")
            if m := _KNOB_FIELD.match(name):
                knobs[m.group(1)] = value
            elif name:
                fields[name] = value
        elif name in _IMAGE_FIELDS:
            if len(images) == MAX_IMAGES:
                raise Refusal(f"The demo provider takes at most {MAX_IMAGES} input images.", "image", "too_many_images")
            images.append(_upload(content, f"image[{len(images)}]" if name == "image[]" else "image"))
        elif name == "mask":
            if mask is not None:
                raise Refusal("An edit takes one mask.", "mask")
            mask = _upload(content, "mask")
        else:
            raise Refusal(f"`{name[:64]}` is not a file field of an edit (files go in `image`, `image[]` and `mask`).", name[:64] or None)
    _check(images, mask)
    if "demo" in fields:
        # The demo's own knobs as one JSON field, or as demo[name] fields (how the openai SDK sends extra_body objects).
        try:
            fields["demo"] = msgspec.json.decode(fields["demo"])
        except msgspec.DecodeError:
            raise Refusal("The `demo` field is not a JSON object.", "demo") from None
    if knobs:
        given = fields.get("demo")
        fields["demo"] = {**(given if isinstance(given, dict) else {}), **knobs}
    return EditInput(fields, images, mask, strict=False)


def _referenced(ref: object, param: str) -> Upload:
    if not isinstance(ref, dict):
        raise Refusal(f"`{param}` must be an object with `image_url`.", param)
    if ref.get("file_id") is not None:
        raise Refusal("The demo provider has no file store: send the image as a data: URL or a multipart file.", f"{param}.file_id")
    url = ref.get("image_url")
    if not isinstance(url, str):
        raise Refusal(f"`{param}` needs an `image_url`.", f"{param}.image_url", "missing_required_parameter")
    m = _DATA_URL.match(url)
    if m is None:
        # No network calls, ever: only inline images can be drawn from.
        raise Refusal(
            "The demo provider does not fetch image URLs: send the image as a data:image/...;base64 URL or a multipart file.",
            f"{param}.image_url",
            "invalid_image_url",
        )
    try:
        data = binascii.a2b_base64(url[m.end() :].encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError):
        raise Refusal(f"`{param}.image_url` is a data: URL whose payload is not valid base64.", f"{param}.image_url", "invalid_image_url") from None
    return _upload(data, f"{param}.image_url")


def parse_json(body: bytes) -> EditInput:
    """A JSON edit: ``images`` (1-16) and ``mask`` as ``data:`` URLs, the rest as for generations."""
    try:
        fields = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise Refusal(f"Invalid JSON body: {exc}", None, "invalid_json") from None
    if not isinstance(fields, dict):
        raise Refusal("A JSON edit is an object.", None, "invalid_json")
    refs = fields.pop("images", None)
    if not isinstance(refs, list) or not refs:
        raise Refusal("A JSON edit needs `images`: a list of {\"image_url\": \"data:...\"}.", "images", "missing_required_parameter")
    if len(refs) > MAX_IMAGES:
        raise Refusal(f"The demo provider takes at most {MAX_IMAGES} input images.", "images", "too_many_images")
    images = [_referenced(ref, f"images[{i}]") for i, ref in enumerate(refs)]
    mask_ref = fields.pop("mask", None)
    mask = _referenced(mask_ref, "mask") if mask_ref is not None else None
    _check(images, mask)
    return EditInput(fields, images, mask, strict=True)


def image_tokens(images: list[Upload]) -> int:
    """Input image tokens, on the vision tile rule (a stand-in: OpenAI publishes none for edits):
    fit in 2048x2048, shorter side to at most 512, then 65 + 129 per 512-pixel tile."""
    total = 0
    for image in images:
        w, h = float(image.width), float(image.height)
        fit = min(1.0, 2048 / max(w, h))
        w, h = w * fit, h * fit
        short = min(1.0, 512 / min(w, h))
        w, h = w * short, h * short
        total += 65 + 129 * math.ceil(w / 512) * math.ceil(h / 512)
    return total


def _positions(out: int, source: int, block: int) -> list[int]:
    """For each output pixel, the source pixel under its block's centre."""
    centres = [min(out - 1, x // block * block + block // 2) for x in range(out)]
    return [(2 * c + 1) * source // (2 * out) for c in centres]


def _pick(indices: list[int]) -> Callable[[bytes], bytes]:
    """The bytes of a row at ``indices``: a slice when they are evenly spaced
    (the same size, or an integer factor down), else itemgetter; both C speed."""
    first = indices[0]
    step = indices[1] - first if len(indices) > 1 else 1
    if step > 0 and indices == list(range(first, first + step * len(indices), step)):
        stop = first + step * len(indices)
        return lambda row: row[first:stop:step]
    get = itemgetter(*indices)
    return lambda row: bytes(get(row))


def _interleave(red: bytes, green: bytes, blue: bytes) -> bytes:
    out = bytearray(3 * len(red))
    out[0::3], out[1::3], out[2::3] = red, green, blue
    return bytes(out)


class _Canvas:
    """One input image, ready to be drawn at any size: decoded pixels, or the picture of its hash."""

    __slots__ = ("height", "raster", "seed", "width")

    def __init__(self, upload: Upload, raster: Raster | None) -> None:
        self.width, self.height = upload.width, upload.height
        self.raster = raster
        self.seed = hashlib.sha256(upload.data).hexdigest()

    def rows(self, width: int, height: int, block: int) -> list[bytes]:
        """RGB rows (no filter bytes), ``height`` of them, sampled in ``block``-pixel cells."""
        raster = self.raster
        if raster is None:
            cells = pattern_rows(self.seed, width, height, block)
            return [cells[y // block] for y in range(height)]
        pick = _pick(_positions(width, raster.width, block))
        done: dict[int, bytes] = {}
        out = []
        for sy in _positions(height, raster.height, block):
            row = done.get(sy)
            if row is None:
                row = done[sy] = _interleave(pick(raster.red[sy]), pick(raster.green[sy]), pick(raster.blue[sy]))
            out.append(row)
        return out


class EditScene:
    """An edit's inputs, decoded once; ``render`` draws it for a prompt at a size and block."""

    __slots__ = ("_canvas", "_fidelity", "_mask", "_refs", "dims", "image_tokens")

    def __init__(self, canvas: _Canvas, mask: Raster | None, refs: list[_Canvas], fidelity: str | None, tokens: int) -> None:
        self._canvas = canvas
        self._mask = mask
        self._refs = refs
        self._fidelity = fidelity
        self.image_tokens = tokens
        scale = min(1.0, MAX_SIDE / max(canvas.width, canvas.height))
        # The default output size: the first image's, scaled down to fit MAX_SIDE.
        self.dims = (max(1, round(canvas.width * scale)), max(1, round(canvas.height * scale)))

    def render(self, prompt: str, width: int, height: int, block: int = 1) -> bytes:
        seed = hashlib.sha256(prompt.encode("utf-8")).digest()
        dark, light = bytes(c // 2 for c in seed[16:19]), bytes(128 + c // 2 for c in seed[19:22])
        # How far each channel moves to the prompt's curve, and how much of its picture shows through.
        strength, overlay = (0.45, 0.1) if self._fidelity == "high" else (0.85, 0.2)
        tables = [
            bytes(int((v * (1 - strength) + (lo + (hi - lo) * v / 255) * strength) * (1 - overlay)) for v in range(256))
            for lo, hi in zip(dark, light, strict=True)
        ]
        # Both tables round down and their weights sum to 1, so no byte of a sum passes 255:
        # whole rows add as integers without a carry crossing into the next byte.
        faint = bytes(int(v * overlay) for v in range(256))
        original = self._canvas.rows(width, height, block)
        cells = pattern_rows(prompt, width, height, block)
        edited = []
        # Partials repeat each row `block` times: grade each distinct row once.
        done: dict[bytes, bytes] = {}
        for y, row in enumerate(original):
            graded = done.get(row)
            if graded is None:
                graded = done[row] = _interleave(row[0::3].translate(tables[0]), row[1::3].translate(tables[1]), row[2::3].translate(tables[2]))
            over = cells[y // block].translate(faint)
            edited.append(bytearray((int.from_bytes(graded, "big") + int.from_bytes(over, "big")).to_bytes(3 * width, "big")))
        self._thumbnails(edited, width, height, block)
        if self._mask is not None:
            edited = self._masked(original, edited, width, height, block)
        return encode_png(width, height, b"".join(b"\x00" + row for row in edited))

    def _thumbnails(self, rows: list[bytearray], width: int, height: int, block: int) -> None:
        """The other input images, each fitted in a square box, along the bottom edge from the right.

        Laid out at full size; a partial takes each block's colour from the
        pixel under its centre, as for the rest of the picture, so its blocks stay whole.
        """
        box = min(width, height) // 6
        if not self._refs or box < 4:
            return
        across = [min(width - 1, x // block * block + block // 2) for x in range(width)]
        down = [min(height - 1, y // block * block + block // 2) for y in range(height)]
        gap = max(1, box // 8)
        x, y = width - gap, height - gap - box
        for ref in self._refs:
            w = max(1, box * ref.width // max(ref.width, ref.height))
            h = max(1, box * ref.height // max(ref.width, ref.height))
            if x - w < gap:
                x, y = width - gap, y - box - gap
            if y < gap:
                return
            x -= w
            left, top = x, y + (box - h) // 2
            x -= gap
            # The output columns whose block centre falls in the thumbnail (contiguous: centres only grow).
            columns = [c for c in range(width) if left <= across[c] < left + w]
            if not columns:
                continue
            start, stop = columns[0], columns[-1] + 1
            pick = _pick([3 * (across[c] - left) + k for c in columns for k in range(3)])
            thumb = ref.rows(w, h, 1)
            for row, centre in zip(rows, down, strict=True):
                if top <= centre < top + h:
                    row[3 * start : 3 * stop] = pick(thumb[centre - top])

    def _masked(self, original: list[bytes], edited: list[bytearray], width: int, height: int, block: int) -> list[bytearray]:
        """The edit where the mask is transparent, the original elsewhere (per pixel, as whole-row bit masks)."""
        mask = self._mask
        assert mask is not None and mask.alpha is not None
        editable = bytes(255 if a < 128 else 0 for a in range(256))
        pick = _pick(_positions(width, mask.width, block))
        everything = (1 << 24 * width) - 1
        out = []
        done: dict[int, int] = {}
        for y, sy in enumerate(_positions(height, mask.height, block)):
            bits = done.get(sy)
            if bits is None:
                chosen = pick(mask.alpha[sy]).translate(editable)
                bits = done[sy] = int.from_bytes(_interleave(chosen, chosen, chosen), "big")
            row = (int.from_bytes(edited[y], "big") & bits) | (int.from_bytes(original[y], "big") & (everything ^ bits))
            out.append(bytearray(row.to_bytes(3 * width, "big")))
        return out


def build_scene(edit: EditInput, fidelity: str | None) -> EditScene:
    """Decode what is to be decoded (a Refusal for a corrupt PNG or an unreadable mask)."""
    budget = DECODE_BUDGET
    canvases = []
    for upload in edit.images:
        raster = None
        if upload.format == "png" and upload.width * upload.height <= budget:
            try:
                raster = decode_png(upload.data, DECODE_PIXELS)
            except PngError as exc:
                raise Refusal(f"`{upload.param}` is {exc}.", upload.param, "invalid_image_format") from None
            if raster is not None:
                budget -= raster.width * raster.height
        canvases.append(_Canvas(upload, raster))
    mask = None
    if edit.mask is not None:
        try:
            mask = decode_png(edit.mask.data, DECODE_PIXELS)
        except PngError as exc:
            raise Refusal(f"The mask is {exc}.", "mask", "invalid_image_format") from None
        if mask is None:
            raise Refusal(
                f"The demo provider reads 8-bit, non-interlaced PNG masks of up to {DECODE_PIXELS} pixels; this one is not.", "mask"
            )
        if mask.alpha is None:
            raise Refusal("The mask has no alpha channel: its transparent pixels mark where to edit.", "mask")
    return EditScene(canvases[0], mask, canvases[1:], fidelity, image_tokens(edit.images))
