"""What an adapter and the proxy say to each other: the translator protocols and their values.

An adapter turns one client request into the upstream calls that answer it
and the upstream's answer back into OpenAI's shape. It does no I/O: the proxy
owns the sockets, the timeouts and the client; a translator only looks at
bytes and headers it is handed, and everything it has to say comes back in
the values it returns. One module drives it (``pixelgate.proxy.upstream``)::

    driver                                  translator
    ──────                                  ──────────
    before anything is sent         ──►     request()    -> Opening (first call, client headers, waits)
    upstream status >= 400          ──►     error(status, headers, body)  -> GatewayError
    upstream status 2xx             ──►     response(status, headers)     -> ResponseHead
    every body chunk                ──►     feed(chunk)  -> bytes, or None = pass through untouched
    upstream EOF                    ──►     finish()     -> Ending (trailing bytes, usage, next call)
    exchange abandoned mid-job      ──►     cancel()     -> UpstreamRequest | None (Cancellable only)
    after each status document      ──►     checkpoint() -> bytes | None (Resumable only, if asked)

Providers that answer in several calls (submit, poll, download the result)
are ``MultiCallTranslator``s: a response whose head says ``collect`` is read
whole (a small status document) and handed to ``collected``, which answers
with the next call (a poll, a download) or, when the document was the answer
itself, with the head of what ``finish`` makes of it. A download's ``finish``
may name a further call (the next image). Calls to hosts named in a
provider's answer carry a ``Guard``: the driver refuses hosts outside it and
bodies over its size, so a provider's answer cannot turn the gateway into an
open fetcher (or send the provider key elsewhere).

A multi-call translator whose provider can cancel a job is also
``Cancellable`` (optional): ``cancel()`` describes the call that cancels the
job as far as the translator knows it, ``None`` before the provider named the
job or once it finished. The driver sends it (once, bounded, its outcome only
logged and counted) when the exchange ends by an exception while a job runs:
the client went away, the total timeout or shutdown ended it, a poll failed.

A multi-call translator whose provider's job can be polled by another
process is also ``Resumable`` (optional): ``checkpoint()`` is what a new
translator needs to go on with the job (small JSON the adapter alone reads:
the polling URLs, never the key), ``None`` before the provider named the
job. The driver hands it to whoever asked for it (the job runner, through
``Exchange.checkpoint``) after each status document, whenever it changed.
After a restart, ``Adapter.resume`` builds from it a translator whose first
call polls that job instead of submitting it again (which would be billed
again), and which answers as the first would have from there on.

An ``Adapter`` is a configured provider. It names the operations it serves
(``generation``, ``edit``) and builds one translator per request of each.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import ClassVar, Protocol, runtime_checkable

import msgspec

from pixelgate.core.errors import GatewayError
from pixelgate.core.request import ImageEditRequest, ImageGenerationRequest
from pixelgate.core.upload import InputImage, StreamedBody
from pixelgate.core.usage import Usage

__all__ = [
    "DONE",
    "Adapter",
    "Cancellable",
    "Clock",
    "Edit",
    "Ending",
    "Generation",
    "Guard",
    "MultiCallTranslator",
    "Opening",
    "ProviderSettings",
    "ResponseHead",
    "Resumable",
    "Resume",
    "Translator",
    "UpstreamRequest",
]

# Wall-clock seconds (time.time): the `created` adapters report. Injected, so
# golden cases are byte-exact.
Clock = Callable[[], float]


class Guard(msgspec.Struct, frozen=True):
    """Where a call to a provider-supplied URL may go, and how much it may bring.

    ``hosts`` are exact names or ``*.suffix`` patterns. Only https, except to
    a loopback host (tests, a local provider).
    """

    hosts: tuple[str, ...]
    max_bytes: int = 64 * 1024 * 1024


class UpstreamRequest(msgspec.Struct):
    method: str
    url: str
    headers: dict[str, str]
    # Bytes, or pieces of spooled uploads the transport reads as it sends (edits).
    body: bytes | StreamedBody
    # Set on calls to URLs taken from a provider's answer (polls, downloads).
    guard: Guard | None = None
    # Seconds to wait before making this call (a polling interval).
    delay: float = 0.0


class Opening(msgspec.Struct, frozen=True):
    """How an exchange starts."""

    call: UpstreamRequest
    # Gateway headers for the client's response (e.g. parameters dropped).
    headers: Mapping[str, str] = {}
    # The upstream cannot stream: keep a streaming client's connection alive
    # with comments while it works (see proxy.relay).
    waits: bool = False


class ResponseHead(msgspec.Struct):
    """How the relay should treat a successful upstream response."""

    # Relay as server-sent events (framed, keep-alives) or as one body.
    stream: bool
    content_type: str
    # Upstream headers the client gets (an allow-list; never credentials).
    headers: dict[str, str] = {}
    # The body bytes reach the client unchanged, so its length is known.
    passthrough: bool = True
    # A step of a multi-call exchange: read whole (small), give to collected().
    collect: bool = False


class Ending(msgspec.Struct, frozen=True):
    """What the end of an upstream body leaves to say."""

    # Client bytes that close what was fed (may be empty).
    data: bytes = b""
    # Usage the translation took out of the bytes (None: the bytes carry it,
    # as OpenAI's do, and the relay's meter reads it there).
    usage: Usage | None = None
    # Another call whose body continues the answer (the next image's download).
    then: UpstreamRequest | None = None


# The ending of most bodies: nothing more to say.
DONE = Ending()


class Translator(Protocol):
    """One request's translation, for a provider that answers in one call."""

    def request(self) -> Opening: ...

    def response(self, status: int, headers: Mapping[str, str]) -> ResponseHead: ...

    def feed(self, chunk: bytes) -> bytes | None: ...

    def finish(self) -> Ending: ...

    def error(self, status: int, headers: Mapping[str, str], body: bytes) -> GatewayError: ...


