"""Access control for one application: who may call, which models, how much.

``authenticate`` runs in the middleware for every ``/v1/*`` request;
``check_model``, ``admit`` and ``settle`` run in the generations handler (they
need the decoded body, and the outcome for the corrections and the charge).
Every refusal is a ``GatewayError`` (401, 403, 429, 503), counted in the
metrics by a bounded reason; key material never reaches a message, a log line
or a label.

Keys come from two places: the config (``access.keys``) and the ledger
database (written by the admin API or the CLI), which ``apply_keys`` merges in
as ``proxy.admin.poller`` reads them. A database key is added, replaced or
revoked by its name; a config key wins over a database key of the same name
(the database one is ignored, with a warning), so what the config file says
always holds. With no key anywhere the gateway runs in open mode, unless the
admin API is on (``managed``): keys are then expected from the database, and
a gateway that has none yet refuses every request rather than admit anyone.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any

import msgspec

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

if TYPE_CHECKING:
    from pixelgate.proxy.ledger.keys import GatewayKey

__all__ = ["AccessControl", "Client", "limits_from_db", "limits_to_db"]

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


_Entry = tuple[str, Client, bool]


def limits_to_db(limits: Limits | None) -> dict[str, Any]:
    """A key's limits as the database keeps them: ``{}`` for none of its own (``access.default_limits``)."""
    return {} if limits is None else msgspec.to_builtins(limits)


def limits_from_db(stored: Mapping[str, Any]) -> Limits | None:
    """The inverse of ``limits_to_db``; raises msgspec.ValidationError on a stored value that is not Limits."""
    return None if not stored else msgspec.convert(dict(stored), Limits)


class AccessControl:
    def __init__(self, config: AccessConfig, metrics: Metrics, *, managed: bool = False) -> None:
        self.config = config
        self._metrics = metrics
        self._managed = managed
        self._take_config(config)
        # Keys from the ledger database by name (apply_keys): the entry, its CORS origins as
        # stored, and the version it was written at.
        self._db: dict[str, tuple[_Entry, list[str] | None, int]] = {}
        self._shadowed: set[str] = set()
        self._rebuild()
        # Replaced by the Redis backend at start-up when configured (see proxy.access.middleware).
        self.backend: LimitBackend = MemoryBackend()
        self._warned_at = -math.inf

    def _take_config(self, config: AccessConfig) -> None:
        self.config = config
        self._config_entries: list[_Entry] = [
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
        self._config_names = frozenset(k.name for k in config.keys)
        self._config_ids = frozenset(parse_hash(k.hash).key_id for k in config.keys)

    def reconfigure(self, config: AccessConfig) -> None:
        """A reloaded config's keys, limits and CORS, swapped in whole (no await): the
        database's keys and the limits backend (its counters) stay as they are."""
        self._take_config(config)
        self._rebuild()

    def _rebuild(self) -> None:
        """The lookup structures from the config's and the database's keys, each swapped in
        whole (no await here): a request sees the old table or the new one, never half of each."""
        entries = self._config_entries + [entry for entry, _, _ in self._db.values()]
        self._table = KeyTable(entries)
        # Who a job's key is when it runs (proxy.jobs): the live keys by name.
        self._by_name = {client.name: client for _, client, revoked in entries if not revoked}
        # The preflight answers for the union of every key's origins, the database's too.
        self.cors = CorsPolicy(
            self.config.cors_origins,
            [*(k.cors_origins for k in self.config.keys), *(origins for _, origins, _ in self._db.values())],
            self.config.cors_max_age,
        )

    def apply_keys(self, keys: Iterable[GatewayKey]) -> list[str]:
        """Merge keys read from the ledger database, oldest write first: each adds or replaces
        the database key of its name (a revoked one stays in the table, refused as revoked).
        A key with a config key's name (or id) is ignored: the config wins; so is a write older
        than the one applied already (a poll that read before this process's own write).
        Returns the names applied."""
        applied: list[str] = []
        for key in keys:
            if (known := self._db.get(key.name)) is not None and known[2] >= key.version:
                continue
            if key.name in self._config_names or key.id in self._config_ids:
                if key.name not in self._shadowed:
                    self._shadowed.add(key.name)
                    log.warning("access: the database key %r is ignored: the config has a key of that name or id", key.name)
                continue
            revoked = key.revoked
            try:
                limits = limits_from_db(key.limits)
                if parse_hash(key.hash).key_id != key.id:
                    raise ValueError("the hash is of another key id")
            except (msgspec.ValidationError, ValueError):
                # Unusable as stored: refused (as revoked) rather than admitted without its limits.
                log.warning("access: the database key %r has an invalid hash or limits; it is refused", key.name)
                limits, revoked = None, True
            origins = key.cors_origins or None
            client = Client(
                key.name,
                tuple(key.models) if key.models is not None else ("*",),
                limits if limits is not None else self.config.default_limits,
                origin_set(origins) if origins is not None else None,
                key.webhook_url,
                key.id,
            )
            # Another name with this id (not something the admin API writes, but possible in SQL): replaced.
            for name, ((_, other, _), _, _) in list(self._db.items()):
                if other.key_id == key.id and name != key.name:
                    del self._db[name]
            self._db[key.name] = ((key.hash, client, revoked), origins, key.version)
            applied.append(key.name)
        if applied:
            self._rebuild()
        return applied

    def holds(self, key: str) -> bool:
        """Whether ``key`` is a live gateway key (no metrics counted: for the admin API's refusals)."""
        return isinstance(self._table.check(key), Client)

    def is_config_key(self, name: str) -> bool:
        return name in self._config_names

    def config_clients(self) -> list[tuple[Client, bool]]:
        """The config's keys as (client, revoked), for the admin API's listing."""
        return [(client, revoked) for _, client, revoked in self._config_entries]

    @property
    def open(self) -> bool:
        """No keys configured: anyone may call, and no limits apply."""
        return len(self._table) == 0 and not self._managed

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
