"""The answers a request with an ``Idempotency-Key`` can get instead of a result.

Each is the OpenAI error envelope. The 409s that no retry with the same key
can change carry ``x-should-retry: false`` (the openai SDKs retry a 409
otherwise); "still in progress" is the one worth retrying.
"""

from __future__ import annotations

from pixelgate.core.errors import GatewayError
from pixelgate.proxy.idempotency.keys import HEADER

__all__ = ["IdempotencyConflict", "IdempotencyUnavailable", "in_progress", "incomplete", "key_reused", "outgrown", "too_large", "unavailable"]

_FINAL = {"x-should-retry": "false"}
_NEW_KEY = "Send a new Idempotency-Key to run the request again."


class IdempotencyConflict(GatewayError):
    status = 409
    type = "invalid_request_error"
    error_type = "invalid_request"


class IdempotencyUnavailable(GatewayError):
    """The shared store (Redis) cannot be reached: the request is refused, never run unguarded."""

    status = 503
    type = "server_error"
    code = "idempotency_unavailable"


def key_reused() -> IdempotencyConflict:
    return IdempotencyConflict(
        f"This {HEADER} was already used with a different request (another endpoint or body); "
        f"a key stands for one request. {_NEW_KEY}",
        param=HEADER,
        code="idempotency_key_reused",
        headers=_FINAL,
    )


def in_progress() -> IdempotencyConflict:
    return IdempotencyConflict(
        f"A request with this {HEADER} is still in progress; retry it later to get its result.",
        param=HEADER,
        code="idempotency_key_in_use",
        headers={"Retry-After": "1"},
    )


def too_large(limit: int) -> IdempotencyConflict:
    return IdempotencyConflict(
        f"The response to the request with this {HEADER} was larger than this gateway keeps for replays "
        f"({limit} bytes, idempotency.max_response_bytes), so it cannot be replayed. {_NEW_KEY}",
        param=HEADER,
        code="idempotency_result_too_large",
        headers=_FINAL,
    )


def outgrown() -> IdempotencyConflict:
    """For a retry following a response that grew past the limit (an ``event: error`` ends its stream)."""
    return IdempotencyConflict(
        "The response grew past what this gateway keeps for replays (idempotency.max_response_bytes); "
        f"it ends here for this retry. {_NEW_KEY}",
        param=HEADER,
        code="idempotency_result_too_large",
    )


def incomplete() -> IdempotencyConflict:
    return IdempotencyConflict(
        f"The request with this {HEADER} did not finish (its response was cut short, or the gateway running it "
        f"stopped), so there is no result to replay. {_NEW_KEY}",
        param=HEADER,
        code="idempotency_result_incomplete",
        headers=_FINAL,
    )


def unavailable() -> IdempotencyUnavailable:
    return IdempotencyUnavailable(
        "Idempotency keys cannot be checked right now; retry shortly.", param=HEADER, headers={"Retry-After": "1"}
    )
