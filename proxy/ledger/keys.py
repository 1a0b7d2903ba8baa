"""Gateway keys and audit entries as the ledger database keeps them (for the admin API).

Plain msgspec Structs, the shapes ``LedgerStore`` returns: the admin API
encodes them as they are, and a replica that polls ``keys_since`` rebuilds its
key table from them. ``hash`` is the key's hash as the caller computed it; the
store never sees a key.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

__all__ = ["Audit", "AuditEntry", "GatewayKey", "KeyChanged"]


class GatewayKey(msgspec.Struct, frozen=True):
    id: str
    name: str
    hash: str
    # None: every model.
    models: list[str] | None
    limits: dict[str, Any]
    cors_origins: list[str]
    webhook_url: str | None
    revoked: bool
    created_at: float
    updated_at: float
    # Raised on every write, in commit order: what a replica polls by (``keys_since``).
    version: int


class AuditEntry(msgspec.Struct, frozen=True):
    id: int
    at: float
    actor: str
    action: str
    target: str | None
    detail: dict[str, Any] | None


class Audit(msgspec.Struct, frozen=True):
    """An audit entry to write (``AuditEntry`` is one read back, with its id and time)."""

    actor: str
    action: str
    target: str | None
    detail: Mapping[str, Any] | None = None

    def values(self, at: float) -> dict[str, Any]:
        """The audit_log row's columns."""
        detail = None if self.detail is None else dict(self.detail)
        return {"at": at, "actor": self.actor, "action": self.action, "target": self.target, "detail": detail}


class KeyChanged(Exception):
    """A compare-and-set write found the key at another version than expected (or gone)."""
