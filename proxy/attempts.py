"""What a synchronous request and an async job share once admitted: each
attempt's exchange, the observer that follows the attempts into metrics and
the access-log record, the request of a provider whose images go into
storage, and the record's finish."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Literal

import msgspec

from pixelgate.adapters.base import AdapterBase
from pixelgate.core.errors import GatewayError
from pixelgate.core.prices import cost_usd
from pixelgate.core.record import AttemptRecord, RequestRecord
from pixelgate.core.request import ImageEditRequest, ImageGenerationRequest, with_field
from pixelgate.core.translator import Edit, Generation, Translator
from pixelgate.core.upload import InputImage
from pixelgate.metrics import Metrics
from pixelgate.proxy.dispatch import Attempt, success_headers
from pixelgate.proxy.exchange import Exchange, Outcome
from pixelgate.proxy.routing import Route

__all__ = [
    "KEEP", "Observer", "edit_translator", "exchanges", "finish_record", "generation_translator", "note_error",
    "upstream_format",
]


class Observer:
    """Follows one request's attempts into its metrics and its access-log record."""

    __slots__ = ("_metrics", "last", "outcome", "record")

    def __init__(self, metrics: Metrics, record: RequestRecord) -> None:
        self._metrics = metrics
        self.record = record
        self.last: Attempt | None = None
        self.outcome: Outcome | None = None

    def started(self, route: Route) -> None:
        self._metrics.attempt_started(route.provider.name)

    def finished(self, attempt: Attempt, outcome: Outcome | None) -> None:
        route = attempt.route
        upstream_headers_s = outcome.upstream_headers_s if outcome else None
        bytes_sent = outcome.bytes_sent if outcome else 0
        follows: Literal["retry", "fallback"] | None = None
        if self.last is not None and self.last.kind != "ok":
            follows = "retry" if self.last.route.breaker is route.breaker else "fallback"
        self._metrics.observe_attempt(
            AttemptRecord(
                provider=route.provider.name,
                model=route.public_model,
                kind=attempt.kind,
                sent=attempt.kind != "circuit_open",
                bytes_sent=bytes_sent,
                upstream_headers_s=upstream_headers_s,
                breaker_state=route.breaker.state.value,
                follows=follows,
            )
        )
        r = self.record
        r.attempts += 1
        r.bytes_in += bytes_sent
        r.provider, r.model, r.upstream_model = route.provider.name, route.public_model, route.upstream_model
        if upstream_headers_s is not None:
            r.upstream_headers_s = upstream_headers_s
        self.last = attempt
        if outcome is not None:
            self.outcome = outcome


# The request's response_format left as it is (see _upstream_format).
KEEP = "keep"


def upstream_format(route: Route, always: bool = False) -> str | None:
    """What a route's provider is asked for when the gateway stores the images: ``b64_json`` from
    one that cannot give URLs; from an OpenAI-compatible upstream, its model's own default (None:
    the field dropped; GPT image models refuse ``response_format`` and answer base64, DALL-E
    answers URLs); from one that gives URLs, those (``KEEP``)."""
    adapter = route.provider.adapter
    if not isinstance(adapter, AdapterBase):
        return KEEP
    if adapter.table.judges == "upstream":
        return None
    # always: a job's images, whose provider URLs would expire before the job is read.
    return KEEP if adapter.table.urls and not always else "b64_json"


def generation_translator(
    req: ImageGenerationRequest, body: bytes, request_id: str, *, stores: bool, always: bool = False
) -> Callable[[Route], Translator]:
    """A generation's translator per route; ``stores``: its images go into storage (see upstream_format)."""

    def translator(route: Route) -> Translator:
        r, sent = req, body
        if stores and (fmt := upstream_format(route, always)) != KEEP:
            r = msgspec.structs.replace(req, response_format=fmt or msgspec.UNSET)
            sent = with_field(body, "response_format", fmt)
        return route.provider.adapter.generation(Generation(r, sent, route.upstream_model, request_id))

    return translator


def edit_translator(
    req: ImageEditRequest,
    images: tuple[InputImage, ...],
    mask: InputImage | None,
    fields: tuple[tuple[str, str], ...],
    json_body: bytes | None,
    request_id: str,
    *,
    stores: bool,
    always: bool = False,
) -> Callable[[Route], Translator]:
    """An edit's translator per route, as ``generation_translator``."""

    def translator(route: Route) -> Translator:
        r, form, body = req, fields, json_body
        if stores and (fmt := upstream_format(route, always)) != KEEP:
            r = msgspec.structs.replace(req, response_format=fmt or msgspec.UNSET)
            form = (*((k, v) for k, v in fields if k != "response_format"), *((("response_format", fmt),) if fmt else ()))
            body = with_field(json_body, "response_format", fmt) if json_body is not None else None
        return route.provider.adapter.edit(Edit(r, images, mask, form, body, route.upstream_model, request_id))

    return translator


def exchanges(
    translator: Callable[[Route], Translator],
    request_id: str,
    checkpoint: Callable[[Route, bytes | None], None] | None = None,
) -> Callable[[Route, list[Attempt], float], Exchange]:
    """How dispatch builds each attempt of a request: ``translator`` makes its translator for one
    route; ``checkpoint`` hears of a resumable provider job's handle (an async job's run)."""

    def exchange(route: Route, attempts: list[Attempt], seconds_left: float) -> Exchange:
        timeouts = route.provider.timeouts
        if seconds_left < max(timeouts.total, timeouts.first_byte):
            # The request's deadline bounds every attempt.
            timeouts = msgspec.structs.replace(
                timeouts, total=min(timeouts.total, seconds_left), first_byte=min(timeouts.first_byte, seconds_left)
            )
        headers = {
            "x-request-id": request_id,
            "x-pixelgate-provider": route.provider.name,
            "x-pixelgate-upstream-model": route.upstream_model,
            **success_headers(attempts, route),
        }
        heard = functools.partial(checkpoint, route) if checkpoint is not None else None
        return Exchange(route.provider.name, translator(route), route.provider.transport, timeouts, headers, heard)

    return exchange


def note_error(record: RequestRecord, exc: BaseException) -> None:
    if isinstance(exc, GatewayError):
        record.status, record.error_type = exc.status, exc.error_type
        # Counted against the provider whose error the client gets.
        record.provider = exc.headers.get("x-pixelgate-provider", record.provider)
    elif isinstance(exc, asyncio.CancelledError):
        record.status, record.error_type = 499, "client_disconnect"


def finish_record(
    r: RequestRecord, outcome: Outcome | None, started: float, now: float, body_read: float | None, metrics: Metrics
) -> None:
    """Fill the record from the last attempt's outcome, then count it."""
    r.duration_s = now - started
    if outcome is not None:
        if outcome.sent_at is not None and body_read is not None and r.attempts == 1:
            r.overhead_request_s = outcome.sent_at - body_read
        r.overhead_response_s = outcome.response_overhead
        r.first_partial_s = outcome.first_partial_at - started if outcome.first_partial_at else None
        r.completed_s = outcome.completed_at - started if outcome.completed_at and r.status == 200 else None
        r.usage, r.images, r.partials = outcome.usage, outcome.images, outcome.partials
        r.bytes_out, r.keepalives = outcome.bytes_out, outcome.keepalives
    r.cost_usd = cost_usd(r.price(metrics.prices), r.usage, r.images)
    metrics.observe_request(r)
