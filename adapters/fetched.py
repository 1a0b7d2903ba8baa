"""The translator for providers whose images are files behind URLs.

Black Forest Labs, fal and Replicate take a job, say when it is done, and
give result URLs. The exchange is: submit, poll (each answer a small status
document the relay collects), then one download per image, each
base64-encoded as it arrives (``adapters.b64``) into the client's
``b64_json``. Every URL taken from an answer carries a ``Guard``: polls may
only go to the provider's API hosts (they carry its key), downloads only to
its file hosts, and never with the key.

While the provider's job runs (from the answer that names it to the status
that ends it) the translator holds the call that cancels it, and ``cancel()``
returns it (``core.translator.Cancellable``): the driver sends it if the
exchange is abandoned meanwhile. Subclasses set it with ``running`` and clear
it with ``ended``; a provider without a cancel endpoint (BFL) never sets it.

From the answer that names the job on, the translator also holds its
checkpoint (``core.translator.Resumable``): a subclass's ``Checkpoint`` (the
job's polling URLs as the provider gave them, the ``created`` to report,
never the key), set with ``resumes_with``. After a restart the adapter's
``resume`` reads it back (``read_checkpoint``: a strict decode, so a
checkpoint it did not write is refused before any call) and builds a
translator whose first call is the poll. The polls of a resumed translator
are built like the first one's, from the adapter's settings: the key is added
again, and they carry its ``Guard``, so a checkpoint naming another host is
refused by the driver before connecting, as a provider's answer would be.

When the client asked for ``response_format: url`` without streaming, the
URLs are relayed as given instead of downloaded (they expire: minutes for
BFL, hours for Replicate and fal). A ``data:`` URI in place of a URL (some
Replicate models in sync mode) is relayed from the status document it came in.
The reported ``output_format`` is the served file's type.

Edits go to these providers as JSON whose image inputs are ``data:`` URIs
(``json_with_files``): the body is a ``StreamedBody`` whose base64 pieces the
transport encodes from the spooled uploads as it sends them, so an adapter
never holds an image.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Mapping
from typing import Annotated, TypeVar

import msgspec
from msgspec import Meta
from yarl import URL

from pixelgate.adapters.b64 import Base64Encoder
from pixelgate.adapters.images_out import EDIT_COMPLETED, GENERATION_COMPLETED, ImageMeta, ImagesWriter
from pixelgate.adapters.params import Policy
from pixelgate.adapters.provider_errors import json_media
from pixelgate.core.errors import GatewayError, UpstreamProtocolError
from pixelgate.core.request import ImageEditRequest, ImageRequest
from pixelgate.core.translator import Ending, Guard, Opening, ResponseHead, UpstreamRequest

__all__ = [
    "Checkpoint",
    "CheckpointUrl",
    "FetchOptions",
    "FetchingTranslator",
    "Polling",
    "Step",
    "read_checkpoint",
    "resumed_writer",
]


class FetchOptions(msgspec.Struct, forbid_unknown_fields=True):
    unsupported: Policy = "reject"
    # Seconds between status polls.
    poll_interval: Annotated[float, Meta(ge=0, le=60)] = 0.5
    # Hosts result files may come from (exact, or "*.suffix"); empty: the adapter's defaults.
    fetch_hosts: list[str] = []
    # Hosts status polls may go to (they carry the key); empty: the adapter's defaults.
    poll_hosts: list[str] = []
    max_fetch_bytes: Annotated[int, Meta(gt=0)] = 64 * 1024 * 1024

    def polling(self, base_url: str, key_headers: dict[str, str], default_hosts: tuple[str, ...]) -> Polling:
        # The configured API host is always allowed: the submit went there.
        hosts = (URL(base_url).host or "", *(self.poll_hosts or default_hosts))
        return Polling(key_headers, Guard(hosts=hosts), self.poll_interval)

    def fetch_guard(self, default_hosts: tuple[str, ...]) -> Guard:
        return Guard(hosts=tuple(self.fetch_hosts or default_hosts), max_bytes=self.max_fetch_bytes)


class Polling(msgspec.Struct, frozen=True):
    """How a provider's status documents are fetched: with its key, only from
    its API hosts, ``interval`` seconds apart."""

    headers: dict[str, str]
    guard: Guard
    interval: float

    def get(self, url: str, *, delay: float | None = None) -> UpstreamRequest:
        wait = self.interval if delay is None else delay
        return UpstreamRequest("GET", url, self.headers, b"", guard=self.guard, delay=wait)

    def cancel(self, method: str, url: str) -> UpstreamRequest:
        """A job's cancel call: with the key, so only to the API hosts, at once."""
        return UpstreamRequest(method, url, self.headers, b"", guard=self.guard)


