"""One finished request as the usage ledger keeps it, and its exact cost.

``LedgerRow`` is the ledger's unit: one per request, written once, never
updated. It is a msgspec Struct so that the same type is the database row
(``store.insert``) and the spool's JSON line (``writer``): a row spooled during
an outage is decoded back to exactly what would have been inserted.

Spool lines are JSON *objects* (field names, not positions): a spool written by
one release is read by the next, so a field added later needs a default and an
unknown field (a spool from a newer release, after a rollback) is ignored.

Cost is integer micro-dollars, computed exactly (``cost_micro_usd``), never
summed from floats: the ledger is what a key is billed by, and a float sum over
a million rows drifts. A request without a price has cost ``None`` (and price
``"unpriced"``), never 0: "free" and "unknown" must not look alike.
"""

from __future__ import annotations

import functools
import math
from decimal import Decimal

import msgspec

from pixelgate.core.prices import Price
from pixelgate.core.record import RequestRecord
from pixelgate.core.usage import token_counts

__all__ = ["UNPRICED", "LedgerRow", "cost_micro_usd", "row_from_record"]

# The ``price`` of a row no price applied to.
UNPRICED = "unpriced"

_MICRO = 1_000_000


class LedgerRow(msgspec.Struct, frozen=True):
    """One finished request (see the module docstring)."""

    # Unix seconds, when the request ended.
    at: float
    request_id: str
    # The gateway key's id and configured name (never the key itself).
    key_id: str | None
    key_name: str | None
    # "generation" or "edit" (RequestRecord's; a str, so a later operation needs no migration).
    operation: str
    endpoint: str
    # The public model name, and where the request went.
    model: str | None
    provider: str | None
    upstream_model: str | None
    status: int
    error_type: str | None
    stream: bool
    images: int
    partials: int
    input_text_tokens: int
    input_image_tokens: int
    output_text_tokens: int
    output_image_tokens: int
    # Integer micro-dollars, rounded half-up once per row; None when unpriced (never 0).
    cost_micro_usd: int | None
    # The price entry's name (the public model whose price applied), or "unpriced".
    price: str
    duration_s: float
    upstream_headers_s: float | None
    first_partial_s: float | None
    completed_s: float | None
    bytes_in: int
    bytes_out: int
    attempts: int
    job_id: str | None
    # A prefix of the Idempotency-Key's sha256 (never the key).
    idempotency_key: str | None
    replayed: bool
    # Only when prompt logging is on; the caller decides.
    prompt: str | None


def _decimal(usd: float) -> Decimal:
    """A configured price as the decimal it was written as.

    ``repr`` of a float is the shortest decimal that reads back as that float,
    i.e. what the config file said ("0.04", not 0.040000000000000000832...), and
    a Decimal holds it exactly."""
    if not math.isfinite(usd):
        raise ValueError(f"a price must be a finite number of USD, not {usd!r}")
    return Decimal(repr(usd))


@functools.lru_cache(maxsize=1024)  # a config has a handful of prices; converting them is most of a row's cost
def _scaled(per_image: float, input_text: float, input_image: float, output_text: float, output_image: float) -> tuple[int, tuple[int, ...]]:
    """The five rates as integers over one power of ten: ``(10^k, (per_image × 10⁶ × 10^k, input_text × 10^k, ...))``.

    Exact (each is the decimal the config wrote, so ``× 10^k`` is a whole
    number for k at least its count of decimals), and what lets a row's cost be
    plain integer arithmetic: about 1 us, where Fractions took 11."""
    decimals = [_decimal(per_image) * _MICRO, *map(_decimal, (input_text, input_image, output_text, output_image))]
    # as_tuple().exponent is negative for decimals (a finite Decimal's is an int).
    k = max(0, *(-int(d.as_tuple().exponent) for d in decimals))
    scale = 10**k
    return scale, tuple(int(d.scaleb(k)) for d in decimals)


def cost_micro_usd(price: Price, images: int, tokens: dict[tuple[str, str], int]) -> int:
    """Exact micro-dollars for one request, rounded half-up once.

    Integer arithmetic throughout (the prices as written, see ``_scaled``):
    ``images × per_image × 10⁶`` plus, per direction and modality,
    ``tokens × USD-per-million`` (a USD price per million tokens *is* a
    micro-dollar price per token). The exact total is rounded half-up to a
    whole micro-dollar at the end, once per row, so no rounding error
    accumulates within a request and a sum of rows is exact."""
    scale, (image, in_text, in_image, out_text, out_image) = _scaled(
        price.per_image, price.input_text, price.input_image, price.output_text, price.output_image
    )
    total = (
        images * image
        + tokens["input", "text"] * in_text
        + tokens["input", "image"] * in_image
        + tokens["output", "text"] * out_text
        + tokens["output", "image"] * out_image
    )
    # Half-up: floor(total / scale + 1/2), on integers.
    return (2 * total + scale) // (2 * scale)


def row_from_record(
    record: RequestRecord, *, at: float, key_id: str | None, price: Price | None, price_name: str | None, prompt: str | None
) -> LedgerRow:
    """The ledger row for a finished request.

    ``price`` is the entry that applied (looked up by the public model) and
    ``price_name`` its name (the public model when None); no price means cost
    None and price ``"unpriced"``. Raises ValueError for a price that is not a
    finite number (the config should refuse one before it gets here), and for a
    price without a name (neither ``price_name`` nor the record's model)."""
    zero = {("input", "text"): 0, ("input", "image"): 0, ("output", "text"): 0, ("output", "image"): 0}
    tokens = token_counts(record.usage) if record.usage is not None else zero
    cost: int | None = None
    name: str | None = UNPRICED
    if price is not None:
        cost = cost_micro_usd(price, record.images, tokens)
        name = price_name if price_name is not None else record.model
    if name is None:
        raise ValueError("a priced row needs the price's name (price_name, or the record's model)")
    return LedgerRow(
        at=at,
        request_id=record.request_id,
        key_id=key_id,
        key_name=record.key,
        operation=record.operation,
        endpoint=record.endpoint,
        model=record.model,
        provider=record.provider,
        upstream_model=record.upstream_model,
        status=record.status,
        error_type=record.error_type,
        stream=record.stream,
        images=record.images,
        partials=record.partials,
        input_text_tokens=tokens["input", "text"],
        input_image_tokens=tokens["input", "image"],
        output_text_tokens=tokens["output", "text"],
        output_image_tokens=tokens["output", "image"],
        cost_micro_usd=cost,
        price=name,
        duration_s=record.duration_s,
        upstream_headers_s=record.upstream_headers_s,
        first_partial_s=record.first_partial_s,
        completed_s=record.completed_s,
        bytes_in=record.bytes_in,
        bytes_out=record.bytes_out,
        attempts=record.attempts,
        job_id=record.job_id,
        idempotency_key=record.idempotency_key,
        replayed=record.replayed,
        prompt=prompt,
    )
