"""An edit's input images, read from the client and spooled to disk as they arrive.

A ``multipart/form-data`` body is parsed as a stream (aiohttp's
``MultipartReader``): text fields are kept (they are small and bounded), each
file part goes to its own file in a per-request spool directory, chunk by
chunk, so memory holds a read buffer whatever the upload's size. Its first
bytes are sniffed while it streams (``pixelgate.core.image_headers``): format,
dimensions and alpha come from the header, never from the file name, the
part's Content-Type or decoding pixels. A JSON edit's ``data:`` URLs are
decoded into the same spool.

Spooling first, sending after, is a choice: every input is validated before
any provider is called (a bad 16th image costs nothing upstream), the upload
has a known length (no chunked uploads to providers), and failover to another
provider re-reads the spool instead of needing the client to send it again.
Writes are plain blocking writes: they land in the page cache in microseconds,
less than a thread hop per chunk would cost.
"""

from __future__ import annotations

import binascii
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field

from aiohttp import BodyPartReader, MultipartReader, web

from pixelgate.core.errors import InvalidRequest, PayloadTooLarge
from pixelgate.core.image_headers import MAX_JPEG_SCAN, ImageHead, NeedMore, NotAnImage, read_head
from pixelgate.core.request import MAX_EDIT_IMAGES, ImageEditRequest, ImageReference
from pixelgate.core.upload import InputImage
from pixelgate.proxy.guard import check_client_url

__all__ = ["MAX_FILE_BYTES", "EditForm", "Spool", "check_mask", "json_images", "read_form", "spool_data_url"]

# OpenAI's limit per input image for GPT image models.
MAX_FILE_BYTES = 50 * 1024 * 1024
# All text fields of one form together (prompts are at most 32,000 characters).
MAX_TEXT_BYTES = 1024 * 1024
_CHUNK = 256 * 1024
_IMAGE_FIELDS = ("image", "image[]")
_DATA_URL = re.compile(r"^data:(image/[A-Za-z0-9.+-]+)?((?:;[A-Za-z0-9=.+-]+)*);base64,", re.I)


class Spool:
    """A request's spool directory, removed with everything in it when the request ends."""

    __slots__ = ("_count", "path")

    def __init__(self, root: str | None = None) -> None:
        self.path = tempfile.mkdtemp(prefix="pixelgate-upload-", dir=root)
        self._count = 0

    def new_file(self) -> str:
        self._count += 1
        return os.path.join(self.path, f"{self._count:02d}")

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


@dataclass(slots=True)
class EditForm:
    """A multipart edit, read: text fields in order, the images, the mask."""

    fields: list[tuple[str, str]] = field(default_factory=list)
    images: list[InputImage] = field(default_factory=list)
    mask: InputImage | None = None


async def read_form(request: web.Request, spool: Spool, limit: int, too_large: PayloadTooLarge) -> EditForm:
    """Read the whole form into ``spool``; ``InvalidRequest`` naming the part that is wrong,
    ``too_large`` once more than ``limit`` bytes came."""
    reader = await request.multipart()
    form = EditForm()
    budget = _Budget(limit, too_large)
    text_bytes = 0
    while True:
        part = await reader.next()
        if part is None:
            break
        if isinstance(part, MultipartReader):
            raise InvalidRequest("A nested multipart part is not an edit field.", param=None, code="invalid_value")
        name = part.name or ""
        if part.filename is None:
            value = await _text(part, budget, MAX_TEXT_BYTES - text_bytes)
            text_bytes += len(value)
            if name:
                form.fields.append((name, value.decode("utf-8", "replace")))
            continue
        if name in _IMAGE_FIELDS:
            if len(form.images) == MAX_EDIT_IMAGES:
                raise InvalidRequest(
                    f"An edit takes at most {MAX_EDIT_IMAGES} input images.", param="image", code="too_many_images"
                )
            param = f"image[{len(form.images)}]" if name == "image[]" else "image"
            form.images.append(await _spool_part(part, spool, budget, param))
        elif name == "mask":
            if form.mask is not None:
                raise InvalidRequest("An edit takes one mask.", param="mask", code="invalid_value")
            form.mask = await _spool_part(part, spool, budget, "mask")
        else:
            raise InvalidRequest(
                f"`{name[:64]}` is not a file field of an edit (files go in `image`, `image[]` and `mask`).",
                param=name[:64] or None,
                code="invalid_value",
            )
    if not form.images:
        raise InvalidRequest("An edit needs at least one `image` file.", param="image", code="missing_required_parameter")
    check_mask(form.images[0], form.mask)
    return form


def check_mask(first: InputImage, mask: InputImage | None) -> None:
    """OpenAI's rule: a PNG, of the first image's dimensions."""
    if mask is None:
        return
    if mask.format != "png":
        raise InvalidRequest(f"The mask must be a PNG image; this one is {mask.format}.", param="mask", code="invalid_value")
    if (mask.width, mask.height) != (first.width, first.height):
        raise InvalidRequest(
            f"The mask is {mask.width}x{mask.height} but the first image is {first.width}x{first.height}; "
            "they must be the same size.",
            param="mask",
            code="invalid_value",
        )