# What a status document says: poll again (this call), or the result URLs.
Step = UpstreamRequest | list[str]

# A URL kept in a checkpoint: absolute http(s), a host without credentials, no
# fragment, no whitespace. Only its shape is checked here; where it may go is
# the driver's to check, with the adapter's Guard, as for any provider URL.
CheckpointUrl = Annotated[str, Meta(pattern=r"^https?://[^\s/?#@]+(?:[/?][^\s#]*)?$", max_length=2048)]
# Far more than any adapter writes; anything larger was not written by one.
_CHECKPOINT_LIMIT = 8192


class Checkpoint(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="kind"):
    """What a resumed translator goes on from. Each subclass is tagged with
    its adapter and format (``"bfl/1"``), and takes no field it does not
    know: a checkpoint naming another adapter or format, or carrying another
    one's fields, is refused instead of misread."""

    # The `created` the first translator reported: the resumed one answers as it would have.
    created: Annotated[int, Meta(ge=0)]


CheckpointT = TypeVar("CheckpointT", bound=Checkpoint)


def read_checkpoint(provider: str, decoder: msgspec.json.Decoder[CheckpointT], data: bytes) -> CheckpointT:
    """The checkpoint in ``data``, or ``UpstreamProtocolError`` if it is not one this adapter wrote."""
    if len(data) > _CHECKPOINT_LIMIT:
        raise UpstreamProtocolError(f"provider {provider!r} cannot resume the job: its checkpoint is over {_CHECKPOINT_LIMIT} bytes")
    try:
        return decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise UpstreamProtocolError(
            f"provider {provider!r} cannot resume the job: its checkpoint is not one this adapter wrote ({exc})"
        ) from None


def resumed_writer(request: ImageRequest, meta: ImageMeta) -> ImagesWriter:
    """The writer a resumed translator answers with: the first one's, for the same request."""
    event = EDIT_COMPLETED if isinstance(request, ImageEditRequest) else GENERATION_COMPLETED
    return ImagesWriter(request.streaming, meta, event=event)


_IMAGE_TYPES = ("image/", "application/octet-stream", "binary/octet-stream")
_FORMATS = {"image/png": "png", "image/jpeg": "jpeg", "image/jpg": "jpeg", "image/webp": "webp"}
_BASE64 = re.compile(rb"[A-Za-z0-9+/]+={0,2}")
_encoder = msgspec.json.Encoder()


