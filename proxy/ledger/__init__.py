"""The usage ledger: one durable row per finished request, and the admin API's keys and audit log.

Layout, one job per module:

- ``row``: ``LedgerRow`` and ``row_from_record`` (a ``RequestRecord`` and its
  exact integer micro-dollar cost);
- ``schema``: the tables (SQLAlchemy Core), one schema for SQLite and PostgreSQL;
- ``migrate`` and ``migrations/``: the versioned migrations (Alembic), run at start;
- ``store``: ``LedgerStore``, every query (insert, usage, spend, keys, audit);
- ``errors``: ``LedgerUnavailable`` (an outage, as opposed to a bug);
- ``writer`` and ``spool``: ``LedgerWriter``, rows to the database off the hot
  path, through a local spool while the database is out of reach (no loss, no
  duplicates);
- ``keys``: the gateway key and audit entry records.
"""

from __future__ import annotations

from pixelgate.proxy.ledger.errors import LedgerUnavailable
from pixelgate.proxy.ledger.keys import Audit, AuditEntry, GatewayKey, KeyChanged
from pixelgate.proxy.ledger.row import UNPRICED, LedgerRow, cost_micro_usd, row_from_record
from pixelgate.proxy.ledger.spool import SpoolInUse
from pixelgate.proxy.ledger.store import GROUPS, Group, LedgerStore
from pixelgate.proxy.ledger.writer import LedgerWriter

__all__ = [
    "GROUPS",
    "UNPRICED",
    "Audit",
    "AuditEntry",
    "GatewayKey",
    "Group",
    "KeyChanged",
    "LedgerRow",
    "LedgerStore",
    "LedgerUnavailable",
    "LedgerWriter",
    "SpoolInUse",
    "cost_micro_usd",
    "row_from_record",
]