@runtime_checkable
class MultiCallTranslator(Translator, Protocol):
    """A translator whose provider answers through status documents (jobs)."""

    def collected(self, body: bytes) -> ResponseHead | UpstreamRequest:
        """A collected status document: the next call, or the head of the
        answer it was itself (e.g. result URLs relayed as URLs), whose bytes
        ``finish`` returns."""
        ...


@runtime_checkable
class Cancellable(Protocol):
    """Optional, for a ``MultiCallTranslator`` whose provider can cancel a job."""

    def cancel(self) -> UpstreamRequest | None:
        """The call that cancels the provider's job (with the key, and a
        ``Guard`` of the provider's API hosts), or ``None`` when there is none
        to cancel: before the provider named the job, or once it finished."""
        ...


@runtime_checkable
class Resumable(Protocol):
    """Optional, for a ``MultiCallTranslator`` whose provider job can be polled again by another process."""

    def checkpoint(self) -> bytes | None:
        """What a new translator (``Adapter.resume``) needs to go on polling
        this job: small JSON that only the adapter reads, with the job's
        polling URLs as the provider named them and never the provider's key
        (the resumed translator adds it again from its settings).

        ``None`` before the provider named the job: until the submit's answer
        is read there is nothing to poll (and no telling whether the submit
        reached the provider). From then on it stays set for the rest of the
        exchange, result downloads included: a provider keeps a finished
        job's answer for a while, so a process that dies while downloading
        is resumed by a poll that finds the result at once, not by a second
        submit. It changes when what the next process should do changes
        (e.g. the job finished: nothing left to cancel)."""
        ...


class ProviderSettings(msgspec.Struct, frozen=True):
    """A provider's configuration, as its adapter gets it."""

    name: str
    base_url: str | None = None
    api_key: str | None = None
    headers: Mapping[str, str] = {}
    # The adapter's own ``Options`` Struct, already validated.
    options: msgspec.Struct | None = None


class Generation(msgspec.Struct, frozen=True):
    """``POST /v1/images/generations``: one request, as an adapter gets it."""

    request: ImageGenerationRequest
    # The client's own bytes, for adapters that pass them through.
    body: bytes
    upstream_model: str
    request_id: str


class Edit(msgspec.Struct, frozen=True):
    """``POST /v1/images/edits``: one request, as an adapter gets it."""

    request: ImageEditRequest
    # The input images (uploaded files, or JSON image URLs the proxy fetched),
    # in order, and the mask (it applies to the first image).
    images: tuple[InputImage, ...]
    mask: InputImage | None
    # The client's own text fields in order (multipart), for pass-through
    # upstreams; unknown fields included.
    fields: tuple[tuple[str, str], ...]
    # The client's JSON body, when the edit came as JSON (for pass-through).
    json_body: bytes | None
    upstream_model: str
    request_id: str


class Resume(msgspec.Struct, frozen=True):
    """An async job to go on with after a restart: ``Adapter.resume`` gets it.

    ``request`` is the client's request as it was first run (its response
    format, size, format and streaming decide the answer, as they did);
    ``checkpoint`` is the submitting translator's last ``checkpoint()``.
    """

    request: ImageGenerationRequest | ImageEditRequest
    upstream_model: str
    request_id: str
    checkpoint: bytes


class Adapter(Protocol):
    """A configured provider: builds one translator per request and operation."""

    Options: ClassVar[type[msgspec.Struct]]

    @classmethod
    def check(cls, settings: ProviderSettings) -> None:
        """Raise ``ValueError("key: problem")`` for settings it cannot use."""

    def __init__(self, settings: ProviderSettings, clock: Clock = ...) -> None: ...

    def generation(self, g: Generation) -> Translator: ...

    def edit(self, e: Edit) -> Translator:
        """An edit's translator; ``InvalidRequest`` (``unsupported_operation``)
        if the provider cannot edit."""
        ...

    def resume(self, r: Resume) -> Translator:
        """Optional (``AdapterBase`` refuses it): a translator whose first call
        (its ``Opening``) is a poll of the job named by ``r.checkpoint``, not a
        submit, and which answers as the submitting translator would have.
        ``UpstreamProtocolError`` if the adapter cannot resume jobs, or the
        checkpoint is not one it wrote; no call is made then."""
        ...