class FetchingTranslator:
    """Subclasses implement ``step`` (read a status document) and ``error``."""

    __slots__ = (
        "_as_urls", "_cancel", "_checkpoint", "_download_guard", "_encoder", "_opened", "_opening", "_urls", "downloading",
        "polling", "provider", "writer",
    )

    def __init__(
        self,
        provider: str,
        first: UpstreamRequest,
        writer: ImagesWriter,
        headers: dict[str, str],
        download_guard: Guard,
        polling: Polling,
        *,
        as_urls: bool,
    ) -> None:
        self.provider = provider
        self.polling = polling
        self.writer = writer
        # Jobs cannot stream: a streaming client waits with keep-alives.
        self._opening = Opening(first, headers, waits=writer.stream)
        self._download_guard = download_guard
        self._as_urls = as_urls and not writer.stream
        self._urls: deque[str] = deque()
        self._encoder = Base64Encoder()
        self._opened = False
        self.downloading = False
        # The call that cancels the provider's job, while one runs.
        self._cancel: UpstreamRequest | None = None
        # What another process needs to go on with the job, once the provider named it.
        self._checkpoint: bytes | None = None

    def running(self, cancel: UpstreamRequest | None) -> None:
        """The provider named its job (still working): how to cancel it, if it can be."""
        self._cancel = cancel

    def ended(self) -> None:
        """The provider's job is over (done, failed or cancelled): nothing to cancel."""
        self._cancel = None

    def cancel(self) -> UpstreamRequest | None:
        return self._cancel

    def resumes_with(self, state: Checkpoint) -> None:
        """The provider named its job, or where it stands changed: ``state`` is
        what the adapter's ``resume`` needs to go on with it in another process."""
        # Encoded here, once per status document at most: checkpoint() only hands it over.
        self._checkpoint = _encoder.encode(state)

    def checkpoint(self) -> bytes | None:
        return self._checkpoint

    def step(self, body: bytes) -> Step:
        raise NotImplementedError

    def error(self, status: int, headers: Mapping[str, str], body: bytes) -> GatewayError:
        raise NotImplementedError

    def request(self) -> Opening:
        return self._opening

    def response(self, status: int, headers: Mapping[str, str]) -> ResponseHead:
        if not self.downloading:
            json_media(self.provider, status, headers)
            return self.writer.head(collect=True)
        media = headers.get("Content-Type", "").lower()
        if media and not media.startswith(_IMAGE_TYPES):
            raise UpstreamProtocolError(f"provider {self.provider!r} served a result file of type {media!r}, not an image")
        self._encoder = Base64Encoder()
        self._opened = False
        self._saw_format(media)
        return self.writer.head()

    def collected(self, body: bytes) -> ResponseHead | UpstreamRequest:
        step = self.step(body)
        if isinstance(step, UpstreamRequest):
            return step
        self.ended()
        if not step:
            raise UpstreamProtocolError(f"provider {self.provider!r} finished the job without any image")
        self._urls = deque(step)
        if self._as_urls or step[0].startswith("data:"):
            # Nothing to download first: finish() writes what is at hand.
            return self.writer.head()
        return self._download(self._urls.popleft())

    def feed(self, chunk: bytes) -> bytes:
        out = self._encoder.feed(chunk)
        if not self._opened:
            self._opened = True
            return self.writer.open() + out
        return out

    def finish(self) -> Ending:
        if self._as_urls:
            return Ending(b"".join(self.writer.url(url) for url in self._urls) + self.writer.finish(None))
        out = b""
        if self.downloading:
            if not self._opened:
                raise UpstreamProtocolError(f"provider {self.provider!r} served an empty result file")
            self.downloading = False
            out = self._encoder.finish() + self.writer.close()
        while self._urls:
            url = self._urls.popleft()
            if not url.startswith("data:"):
                return Ending(out, then=self._download(url))
            out += self._inline(url)
        return Ending(out + self.writer.finish(None))

    def _inline(self, uri: str) -> bytes:
        """An image some providers put in their answer as a ``data:`` URI.

        It arrived inside a status document (read whole, at most 1 MiB), so
        it is relayed as given; only the base64 alphabet may pass, since it
        goes into a JSON string.
        """
        params, comma, payload = uri[5:].partition(",")
        media, *flags = params.split(";")
        data = payload.encode()
        if not data or not comma or "base64" not in flags or len(data) % 4 or not _BASE64.fullmatch(data):
            raise UpstreamProtocolError(f"provider {self.provider!r} gave a data: URI that is not base64")
        if not media.lower().startswith("image/"):
            raise UpstreamProtocolError(f"provider {self.provider!r} gave a data: URI of type {media[:60]!r}, not an image")
        self._saw_format(media)
        return self.writer.open() + data + self.writer.close()

    def _saw_format(self, content_type: str) -> None:
        # The provider may not have honoured the format asked for: report the
        # format of the file actually relayed.
        fmt = _FORMATS.get(content_type.partition(";")[0].strip().lower())
        if fmt is not None:
            self.writer.meta.output_format = fmt

    def _download(self, url: str) -> UpstreamRequest:
        # No provider headers: the key stays with the provider's API hosts.
        self.downloading = True
        return UpstreamRequest("GET", url, {}, b"", guard=self._download_guard)
