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

A job abandoned while it runs (the client went away, the total timeout, a
failed poll: see ``core.translator.Cancellable``) is cancelled with ``PUT
…/requests/{request_id}/cancel`` (the submit answer's ``cancel_url``, on fal's
API hosts, with the key; built like the others when it is missing). fal
stops a queued request and asks a running one to stop; once the status says
``COMPLETED`` there is nothing left to cancel.

Resuming after a restart (``core.translator.Resumable``): from the submit's
answer on, the checkpoint holds the request's status, result and cancel URLs
(as fal gave them, or as built) and whether the status said ``COMPLETED``. A
resumed translator polls the status at once, cancellable as before, or, once
completed, reads the result at once (fal keeps it), with the key from the
settings and only on fal's API hosts; then it goes on as the first would have.

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

Edits go to an edit app (``fal-ai/flux-pro/kontext``, ``fal-ai/nano-banana/edit``,
``fal-ai/flux-pro/v1/fill``, …) the same way, with the same mapping: the
images and the mask become inputs of the app's JSON as ``data:`` URIs (fal
takes them wherever it takes a file URL), encoded from the spooled uploads as
the body is sent. Which inputs an app takes differs per app, so they are
options (``edit_inputs``): ``image_urls`` (a list, the default: the newer
edit apps) or ``image_url`` (one image: Kontext, image-to-image, fill), and
``mask_url`` for inpainting apps (no mask by default: the app's mask
convention is its own, see docs/edits/fal.md). What is not configured is
refused by the capability table before fal is called; ``edit_inputs: null``
refuses edits altogether. Completed events are ``image_edit.completed``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from pixelgate.adapters.base import AdapterBase
from pixelgate.adapters.capabilities import Capabilities
from pixelgate.adapters.edit_body import FileInput, data_uris, edit_native_fields, json_pieces, streamed
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
from pixelgate.adapters.params import native_fields, parse_size, reported_size
from pixelgate.adapters.provider_errors import error_message, malformed, moderation_blocked, provider_error
from pixelgate.core.errors import GatewayError, UpstreamProtocolError
from pixelgate.core.request import ImageRequest
from pixelgate.core.translator import Edit, Generation, Guard, ProviderSettings, Resume, Translator, UpstreamRequest
from pixelgate.core.upload import StreamedBody

__all__ = ["FalAdapter", "FalEditInputs", "FalOptions"]

DEFAULT_URL = "https://queue.fal.run"
POLL_HOSTS = ("queue.fal.run", "*.fal.run")
FETCH_HOSTS = ("fal.media", "*.fal.media")
# fal's own name for a refused prompt or image (model errors' detail[].type).
_POLICY = "content_policy_violation"
# Apps whose ids have three parts (namespace/owner/alias), per fal-client.
_NAMESPACES = frozenset({"workflows", "comfy"})


class FalEditInputs(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Where an edit app takes its inputs (fal's apps differ)."""

    # The images: a list of URIs (`image_urls`: nano-banana's and Seedream's edit
    # apps) or one URI (`image_url`: FLUX Kontext, FLUX image-to-image, FLUX Fill).
    image: Literal["image_url", "image_urls"] = "image_urls"
    # The mask (inpainting apps: `mask_url`); null: the app takes none, a mask is refused.
    mask: Literal["mask_url"] | None = None


class FalOptions(FetchOptions, forbid_unknown_fields=True):
    # null: the apps behind this provider cannot edit (edits are refused).
    edit_inputs: FalEditInputs | None = msgspec.field(default_factory=FalEditInputs)
    # Most input images an edit may send to `image_urls` (apps' own limits
    # differ; the default leaves it to the app); `image_url` takes one.
    max_edit_images: Annotated[int, Meta(ge=1, le=16)] = 16


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
        "input_fidelity": "fal's edit apps have no input fidelity setting",
    },
)


