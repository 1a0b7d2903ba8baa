"""The ``access`` section of the config: gateway keys, their limits, CORS, the limit backend.

Decoded by ``proxy.config`` like every other section (errors read
``access.keys[0].hash: ...``). ``check_access`` adds the checks msgspec cannot
express; it raises ``ValueError("keys[0].hash: ...")`` and ``proxy.config``
prefixes ``access.``. This module imports nothing from ``proxy.config``, which
imports it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from pixelgate.proxy.access.keys import KEY_PREFIX, parse_hash

__all__ = ["AccessConfig", "KeyConfig", "Limits", "RedisConfig", "check_access"]

# Key names are config-defined, show up in logs, metric labels and Redis keys
# (inside a cluster hash tag), and may be sent upstream as `user`: a tight
# alphabet keeps all of those safe.
KeyName = Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
Origin = Annotated[str, Meta(pattern=r"^(\*|https?://[^/\s]+)$")]


class Limits(msgspec.Struct, forbid_unknown_fields=True):
    """Per key; a limit left out (None) is not enforced."""

    requests_per_minute: Annotated[int, Meta(ge=1)] | None = None
    # Counted from `n` at admission, corrected by the images actually returned.
    images_per_minute: Annotated[int, Meta(ge=1)] | None = None
    # Open `stream: true` responses at any one time.
    concurrent_streams: Annotated[int, Meta(ge=1)] | None = None
    # USD per `budget_period` (UTC), from the `prices` table.
    budget_usd: Annotated[float, Meta(gt=0)] | None = None
    budget_period: Literal["day", "month"] = "day"

    @property
    def enforced(self) -> bool:
        return any(
            v is not None
            for v in (self.requests_per_minute, self.images_per_minute, self.concurrent_streams, self.budget_usd)
        )


class KeyConfig(msgspec.Struct, forbid_unknown_fields=True):
    name: KeyName
    # `pixelgate keys hash` output; plaintext keys are refused.
    hash: str
    # Public model names this key may use (fnmatch globs).
    models: list[str] = msgspec.field(default_factory=lambda: ["*"])
    # None: `access.default_limits`.
    limits: Limits | None = None
    # Browser origins allowed to use this key; None: `access.cors_origins`.
    cors_origins: list[Origin] | None = None
    revoked: bool = False
    # Where this key's async jobs send their completion webhook (proxy.jobs), unless a
    # submission names its own; checked like one (needs jobs.webhooks).
    webhook_url: str | None = None


class RedisConfig(msgspec.Struct, forbid_unknown_fields=True):
    url: str = "redis://127.0.0.1:6379/0"
    # Every key the gateway writes starts with this (several gateways, one Redis).
    prefix: str = "pixelgate:"
    # Per Redis call: a dead Redis must fail the request fast, not hang it.
    timeout: Annotated[float, Meta(gt=0, le=10)] = 0.25
    # A stream's slot is a lease, refreshed every third of this while the
    # stream runs; a replica that dies leaks its slots for at most this long.
    lease_seconds: Annotated[float, Meta(ge=1, le=3600)] = 30.0


class AccessConfig(msgspec.Struct, forbid_unknown_fields=True):
    # No keys: open mode (anyone may call; a warning at start).
    keys: list[KeyConfig] = []
    default_limits: Limits = msgspec.field(default_factory=Limits)
    # Browser origins allowed for every key (and in open mode).
    cors_origins: list[Origin] = []
    cors_max_age: Annotated[int, Meta(ge=0, le=86400)] = 600
    # Forward the key's name as the request's `user`, so providers can
    # attribute abuse (overrides a `user` the client sent).
    set_user: bool = False
    backend: Literal["memory", "redis"] = "memory"
    redis: RedisConfig = msgspec.field(default_factory=RedisConfig)
    # When the backend cannot be reached: refuse with 503, or admit and log.
    on_backend_error: Literal["closed", "open"] = "closed"


def check_access(access: AccessConfig) -> None:
    """What the types cannot say. Raises ``ValueError("keys[0].hash: ...")``."""
    names: set[str] = set()
    ids: dict[str, str] = {}
    for i, key in enumerate(access.keys):
        where = f"keys[{i}]"
        if key.name in names:
            raise ValueError(f"{where}.name: duplicate key name {key.name!r}")
        names.add(key.name)
        if key.hash.startswith(KEY_PREFIX):
            raise ValueError(
                f"{where}.hash: this is a plaintext key, which is refused in config; "
                "store its hash instead (`pixelgate keys hash`)"
            )
        try:
            key_id = parse_hash(key.hash).key_id
        except ValueError as exc:
            raise ValueError(f"{where}.hash: {exc}") from None
        if key_id in ids:
            raise ValueError(f"{where}.hash: same key id as key {ids[key_id]!r} (hash each key once)")
        ids[key_id] = key.name
        if not key.models:
            raise ValueError(f"{where}.models: empty: the key could use no model (use revoked: true to disable it)")


def plaintext_hint(entry: Any) -> str | None:
    """A clearer error than "unknown field" for a key given in plain text."""
    if isinstance(entry, dict) and ("key" in entry or "api_key" in entry):
        return "plaintext keys are refused in config; put the output of `pixelgate keys hash` in `hash`"
    return None
