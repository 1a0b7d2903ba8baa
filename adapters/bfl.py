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
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import ClassVar, Literal

import msgspec

from adapters.base import Guard, UpstreamRequest, check_base_url
from adapters.fetched import FetchingTranslator, FetchOptions, Polling, Step
from adapters.images_out import ImageMeta, ImagesWriter
from adapters.params import aspect_ratio, native_fields, parse_size, reported_size, settle
from adapters.provider_errors import error_message, malformed, moderation_blocked, provider_error
from proxy.errors import GatewayError, UpstreamFailure, UpstreamProtocolError
from proxy.schema import ImageGenerationRequest

__all__ = ["BflAdapter", "BflOptions"]

DEFAULT_URL = "https://api.bfl.ai/v1"
POLL_HOSTS = ("*.bfl.ai",)
FETCH_HOSTS = ("*.bfl.ai",)
ASPECT_RATIOS = ("21:9", "16:9", "3:2", "4:3", "5:4", "1:1", "4:5", "3:4", "2:3", "9:16", "9:21")


class BflOptions(FetchOptions, forbid_unknown_fields=True):
    # flux-pro-1.1 / flux-dev / flux-2 take width and height; the ultra and
    # kontext models take an aspect ratio instead.
    size_as: Literal["width_height", "aspect_ratio"] = "width_height"


def problems(req: ImageGenerationRequest, size_as: str) -> list[tuple[str, str]]:
    out = []
    if isinstance(req.n, int) and req.n > 1:
        out.append(("n", "BFL makes one image per request"))
    if req.output_format == "webp":
        out.append(("output_format", "BFL returns jpeg or png"))
    if req.quality not in (msgspec.UNSET, None, "auto"):
        out.append(("quality", "BFL has no quality setting"))
    if req.style not in (msgspec.UNSET, None):
        out.append(("style", "BFL has no style setting"))
    if req.background == "transparent":
        out.append(("background", "BFL cannot make transparent backgrounds"))
    if req.output_compression not in (msgspec.UNSET, None):
        out.append(("output_compression", "BFL has no compression setting"))
    if req.moderation == "low":
        out.append(("moderation", "BFL's moderation is set with its native `safety_tolerance`"))
    size = parse_size(req.size)
    if size is not None and size_as == "aspect_ratio" and aspect_ratio(*size, ASPECT_RATIOS) is None:
        out.append(("size", f"BFL's aspect ratios are {', '.join(ASPECT_RATIOS)}"))
    return out


class _Submitted(msgspec.Struct):
    id: str
    polling_url: str | None = None


class _Result(msgspec.Struct):
    sample: str | None = None


class _Status(msgspec.Struct):
    status: str
    result: _Result | None = None
    details: dict[str, object] | None = None


_submitted = msgspec.json.Decoder(_Submitted)
_status = msgspec.json.Decoder(_Status)
_encoder = msgspec.json.Encoder()

_WORKING = frozenset({"Pending", "Processing", "Queued"})
_MODERATED = frozenset({"Request Moderated", "Content Moderated"})


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

    def error(self, status: int, headers: Mapping[str, str], body: bytes) -> GatewayError:
        return provider_error(self.provider, status, headers, error_message(body))


class BflAdapter:
    Options: ClassVar[type[msgspec.Struct]] = BflOptions

    @classmethod
    def check(cls, *, base_url: str | None, api_key: str | None, options: msgspec.Struct) -> None:
        check_base_url(base_url)

    def __init__(
        self, *, name: str, base_url: str | None, api_key: str | None, headers: Mapping[str, str], options: msgspec.Struct
    ) -> None:
        assert isinstance(options, BflOptions)
        self.name = name
        self.options = options
        self.clock = time.time
        self._base = (base_url or DEFAULT_URL).rstrip("/")
        key_headers = {**headers, "Accept": "application/json"}
        if api_key:
            key_headers["x-key"] = api_key
        self._polling = options.polling(self._base, key_headers, POLL_HOSTS)
        self._fetch_guard = options.fetch_guard(FETCH_HOSTS)

    def translator(
        self, request: ImageGenerationRequest, body: bytes, upstream_model: str, request_id: str
    ) -> BflTranslator:
        opts = self.options
        headers = settle(self.name, problems(request, opts.size_as), opts.unsupported)
        fields: dict[str, object] = {**native_fields(body), "prompt": request.prompt}
        size = parse_size(request.size)
        if size is not None:
            if opts.size_as == "aspect_ratio":
                if (ratio := aspect_ratio(*size, ASPECT_RATIOS)) is not None:
                    fields["aspect_ratio"] = ratio
            else:
                fields["width"], fields["height"] = size
        fmt = request.output_format if request.output_format in ("png", "jpeg") else "png"
        fields["output_format"] = fmt
        meta = ImageMeta(
            created=int(self.clock()),
            size=reported_size(request.size),
            output_format=str(fmt),
        )
        submit = UpstreamRequest(
            "POST",
            f"{self._base}/{upstream_model}",
            {**self._polling.headers, "Content-Type": "application/json"},
            _encoder.encode(fields),
        )
        return BflTranslator(
            self.name,
            submit,
            ImagesWriter(request.streaming, meta),
            headers,
            self._fetch_guard,
            self._polling,
            as_urls=request.response_format == "url",
            base=self._base,
        )