class _Budget:
    """The endpoint's body limit, counted over every part as it is read."""

    __slots__ = ("_error", "left")

    def __init__(self, limit: int, error: PayloadTooLarge) -> None:
        self.left = limit
        self._error = error

    def take(self, n: int) -> None:
        self.left -= n
        if self.left < 0:
            raise self._error


async def _text(part: BodyPartReader, budget: _Budget, room: int) -> bytes:
    out = bytearray()
    while chunk := await part.read_chunk(_CHUNK):
        budget.take(len(chunk))
        out += chunk
        if len(out) > room:
            raise InvalidRequest(
                f"The form's text fields are over {MAX_TEXT_BYTES} bytes.", param=part.name, code="invalid_value"
            )
    return bytes(out)


async def _spool_part(part: BodyPartReader, spool: Spool, budget: _Budget, param: str) -> InputImage:
    path = spool.new_file()
    size = 0
    head = bytearray()
    found = None
    with open(path, "wb") as f:
        while chunk := await part.read_chunk(_CHUNK):
            budget.take(len(chunk))
            size += len(chunk)
            if size > MAX_FILE_BYTES:
                raise InvalidRequest(
                    f"`{param}` is over the {MAX_FILE_BYTES // (1024 * 1024)} MB limit for one input image.",
                    param=param,
                    code="file_too_large",
                )
            if found is None:
                head += chunk
                found = _sniff(bytes(head), param, complete=False)
                if found is not None:
                    head = bytearray()
            f.write(chunk)
    if size == 0:
        raise InvalidRequest(f"`{param}` is an empty file.", param=param, code="empty_file")
    if found is None:
        found = _sniff(bytes(head), param, complete=True)
        assert found is not None
    return InputImage(path, size, found.format, found.width, found.height, part.filename or "image", alpha=found.alpha)


def _sniff(data: bytes, param: str, *, complete: bool) -> ImageHead | None:
    """The image's head, ``None`` while more bytes are needed; a 400 if it is no image."""
    if not complete and len(data) < 64:
        return None
    try:
        return read_head(data, complete=complete)
    except NeedMore:
        if len(data) >= MAX_JPEG_SCAN:
            complete = True
        if not complete:
            return None
        reason = "a JPEG without a frame header"
    except NotAnImage as exc:
        reason = str(exc)
    raise InvalidRequest(
        f"`{param}` is not an image the gateway can send: {reason} (png, jpeg and webp are accepted; "
        "the type is read from the file's bytes, not its name).",
        param=param,
        code="invalid_image_format",
    )


def spool_data_url(url: str, spool: Spool, param: str, filename: str) -> InputImage:
    """A JSON edit's ``data:`` URL, decoded into the spool (it came whole in the JSON body)."""
    m = _DATA_URL.match(url)
    if m is None:
        raise InvalidRequest(
            f"`{param}` is a data: URL that is not base64 of an image (data:image/png;base64,...).",
            param=param,
            code="invalid_image_url",
        )
    try:
        data = binascii.a2b_base64(url[m.end() :].encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError):
        raise InvalidRequest(f"`{param}` is a data: URL whose payload is not valid base64.", param=param, code="invalid_image_url") from None
    if not data:
        raise InvalidRequest(f"`{param}` is an empty image.", param=param, code="empty_file")
    if len(data) > MAX_FILE_BYTES:
        raise InvalidRequest(f"`{param}` is over the {MAX_FILE_BYTES // (1024 * 1024)} MB limit for one input image.", param=param, code="file_too_large")
    found = _sniff(data, param, complete=True)
    assert found is not None
    path = spool.new_file()
    with open(path, "wb") as f:
        f.write(data)
    return InputImage(path, len(data), found.format, found.width, found.height, filename, alpha=found.alpha)


def json_images(req: ImageEditRequest, spool: Spool) -> tuple[tuple[InputImage, ...], InputImage | None]:
    """A JSON edit's images and mask, spooled when they all came as ``data:`` URLs.

    ``https`` URLs and file ids are checked and left for the upstream to
    fetch: a pass-through provider takes the JSON as it is. When any input is
    one, nothing is spooled (``()``): adapters that need the bytes refuse the
    edit, naming it (see ``AdapterBase.require_files``).
    """
    refs = list(req.images) if isinstance(req.images, list) else []
    mask_ref = req.mask if isinstance(req.mask, ImageReference) else None
    named = [(f"images[{i}]", ref) for i, ref in enumerate(refs)]
    if mask_ref is not None:
        named.append(("mask", mask_ref))
    inline = True
    for param, ref in named:
        if (ref.image_url is None) == (ref.file_id is None):
            raise InvalidRequest(f"`{param}` needs exactly one of image_url and file_id.", param=param, code="invalid_value")
        if ref.image_url is not None and not ref.image_url.startswith("data:"):
            check_client_url(ref.image_url, f"{param}.image_url")
            inline = False
        elif ref.file_id is not None:
            inline = False
    if not inline:
        return (), None
    spooled = [spool_data_url(ref.image_url or "", spool, f"{param}.image_url", f"{param.replace('[', '-').rstrip(']')}")
               for param, ref in named]
    mask = spooled.pop() if mask_ref is not None else None
    images = tuple(spooled)
    check_mask(images[0], mask)
    return images, mask
