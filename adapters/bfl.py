"""Black Forest Labs (FLUX): submit, poll the returned ``polling_url``, download.

``POST {base}/{model}`` with the key in ``x-key`` returns ``{id, polling_url}``.
The polling URL is used as given (BFL's global endpoint load-balances and the
URL names the cluster holding the task) but only on BFL's hosts, since it
carries the key. ``Ready`` gives ``result.sample``, a signed URL valid for
about ten minutes: it is downloaded at once, without the key, and encoded
into ``b64_json`` as it arrives (or relayed as a URL for
``response_format: url`` without streaming). ``Request Moderated`` and
``Content Moderated`` become ``moderation_blocked``.

BFL bills per image and reports no tokens; the relay counts the image.
Fields outside the OpenAI schema (``seed``, ``safety_tolerance``,
``prompt_upsampling``, ``raw``, ``input_image``, …) pass to BFL unchanged.

Edits (``/v1/images/edits``, for the Kontext and FLUX.2 models) are the same
submit with the image in the JSON: ``input_image`` is the uploaded file's
base64, encoded by the transport as it sends (``FilePiece``: never read
here), and further images go in ``input_image_2``, ``input_image_3``, … up to
the ``max_edit_images`` option (1 by default: the reference documents
``input_image`` alone; the operator raises it for models that take more).
These models take no mask (the edit follows the prompt): ``mask`` is refused.
Without a ``size`` BFL keeps the input's aspect ratio; with one, it maps as
for a generation. The answer is polled and downloaded as for a generation,
streamed as ``image_edit.completed``.

Resuming after a restart (``core.translator.Resumable``): from the submit's
answer on, the checkpoint is the polling URL (and the ``created`` to report);
a resumed translator polls it at once, with the key from the settings and
only on BFL's hosts, and goes on as the first would have. BFL keeps a task's
answer for a while after it is Ready, so a restart during the download polls
it again rather than submitting (the signed sample URL still expires).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from pixelgate.adapters.base import AdapterBase
from pixelgate.adapters.capabilities import Capabilities
from pixelgate.adapters.fetched import (
    Checkpoint,
    CheckpointUrl,
    FetchingTranslator,
    FetchOptions,
    Polling,
    Step,
    read_checkpoint,
    resumed_writer,
)
from pixelgate.adapters.images_out import EDIT_COMPLETED, GENERATION_COMPLETED, ImageMeta, ImagesWriter
from pixelgate.adapters.params import aspect_ratio, native_fields, parse_size, reported_size
from pixelgate.adapters.provider_errors import error_message, malformed, moderation_blocked, provider_error
from pixelgate.core.errors import GatewayError, InvalidRequest, UpstreamFailure, UpstreamProtocolError
from pixelgate.core.request import GATEWAY_ONLY_FIELDS, MAX_EDIT_IMAGES, ImageEditRequest, ImageRequest
from pixelgate.core.translator import Edit, Generation, Guard, ProviderSettings, Resume, UpstreamRequest
from pixelgate.core.upload import FilePiece, InputImage, StreamedBody

__all__ = ["BflAdapter", "BflOptions"]

DEFAULT_URL = "https://api.bfl.ai/v1"
POLL_HOSTS = ("*.bfl.ai",)
FETCH_HOSTS = ("*.bfl.ai",)
ASPECT_RATIOS = ("21:9", "16:9", "3:2", "4:3", "5:4", "1:1", "4:5", "3:4", "2:3", "9:16", "9:21")


class BflOptions(FetchOptions, forbid_unknown_fields=True):
    # flux-pro-1.1 / flux-dev / flux-2 take width and height; the ultra and
    # kontext models take an aspect ratio instead.
    size_as: Literal["width_height", "aspect_ratio"] = "width_height"
    # Input images an edit may carry (input_image, input_image_2, …): the
    # model's to say (BFL documents up to 4 for Kontext, more for FLUX.2).
    max_edit_images: Annotated[int, Meta(ge=1, le=MAX_EDIT_IMAGES)] = 1


CAPABILITIES = Capabilities(
    provider="BFL",
    order=("n", "output_format", "quality", "style", "background", "output_compression", "moderation", "size"),
    max_n=1,
    aspect_ratios=ASPECT_RATIOS,
    urls=True,
    formats=("jpeg", "png"),
    edits=True,
    max_edit_images=1,
    mask=False,
    why={
        "moderation": "BFL's moderation is set with its native `safety_tolerance`",
        "mask": "BFL's edit models (Kontext, FLUX.2) follow the prompt and take no mask",
    },
)

# Fields of an edit that are OpenAI's (or the gateway's), not BFL's native ones.
_EDIT_KNOWN = frozenset(ImageEditRequest.__struct_fields__) | GATEWAY_ONLY_FIELDS
# BFL's non-string fields: a form gives every value as text, BFL wants JSON types.
_FORM_TYPES: dict[str, type[int] | type[float] | type[bool]] = {
    "seed": int,
    "safety_tolerance": int,
    "width": int,
    "height": int,
    "steps": int,
    "guidance": float,
    "prompt_upsampling": bool,
    "raw": bool,
}


class _Submitted(msgspec.Struct):
    id: str
    polling_url: str | None = None


class _Result(msgspec.Struct):
    sample: str | None = None


class _Status(msgspec.Struct):
    status: str
    result: _Result | None = None
    details: dict[str, object] | None = None


class _Checkpoint(Checkpoint, frozen=True, tag="bfl/1"):
    # The task's polling URL, as BFL gave it (it names the cluster that holds the task).
    polling_url: CheckpointUrl


_submitted = msgspec.json.Decoder(_Submitted)
_checkpoint = msgspec.json.Decoder(_Checkpoint)
_raw_map = msgspec.json.Decoder(dict[str, msgspec.Raw])
_status = msgspec.json.Decoder(_Status)
_encoder = msgspec.json.Encoder()

_WORKING = frozenset({"Pending", "Processing", "Queued"})
_MODERATED = frozenset({"Request Moderated", "Content Moderated"})


def _format(request: ImageRequest) -> str:
    """The output format asked of BFL (and reported, until the served file says otherwise)."""
    return str(request.output_format) if request.output_format in ("png", "jpeg") else "png"


def _image_key(index: int) -> str:
    return "input_image" if index == 0 else f"input_image_{index + 1}"


def _form_value(key: str, value: str) -> object:
    """A form field as the JSON BFL wants: its documented numbers and booleans typed."""
    kind = _FORM_TYPES.get(key)
    if kind is None:
        return value
    if kind is bool:
        if value.lower() in ("true", "false"):
            return value.lower() == "true"
    else:
        try:
            return kind(value)
        except ValueError:
            pass
    what = {int: "an integer", float: "a number", bool: "true or false"}[kind]
    raise InvalidRequest(f"`{key}` must be {what} for BFL; got {value[:40]!r}.", param=key, code="invalid_value")


def _edit_natives(e: Edit) -> Iterator[tuple[str, object]]:
    """The edit's fields outside the OpenAI schema: a JSON body's as they came, a form's typed."""
    if e.json_body is not None:
        pairs: Iterator[tuple[str, object]] = iter(_raw_map.decode(e.json_body).items())
    else:
        pairs = ((key, value) for key, value in e.fields)
    for key, value in pairs:
        if key in _EDIT_KNOWN:
            continue
        if key == "input_image" or key.startswith("input_image_"):
            raise InvalidRequest(
                f"`{key}` is set by the gateway from the edit's images; send the image as `image` instead.",
                param=key,
                code="invalid_value",
            )
        yield key, _form_value(key, value) if isinstance(value, str) else value


