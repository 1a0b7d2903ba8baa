"""Gateway keys in the ledger database: create, update, revoke, rotate, each with its audit entry.

Shared by the admin API (the actor is the admin key's name) and the CLI (the
actor is ``cli``). A key's secret is made here, returned once to the caller and
never stored: the database keeps its hash (``proxy.access.keys``), the audit
log keeps neither. Rotating keeps the key's id (its public part, the ledger's
``key_id``) and gives it a new secret, so the old key stops matching at once.

How a key is stored: ``models`` None is every model; ``limits`` ``{}`` is
``access.default_limits`` (``limits_to_db``); ``cors_origins`` empty is the
global ``access.cors_origins``.

Every write is one transaction with its audit entry, and an update is a
read-modify-write done as compare-and-set on the key's version: two admins
changing one key at once both get their change (the loser of the race reads
the key again and applies its change to the winner's result), where a plain
read-then-write would silently undo one of them.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Awaitable, Callable
from typing import Annotated, Any
from urllib.parse import urlsplit

import msgspec
from msgspec import UNSET, Meta, UnsetType

from pixelgate.core.errors import GatewayError, InvalidRequest
from pixelgate.proxy.access.config import KeyName, Limits, Origin
from pixelgate.proxy.access.control import Client, limits_from_db, limits_to_db
from pixelgate.proxy.access.keys import KEY_PREFIX, generate_key, hash_key, parse_hash
from pixelgate.proxy.ledger import Audit, GatewayKey, KeyChanged, LedgerStore

__all__ = ["CreateKey", "KeyAdmin", "UpdateKey", "config_key_view", "key_view"]

_FIELD = re.compile(r"field `([^`]+)`")

# How often a read-modify-write is done again after losing a race, before the caller gets a 409.
_RACES = 8

Models = Annotated[list[Annotated[str, Meta(min_length=1)]], Meta(min_length=1)]


class CreateKey(msgspec.Struct, forbid_unknown_fields=True):
    name: KeyName
    # None: every model.
    models: Models | None = None
    # None: access.default_limits.
    limits: Limits | None = None
    # None: access.cors_origins.
    cors_origins: list[Origin] | None = None
    webhook_url: str | None = None


class UpdateKey(msgspec.Struct, forbid_unknown_fields=True):
    """A PATCH: a field left out is kept, null returns it to its default. ``limits`` is merged
    into the key's limits field by field (null removes one); ``"limits": null`` is the defaults."""

    models: Models | UnsetType | None = UNSET
    limits: dict[str, Any] | UnsetType | None = UNSET
    cors_origins: list[Origin] | UnsetType | None = UNSET
    webhook_url: str | UnsetType | None = UNSET


class KeyNotFound(InvalidRequest):
    status = 404
    code = "key_not_found"


class KeyConflict(InvalidRequest):
    status = 409
    code = "key_conflict"


def _limits_view(stored: dict[str, Any]) -> dict[str, Any] | None:
    limits = limits_from_db(stored)
    return None if limits is None else {k: v for k, v in msgspec.to_builtins(limits).items() if v is not None}


def key_view(key: GatewayKey) -> dict[str, Any]:
    """What the admin API shows of a database key: never its hash (nor, having none, its secret)."""
    return {
        "object": "gateway_key", "name": key.name, "id": key.id, "source": "database",
        "models": key.models, "limits": _limits_view(key.limits), "cors_origins": key.cors_origins or None,
        "webhook_url": key.webhook_url, "revoked": key.revoked, "created_at": key.created_at, "updated_at": key.updated_at,
    }


def config_key_view(client: Client, revoked: bool, has_own_limits: bool) -> dict[str, Any]:
    return {
        "object": "gateway_key", "name": client.name, "id": client.key_id, "source": "config",
        "models": list(client.models),
        "limits": {k: v for k, v in msgspec.to_builtins(client.limits).items() if v is not None} if has_own_limits else None,
        "cors_origins": sorted(client.origins) if client.origins is not None else None,
        "webhook_url": client.webhook_url, "revoked": revoked, "created_at": None, "updated_at": None,
    }


