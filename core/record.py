"""What one request and each of its attempts did: for the metrics and the access log.

Filled by the proxy as the request goes, read after the last byte; plain
values, so that ``pixelgate.metrics`` needs nothing of the proxy's own types.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from pixelgate.core.prices import Price
from pixelgate.core.usage import Usage

__all__ = ["AttemptRecord", "RequestRecord"]


@dataclass(slots=True)
class RequestRecord:
    """One request, as the access log and the metrics see it."""

    request_id: str
    endpoint: str
    stream: bool
    # "generation" or "edit" (a bounded label).
    operation: str = "generation"
    status: int = 500
    provider: str | None = None
    model: str | None = None
    upstream_model: str | None = None
    error_type: str | None = None
    attempts: int = 0
    duration_s: float = 0.0
    # Seconds from sending the (last) attempt to the upstream's status line.
    upstream_headers_s: float | None = None
    first_partial_s: float | None = None
    completed_s: float | None = None
    overhead_request_s: float | None = None
    overhead_response_s: float | None = None
    usage: Usage | None = None
    images: int = 0
    partials: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    keepalives: int = 0
    cost_usd: float | None = None
    # The gateway key's configured name (never the key itself).
    key: str | None = None
    # A prefix of the Idempotency-Key's sha256 (never the key), and whether
    # this response was replayed from the first request with it.
    idempotency_key: str | None = None
    replayed: bool = False
    # The async job this request submitted, or whose run this is (proxy.jobs).
    job_id: str | None = None
    # The price table when the request started: a config reload mid-request does not
    # change what it costs (None: the current table).
    prices: Mapping[str, Price] | None = None

    def price(self, current: Mapping[str, Price]) -> Price | None:
        """The price of this request's model, from the table it started under."""
        table = self.prices if self.prices is not None else current
        return table.get(self.model) if self.model is not None else None


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One upstream attempt, once it has ended."""

    provider: str
    model: str
    # "ok", or the error type (metrics.ERROR_TYPES) that ended it.
    kind: str
    # Whether the attempt was sent (a circuit-open skip never was).
    sent: bool
    bytes_sent: int
    upstream_headers_s: float | None
    # The deployment's circuit state after it: closed, half_open or open.
    breaker_state: str
    # What came before it, when the previous attempt failed.
    follows: Literal["retry", "fallback"] | None = None
