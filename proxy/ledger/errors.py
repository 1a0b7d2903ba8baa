"""When the ledger database cannot be used, and telling that apart from a bug.

``LedgerUnavailable`` is an outage: the database cannot be reached (refused,
timed out, restarting, shut down, out of connections or disk), or the SQLite
file is locked past its busy timeout or unreadable. The writer spools on it
and retries later. Anything else (a constraint the code broke, a value the
database refuses) is a bug, raised as it is: retrying would fail the same way.

Messages name the database as its URL with the password masked, and the
driver's own message (never SQLAlchemy's, which carries the statement's
parameters: prompts, among others); the password is also redacted from the
text as a last guard.
"""

from __future__ import annotations

import sqlite3

import sqlalchemy.exc as sa_exc
from sqlalchemy.engine import URL

__all__ = ["LedgerUnavailable", "as_unavailable", "describe", "is_row_fault"]

# SQLSTATE classes of an outage, not of a statement: connection exception (08),
# authorization (28: a wrong password, a role not there yet) and catalog (3D: no
# such database), which an operator fixes without a new release, insufficient
# resources (53: too many connections, disk full), operator intervention (57:
# shutting down, starting up, admin shutdown), system error (58).
_OUTAGE_CLASSES = ("08", "28", "3D", "53", "57", "58")
# SQLSTATE classes of a row the database refuses as it is: data exception (22: a
# NUL in a text, a number out of range), integrity constraint violation (23).
_ROW_CLASSES = ("22", "23")


class LedgerUnavailable(Exception):
    """The ledger database cannot be reached or used; the message names no secret."""


def _is_outage(exc: BaseException) -> bool:
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated or isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError):
            return True
        state = getattr(exc.orig, "sqlstate", None)
        return isinstance(state, str) and state[:2] in _OUTAGE_CLASSES
    # Raised as they are by the drivers: a refused or reset connection, a connect or
    # command timeout, SQLite's OperationalError (locked, unreadable, disk full).
    return isinstance(exc, OSError | TimeoutError | sqlite3.OperationalError | sa_exc.TimeoutError)


def is_row_fault(exc: BaseException) -> bool:
    """Whether the database refused the rows themselves (as opposed to being out of reach,
    or a bug that no row causes): the writer then sets the offending rows aside."""
    if isinstance(exc, sa_exc.IntegrityError | sa_exc.DataError):
        return True
    if isinstance(exc, sa_exc.DBAPIError):
        state = getattr(exc.orig, "sqlstate", None)
        return isinstance(state, str) and state[:2] in _ROW_CLASSES
    # What drivers raise converting a value before it is sent (SQLite: an int beyond 64 bits).
    return isinstance(exc, OverflowError | ValueError | TypeError | sqlite3.IntegrityError | sqlite3.DataError)


def describe(exc: BaseException, url: URL | None = None) -> str:
    """The driver's message (not SQLAlchemy's, which carries the parameters), the password redacted."""
    cause = exc.orig if isinstance(exc, sa_exc.DBAPIError) and exc.orig is not None else exc
    detail = str(cause)
    message = f"{type(cause).__name__}: {detail}" if detail else type(cause).__name__
    if url is not None and url.password:
        message = message.replace(str(url.password), "***")
    return message


def as_unavailable(exc: BaseException, url: URL) -> LedgerUnavailable | None:
    """The LedgerUnavailable for an exception that says the database is out of reach, else None."""
    if not _is_outage(exc):
        return None
    message = describe(exc, url)
    where = url.render_as_string(hide_password=True)
    return LedgerUnavailable(f"the ledger database {where} cannot be used: {message}")