def capabilities(opts: FalOptions) -> Capabilities:
    """What edits fal takes depends on the edit app's inputs (the options)."""
    inputs = opts.edit_inputs
    if inputs is None:
        return CAPABILITIES
    single = inputs.image == "image_url"
    why = {
        **CAPABILITIES.why,
        "image": "this fal app takes one input image (`image_url`)" if single
        else f"this fal app takes at most {opts.max_edit_images} input images",
        "mask": "this fal app takes no mask",
    }
    return msgspec.structs.replace(
        CAPABILITIES, edits=True, max_edit_images=1 if single else opts.max_edit_images, mask=inputs.mask is not None, why=why
    )


def sync_mode_problems(native: Mapping[str, msgspec.Raw]) -> list[tuple[str, str]]:
    if "sync_mode" in native and bytes(native["sync_mode"]).strip() not in (b"false", b"null"):
        return [("sync_mode", "it makes fal answer data URIs; the gateway downloads the result URLs itself")]
    return []


class _Submitted(msgspec.Struct):
    request_id: str
    status_url: str | None = None
    response_url: str | None = None
    cancel_url: str | None = None


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


class _Checkpoint(Checkpoint, frozen=True, tag="fal/1"):
    status_url: CheckpointUrl
    response_url: CheckpointUrl
    cancel_url: CheckpointUrl
    # The status said COMPLETED: the result is next, and there is nothing left to cancel.
    done: bool = False


_submitted = msgspec.json.Decoder(_Submitted)
_checkpoint = msgspec.json.Decoder(_Checkpoint)
_status = msgspec.json.Decoder(_Status)
_result = msgspec.json.Decoder(_Result)
_error_doc = msgspec.json.Decoder(_ErrorDoc)
_encoder = msgspec.json.Encoder()

_WORKING = frozenset({"IN_QUEUE", "IN_PROGRESS"})


