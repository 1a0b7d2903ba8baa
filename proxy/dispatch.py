"""Attempts: retries of a deployment, then failover to the next, before the first byte.

For each deployment in route order, while the request's deadline allows:

- an open circuit breaker skips the deployment;
- a failure the provider caused (connect error, timeout before any byte
  reached the client, 408, 429, 5xx, malformed answer) is retried on the same
  deployment after a backoff (exponential, full jitter, or the upstream's
  ``Retry-After`` up to a cap), then the next deployment is tried;
- a failure the client caused (400 invalid request, moderation, 404, ...)
  returns at once: another provider would refuse it too, or bill for it;
- once a byte has reached the client there is no failover: the relay ends the
  response itself (``proxy.relay``).

When every attempt fails, the client gets the most informative error (a 429
stays a 429 with its ``Retry-After``). ``x-pixelgate-attempts`` counts the
attempts and ``x-pixelgate-attempt-log`` lists them on every response.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web

from pixelgate.core.errors import (
    GatewayError,
    NoProviderAvailable,
    UpstreamError,
    UpstreamFailure,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from pixelgate.proxy.breaker import Breaker
from pixelgate.proxy.config import RoutingConfig
from pixelgate.proxy.exchange import Exchange, Outcome
from pixelgate.proxy.relay import RelaySettings, relay
from pixelgate.proxy.routing import Route

__all__ = ["Attempt", "Observer", "dispatch", "retry_after", "success_headers"]


@dataclass(slots=True)
class Attempt:
    route: Route
    # For the attempt log header: "200", another HTTP status, or an error kind.
    result: str
    # For metrics: "ok" or an error type from metrics.ERROR_TYPES.
    kind: str = "ok"


class Observer(Protocol):
    """Told when each attempt starts and how it ended (metrics, access log)."""

    def started(self, route: Route) -> None: ...

    def finished(self, attempt: Attempt, outcome: Outcome | None) -> None: ...


def _fails_over(err: GatewayError) -> bool:
    """Is this the provider's fault, so that another attempt may succeed?"""
    if isinstance(err, UpstreamFailure):
        return True
    if isinstance(err, UpstreamError):
        return err.status in (408, 429) or err.status >= 500
    return False


def _retries_same(err: GatewayError) -> bool:
    # Bad gateway credentials will not fix themselves in a second.
    return _fails_over(err) and err.code != "upstream_auth_failed"


def retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds the upstream asked to wait: ``retry-after-ms``, else ``retry-after``
    (seconds or an HTTP date), as the official SDKs read them."""
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    if (value := headers.get("retry-after")) is not None:
        try:
            return max(0.0, float(value))
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(value).timestamp()
            except (TypeError, ValueError):
                return None
            return max(0.0, when - (time.time() if now is None else now))
    return None


def _rank(err: GatewayError) -> int:
    """Lower is more informative to the client, when every attempt failed."""
    if isinstance(err, UpstreamError):
        return 0 if err.status == 429 else 1
    if isinstance(err, UpstreamTimeout):
        return 2
    if err.code == "upstream_auth_failed":
        return 3
    if isinstance(err, UpstreamProtocolError):
        return 4
    return 5


def _result(err: GatewayError) -> str:
    if isinstance(err, UpstreamError):
        return str(err.status)
    return err.error_type


def _log(attempts: list[Attempt]) -> str:
    return ", ".join(f"{a.route.provider.name}={a.result}" for a in attempts)


async def dispatch(
    request: web.BaseRequest | None,
    routes: list[Route],
    exchange: Callable[[Route, list[Attempt], float], Exchange],
    settings: RelaySettings,
    routing: RoutingConfig,
    observer: Observer,
) -> tuple[web.StreamResponse, Route, Outcome]:
    """Try ``routes`` until one answers; raise the best error if none does.

    ``exchange(route, attempts_so_far, seconds_left)`` builds each attempt;
    ``observer`` is told when each starts and how it ended.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + routing.deadline
    attempts: list[Attempt] = []
    errors: list[tuple[GatewayError, Route]] = []
    for route in routes:
        breaker = route.breaker
        if not breaker.allow():
            attempts.append(attempt := Attempt(route, "circuit_open", "circuit_open"))
            observer.finished(attempt, None)
            continue
        for retry in range(routing.retries + 1):
            left = deadline - loop.time()
            if left <= 0:
                break
            outcome = Outcome()
            ex = exchange(route, attempts, left)
            observer.started(route)
            try:
                response = await relay(request, ex, settings, outcome)
            except GatewayError as err:
                latency = outcome.upstream_headers_s or 0.0
                breaker.record(ok=not _fails_over(err), latency=latency)
                attempts.append(attempt := Attempt(route, _result(err), err.error_type))
                observer.finished(attempt, outcome)
                if not _fails_over(err):
                    raise _annotated(err, attempts, route) from None
                errors.append((err, route))
                delay = _delay(err, retry, routing)
                if retry == routing.retries or not _retries_same(err) or delay is None or delay >= deadline - loop.time():
                    break
                await asyncio.sleep(delay)
                continue
            except asyncio.CancelledError:
                breaker.release()  # the client left: no verdict on the provider
                attempts.append(attempt := Attempt(route, "client_disconnect", "client_disconnect"))
                observer.finished(attempt, outcome)
                raise
            _record_success(breaker, outcome)
            kind = outcome.error_type or "ok"
            attempts.append(attempt := Attempt(route, "200" if kind == "ok" else kind, kind))
            observer.finished(attempt, outcome)
            return response, route, outcome
    if not errors:
        if not attempts:
            raise _annotated(UpstreamTimeout("The request's routing deadline passed before any attempt."), attempts, None)
        waits = [r.breaker.retry_in() for r in routes]
        unavailable = NoProviderAvailable(
            "Every provider for this model is failing and temporarily out of rotation; retry later.",
            headers={"Retry-After": str(max(1, round(min(waits, default=1))))},
        )
        raise _annotated(unavailable, attempts, None)
    best, route = min(errors, key=lambda pair: _rank(pair[0]))
    raise _annotated(best, attempts, route)


def _record_success(breaker: Breaker, outcome: Outcome) -> None:
    # A stream that broke after its first byte is the provider's failure too.
    failed = outcome.error_type in ("protocol", "timeout", "status_5xx")
    breaker.record(ok=not failed, latency=outcome.upstream_headers_s or 0.0)


def _delay(err: GatewayError, retry: int, routing: RoutingConfig) -> float | None:
    """Backoff before retrying the same deployment, or None not to retry it."""
    asked = retry_after(err.headers)
    if asked is not None:
        return asked if asked <= routing.retry_after_max else None
    return random.uniform(0, min(routing.backoff_max, routing.backoff_base * 2**retry))


def _annotated(err: GatewayError, attempts: list[Attempt], source: Route | None) -> GatewayError:
    """Attempt headers, and the provider whose error this is (for the client and the metrics)."""
    err.headers["x-pixelgate-attempts"] = str(len(attempts))
    if source is not None:
        err.headers["x-pixelgate-provider"] = source.provider.name
    if attempts:
        err.headers["x-pixelgate-attempt-log"] = _log(attempts)
    if isinstance(err, (UpstreamTimeout, UpstreamProtocolError)):
        # The provider may have made (and billed) the image before the
        # failure: an automatic SDK retry could pay for it twice.
        err.headers["x-should-retry"] = "false"
    return err


def success_headers(attempts: list[Attempt], route: Route) -> dict[str, str]:
    """Attempt headers for a response about to start from ``route``."""
    log = _log([*attempts, Attempt(route, "200")])
    return {"x-pixelgate-attempts": str(len(attempts) + 1), "x-pixelgate-attempt-log": log}
