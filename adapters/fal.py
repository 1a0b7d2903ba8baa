"""fal.ai queue API: submit, poll the status, read the result, download the images.

``POST {base}/{app}`` (base ``https://queue.fal.run``; the app is the
upstream model, e.g. ``fal-ai/flux/dev``) with ``Authorization: Key <key>``
and the app's input JSON returns ``{request_id, status_url, response_url,
…}``. Those URLs are used as given, only on fal's API hosts (they carry the
key). The status document is polled every ``poll_interval`` seconds until
``COMPLETED``; then ``response_url`` gives the result, ``{"images":[{"url",
"width","height","content_type"}],"seed","has_nsfw_concepts":[…],…}`` (or a
single ``image`` for some apps). Each image URL is downloaded without the
key, from fal's file hosts only (``fal.media``, ``*.fal.media``; fal's
example outputs on ``storage.googleapis.com`` are not allowed by default: add
the host to ``fetch_hosts`` if an app answers there), and base64-encoded as
it arrives into the client's ``b64_json``, one completed event per image (or
relayed as URLs for ``response_format: url`` without streaming).

Why polling and not the SSE status stream (``…/status/stream``): the relay
reads each step of a multi-call exchange whole, as one small document, under
its idle timeout; the stream stays open for the whole generation and is
only complete when the job is, so it would be one long collect that the idle
timeout cuts. Polling gives one complete status document per call, and the
relay keeps a streaming client alive meanwhile.

Mapping: ``size`` → ``image_size`` ``{"width","height"}``, ``n`` →
``num_images``, ``output_format`` jpeg|png (png unless asked). Fields outside
the OpenAI schema (``seed``, ``num_inference_steps``, ``guidance_scale``,
``enable_safety_checker``, ``acceleration``, …) pass to the app unchanged,
except ``sync_mode: true``: it makes fal answer data URIs, which the gateway
does not relay, so it counts as an unsupported parameter.

Safety: fal's checker flags images in ``has_nsfw_concepts`` (and blacks them
out). Flagged images are dropped; if every image is flagged, the request is
``moderation_blocked``. A model error whose ``detail[].type`` is
``content_policy_violation`` is ``moderation_blocked`` too. A job that failed
on fal's side (``error`` and ``error_type`` in the COMPLETED status, e.g.
``request_timeout``, ``runner_disconnected``) is an ``upstream_error``; other
failures are read from the result call's HTTP error. fal bills per image and
reports no tokens; the relay counts the images.
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from pixelgate.adapters.base import AdapterBase
from pixelgate.adapters.capabilities import Capabilities
from pixelgate.adapters.fetched import FetchingTranslator, FetchOptions, Polling, Step
from pixelgate.adapters.images_out import ImageMeta, ImagesWriter
from pixelgate.adapters.params import native_fields, parse_size, reported_size
from pixelgate.adapters.provider_errors import error_message, malformed, moderation_blocked, provider_error
from pixelgate.core.errors import GatewayError, UpstreamProtocolError
from pixelgate.core.translator import Generation, Guard, ProviderSettings, UpstreamRequest

__all__ = ["FalAdapter", "FalOptions"]

DEFAULT_URL = "https://queue.fal.run"
POLL_HOSTS = ("queue.fal.run", "*.fal.run")
FETCH_HOSTS = ("fal.media", "*.fal.media")
# fal's own name for a refused prompt or image (model errors' detail[].type).
_POLICY = "content_policy_violation"
# Apps whose ids have three parts (namespace/owner/alias), per fal-client.
_NAMESPACES = frozenset({"workflows", "comfy"})


class FalOptions(FetchOptions, forbid_unknown_fields=True):
    pass


CAPABILITIES = Capabilities(
    provider="fal",
    order=("output_format", "quality", "style", "background", "output_compression", "moderation", "sync_mode"),
    urls=True,
    formats=("jpeg", "png"),
    why={
        "output_format": "fal's image apps return jpeg or png",
        "quality": "fal has no quality setting (use the app's native `num_inference_steps`)",
        "background": "fal's image apps cannot make transparent backgrounds",
        "moderation": "fal's safety checker is set with the app's native `enable_safety_checker`",
    },
)


def sync_mode_problems(native: Mapping[str, msgspec.Raw]) -> list[tuple[str, str]]:
    if "sync_mode" in native and bytes(native["sync_mode"]).strip() not in (b"false", b"null"):
        return [("sync_mode", "it makes fal answer data URIs; the gateway downloads the result URLs itself")]
    return []


class _Submitted(msgspec.Struct):
    request_id: str
    status_url: str | None = None
    response_url: str | None = None


class _Status(msgspec.Struct):
    status: str
    error: str | None = None
    error_type: str | None = None


class _Image(msgspec.Struct):
    url: str


class _Result(msgspec.Struct):
    images: list[_Image] = []
    image: _Image | None = None
    has_nsfw_concepts: list[bool | None] | None = None


class _Detail(msgspec.Struct):
    msg: str | None = None
    type: str | None = None


class _ErrorDoc(msgspec.Struct):
    # Model errors: {"detail":[{"loc","msg","type","url","ctx"}]}; request
    # errors: {"detail":"…","error_type":"…"}; some apps: {"detail":{"message"|"error"}}.
    detail: str | list[_Detail] | dict[str, object] | None = None
    error_type: str | None = None


_submitted = msgspec.json.Decoder(_Submitted)
_status = msgspec.json.Decoder(_Status)
_result = msgspec.json.Decoder(_Result)
_error_doc = msgspec.json.Decoder(_ErrorDoc)
_encoder = msgspec.json.Encoder()

_WORKING = frozenset({"IN_QUEUE", "IN_PROGRESS"})


def _read_error(body: bytes) -> tuple[str | None, bool]:
    """fal's message from an error body, and whether it is a content refusal."""
    try:
        doc = _error_doc.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return error_message(body), False
    policy = doc.error_type == _POLICY
    message: str | None = None
    if isinstance(doc.detail, str):
        message = doc.detail
    elif isinstance(doc.detail, list):
        policy = policy or any(d.type == _POLICY for d in doc.detail)
        message = "; ".join(d.msg for d in doc.detail if d.msg) or None
    elif isinstance(doc.detail, dict):
        text = doc.detail.get("message") or doc.detail.get("msg")
        message = text if isinstance(text, str) else None
        policy = policy or doc.detail.get("error") == _POLICY or doc.detail.get("type") == _POLICY
    return message, policy