def _meta(request: ImageRequest, created: int) -> ImageMeta:
    """What the answer reports; its format is also the one asked of the app (jpeg or png, png unless asked)."""
    fmt = request.output_format if request.output_format in ("png", "jpeg") else "png"
    return ImageMeta(created=created, size=reported_size(request.size), output_format=str(fmt))


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
    __slots__ = ("_app_url", "_cancel_url", "_phase", "_response_url", "_status_url")

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
        self._cancel_url = ""

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
        self._cancel_url = job.cancel_url or f"{base}/cancel"
        self.running(self.polling.cancel("PUT", self._cancel_url))
        self._phase = "status"
        self._checkpoint_now(done=False)
        return self.polling.get(self._status_url)

    def _status(self, status: _Status) -> Step:
        if status.status in _WORKING:
            return self.polling.get(self._status_url)
        if status.status != "COMPLETED":
            raise UpstreamProtocolError(f"provider {self.provider!r} reported an unknown job status {status.status[:50]!r}")
        self.ended()
        if status.error and status.error_type:
            # A request error (fal's infrastructure): the result would only repeat it.
            text = f"{status.error} ({status.error_type})"
            if status.error_type == _POLICY:
                raise moderation_blocked(self.provider, text)
            raise provider_error(self.provider, 504 if status.error_type.endswith("timeout") else 502, {}, text)
        # Done, or an app error: the result call answers with the image URLs or the app's own error status.
        self._phase = "result"
        self._checkpoint_now(done=True)
        return self.polling.get(self._response_url, delay=0.0)

    def _checkpoint_now(self, *, done: bool) -> None:
        self.resumes_with(_Checkpoint(
            created=self.writer.meta.created, status_url=self._status_url, response_url=self._response_url,
            cancel_url=self._cancel_url, done=done,
        ))

    def resumed(self, state: _Checkpoint) -> None:
        """Built by ``FalAdapter.resume``: the request was submitted by another
        translator; its status (or, once completed, its result) is read next."""
        self._status_url, self._response_url, self._cancel_url = state.status_url, state.response_url, state.cancel_url
        if state.done:
            self._phase = "result"
        else:
            self._phase = "status"
            self.running(self.polling.cancel("PUT", self._cancel_url))
        self.resumes_with(state)

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

    @classmethod
    def capabilities_for(cls, options: msgspec.Struct) -> Capabilities:
        assert isinstance(options, FalOptions)
        return capabilities(options)

    def setup(self, settings: ProviderSettings) -> None:
        self._base = self.base_url
        key_headers = {**settings.headers, "Accept": "application/json"}
        if settings.api_key:
            key_headers["Authorization"] = f"Key {settings.api_key}"
        self._polling = self.options.polling(self._base, key_headers, POLL_HOSTS)
        self._fetch_guard = self.options.fetch_guard(FETCH_HOSTS)

    def generation(self, g: Generation) -> FalTranslator:
        native = native_fields(g.body)
        dropped = self.settle(g.request, sync_mode_problems(native))
        fields, meta = self._fields(g.request, native)
        body = _encoder.encode(fields)
        return self._translator(g.request, g.upstream_model, body, meta, dropped, GENERATION_COMPLETED)

    def edit(self, e: Edit) -> Translator:
        inputs = self.options.edit_inputs
        if inputs is None:
            return super().edit(e)
        self.require_files(e)
        native = edit_native_fields(e)
        dropped = self.settle_edit(e, sync_mode_problems(native))
        fields, meta = self._fields(e.request, native)
        # Past settle_edit, images beyond the table's limit, or a mask the app
        # cannot take, were dropped by the policy: they are not sent.
        images = e.images[: self.table.max_edit_images]
        files: list[tuple[str, FileInput]] = [(inputs.image, images if inputs.image == "image_urls" else images[0])]
        if inputs.mask is not None and e.mask is not None:
            files.append((inputs.mask, e.mask))
        body = streamed(*json_pieces([(name, data_uris(value)) for name, value in files], fields))
        return self._translator(e.request, e.upstream_model, body, meta, dropped, EDIT_COMPLETED)

    def resume(self, r: Resume) -> FalTranslator:
        state = read_checkpoint(self.name, _checkpoint, r.checkpoint)
        meta = _meta(r.request, state.created)
        # At once: the request went on while no process polled it.
        first = self._polling.get(state.response_url if state.done else state.status_url, delay=0.0)
        translator = FalTranslator(
            self.name,
            first,
            resumed_writer(r.request, meta),
            {},
            self._fetch_guard,
            self._polling,
            as_urls=r.request.response_format == "url",
            app_url=self._app_url(r.upstream_model.strip("/")),
        )
        translator.resumed(state)
        return translator

    def _fields(self, request: ImageRequest, native: dict[str, msgspec.Raw]) -> tuple[dict[str, object], ImageMeta]:
        """The app's input for what generations and edits share, and what the answer reports."""
        native.pop("sync_mode", None)  # false is fal's default; true was refused or dropped by settle
        fields: dict[str, object] = {**native, "prompt": request.prompt}
        if isinstance(request.n, int):
            fields["num_images"] = request.n
        size = parse_size(request.size)
        if size is not None:
            fields["image_size"] = {"width": size[0], "height": size[1]}
        meta = _meta(request, int(self.clock()))
        fields["output_format"] = meta.output_format
        return fields, meta

    def _translator(
        self,
        request: ImageRequest,
        upstream_model: str,
        body: bytes | StreamedBody,
        meta: ImageMeta,
        dropped: dict[str, str],
        event: str,
    ) -> FalTranslator:
        app = upstream_model.strip("/")
        submit = UpstreamRequest(
            "POST",
            f"{self._base}/{app}",
            {**self._polling.headers, "Content-Type": "application/json"},
            body,
        )
        return FalTranslator(
            self.name,
            submit,
            ImagesWriter(request.streaming, meta, event=event),
            dropped,
            self._fetch_guard,
            self._polling,
            as_urls=request.response_format == "url",
            app_url=self._app_url(app),
        )

    def _app_url(self, app: str) -> str:
        # Status and result live under the app id, without any subpath (".../flux/dev" → "fal-ai/flux").
        parts = app.split("/")
        return f"{self._base}/{'/'.join(parts[: 3 if parts[0] in _NAMESPACES else 2])}"
