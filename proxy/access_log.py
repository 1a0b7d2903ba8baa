"""One JSON line per generation request, on the ``pixelgate.access`` logger.

What is logged: request id, provider, models, status, stream, durations by
stage, usage, images, bytes, error type, cost, the worker's pid, and the
gateway key's configured name, and for a request with an ``Idempotency-Key`` a
prefix of the key's sha256 (and ``replayed`` when it was answered from the
first request's record). What never is: provider keys, gateway keys (or
any part of one), the client's headers, and prompts, unless the operator turns
``server.log_prompts`` on.
"""

from __future__ import annotations

import logging
import os
import time

import msgspec

from pixelgate.core.record import RequestRecord
from pixelgate.core.usage import Usage

__all__ = ["log_request"]

log = logging.getLogger("pixelgate.access")


class _Line(msgspec.Struct, omit_defaults=True):
    ts: float
    request_id: str
    endpoint: str
    operation: str
    status: int
    stream: bool
    duration_ms: float
    worker: int
    attempts: int = 0
    provider: str | None = None
    model: str | None = None
    upstream_model: str | None = None
    upstream_headers_ms: float | None = None
    first_partial_ms: float | None = None
    completed_ms: float | None = None
    images: int = 0
    partials: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    keepalives: int = 0
    usage: Usage | None = None
    cost_usd: float | None = None
    error_type: str | None = None
    key: str | None = None
    idempotency_key: str | None = None
    replayed: bool = False
    job_id: str | None = None
    prompt: str | None = None


_encoder = msgspec.json.Encoder()


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def log_request(r: RequestRecord, prompt: str | None = None) -> None:
    if not log.isEnabledFor(logging.INFO):
        return
    line = _Line(
        ts=round(time.time(), 3),
        request_id=r.request_id,
        endpoint=r.endpoint,
        operation=r.operation,
        status=r.status,
        stream=r.stream,
        duration_ms=round(r.duration_s * 1000, 3),
        worker=os.getpid(),
        attempts=r.attempts,
        provider=r.provider,
        model=r.model,
        upstream_model=r.upstream_model,
        upstream_headers_ms=_ms(r.upstream_headers_s),
        first_partial_ms=_ms(r.first_partial_s),
        completed_ms=_ms(r.completed_s),
        images=r.images,
        partials=r.partials,
        bytes_in=r.bytes_in,
        bytes_out=r.bytes_out,
        keepalives=r.keepalives,
        usage=r.usage,
        cost_usd=r.cost_usd,
        error_type=r.error_type,
        key=r.key,
        idempotency_key=r.idempotency_key,
        replayed=r.replayed,
        job_id=r.job_id,
        prompt=prompt,
    )
    log.info("%s", _encoder.encode(line).decode())
