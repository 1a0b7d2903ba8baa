"""The per-request translation interface every adapter implements.

An adapter turns one client request into one upstream request and the
upstream's answer back into OpenAI's shape. It does no I/O: the relay owns the
sockets, the timeouts and the client; the adapter only looks at bytes and
headers it is handed. Modelled on Envoy AI Gateway's translator interface.

    relay                                   translator
    ─────                                   ──────────
    build the upstream call         ──►     request()
    upstream status >= 400          ──►     error(status, headers, body)  -> GatewayError
    upstream status 2xx             ──►     response(status, headers)     -> ResponseHead
    every body chunk                ──►     feed(chunk)    -> bytes, or None = pass through untouched
    upstream EOF                    ──►     finish()       -> trailing bytes (may raise GatewayError)
    then                            ──►     next_call()    -> another UpstreamRequest, or None: done
    after the exchange              ──►     usage()        -> Usage it translated away, if any

Providers that answer in several calls (submit, poll, download the result)
drive the relay through ``next_call``: a response whose head says ``collect``
is read whole (it is a small status document) and handed to ``collected``;
the relay then asks for the next call, waiting ``delay`` seconds first (or,
if ``collected`` returned a head, relays what ``finish`` makes of it). Calls
to hosts named in a provider's answer carry a ``Guard``: the relay refuses
hosts outside it and bodies over its size, so a provider's answer cannot turn
the gateway into an open fetcher (or send the provider key elsewhere).

An adapter whose upstream cannot stream sets ``waits``: a streaming client
then gets keep-alive comments while the upstream works (see proxy.relay).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar, Protocol

import msgspec

from adapters.openai_wire import Usage
from proxy.errors import GatewayError
from proxy.schema import ImageGenerationRequest

__all__ = ["Adapter", "Guard", "NoOptions", "ResponseHead", "Translator", "TranslatorBase", "UpstreamRequest", "check_base_url"]


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
    body: bytes
    # Set on calls to URLs taken from a provider's answer (polls, downloads).
    guard: Guard | None = None
    # Seconds to wait before making this call (a polling interval).
    delay: float = 0.0


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


class Translator(Protocol):
    # Gateway headers for the client's response (e.g. parameters dropped).
    headers: dict[str, str]
    # The upstream cannot stream: keep a streaming client's connection alive.
    waits: bool

    def request(self) -> UpstreamRequest: ...

    def collected(self, body: bytes) -> ResponseHead | None:
        """A collected status document; a head if it was the answer itself
        (e.g. result URLs relayed as URLs), whose bytes ``finish`` returns."""
        ...

    def next_call(self) -> UpstreamRequest | None: ...

    def response(self, status: int, headers: Mapping[str, str]) -> ResponseHead: ...

    def feed(self, chunk: bytes) -> bytes | None: ...

    def finish(self) -> bytes: ...

    def error(self, status: int, headers: Mapping[str, str], body: bytes) -> GatewayError: ...

    def usage(self) -> Usage | None: ...


class TranslatorBase:
    """Defaults for the single-call, as-it-comes case."""

    __slots__ = ()

    headers: dict[str, str] = {}  # noqa: RUF012 - never mutated; instances assign their own
    waits = False

    def collected(self, body: bytes) -> ResponseHead | None:
        raise AssertionError(f"{type(self).__name__} asked for no collected responses")

    def next_call(self) -> UpstreamRequest | None:
        return None

    def usage(self) -> Usage | None:
        return None


def check_base_url(base_url: str | None, *, required: bool = False) -> None:
    """For ``Adapter.check``: an http(s) URL, if given (or if required)."""
    if base_url is None:
        if required:
            raise ValueError("base_url: required for this adapter")
        return
    if not base_url.startswith(("http://", "https://")):
        raise ValueError(f"base_url: must start with http:// or https://, got {base_url!r}")


class NoOptions(msgspec.Struct, forbid_unknown_fields=True):
    """For adapters with no settings of their own."""


class Adapter(Protocol):
    """A configured provider: builds one translator per request."""

    Options: ClassVar[type[msgspec.Struct]]

    @classmethod
    def check(cls, *, base_url: str | None, api_key: str | None, options: msgspec.Struct) -> None:
        """Raise ``ValueError("key: problem")`` for settings it cannot use."""

    def __init__(
        self, *, name: str, base_url: str | None, api_key: str | None, headers: Mapping[str, str], options: msgspec.Struct
    ) -> None: ...

    def translator(
        self, request: ImageGenerationRequest, body: bytes, upstream_model: str, request_id: str
    ) -> Translator: ...