def _with_images(fields: dict[str, object], images: tuple[InputImage, ...]) -> StreamedBody:
    """``fields`` as a JSON object, with each image's base64 spliced in as
    ``input_image``, ``input_image_2``, …, encoded by the transport as it sends."""
    head = _encoder.encode(fields)
    # `fields` always holds the prompt: the object is not empty, a comma follows it.
    pieces: list[bytes | FilePiece] = [head[:-1]]
    for i, image in enumerate(images):
        pieces += [b',"' + _image_key(i).encode() + b'":"', FilePiece(image, "base64"), b'"']
    pieces.append(b"}")
    return StreamedBody(tuple(pieces))


class BflTranslator(FetchingTranslator):
    __slots__ = ("_base", "_polling_url", "_submitted")

    def __init__(
        self,
        provider: str,
        submit: UpstreamRequest,
        writer: ImagesWriter,
        headers: dict[str, str],
        fetch_guard: Guard,
        polling: Polling,
        *,
        as_urls: bool,
        base: str,
    ) -> None:
        super().__init__(provider, submit, writer, headers, fetch_guard, polling, as_urls=as_urls)
        self._base = base
        self._submitted = False
        self._polling_url = ""

    def step(self, body: bytes) -> Step:
        try:
            if not self._submitted:
                self._submitted = True
                job = _submitted.decode(body)
                url = job.polling_url or f"{self._base}/get_result?id={job.id}"
                self.resumes_with(_Checkpoint(created=self.writer.meta.created, polling_url=url))
                return self._poll(url)
            status = _status.decode(body)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise malformed(self.provider, exc) from None
        if status.status == "Ready":
            if status.result is None or not status.result.sample:
                raise UpstreamProtocolError(f"provider {self.provider!r} said Ready without a result URL")
            return [status.result.sample]
        if status.status in _WORKING:
            return self._poll(self._polling_url)
        if status.status in _MODERATED:
            raise moderation_blocked(self.provider, f"{status.status}: the request or the image was refused by BFL's moderation.")
        if status.status == "Task not found":
            raise UpstreamProtocolError(f"provider {self.provider!r} lost the task it was polled for (Task not found)")
        raise UpstreamFailure(f"provider {self.provider!r} failed the task: {status.status}", code="upstream_error")

    def _poll(self, url: str) -> UpstreamRequest:
        self._polling_url = url
        return self.polling.get(url)

    def resumed(self, state: _Checkpoint) -> None:
        """Built by ``BflAdapter.resume``: the task was submitted by another translator, and is polled."""
        self._submitted = True
        self._polling_url = state.polling_url
        self.resumes_with(state)

    def error(self, status: int, headers: Mapping[str, str], body: bytes) -> GatewayError:
        return provider_error(self.provider, status, headers, error_message(body))


