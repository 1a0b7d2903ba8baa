"""The ledger database's tables, as SQLAlchemy Core sees them (one schema, both backends).

Why SQLAlchemy Core (not hand-written SQL per backend, not the ORM): the
ledger runs on SQLite (one host, the embedded default) and PostgreSQL (shared
by replicas), and Core is one description of the tables and one query builder
that renders each dialect's SQL (``ON CONFLICT DO NOTHING`` on both, each
one's date functions), with maintained async drivers behind it (aiosqlite,
asyncpg) and a connection pool for PostgreSQL. The ORM would add identity maps
and sessions to what are append-only rows and a few upserts.

These objects are what the queries use; the database itself is created and
changed only by the versioned migrations (``migrations/versions``), which are
frozen history and never import this module's tables. A test compares the
migrated database with this module (Alembic's ``compare_metadata``), so the two
cannot drift apart.

Types chosen for both dialects: times are unix seconds in a double (what
``RequestRecord`` and the rest of the gateway use); counts that are summed
are BIGINT; cost is BIGINT micro-dollars (exact; see ``row``); the surrogate
ids are BIGINT on PostgreSQL and INTEGER on SQLite, where only an ``INTEGER
PRIMARY KEY`` is the auto-assigned rowid.
"""

from __future__ import annotations

import sqlalchemy as sa

__all__ = ["audit_log", "gateway_keys", "ledger", "metadata"]

# Named constraints (PostgreSQL's own default names), so that a later migration can name
# what it drops or changes on both dialects.
metadata = sa.MetaData(naming_convention={"uq": "%(table_name)s_%(column_0_name)s_key"})

_Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

ledger = sa.Table(
    "ledger",
    metadata,
    sa.Column("id", _Id, primary_key=True, autoincrement=True),
    sa.Column("at", sa.Double(), nullable=False),
    # UNIQUE: a row replayed from the spool, or retried after a commit whose
    # answer was lost, is ignored (ON CONFLICT DO NOTHING), never counted twice.
    sa.Column("request_id", sa.String(), nullable=False, unique=True),
    sa.Column("key_id", sa.String()),
    sa.Column("key_name", sa.String()),
    sa.Column("operation", sa.String(), nullable=False),
    sa.Column("endpoint", sa.String(), nullable=False),
    sa.Column("model", sa.String()),
    sa.Column("provider", sa.String()),
    sa.Column("upstream_model", sa.String()),
    sa.Column("status", sa.Integer(), nullable=False),
    sa.Column("error_type", sa.String()),
    sa.Column("stream", sa.Boolean(), nullable=False),
    sa.Column("images", sa.Integer(), nullable=False),
    sa.Column("partials", sa.Integer(), nullable=False),
    sa.Column("input_text_tokens", sa.BigInteger(), nullable=False),
    sa.Column("input_image_tokens", sa.BigInteger(), nullable=False),
    sa.Column("output_text_tokens", sa.BigInteger(), nullable=False),
    sa.Column("output_image_tokens", sa.BigInteger(), nullable=False),
    # NULL when unpriced (never 0).
    sa.Column("cost_micro_usd", sa.BigInteger()),
    sa.Column("price", sa.String(), nullable=False),
    sa.Column("duration_s", sa.Double(), nullable=False),
    sa.Column("upstream_headers_s", sa.Double()),
    sa.Column("first_partial_s", sa.Double()),
    sa.Column("completed_s", sa.Double()),
    sa.Column("bytes_in", sa.BigInteger(), nullable=False),
    sa.Column("bytes_out", sa.BigInteger(), nullable=False),
    sa.Column("attempts", sa.Integer(), nullable=False),
    sa.Column("job_id", sa.String()),
    sa.Column("idempotency_key", sa.String()),
    sa.Column("replayed", sa.Boolean(), nullable=False),
    sa.Column("prompt", sa.Text()),
    # Usage over a time range (the admin's totals, by day), and the same for one
    # key (its own usage, budgets: ``spend``) or one model.
    sa.Index("ledger_at", "at"),
    sa.Index("ledger_key_at", "key_name", "at"),
    sa.Index("ledger_model_at", "model", "at"),
)

gateway_keys = sa.Table(
    "gateway_keys",
    metadata,
    sa.Column("id", sa.String(), primary_key=True),
    sa.Column("name", sa.String(), nullable=False, unique=True),
    sa.Column("hash", sa.String(), nullable=False),
    # None: every model.
    sa.Column("models", sa.JSON()),
    sa.Column("limits", sa.JSON(), nullable=False),
    sa.Column("cors_origins", sa.JSON(), nullable=False),
    sa.Column("webhook_url", sa.String()),
    sa.Column("revoked", sa.Boolean(), nullable=False),
    sa.Column("created_at", sa.Double(), nullable=False),
    sa.Column("updated_at", sa.Double(), nullable=False),
    # Raised on every write, in commit order (see store.put_key): a replica
    # polls ``keys_since(last version it saw)``. UNIQUE, so two writes can
    # never share one.
    sa.Column("version", sa.BigInteger(), nullable=False, unique=True),
)

audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("id", _Id, primary_key=True, autoincrement=True),
    sa.Column("at", sa.Double(), nullable=False),
    sa.Column("actor", sa.String(), nullable=False),
    sa.Column("action", sa.String(), nullable=False),
    sa.Column("target", sa.String()),
    sa.Column("detail", sa.JSON()),
)
