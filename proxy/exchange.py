"""One attempt at one provider: what it is given, and what came of it.

Values shared by the driver (``proxy.upstream``), the relay, dispatch and the
handlers, so none of them imports another for its types.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pixelgate.core.translator import Translator
from pixelgate.core.usage import Usage
from pixelgate.proxy.config import Timeouts
from pixelgate.proxy.transport import Transport

__all__ = ["Exchange", "Outcome"]


@dataclass(slots=True)
class Exchange:
    """Everything an attempt needs, decided before it starts."""

    provider: str
    # Built by the adapter for this request; only proxy.upstream drives it.
    translator: Translator
    transport: Transport
    timeouts: Timeouts
    headers: dict[str, str]  # gateway headers every response carries
    # Told the provider job's checkpoint (core.translator.Resumable) each time
    # it changes, so a job runner can resume polling after a restart instead
    # of submitting again. Called synchronously by the driver: it only keeps
    # the value (what it raises ends the exchange like any error).
    checkpoint: Callable[[bytes | None], None] | None = None


@dataclass(slots=True)
class Outcome:
    """What happened, for metrics and the access log."""

    status: int = 0
    images: int = 0
    partials: int = 0
    usage: Usage | None = None
    # Request bodies handed to the transport (every call of the exchange).
    bytes_sent: int = 0
    bytes_out: int = 0
    error_type: str | None = None
    # Seconds from the start of the attempt to the upstream's first status line.
    upstream_headers_s: float | None = None
    # Loop times: the upstream request handed to the transport; the first
    # partial image and the first completed image written to the client.
    sent_at: float | None = None
    first_partial_at: float | None = None
    completed_at: float | None = None
    # Upstream bytes read to the same bytes written to the client (first chunk).
    response_overhead: float | None = None
    keepalives: int = 0
