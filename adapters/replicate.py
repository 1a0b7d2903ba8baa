"""Replicate: create a prediction (sync mode), poll it if needed, download the files.

``POST {base}/v1/models/{owner}/{name}/predictions`` (upstream model
``owner/name``), or ``POST {base}/v1/predictions`` with ``{"version": …}``
(``owner/name:version`` or a bare version id), body ``{"input": {…}}``, key in
``Authorization: Bearer``. ``Prefer: wait=N`` (options.wait, 1-60 s, Replicate's
own limit; 0 sends no header: async mode) holds the call open until the model
is done. The answer is a prediction ``{id, status, output, error, urls{get},
…}``:

- ``succeeded``: ``output`` is one file URL or a list of them (models differ).
  In sync mode Replicate answers as soon as every file exists, so a
  ``processing`` answer to the create call that already has ``output`` is
  final too (Replicate's docs; replicate-python does the same).
- ``starting``/``processing``: ``urls.get`` is polled (with the key, only on
  Replicate's API hosts) every options.poll_interval seconds.
- ``failed``: ``error`` is the model's own text. Safety-checker refusals
  ("NSFW content detected", "flagged as sensitive (E005)", …: options.
  safety_markers) become ``moderation_blocked``; any other failure is a 502
  ``upstream_error`` with Replicate's words (the model ran and failed: a retry,
  or another provider, may succeed). ``canceled`` is a 502 too.

A prediction abandoned while it is ``starting`` or ``processing`` (the client
went away, the total timeout, a failed poll: see ``core.translator.
Cancellable``) is cancelled with ``POST`` to its ``urls.cancel`` (only on
Replicate's API hosts, with the key), or ``{base}/v1/predictions/{id}/cancel``
when the answer has no such URL. During a sync-mode create call the
prediction has no id yet (Replicate answers only when the wait ends), so a
client that leaves then cannot have it cancelled: ``wait: 0`` (async mode)
names the prediction at once, and every abandoned one is cancelled.

Resuming after a restart (``core.translator.Resumable``): from the answer
that names the prediction on, the checkpoint holds the URL it is polled at
(``urls.get``, or built from its id), its cancel URL while it runs, and
whether its output is final. A resumed translator polls at once, with the key
from the settings and only on Replicate's API hosts, cancellable while the
prediction runs, and goes on as the first would have: a prediction keeps its
output for about an hour, so a restart during the downloads polls it again
rather than creating another. In sync mode the create call names the
prediction only when it answers, so a process that dies during it leaves no
checkpoint (``wait: 0`` names it at once).

Each file is downloaded without the key, only from Replicate's file hosts
(``replicate.delivery`` and ``*.replicate.delivery``, e.g.
``pbxt.replicate.delivery``; options.fetch_hosts), and encoded into
``b64_json`` as it arrives. ``response_format: url`` without streaming relays
the URLs instead (they expire after about an hour). In sync mode Replicate may
inline small files as ``data:`` URIs; their base64 is relayed as given. Such a
file arrives inside the prediction document, which the relay reads whole
(at most 1 MiB): that is the one buffered case, forced by Replicate's format.

Models on Replicate take different inputs; the defaults fit the FLUX family:
``size`` → ``aspect_ratio`` (or ``width``/``height`` with options.size_as),
``n`` → ``num_outputs``, ``output_format`` → ``output_format`` (``jpeg`` is
sent as ``jpg``), ``output_compression`` → ``output_quality``. Each input name
is an option (``inputs``); an unset name means the model lacks that input, and
a client asking for it meets the ``unsupported`` policy. Fields outside the
OpenAI schema pass into ``input`` unchanged. Replicate bills by time or per
image and reports no tokens: no usage is emitted (the relay counts images).

Edits need a model with an image input, named in the options: ``inputs.image``
for a model that takes one URI (FLUX Kontext's ``input_image``, FLUX Fill's
``image``) or ``inputs.images`` for one that takes a list (nano-banana's and
Seedream's ``image_input``), and ``inputs.mask`` if it takes a mask. With
neither, edits are refused (``unsupported_operation``). The uploads go into
``input`` as ``data:`` URIs, base64-encoded from the spool as the body is
sent; everything else maps as for generations, and the answer is read the
same way (Replicate has not echoed ``data:`` inputs in a prediction since
2022, so the status documents stay under the relay's 1 MiB). Completed events
are ``image_edit.completed``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Literal
from urllib.parse import quote

import msgspec
from msgspec import Meta

from pixelgate.adapters.base import AdapterBase, check_base_url
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
from pixelgate.adapters.params import aspect_ratio, native_fields, parse_size, reported_size
from pixelgate.adapters.provider_errors import error_message, malformed, moderation_blocked, provider_error
from pixelgate.core.errors import GatewayError, UpstreamFailure, UpstreamProtocolError
from pixelgate.core.request import ImageRequest
from pixelgate.core.translator import Edit, Generation, Guard, ProviderSettings, Resume, Translator, UpstreamRequest
from pixelgate.core.upload import StreamedBody

__all__ = ["ReplicateAdapter", "ReplicateInputs", "ReplicateOptions"]

DEFAULT_URL = "https://api.replicate.com"
POLL_HOSTS = ("api.replicate.com",)
FETCH_HOSTS = ("replicate.delivery", "*.replicate.delivery")
# What FLUX (schnell, dev, pro, 1.1-pro) accepts on Replicate.
ASPECT_RATIOS = ("1:1", "16:9", "21:9", "3:2", "2:3", "4:5", "5:4", "3:4", "4:3", "9:16", "9:21")
# Matched as lower-case substrings; "(e005)" is how Replicate's own filter signs its refusals.
SAFETY_MARKERS = ("nsfw", "flagged as sensitive", "(e005)", "safety filter", "safety checker", "content policy",
                  "content moderation", "moderated")
_MAX_ERROR = 2000


class ReplicateInputs(msgspec.Struct, forbid_unknown_fields=True):
    """The model's input names for what OpenAI's parameters map to; null: it has none."""

    aspect_ratio: str | None = "aspect_ratio"
    width: str | None = "width"
    height: str | None = "height"
    n: str | None = "num_outputs"
    output_format: str | None = "output_format"
    output_compression: str | None = "output_quality"
    # Edits: the model's input for one image URI (FLUX Kontext `input_image`,
    # FLUX Fill `image`), or for a list of them (nano-banana, Seedream
    # `image_input`); at most one of the two. Neither: the model cannot edit.
    image: str | None = None
    images: str | None = None
    # The model's mask input (FLUX Fill `mask`); null: it takes none.
    mask: str | None = None


class ReplicateOptions(FetchOptions, forbid_unknown_fields=True):
    # Prefer: wait=N seconds (Replicate allows 1-60); 0: async mode, poll from the start.
    wait: Annotated[int, Meta(ge=0, le=60)] = 60
    size_as: Literal["aspect_ratio", "width_height"] = "aspect_ratio"
    aspect_ratios: list[str] = msgspec.field(default_factory=lambda: list(ASPECT_RATIOS))
    inputs: ReplicateInputs = msgspec.field(default_factory=ReplicateInputs)
    # OpenAI format → the value the model takes; a format left out is unsupported.
    formats: dict[Literal["png", "jpeg", "webp"], str] = msgspec.field(
        default_factory=lambda: {"png": "png", "jpeg": "jpg", "webp": "webp"}
    )
    # Sent when the client names no format (OpenAI's default is png; FLUX's is webp).
    output_format: Literal["png", "jpeg", "webp"] = "png"
    # Lower-case fragments of a failed prediction's error that mean a safety refusal.
    safety_markers: list[str] = msgspec.field(default_factory=lambda: list(SAFETY_MARKERS))
    # Most input images an edit may send to `inputs.images` (models' own
    # limits differ; the default leaves it to the model); `inputs.image` takes one.
    max_edit_images: Annotated[int, Meta(ge=1, le=16)] = 16


CAPABILITIES = Capabilities(
    provider="Replicate",
    order=("n", "output_format", "output_compression", "quality", "style", "background", "moderation", "size"),
    urls=True,
    why={
        "n": "this Replicate model makes one image per prediction",
        "quality": "Replicate models have no common quality setting (use the model's own inputs)",
        "style": "Replicate models have no common style setting",
        "background": "Replicate image models make opaque images",
        "output_compression": "this Replicate model has no compression setting",
        "moderation": "set the model's own safety input (`disable_safety_checker`, `safety_tolerance`)",
        "mask": "this Replicate model takes no mask",
        "input_fidelity": "Replicate models have no input fidelity setting",
    },
)


def capabilities(opts: ReplicateOptions) -> Capabilities:
    """What one Replicate model takes depends on its inputs (the options)."""
    names = opts.inputs
    why = dict(CAPABILITIES.why)
    if names.output_format is None:
        formats: tuple[str, ...] = ()
        why["output_format"] = "this Replicate model has no output format input"
    else:
        formats = tuple(opts.formats)
        why["output_format"] = f"this Replicate model returns {', '.join(opts.formats)}"
    ratios: tuple[str, ...] | None = None
    if opts.size_as == "aspect_ratio":
        ratios = tuple(opts.aspect_ratios) if names.aspect_ratio is not None else ()
        why["size"] = f"this Replicate model's aspect ratios are {', '.join(opts.aspect_ratios)}"
    elif names.width is None or names.height is None:
        ratios = ()
        why["size"] = "this Replicate model takes no width and height"
    max_images = opts.max_edit_images if names.images is not None else 1
    if names.images is not None:
        why["image"] = f"this Replicate model takes at most {max_images} input images"
    elif names.image is not None:
        why["image"] = f"this Replicate model takes one input image (`{names.image}`)"
    return msgspec.structs.replace(
        CAPABILITIES,
        max_n=None if names.n is not None else 1,
        aspect_ratios=ratios,
        exact_ratios=True,
        formats=formats,
        compression="none" if names.output_compression is None else "any",
        edits=names.image is not None or names.images is not None,
        max_edit_images=max_images,
        mask=names.mask is not None,
        why=why,
    )


def _model_call(base: str, model: str) -> tuple[str, dict[str, object]]:
    """The create URL and the body fields besides ``input``, for ``model``."""
    owner_name, colon, version = model.partition(":")
    if colon or "/" not in model:
        return f"{base}/v1/predictions", {"version": version if colon else model}
    owner, _, name = owner_name.partition("/")
    return f"{base}/v1/models/{quote(owner, safe='')}/{quote(name, safe='')}/predictions", {}


class _Urls(msgspec.Struct):
    get: str | None = None
    cancel: str | None = None


class _Prediction(msgspec.Struct):
    status: str
    id: str | None = None
    # Decoded only once the prediction is done: its type depends on the model.
    output: msgspec.Raw = msgspec.Raw(b"null")
    error: object = None
    urls: _Urls | None = None


class _Checkpoint(Checkpoint, frozen=True, tag="replicate/1"):
    # Where the prediction is polled (urls.get, or built from its id).
    get: CheckpointUrl
    # How it is cancelled, while it runs.
    cancel: CheckpointUrl | None = None
    # Its output is final (succeeded, or a sync-mode answer with every file): what a poll shows is the result.
    done: bool = False


_prediction = msgspec.json.Decoder(_Prediction)
_checkpoint = msgspec.json.Decoder(_Checkpoint)
_files = msgspec.json.Decoder(str | list[str] | None)
_encoder = msgspec.json.Encoder()

_WORKING = frozenset({"starting", "processing"})


class ReplicateTranslator(FetchingTranslator):
    __slots__ = ("_base", "_markers", "_submitted")

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
        markers: list[str],
    ) -> None:
        super().__init__(provider, submit, writer, headers, fetch_guard, polling, as_urls=as_urls)
        self._base = base
        self._markers = markers
        self._submitted = False

    def step(self, body: bytes) -> Step:
        first, self._submitted = not self._submitted, True
        try:
            prediction = _prediction.decode(body)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise malformed(self.provider, exc) from None
        status = prediction.status
        if status == "succeeded":
            self.ended()
            files = self._files(prediction)
            self._checkpoint_now(prediction, done=True)
            return files
        if first and status == "processing" and (files := self._files(prediction)):
            self._checkpoint_now(prediction, done=True)
            return files
        if status in _WORKING:
            if (cancel := self._cancel_call(prediction)) is not None:
                self.running(cancel)
            call = self._poll(prediction)
            self._checkpoint_now(prediction, done=False)
            return call
        if status == "failed":
            self.ended()
            raise self._failed(prediction.error)
        if status == "canceled":
            self.ended()
            raise UpstreamFailure(f"provider {self.provider!r} canceled the prediction", code="upstream_error")
        raise UpstreamProtocolError(f"provider {self.provider!r} answered a prediction with status {status[:40]!r}")

    def _files(self, prediction: _Prediction) -> list[str]:
        try:
            files = _files.decode(prediction.output)
        except msgspec.ValidationError:
            raise UpstreamProtocolError(
                f"provider {self.provider!r} gave an output that is not a file URL or a list of them "
                "(is the upstream model an image model?)"
            ) from None
        return [files] if isinstance(files, str) else files or []

    def _poll(self, prediction: _Prediction) -> UpstreamRequest:
        url = self._poll_url(prediction)
        if url is None:
            raise UpstreamProtocolError(f"provider {self.provider!r} answered a prediction without id or urls.get")
        return self.polling.get(url)

    def _poll_url(self, prediction: _Prediction) -> str | None:
        if prediction.urls and prediction.urls.get:
            return prediction.urls.get
        return f"{self._base}/v1/predictions/{quote(prediction.id, safe='')}" if prediction.id else None

    def _checkpoint_now(self, prediction: _Prediction, *, done: bool) -> None:
        # A prediction with neither id nor urls.get cannot be polled: nothing to resume by.
        if (url := self._poll_url(prediction)) is not None:
            cancel = self.cancel()
            self.resumes_with(_Checkpoint(
                created=self.writer.meta.created, get=url, cancel=None if cancel is None else cancel.url, done=done
            ))

    def resumed(self, state: _Checkpoint) -> None:
        """Built by ``ReplicateAdapter.resume``: the prediction was created by another translator, and is polled.

        Once its output was final, a ``processing`` answer that has it is the
        result, as the create call's was (sync mode: every file existed); else
        it is polled until it succeeds, as after any create call."""
        self._submitted = not state.done
        if not state.done and state.cancel is not None:
            self.running(self.polling.cancel("POST", state.cancel))
        self.resumes_with(state)

    def _cancel_call(self, prediction: _Prediction) -> UpstreamRequest | None:
        url = prediction.urls.cancel if prediction.urls and prediction.urls.cancel else None
        if url is None and prediction.id:
            url = f"{self._base}/v1/predictions/{quote(prediction.id, safe='')}/cancel"
        return None if url is None else self.polling.cancel("POST", url)

    def _failed(self, error: object) -> GatewayError:
        text = (error if isinstance(error, str) else "" if error is None else str(error))[:_MAX_ERROR]
        if self._is_safety(text):
            return moderation_blocked(self.provider, text)
        return UpstreamFailure(
            f"provider {self.provider!r} failed the prediction: {text or 'no reason given'}", code="upstream_error"
        )

    def _is_safety(self, text: str) -> bool:
        lowered = text.lower()
        return any(marker in lowered for marker in self._markers)

    def error(self, status: int, headers: Mapping[str, str], body: bytes) -> GatewayError:
        if self.downloading:
            # A file host's refusal (an expired or missing file) says nothing
            # about the key or the request: the provider could not deliver.
            return UpstreamFailure(
                f"provider {self.provider!r} could not deliver a result file (HTTP {status})", code="upstream_error"
            )
        message = error_message(body) or _problem_title(body)
        if status in (400, 422) and message and self._is_safety(message):
            return moderation_blocked(self.provider, message, headers)
        return provider_error(self.provider, status, headers, message)


class _Problem(msgspec.Struct):
    title: str | None = None


_problem = msgspec.json.Decoder(_Problem)


def _problem_title(body: bytes) -> str | None:
    """The ``title`` of Replicate's problem+json, when it sent no ``detail``."""
    try:
        return _problem.decode(body).title
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


