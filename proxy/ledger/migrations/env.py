"""Alembic's environment for the ledger: online only, on the caller's connection.

``migrate.upgrade`` passes the connection (already in a transaction, already
holding the migration lock) in ``config.attributes``; Alembic then runs every
pending revision in that one transaction, so a failed migration leaves the
database as it was (PostgreSQL and SQLite both have transactional DDL).
There is no offline (SQL script) mode and no URL here: the store owns both.
"""

from __future__ import annotations

from alembic import context

from pixelgate.proxy.ledger.migrate import VERSION_TABLE
from pixelgate.proxy.ledger.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("the ledger's migrations run through LedgerStore.start() (pixelgate.proxy.ledger.migrate), not the alembic CLI")

context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table=VERSION_TABLE,
    # SQLite alters a table by copying it; Alembic's batch mode does that for op.alter_column & co.
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