def _webhook_note(url: str | None) -> str | None:
    # Its path or query may be a token: the audit log keeps the host only.
    return None if url is None else (urlsplit(url).hostname or "?")


def _with_key_id(key_id: str) -> str:
    """A new secret for an existing key id (a rotation)."""
    return f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"


class KeyAdmin:
    """Key operations by one actor. ``is_config_key``: names the config defines (refused here:
    a config key is changed in the config file); ``check_webhook``: raises InvalidRequest
    for a webhook URL this gateway may not call (None: webhooks are off, any URL is refused)."""

    def __init__(self, store: LedgerStore, actor: str, *, is_config_key: Callable[[str], bool] = lambda name: False,
                 check_webhook: Callable[[str], None] | None = None) -> None:
        self._store = store
        self._actor = actor
        self._is_config_key = is_config_key
        self._check_webhook = check_webhook

    def _webhook(self, url: str | None) -> None:
        if url is None:
            return
        if self._check_webhook is None:
            raise InvalidRequest("`webhook_url` needs jobs.webhooks configured (the secrets that sign webhooks).",
                                 param="webhook_url", code="invalid_webhook_url")
        self._check_webhook(url)

    async def _existing(self, name: str) -> GatewayKey:
        if self._is_config_key(name):
            raise KeyConflict(f"The key {name!r} is defined in the config file; change it there.", code="config_key")
        key = await self._store.get_key(name)
        if key is None:
            raise KeyNotFound(f"No key named {name!r}.")
        return key

    async def _put(self, key: GatewayKey, audit: Audit, key_hash: str | None = None, **changes: Any) -> GatewayKey:
        """``key`` with ``changes``, if it is still the version read (else KeyChanged), with its audit entry."""
        fields = {"models": key.models, "limits": key.limits, "cors_origins": key.cors_origins,
                  "webhook_url": key.webhook_url, "revoked": key.revoked, **changes}
        return await self._store.put_key(key.id, key.name, key_hash or key.hash, expected_version=key.version, audit=audit,
                                         **fields)

    async def _change(self, name: str, change: Callable[[GatewayKey], Awaitable[GatewayKey]]) -> GatewayKey:
        """``change`` applied to the key as it is now: read again and redone when another write came first."""
        for _ in range(_RACES):
            try:
                return await change(await self._existing(name))
            except KeyChanged:
                continue
        raise KeyConflict(f"The key {name!r} is being changed by others at the same time; try again.", code="key_busy")

    async def create(self, spec: CreateKey) -> tuple[GatewayKey, str]:
        """The new key and its secret (shown once)."""
        if self._is_config_key(spec.name):
            raise KeyConflict(f"The config file defines a key named {spec.name!r}.", param="name", code="key_exists")
        if await self._store.get_key(spec.name) is not None:
            raise KeyConflict(f"A key named {spec.name!r} exists already.", param="name", code="key_exists")
        self._webhook(spec.webhook_url)
        secret = generate_key()
        key_hash = hash_key(secret)
        limits = limits_to_db(spec.limits)
        key_id = parse_hash(key_hash).key_id
        audit = Audit(self._actor, "key.create", spec.name, {
            "key_id": key_id, "models": spec.models, "limits": _limits_view(limits),
            "cors_origins": spec.cors_origins, "webhook_host": _webhook_note(spec.webhook_url),
        })
        try:
            key = await self._store.put_key(
                key_id, spec.name, key_hash, models=spec.models, limits=limits,
                cors_origins=spec.cors_origins or (), webhook_url=spec.webhook_url, audit=audit,
            )
        except ValueError:
            raise KeyConflict(f"A key named {spec.name!r} exists already.", param="name", code="key_exists") from None
        return key, secret

    async def update(self, name: str, patch: UpdateKey) -> GatewayKey:
        if isinstance(patch.webhook_url, str):
            self._webhook(patch.webhook_url)

        async def change(key: GatewayKey) -> GatewayKey:
            changes: dict[str, Any] = {}
            if not isinstance(patch.models, UnsetType):
                changes["models"] = patch.models
            if not isinstance(patch.limits, UnsetType):
                changes["limits"] = _merged_limits(key.limits, patch.limits)
            if not isinstance(patch.cors_origins, UnsetType):
                changes["cors_origins"] = patch.cors_origins or []
            if not isinstance(patch.webhook_url, UnsetType):
                changes["webhook_url"] = patch.webhook_url
            if not changes:
                raise InvalidRequest("Nothing to change: give models, limits, cors_origins or webhook_url.", code="empty_update")
            detail = {field: value for field, value in changes.items() if field not in ("webhook_url", "limits")}
            if "limits" in changes:
                detail["limits"] = _limits_view(changes["limits"])
            if "webhook_url" in changes:
                detail["webhook_host"] = _webhook_note(changes["webhook_url"])
            return await self._put(key, Audit(self._actor, "key.update", name, {"key_id": key.id, "changed": detail}), **changes)

        return await self._change(name, change)

    async def revoke(self, name: str) -> GatewayKey:
        async def change(key: GatewayKey) -> GatewayKey:
            audit = Audit(self._actor, "key.revoke", name, {"key_id": key.id, "was_revoked": key.revoked})
            return await self._put(key, audit, revoked=True)

        return await self._change(name, change)

    async def rotate(self, name: str) -> tuple[GatewayKey, str]:
        """The key with a new secret (shown once); the old secret stops working."""
        secrets_made: list[str] = []

        async def change(key: GatewayKey) -> GatewayKey:
            if key.revoked:
                raise KeyConflict(f"The key {name!r} is revoked; create a new one instead.", code="key_revoked")
            secrets_made.append(_with_key_id(key.id))
            return await self._put(key, Audit(self._actor, "key.rotate", name, {"key_id": key.id}), hash_key(secrets_made[-1]))

        rotated = await self._change(name, change)
        # The secret of the write that went in (an attempt that lost a race made one too, never stored).
        return rotated, secrets_made[-1]

    async def get(self, name: str) -> GatewayKey | None:
        return await self._store.get_key(name)