class ReplicateAdapter(AdapterBase[ReplicateOptions]):
    Options = ReplicateOptions
    default_url = DEFAULT_URL
    capabilities = CAPABILITIES

    @classmethod
    def capabilities_for(cls, options: msgspec.Struct) -> Capabilities:
        assert isinstance(options, ReplicateOptions)
        return capabilities(options)

    @classmethod
    def check(cls, settings: ProviderSettings) -> None:
        check_base_url(settings.base_url)
        options = settings.options
        assert isinstance(options, ReplicateOptions)
        for ratio in options.aspect_ratios:
            a, colon, b = ratio.partition(":")
            if not (colon and a.isdigit() and b.isdigit() and int(a) and int(b)):
                raise ValueError(f"options.aspect_ratios: {ratio!r} is not of the form W:H")
        for field, name in msgspec.structs.asdict(options.inputs).items():
            if name is not None and not name:
                raise ValueError(f"options.inputs.{field}: empty; use null for a model without that input")
        if options.inputs.image is not None and options.inputs.images is not None:
            raise ValueError("options.inputs.images: set image (one URI) or images (a list), not both")

    def setup(self, settings: ProviderSettings) -> None:
        # Accept the base with or without the API version.
        self._base = self.base_url.removesuffix("/v1")
        key_headers = {**settings.headers, "Accept": "application/json"}
        if settings.api_key:
            key_headers["Authorization"] = f"Bearer {settings.api_key}"
        self._submit_headers = {**key_headers, "Content-Type": "application/json"}
        if self.options.wait:
            self._submit_headers["Prefer"] = f"wait={self.options.wait}"
        self._polling = self.options.polling(self._base, key_headers, POLL_HOSTS)
        self._fetch_guard = self.options.fetch_guard(FETCH_HOSTS)

    def generation(self, g: Generation) -> ReplicateTranslator:
        headers = self.settle(g.request)
        fields, meta = self._fields(g.request, native_fields(g.body))
        url, extra = _model_call(self._base, g.upstream_model)
        body = _encoder.encode({**extra, "input": fields})
        return self._create(g.request, url, body, meta, headers, GENERATION_COMPLETED)

    def edit(self, e: Edit) -> Translator:
        names = self.options.inputs
        if names.image is None and names.images is None:
            return super().edit(e)
        self.require_files(e)
        headers = self.settle_edit(e)
        fields, meta = self._fields(e.request, edit_native_fields(e))
        # Past settle_edit, images beyond the table's limit, or a mask the
        # model cannot take, were dropped by the policy: they are not sent.
        images = e.images[: self.table.max_edit_images]
        files: list[tuple[str, FileInput]] = [(names.images, images)] if names.images is not None else []
        if names.image is not None:
            files.append((names.image, images[0]))
        if names.mask is not None and e.mask is not None:
            files.append((names.mask, e.mask))
        url, extra = _model_call(self._base, e.upstream_model)
        # {"version"?, "input": {…, the files}}: the input object is the last member.
        outer = _encoder.encode(extra)[:-1] + (b',"input":' if extra else b'"input":')
        body = streamed(outer, *json_pieces([(name, data_uris(value)) for name, value in files], fields), b"}")
        return self._create(e.request, url, body, meta, headers, EDIT_COMPLETED)

    def resume(self, r: Resume) -> ReplicateTranslator:
        state = read_checkpoint(self.name, _checkpoint, r.checkpoint)
        meta = ImageMeta(created=state.created, size=reported_size(r.request.size), output_format=self._format(r.request))
        # At once: the prediction went on while no process polled it.
        poll = self._polling.get(state.get, delay=0.0)
        translator = self._translator(r.request, poll, {}, resumed_writer(r.request, meta))
        translator.resumed(state)
        return translator

    def _format(self, request: ImageRequest) -> str:
        """The format asked of the model and reported (the options' when the client names none)."""
        return request.output_format if isinstance(request.output_format, str) else self.options.output_format

    def _fields(self, request: ImageRequest, native: dict[str, msgspec.Raw]) -> tuple[dict[str, object], ImageMeta]:
        """The model's input for what generations and edits share, and what the answer reports."""
        opts = self.options
        names = opts.inputs
        fields: dict[str, object] = {**native, "prompt": request.prompt}
        size = parse_size(request.size)
        if size is not None:
            if opts.size_as == "aspect_ratio":
                if names.aspect_ratio and (ratio := aspect_ratio(*size, opts.aspect_ratios, 0)):
                    fields[names.aspect_ratio] = ratio
            elif names.width and names.height:
                fields[names.width], fields[names.height] = size
        if isinstance(request.n, int) and names.n:
            fields[names.n] = request.n
        fmt = self._format(request)
        if names.output_format and fmt in opts.formats:
            fields[names.output_format] = opts.formats[fmt]
        if isinstance(request.output_compression, int) and names.output_compression:
            fields[names.output_compression] = request.output_compression
        meta = ImageMeta(created=int(self.clock()), size=reported_size(request.size), output_format=fmt)
        return fields, meta

    def _create(
        self,
        request: ImageRequest,
        url: str,
        body: bytes | StreamedBody,
        meta: ImageMeta,
        headers: dict[str, str],
        event: str,
    ) -> ReplicateTranslator:
        create = UpstreamRequest("POST", url, self._submit_headers, body)
        return self._translator(request, create, headers, ImagesWriter(request.streaming, meta, event=event))

    def _translator(
        self, request: ImageRequest, first: UpstreamRequest, headers: dict[str, str], writer: ImagesWriter
    ) -> ReplicateTranslator:
        return ReplicateTranslator(
            self.name,
            first,
            writer,
            headers,
            self._fetch_guard,
            self._polling,
            as_urls=request.response_format == "url",
            base=self._base,
            markers=[m.lower() for m in self.options.safety_markers],
        )
