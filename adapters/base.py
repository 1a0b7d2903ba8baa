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
    after the exchange              ──►     usage()        -> Usage it translated away, if any
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar, Protocol

import msgspec

from adapters.openai_wire import Usage
from proxy.errors import GatewayError
from proxy.schema import ImageGenerationRequest

__all__ = ["Adapter", "NoOptions", "ResponseHead", "Translator", "UpstreamRequest"]


class UpstreamRequest(msgspec.Struct):
    method: str
    url: str
    headers: dict[str, str]
    body: bytes


class ResponseHead(msgspec.Struct):
    """How the relay should treat a successful upstream response."""

    # Relay as server-sent events (framed, keep-alives) or as one body.
    stream: bool
    content_type: str
    # Upstream headers the client gets (an allow-list; never credentials).
    headers: dict[str, str] = {}
    # The body bytes reach the client unchanged, so its length is known.
    passthrough: bool = True


class Translator(Protocol):
    def request(self) -> UpstreamRequest: ...

    def response(self, status: int, headers: Mapping[str, str]) -> ResponseHead: ...

    def feed(self, chunk: bytes) -> bytes | None: ...

    def finish(self) -> bytes: ...

    def error(self, status: int, headers: Mapping[str, str], body: bytes) -> GatewayError: ...

    def usage(self) -> Usage | None: ...


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
