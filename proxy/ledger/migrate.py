"""The ledger schema's versioned migrations, run programmatically at start.

Why Alembic: it is SQLAlchemy's own migration tool, so a migration is written
once with ``op`` for both dialects (and SQLite's limited ALTER TABLE is
handled by its batch mode), each revision names the one before it, and the
version applied is recorded in the database. We use it as a library: no
``alembic.ini`` at runtime, the Config is built here, ``script_location`` is
the ``migrations`` folder inside this package (shipped with it), and the
migrations run on the connection ``LedgerStore.start`` holds, inside its
transaction, after it has taken a lock so that workers or replicas starting
at once migrate one after the other (see ``store``).

The version table is ``ledger_schema_version``, not Alembic's default name, so
that a PostgreSQL database shared with another application that uses Alembic
keeps both histories apart.

A new revision (for developers): ``alembic.command.revision(config(),
"what it does")`` writes a file into ``migrations/versions``; give it the
next ``NNNN`` id (``rev_id``) and write ``upgrade`` by hand with ``op``.
Never edit a released revision: databases in the field have applied it.
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

__all__ = ["MIGRATIONS", "VERSION_TABLE", "config", "current", "head", "is_known", "upgrade"]

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
VERSION_TABLE = "ledger_schema_version"


def config(connection: sa.Connection | None = None) -> Config:
    """Alembic's Config, built in code; ``migrations/env.py`` runs on ``connection``."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    # The versions folder is one directory: no separator needed, but Alembic asks for one.
    cfg.set_main_option("path_separator", "os")
    cfg.attributes["connection"] = connection
    return cfg


def head() -> str:
    """The newest revision this code knows."""
    revision = ScriptDirectory.from_config(config()).get_current_head()
    assert revision is not None, "the ledger has no migrations"
    return revision


def is_known(revision: str) -> bool:
    return revision in {script.revision for script in ScriptDirectory.from_config(config()).walk_revisions()}


def current(connection: sa.Connection) -> str | None:
    """The revision the database is at (None before the first migration)."""
    return MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE}).get_current_revision()


def upgrade(connection: sa.Connection) -> None:
    """Bring the database to ``head``, inside the connection's transaction."""
    command.upgrade(config(connection), "head")
