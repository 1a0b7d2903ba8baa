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

from collections.abc import Mapping
from typing import Literal

import msgspec

from pixelgate.adapters.base import AdapterBase
from pixelgate.adapters.capabilities import Capabilities
from pixelgate.adapters.fetched import FetchingTranslator, FetchOptions, Polling, Step
from pixelgate.adapters.images_out import ImageMeta, ImagesWriter
from pixelgate.adapters.params import aspect_ratio, native_fields, parse_size, reported_size
from pixelgate.adapters.provider_errors import error_message, malformed, moderation_blocked, provider_error
from pixelgate.core.errors import GatewayError, UpstreamFailure, UpstreamProtocolError
from pixelgate.core.translator import Generation, Guard, ProviderSettings, UpstreamRequest

__all__ = ["BflAdapter", "BflOptions"]

DEFAULT_URL = "https://api.bfl.ai/v1"
POLL_HOSTS = ("*.bfl.ai",)
FETCH_HOSTS = ("*.bfl.ai",)
ASPECT_RATIOS = ("21:9", "16:9", "3:2", "4:3", "5:4", "1:1", "4:5", "3:4", "2:3", "9:16", "9:21")


class BflOptions(FetchOptions, forbid_unknown_fields=True):
    # flux-pro-1.1 / flux-dev / flux-2 take width and height; the ultra and
    # kontext models take an aspect ratio instead.
    size_as: Literal["width_height", "aspect_ratio"] = "width_height"


CAPABILITIES = Capabilities(
    provider="BFL",
    order=("n", "output_format", "quality", "style", "background", "output_compression", "moderation", "size"),
    max_n=1,
    aspect_ratios=ASPECT_RATIOS,
    urls=True,
    formats=("jpeg", "png"),
    why={"moderation": "BFL's moderation is set with its native `safety_tolerance`"},
)


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


class BflAdapter(AdapterBase[BflOptions]):
    Options = BflOptions
    default_url = DEFAULT_URL
    capabilities = CAPABILITIES

    @classmethod
    def capabilities_for(cls, options: msgspec.Struct) -> Capabilities:
        assert isinstance(options, BflOptions)
        # Sizes sent as width and height are BFL's to judge.
        return cls.capabilities if options.size_as == "aspect_ratio" else msgspec.structs.replace(cls.capabilities, aspect_ratios=None)

    def setup(self, settings: ProviderSettings) -> None:
        self._base = self.base_url
        key_headers = {**settings.headers, "Accept": "application/json"}
        if settings.api_key:
            key_headers["x-key"] = settings.api_key
        self._polling = self.options.polling(self._base, key_headers, POLL_HOSTS)
        self._fetch_guard = self.options.fetch_guard(FETCH_HOSTS)

    def generation(self, g: Generation) -> BflTranslator:
        request, body, upstream_model = g.request, g.body, g.upstream_model
        opts = self.options
        headers = self.settle(request)
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