class BflAdapter(AdapterBase[BflOptions]):
    Options = BflOptions
    default_url = DEFAULT_URL
    capabilities = CAPABILITIES

    @classmethod
    def capabilities_for(cls, options: msgspec.Struct) -> Capabilities:
        assert isinstance(options, BflOptions)
        table = cls.capabilities
        # Sizes sent as width and height are BFL's to judge.
        if options.size_as != "aspect_ratio":
            table = msgspec.structs.replace(table, aspect_ratios=None)
        if options.max_edit_images != table.max_edit_images:
            table = msgspec.structs.replace(table, max_edit_images=options.max_edit_images)
        if options.max_edit_images == 1:
            # The way to more images is the operator's: say so.
            why = "this BFL route takes one input image (`input_image`); for models that take more, the gateway operator sets options.max_edit_images"
            table = msgspec.structs.replace(table, why={**table.why, "image": why})
        return table

    def setup(self, settings: ProviderSettings) -> None:
        self._base = self.base_url
        key_headers = {**settings.headers, "Accept": "application/json"}
        if settings.api_key:
            key_headers["x-key"] = settings.api_key
        self._polling = self.options.polling(self._base, key_headers, POLL_HOSTS)
        self._fetch_guard = self.options.fetch_guard(FETCH_HOSTS)

    def generation(self, g: Generation) -> BflTranslator:
        headers = self.settle(g.request)
        fields: dict[str, object] = {**native_fields(g.body), "prompt": g.request.prompt}
        fmt = self._common_fields(g.request, fields)
        return self._translator(g.request, g.upstream_model, _encoder.encode(fields), fmt, headers, GENERATION_COMPLETED)

    def edit(self, e: Edit) -> BflTranslator:
        self.require_files(e)
        headers = self.settle_edit(e)
        # Under the drop policy the images past the table's limit (and a
        # mask) have been dropped, and said so; the first image is the one edited.
        images = e.images[: self.table.max_edit_images]
        fields: dict[str, object] = {**dict(_edit_natives(e)), "prompt": e.request.prompt}
        fmt = self._common_fields(e.request, fields)
        return self._translator(e.request, e.upstream_model, _with_images(fields, images), fmt, headers, EDIT_COMPLETED)

    def resume(self, r: Resume) -> BflTranslator:
        state = read_checkpoint(self.name, _checkpoint, r.checkpoint)
        meta = ImageMeta(created=state.created, size=reported_size(r.request.size), output_format=_format(r.request))
        # At once: the task went on while no process polled it.
        poll = self._polling.get(state.polling_url, delay=0.0)
        translator = BflTranslator(
            self.name,
            poll,
            resumed_writer(r.request, meta),
            {},
            self._fetch_guard,
            self._polling,
            as_urls=r.request.response_format == "url",
            base=self._base,
        )
        translator.resumed(state)
        return translator

    def _common_fields(self, request: ImageRequest, fields: dict[str, object]) -> str:
        """Size and format into ``fields``; the output format asked of BFL."""
        size = parse_size(request.size)
        if size is not None:
            if self.options.size_as == "aspect_ratio":
                if (ratio := aspect_ratio(*size, ASPECT_RATIOS)) is not None:
                    fields["aspect_ratio"] = ratio
            else:
                fields["width"], fields["height"] = size
        fmt = _format(request)
        fields["output_format"] = fmt
        return fmt

    def _translator(
        self, request: ImageRequest, upstream_model: str, body: bytes | StreamedBody, fmt: str, headers: dict[str, str], event: str
    ) -> BflTranslator:
        meta = ImageMeta(created=int(self.clock()), size=reported_size(request.size), output_format=fmt)
        submit = UpstreamRequest(
            "POST",
            f"{self._base}/{upstream_model}",
            {**self._polling.headers, "Content-Type": "application/json"},
            body,
        )
        return BflTranslator(
            self.name,
            submit,
            ImagesWriter(request.streaming, meta, event=event),
            headers,
            self._fetch_guard,
            self._polling,
            as_urls=request.response_format == "url",
            base=self._base,
        )
