"""The ledger, gateway keys and the audit log.

Revision ID: 0001
Revises:
Create Date: 2025-01-01

Frozen history: the tables as this revision created them, spelled out here
rather than imported from ``schema`` (which moves on with later revisions).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

_Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "ledger",
        sa.Column("id", _Id, primary_key=True, autoincrement=True),
        sa.Column("at", sa.Double(), nullable=False),
        sa.Column("request_id", sa.String(), nullable=False),
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
        sa.UniqueConstraint("request_id", name="ledger_request_id_key"),
    )
    op.create_index("ledger_at", "ledger", ["at"])
    op.create_index("ledger_key_at", "ledger", ["key_name", "at"])
    op.create_index("ledger_model_at", "ledger", ["model", "at"])

    op.create_table(
        "gateway_keys",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("hash", sa.String(), nullable=False),
        sa.Column("models", sa.JSON()),
        sa.Column("limits", sa.JSON(), nullable=False),
        sa.Column("cors_origins", sa.JSON(), nullable=False),
        sa.Column("webhook_url", sa.String()),
        sa.Column("revoked", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.UniqueConstraint("name", name="gateway_keys_name_key"),
        sa.UniqueConstraint("version", name="gateway_keys_version_key"),
    )

    op.create_table(
        "audit_log",
        sa.Column("id", _Id, primary_key=True, autoincrement=True),
        sa.Column("at", sa.Double(), nullable=False),
        sa.Column("actor", sa.String(), nullable=False),
        sa.Column("action", sa.String(), nullable=False),
        sa.Column("target", sa.String()),
        sa.Column("detail", sa.JSON()),
    )


def downgrade() -> None:
    op.drop_table("audit_log")
    op.drop_table("gateway_keys")
    op.drop_table("ledger")