def _merged_limits(stored: dict[str, Any], patch: dict[str, Any] | None) -> dict[str, Any]:
    """The key's limits with ``patch`` merged in, checked as Limits (errors name ``limits.<field>``)."""
    if patch is None:
        return {}
    current = limits_from_db(stored) or Limits()
    merged = {k: v for k, v in msgspec.to_builtins(current).items() if v is not None}
    for field, value in patch.items():
        if value is None:
            merged.pop(field, None)
        else:
            merged[field] = value
    try:
        return limits_to_db(msgspec.convert(merged, Limits))
    except msgspec.ValidationError as exc:
        raise validation_error(exc, "limits") from None


def validation_error(exc: msgspec.ValidationError | msgspec.DecodeError, prefix: str = "") -> GatewayError:
    """A 400 naming the field: ``Expected `int` >= 1 - at `$.limits.requests_per_minute``` becomes
    param ``limits.requests_per_minute``."""
    text = str(exc)
    message, sep, where = text.rpartition(" - at `$")
    path = where.rstrip("`").lstrip(".") if sep else ""
    if not sep:
        message = text
    if m := _FIELD.search(message):
        # "Object missing required field `name`", "Object contains unknown field `x`": that field.
        path = ".".join(p for p in (path, m.group(1)) if p)
    param = ".".join(p for p in (prefix, path) if p) or None
    return InvalidRequest(f"Invalid `{param}`: {message}" if param else message, param=param, code="invalid_value")
