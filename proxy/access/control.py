"""Access control for one application: who may call, which models, how much.

``authenticate`` runs in the middleware for every ``/v1/*`` request;
``check_model``, ``admit`` and ``settle`` run in the generations handler (they
need the decoded body, and the outcome for the corrections and the charge).
Every refusal is a ``GatewayError`` (401, 403, 429, 503), counted in the
metrics by a bounded reason; key material never reaches a message, a log line
or a label.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from fnmatch import fnmatchcase

from pixelgate.core.errors import AuthenticationFailed, LimitsUnavailable, PermissionDenied, QuotaExceeded, RateLimited
from pixelgate.core.request import ImageRequest
from pixelgate.metrics import Metrics
from pixelgate.proxy.access.config import AccessConfig, Limits
from pixelgate.proxy.access.cors import CorsPolicy, origin_set
from pixelgate.proxy.access.keys import AuthFailure, KeyTable, parse_hash, presented_key
from pixelgate.proxy.access.limits import (
    BackendUnavailable,
    Demand,
    LimitBackend,
    Refused,
    Ticket,
    period_of,
    quota_headers,
)
from pixelgate.proxy.access.memory import MemoryBackend

__all__ = ["AccessControl", "Client"]

log = logging.getLogger("pixelgate.access_control")

_AUTH_MESSAGES: dict[AuthFailure, tuple[str, str]] = {
    AuthFailure.MISSING: (
        "You didn't provide an API key. Send it as `Authorization: Bearer <key>` (or in an `api-key` header).",
        "missing_api_key",
    ),
    AuthFailure.MALFORMED: ("Malformed API key header: expected `Authorization: Bearer <key>`.", "invalid_api_key"),
    AuthFailure.INVALID: ("Incorrect API key provided.", "invalid_api_key"),
    AuthFailure.REVOKED: ("This API key has been revoked.", "revoked_api_key"),
}
_ADJECTIVE = {"day": "daily", "month": "monthly"}
# Warnings about a failing backend: at most one per this many seconds.
_WARN_EVERY = 10.0


@dataclass(frozen=True, slots=True)
class Client:
    """A configured gateway key, as requests see it (no hash, no secret)."""

    name: str
    models: tuple[str, ...]
    limits: Limits
    # Normalised (cors.origin_set); None: the global list applies.
    origins: frozenset[str] | None
    # The default completion webhook of its async jobs.
    webhook_url: str | None = None
    # The key's public id (the part of the key before its secret): the ledger's key_id.
    key_id: str | None = None

    def may_use(self, model: str) -> bool:
        return any(fnmatchcase(model, pattern) for pattern in self.models)


class AccessControl:
    def __init__(self, config: AccessConfig, metrics: Metrics) -> None:
        self.config = config
        self._metrics = metrics
        clients = [
            (
                k.hash,
                Client(
                    k.name,
                    tuple(k.models),
                    k.limits if k.limits is not None else config.default_limits,
                    origin_set(k.cors_origins) if k.cors_origins is not None else None,
                    k.webhook_url,
                    parse_hash(k.hash).key_id,
                ),
                k.revoked,
            )
            for k in config.keys
        ]
        self._table = KeyTable(clients)
        # Who a job's key is when it runs (proxy.jobs): the live keys by name.
        self._by_name = {client.name: client for _, client, revoked in clients if not revoked}
        self.cors = CorsPolicy(config.cors_origins, (k.cors_origins for k in config.keys), config.cors_max_age)
        # Replaced by the Redis backend at start-up when configured (see proxy.access.middleware).
        self.backend: LimitBackend = MemoryBackend()
        self._warned_at = -math.inf

    @property
    def open(self) -> bool:
        """No keys configured: anyone may call, and no limits apply."""
        return len(self._table) == 0

    def client_named(self, name: str) -> Client | None:
        """The key of that name, None if there is none (or it was revoked since)."""
        return self._by_name.get(name)

    def _refuse(self, failure: AuthFailure) -> AuthenticationFailed:
        self._metrics.auth_failure(failure.value)
        message, code = _AUTH_MESSAGES[failure]
        return AuthenticationFailed(message, code=code)

    def authenticate(self, headers: Mapping[str, str]) -> Client | None:
        """The request's key (None in open mode); raises AuthenticationFailed."""
        if self.open:
            return None
        presented = presented_key(headers.get("Authorization"), headers.get("api-key"))
        if isinstance(presented, AuthFailure):
            raise self._refuse(presented)
        result = self._table.check(presented)
        if isinstance(result, AuthFailure):
            raise self._refuse(result)
        return result

    def origin_refused(self) -> PermissionDenied:
        self._metrics.auth_failure("origin_not_allowed")
        return PermissionDenied("This API key may not be used from this origin.", code="origin_not_allowed")

    def check_model(self, client: Client | None, req: ImageRequest) -> None:
        if client is None or not isinstance(req.model, str) or client.may_use(req.model):
            return
        self._metrics.auth_failure("model_not_allowed")
        raise PermissionDenied(f"This API key may not use the model `{req.model}`.", param="model")

    async def admit(self, client: Client | None, req: ImageRequest) -> Ticket | None:
        """Take the request's share of its key's limits; None when none apply.
        Raises RateLimited / QuotaExceeded (429) or LimitsUnavailable (503)."""
        if client is None or not client.limits.enforced:
            return None
        limits = client.limits
        period = period_of(limits.budget_period) if limits.budget_usd is not None else None
        demand = Demand(client.name, limits, req.image_count, req.streaming, period)
        try:
            result = await self.backend.admit(demand, secrets.token_hex(8))
        except BackendUnavailable as exc:
            if self.config.on_backend_error == "open":
                self._metrics.limit_backend_error("admit", "admitted")
                self._warn("limit backend unavailable (%s): admitting without limits (on_backend_error: open)", exc)
                return None
            self._metrics.limit_backend_error("admit", "rejected")
            self._warn("limit backend unavailable (%s): refusing requests (on_backend_error: closed)", exc)
            raise LimitsUnavailable(
                "Rate limits cannot be checked right now; retry shortly.", headers={"Retry-After": "1"}
            ) from None
        if isinstance(result, Refused):
            self._metrics.limit_rejected(client.name, result.limit)
            raise _refusal(result, demand)
        return result

    async def settle(self, ticket: Ticket, images: int, cost_usd: float | None) -> None:
        """After the request: images corrected, stream slot released, cost charged."""
        try:
            await self.backend.settle(ticket, images, cost_usd or 0.0)
        except BackendUnavailable as exc:
            self._metrics.limit_backend_error("settle", "skipped")
            self._warn("limit backend unavailable (%s): a request's correction or charge was not recorded", exc)

    def _warn(self, message: str, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._warned_at >= _WARN_EVERY:
            self._warned_at = now
            log.warning(message, exc)


def _refusal(refused: Refused, demand: Demand) -> RateLimited:
    wait = max(0.0, refused.retry_after)
    headers = {
        "Retry-After": str(max(1, math.ceil(wait))),
        "retry-after-ms": str(math.ceil(wait * 1000)),
        **quota_headers(refused.requests, refused.images),
    }
    limits = demand.limits
    if refused.limit == "budget":
        assert demand.period is not None
        renews = datetime.fromtimestamp(demand.period.ends_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        # Waiting for the next period is not what an SDK's retry loop is for.
        headers["x-should-retry"] = "false"
        return QuotaExceeded(
            f"This API key's {_ADJECTIVE[limits.budget_period]} budget of ${limits.budget_usd:g} is spent; it renews at {renews}.",
            headers=headers,
        )
    if refused.limit == "requests_per_minute":
        message = f"Rate limit reached for requests per minute on this API key (limit {limits.requests_per_minute})."
    elif refused.limit == "images_per_minute":
        message = (
            f"Rate limit reached for images per minute on this API key "
            f"(limit {limits.images_per_minute}, requested {demand.images})."
        )
        if demand.images > (limits.images_per_minute or 0):
            headers["x-should-retry"] = "false"
            message += " This request asks for more images than the limit allows at all."
    else:
        message = f"Too many concurrent streams on this API key (limit {limits.concurrent_streams})."
    return RateLimited(f"{message} Retry in {wait:.1f} s.", code=f"{refused.limit}_exceeded", headers=headers)