class FalTranslator(FetchingTranslator):
    __slots__ = ("_app_url", "_phase", "_response_url", "_status_url")

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
        app_url: str,
    ) -> None:
        super().__init__(provider, submit, writer, headers, fetch_guard, polling, as_urls=as_urls)
        self._app_url = app_url
        # Which document comes next: "submitted", "status" or "result".
        self._phase = "submitted"
        self._status_url = ""
        self._response_url = ""

    def step(self, body: bytes) -> Step:
        try:
            if self._phase == "submitted":
                return self._submitted(_submitted.decode(body))
            if self._phase == "status":
                return self._status(_status.decode(body))
            result = _result.decode(body)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise malformed(self.provider, exc) from None
        return self._images(result)

    def _submitted(self, job: _Submitted) -> Step:
        # Older answers lack the URLs: build them the way fal-client does.
        base = f"{self._app_url}/requests/{job.request_id}"
        self._status_url = job.status_url or f"{base}/status"
        self._response_url = job.response_url or base
        self._phase = "status"
        return self.polling.get(self._status_url)

    def _status(self, status: _Status) -> Step:
        if status.status in _WORKING:
            return self.polling.get(self._status_url)
        if status.status != "COMPLETED":
            raise UpstreamProtocolError(f"provider {self.provider!r} reported an unknown job status {status.status[:50]!r}")
        if status.error and status.error_type:
            # A request error (fal's infrastructure): the result would only repeat it.
            text = f"{status.error} ({status.error_type})"
            if status.error_type == _POLICY:
                raise moderation_blocked(self.provider, text)
            raise provider_error(self.provider, 504 if status.error_type.endswith("timeout") else 502, {}, text)
        # Done, or an app error: the result call answers with the image URLs or the app's own error status.
        self._phase = "result"
        return self.polling.get(self._response_url, delay=0.0)

    def _images(self, result: _Result) -> list[str]:
        images = result.images or ([result.image] if result.image is not None else [])
        flags = result.has_nsfw_concepts or []
        kept = [image.url for i, image in enumerate(images) if not (i < len(flags) and flags[i])]
        if images and not kept:
            raise moderation_blocked(
                self.provider, "fal's safety checker flagged every image (has_nsfw_concepts); none was returned."
            )
        return kept

    def error(self, status: int, headers: Mapping[str, str], body: bytes) -> GatewayError:
        message, policy = _read_error(body)
        if policy or headers.get("x-fal-error-type") == _POLICY:
            return moderation_blocked(self.provider, message or "Refused by fal's content policy.", headers)
        if status == 403 and message and "balance" in message.lower():
            # "User is locked. Reason: Exhausted balance": out of credits, not a bad key.
            status = 402
        return provider_error(self.provider, status, headers, message)


class FalAdapter(AdapterBase[FalOptions]):
    Options = FalOptions
    default_url = DEFAULT_URL
    capabilities = CAPABILITIES

    def setup(self, settings: ProviderSettings) -> None:
        self._base = self.base_url
        key_headers = {**settings.headers, "Accept": "application/json"}
        if settings.api_key:
            key_headers["Authorization"] = f"Key {settings.api_key}"
        self._polling = self.options.polling(self._base, key_headers, POLL_HOSTS)
        self._fetch_guard = self.options.fetch_guard(FETCH_HOSTS)

    def generation(self, g: Generation) -> FalTranslator:
        request, body, upstream_model = g.request, g.body, g.upstream_model
        native = native_fields(body)
        dropped = self.settle(request, sync_mode_problems(native))
        native.pop("sync_mode", None)  # false is fal's default; true was refused or dropped above
        fields: dict[str, object] = {**native, "prompt": request.prompt}
        if isinstance(request.n, int):
            fields["num_images"] = request.n
        size = parse_size(request.size)
        if size is not None:
            fields["image_size"] = {"width": size[0], "height": size[1]}
        fmt = request.output_format if request.output_format in ("png", "jpeg") else "png"
        fields["output_format"] = fmt
        meta = ImageMeta(
            created=int(self.clock()),
            size=reported_size(request.size),
            output_format=str(fmt),
        )
        app = upstream_model.strip("/")
        submit = UpstreamRequest(
            "POST",
            f"{self._base}/{app}",
            {**self._polling.headers, "Content-Type": "application/json"},
            _encoder.encode(fields),
        )
        # Status and result live under the app id, without any subpath (".../flux/dev" → "fal-ai/flux").
        parts = app.split("/")
        app_id = "/".join(parts[: 3 if parts[0] in _NAMESPACES else 2])
        return FalTranslator(
            self.name,
            submit,
            ImagesWriter(request.streaming, meta),
            dropped,
            self._fetch_guard,
            self._polling,
            as_urls=request.response_format == "url",
            app_url=f"{self._base}/{app_id}",
        )
