"""The ledger database: usage rows, gateway keys and the audit log, on SQLite or PostgreSQL.

One class for both backends, chosen by the URL: ``sqlite+aiosqlite:///path``
(one file on local disk, for the workers of one host) or
``postgresql+asyncpg://user:password@host/db`` (shared by replicas); plain
``sqlite://`` and ``postgresql://`` mean those drivers. The queries are
SQLAlchemy Core (``schema``), which renders each dialect's SQL.

Start: ``start()`` runs the versioned migrations (``migrate``) in one
transaction, after taking a lock so that workers and replicas starting at
once migrate one after the other: ``pg_advisory_xact_lock`` on PostgreSQL,
``BEGIN IMMEDIATE`` (the file's write lock, taken before the version is read)
on SQLite. A database at a revision this code does not know (written by a
later release) is refused. A store whose start failed (the database down at
boot) starts on its next call instead, so the gateway can boot during an
outage while the writer spools.

SQLite: WAL mode (readers never wait for the writer), ``synchronous=FULL`` (a
committed batch survives a power cut: the ledger is what keys are billed by),
and a busy timeout, so that a write finding another process's write lock
waits for it. Transactions are begun by SQLAlchemy, not by Python's sqlite3,
whose legacy mode runs DDL outside any transaction (SQLAlchemy's documented
recipe, ``_sqlite_events``). The parent directories of the file are created.
The ledger's inserts (the hot write, one row per request) go through a process
of their own (``sink``, ``pixelgate.proxy.sqlite_writer``), so that SQLite's
work for them is not done on a thread of the gateway's; queries, keys and the
audit log stay on SQLAlchemy here.

PostgreSQL: a pool (``pool_size``, as many again on overflow), checked before
use (``pool_pre_ping``), so that after a database restart the dead
connections are replaced instead of failing one request each; every connect
and statement is bounded by ``timeout``.

Writes that two processes could race on are single statements or hold a
lock: ``insert`` is one ``INSERT ... ON CONFLICT (request_id) DO NOTHING``
(a replayed or retried row is ignored); ``put_key`` gives the key the next
``version`` in commit order (on PostgreSQL under a table lock that lets reads
through, on SQLite as one statement, which holds the write lock from its
start), so a replica polling ``keys_since`` never skips a write that commits
after a later-numbered one.

Errors: an outage (refused, timed out, restarting, locked past the busy
timeout) is ``LedgerUnavailable``, whose message names no password (see
``errors``); anything else is a bug and is raised as it is.
"""

from __future__ import annotations

import asyncio
import builtins
import os
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Literal

import msgspec
import sqlalchemy as sa
import sqlalchemy.exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from pixelgate.proxy.ledger import migrate
from pixelgate.proxy.ledger.errors import LedgerUnavailable, as_unavailable
from pixelgate.proxy.ledger.keys import Audit, AuditEntry, GatewayKey, KeyChanged
from pixelgate.proxy.ledger.row import LedgerRow
from pixelgate.proxy.ledger.schema import audit_log, gateway_keys, ledger
from pixelgate.proxy.ledger.sink import SqliteSink

__all__ = ["GROUPS", "Group", "LedgerStore"]

Group = Literal["key", "model", "provider", "operation", "day"]
GROUPS: tuple[Group, ...] = ("key", "model", "provider", "operation", "day")

_DRIVERS = {"sqlite": "sqlite+aiosqlite", "sqlite+aiosqlite": "sqlite+aiosqlite",
            "postgresql": "postgresql+asyncpg", "postgres": "postgresql+asyncpg", "postgresql+asyncpg": "postgresql+asyncpg"}

# pg_advisory_xact_lock's key for migrations: any constant of our own ("pxgl" in ASCII).
_MIGRATION_LOCK = 0x7078676C

# The execution option that makes a SQLite transaction BEGIN IMMEDIATE (see _sqlite_events).
_IMMEDIATE = "pixelgate_begin_immediate"

_COLUMNS = tuple(LedgerRow.__struct_fields__)

def _sqlite_events(engine: AsyncEngine, busy_timeout: float) -> None:
    """SQLAlchemy emits BEGIN itself, and each connection gets the pragmas (per connection but WAL)."""

    @sa.event.listens_for(engine.sync_engine, "connect")
    def connect(dbapi_connection: Any, _record: Any) -> None:
        # No BEGIN from the driver: SQLAlchemy's, below, so DDL is transactional too.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            # WAL is persistent in the file; the first connection switches it (start() checks it took).
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = FULL")
            # A PRAGMA takes no parameters; this is an int of ours.
            cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        finally:
            cursor.close()

    @sa.event.listens_for(engine.sync_engine, "begin")
    def begin(conn: sa.Connection) -> None:
        # IMMEDIATE takes the write lock at once: a transaction that reads, then writes (the
        # migrations) would otherwise fail with SQLITE_BUSY when it upgrades its lock.
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(_IMMEDIATE) else "BEGIN")


def _key(row: Any) -> GatewayKey:
    m = row._mapping
    return GatewayKey(
        id=m["id"], name=m["name"], hash=m["hash"], models=m["models"], limits=m["limits"], cors_origins=m["cors_origins"],
        webhook_url=m["webhook_url"], revoked=bool(m["revoked"]), created_at=m["created_at"], updated_at=m["updated_at"],
        version=m["version"],
    )


def _total(expr: sa.ColumnElement[Any]) -> sa.ColumnElement[int]:
    """SUM as an integer, 0 over no rows (PostgreSQL sums BIGINT as NUMERIC: cast back)."""
    return sa.cast(sa.func.coalesce(sa.func.sum(expr), 0), sa.BigInteger())


class LedgerStore:
    def __init__(self, url: str, *, timeout: float = 10.0, pool_size: int = 5) -> None:
        parsed = make_url(url)
        driver = _DRIVERS.get(parsed.drivername)
        if driver is None:
            raise ValueError(f"the ledger needs a sqlite:// or postgresql:// URL, not {parsed.drivername}://")
        self._url: URL = parsed.set(drivername=driver)
        self._sqlite = driver.startswith("sqlite")
        # The longest a connect, a statement or a wait for a pooled connection may take
        # (on SQLite: the busy timeout, how long a write waits for another process's lock).
        self._timeout = timeout
        self._pool_size = pool_size
        self._engine: AsyncEngine | None = None
        # SQLite's inserts, from a process of its own (made by start()).
        self._sink: SqliteSink | None = None
        self._insert_compiled: tuple[str, tuple[int, ...]] | None = None
        self._closed = False
        # One start at a time: a lazy start (_transaction) racing an explicit one would make two engines.
        self._starting = asyncio.Lock()

    @property
    def dialect(self) -> str:
        return "sqlite" if self._sqlite else "postgresql"

    def _create_engine(self) -> AsyncEngine:
        if self._sqlite:
            database = self._url.database
            if database and database != ":memory:" and not database.startswith("file:"):
                os.makedirs(os.path.dirname(os.path.abspath(database)), exist_ok=True)
            engine = create_async_engine(self._url, connect_args={"timeout": self._timeout})
            _sqlite_events(engine, self._timeout)
            return engine
        return create_async_engine(
            self._url,
            pool_size=self._pool_size,
            max_overflow=self._pool_size,
            pool_timeout=self._timeout,
            pool_pre_ping=True,
            connect_args={"timeout": self._timeout, "command_timeout": self._timeout,
                          "server_settings": {"application_name": "pixelgate-ledger"}},
        )

    def _unavailable(self, exc: BaseException) -> LedgerUnavailable | None:
        return as_unavailable(exc, self._url)

    @property
    def started(self) -> bool:
        return self._engine is not None

    async def start(self) -> None:
        """Connect and bring the schema up to date (idempotent: a migrated database is left as it is).

        Raises LedgerUnavailable when the database cannot be reached; a store whose
        start failed tries again on its next call (see ``_transaction``), so a
        gateway can boot while its database is down and the writer spools meanwhile."""
        async with self._starting:
            self._closed = False
            if self._engine is None:
                self._engine = await self._open()
                if self._sqlite and self._sink is None:
                    assert self._url.database is not None  # a file: _open refuses anything without WAL
                    self._sink = SqliteSink(self._url.database, self._timeout, self._where)

    async def _open(self) -> AsyncEngine:
        try:
            engine = self._create_engine()
        except OSError as exc:  # the data directory cannot be created
            raise LedgerUnavailable(f"the ledger database {self._where} cannot be used: {type(exc).__name__}: {exc}") from None
        try:
            async with engine.connect() as conn:
                await conn.execution_options(**{_IMMEDIATE: True})
                async with conn.begin():
                    if not self._sqlite:
                        await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_MIGRATION_LOCK)))
                    await conn.run_sync(self._migrate)
                if self._sqlite:
                    mode = (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar()
                    if str(mode).lower() != "wal":
                        raise LedgerUnavailable(
                            f"the ledger database {self._where} cannot use WAL mode (journal_mode is {mode!r}): it needs a file on local disk"
                        )
        except BaseException as exc:
            await engine.dispose()
            unavailable = self._unavailable(exc)
            if unavailable is None:
                raise
            raise unavailable from None
        return engine

    @property
    def _where(self) -> str:
        return self._url.render_as_string(hide_password=True)

    def _migrate(self, connection: sa.Connection) -> None:
        revision = migrate.current(connection)
        if revision is not None and not migrate.is_known(revision):
            raise LedgerUnavailable(
                f"the ledger database {self._where} has schema revision {revision!r}, unknown to this Pixelgate "
                f"(its newest is {migrate.head()!r}): it was written by a later release"
            )
        migrate.upgrade(connection)

    async def close(self) -> None:
        self._closed = True
        sink, self._sink = self._sink, None
        if sink is not None:
            await sink.close()
        engine, self._engine = self._engine, None
        if engine is not None:
            await engine.dispose()

    async def _started(self) -> AsyncEngine:
        """The engine, the store started first if it is not (a start that failed is tried again)."""
        if self._engine is None:
            if self._closed:
                raise RuntimeError("LedgerStore used after close()")
            await self.start()
        assert self._engine is not None
        return self._engine

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[AsyncConnection]:
        """One transaction, committed when the block ends; an outage is LedgerUnavailable."""
        engine = await self._started()
        try:
            async with engine.begin() as conn:
                yield conn
        except Exception as exc:
            unavailable = self._unavailable(exc)
            if unavailable is None:
                raise
            raise unavailable from None

    def _insert(self, table: sa.Table) -> postgresql.Insert | sqlite.Insert:
        return sqlite.insert(table) if self._sqlite else postgresql.insert(table)

    async def ping(self) -> None:
        """Raises LedgerUnavailable unless the database answers."""
        async with self._transaction() as conn:
            await conn.execute(sa.select(1))

    async def schema_version(self) -> str | None:
        """The migration revision the database is at."""
        async with self._transaction() as conn:
            return await conn.run_sync(migrate.current)

    # The ledger.

    async def insert(self, rows: Sequence[LedgerRow]) -> None:
        """All the rows in one transaction; a row whose request_id is there already is skipped."""
        if not rows:
            return
        if self._sqlite:
            # From a process of its own (``sink``): on a thread of this one, SQLite's work
            # cost the event loop's thread as much again (make bench, small_c32).
            await self._started()
            assert self._sink is not None
            await self._sink.insert(rows)
            return
        async with self._transaction() as conn:
            sql, order = self._insert_sql(conn)
            # Tuples straight to the driver's executemany: SQLAlchemy's per-row parameter
            # processing was about a third of a row's cost on the gateway's event loop.
            params = [tuple(values[i] for i in order) for values in map(msgspec.structs.astuple, rows)]
            await conn.exec_driver_sql(sql, params)

    def _insert_sql(self, conn: AsyncConnection) -> tuple[str, tuple[int, ...]]:
        """The ledger's INSERT ... ON CONFLICT DO NOTHING in the driver's own SQL, and which
        field of a LedgerRow each positional parameter is; compiled once."""
        if self._insert_compiled is None:
            statement = (
                self._insert(ledger)
                .values({name: sa.bindparam(name) for name in _COLUMNS})
                .on_conflict_do_nothing(index_elements=[ledger.c.request_id])
            )
            compiled = statement.compile(dialect=conn.dialect)
            assert compiled.positiontup is not None
            self._insert_compiled = (str(compiled), tuple(_COLUMNS.index(name) for name in compiled.positiontup))
        return self._insert_compiled

    def _day(self) -> sa.ColumnElement[str]:
        """The UTC date of ``at``, as YYYY-MM-DD. The constants are SQL literals, not bound
        parameters: PostgreSQL matches a GROUP BY expression to the select's only when they
        are the same text, and two parameters are two different ones."""
        if self._sqlite:
            return sa.func.strftime(sa.literal_column("'%Y-%m-%d'"), ledger.c.at, sa.literal_column("'unixepoch'"))
        utc = sa.func.timezone(sa.literal_column("'UTC'"), sa.func.to_timestamp(ledger.c.at))
        return sa.func.to_char(utc, sa.literal_column("'YYYY-MM-DD'"))

    async def usage(self, since: float, until: float, group_by: Sequence[Group], key: str | None = None) -> builtins.list[dict[str, Any]]:
        """Totals over ``since <= at < until``, one dict per group (in group order; None first).

        Each dict has the group's values (by their names in ``group_by``; ``key`` is
        the key's name, ``day`` the UTC date YYYY-MM-DD) and ``requests``,
        ``errors`` (status >= 400), ``images``, ``partials``, the four token counts,
        ``cost_micro_usd`` (the priced requests' sum; None when the group has no
        priced request, never a 0 that would read as free) and ``unpriced`` (how
        many requests had no price). No ``group_by``: one dict, the totals (zeros
        when there are no rows). ``key``: only that key's rows (its own usage)."""
        groups: dict[str, sa.ColumnElement[Any]] = {
            "key": ledger.c.key_name, "model": ledger.c.model, "provider": ledger.c.provider,
            "operation": ledger.c.operation, "day": self._day(),
        }
        names = list(dict.fromkeys(group_by))
        unknown = [name for name in names if name not in groups]
        if unknown:
            raise ValueError(f"cannot group usage by {', '.join(map(repr, unknown))}: by {', '.join(GROUPS)}")
        c = ledger.c
        exprs = [groups[name] for name in names]
        statement = (
            sa.select(
                *(expr.label(name) for name, expr in zip(names, exprs, strict=True)),
                sa.cast(sa.func.count(), sa.BigInteger()).label("requests"),
                _total(sa.case((c.status >= 400, 1), else_=0)).label("errors"),
                _total(c.images).label("images"),
                _total(c.partials).label("partials"),
                _total(c.input_text_tokens).label("input_text_tokens"),
                _total(c.input_image_tokens).label("input_image_tokens"),
                _total(c.output_text_tokens).label("output_text_tokens"),
                _total(c.output_image_tokens).label("output_image_tokens"),
                sa.cast(sa.func.sum(c.cost_micro_usd), sa.BigInteger()).label("cost_micro_usd"),
                _total(sa.case((c.cost_micro_usd.is_(None), 1), else_=0)).label("unpriced"),
            )
            .where(c.at >= since, c.at < until)
            .group_by(*exprs)
            .order_by(*(expr.asc().nulls_first() for expr in exprs))
        )
        if key is not None:
            statement = statement.where(c.key_name == key)
        async with self._transaction() as conn:
            result = await conn.execute(statement)
            return [dict(row._mapping) for row in result]

    async def spend(self, key_name: str, since: float) -> int:
        """Micro-dollars the key's priced requests cost since ``since`` (unpriced ones count 0)."""
        statement = sa.select(_total(ledger.c.cost_micro_usd)).where(ledger.c.key_name == key_name, ledger.c.at >= since)
        async with self._transaction() as conn:
            return int((await conn.execute(statement)).scalar_one())

    # Gateway keys.

    async def put_key(
        self,
        key_id: str,
        name: str,
        key_hash: str,
        *,
        models: Sequence[str] | None = None,
        limits: Mapping[str, Any] | None = None,
        cors_origins: Sequence[str] = (),
        webhook_url: str | None = None,
        revoked: bool = False,
        now: float | None = None,
        expected_version: int | None = None,
        audit: Audit | None = None,
    ) -> GatewayKey:
        """Create the key, or replace every field of it but ``created_at``; it gets the next version.

        ``expected_version``: replace the key only if it is still at that version
        (compare-and-set: a read-modify-write that lost a race raises KeyChanged and
        is done again on the fresh key, rather than undoing the other write).
        ``audit``: the entry recording this write, committed in the same
        transaction (a write is never without its entry, nor an entry without its write).

        Raises ValueError when another key has the name already."""
        now = time.time() if now is None else now
        k = gateway_keys.c
        next_version = sa.select(sa.func.coalesce(sa.func.max(k.version), 0) + 1).scalar_subquery()
        insert = self._insert(gateway_keys).values(
            id=key_id, name=name, hash=key_hash, models=None if models is None else list(models), limits=dict(limits or {}),
            cors_origins=list(cors_origins), webhook_url=webhook_url, revoked=revoked, created_at=now, updated_at=now,
            version=next_version,
        )
        replaced = ("name", "hash", "models", "limits", "cors_origins", "webhook_url", "revoked", "updated_at", "version")
        statement = insert.on_conflict_do_update(
            index_elements=[k.id], set_={column: insert.excluded[column] for column in replaced},
            where=None if expected_version is None else k.version == expected_version,
        ).returning(*gateway_keys.c)
        try:
            async with self._transaction() as conn:
                if not self._sqlite:
                    # Writers one at a time, until commit: versions are given in commit order.
                    # SHARE ROW EXCLUSIVE conflicts with itself and lets every read through.
                    await conn.execute(sa.text("LOCK TABLE gateway_keys IN SHARE ROW EXCLUSIVE MODE"))
                row = (await conn.execute(statement)).one_or_none()
                if row is None:
                    # The conflict's WHERE failed: another write came first (nothing was changed).
                    raise KeyChanged(f"the gateway key {name!r} changed since version {expected_version}")
                if audit is not None:
                    await conn.execute(sa.insert(audit_log).values(audit.values(now)))
                return _key(row)
        except sa_exc.IntegrityError:
            raise ValueError(f"a gateway key named {name!r} exists already") from None

    async def get_key(self, name: str) -> GatewayKey | None:
        async with self._transaction() as conn:
            row = (await conn.execute(sa.select(gateway_keys).where(gateway_keys.c.name == name))).one_or_none()
        return None if row is None else _key(row)

    async def list_keys(self) -> builtins.list[GatewayKey]:
        async with self._transaction() as conn:
            rows = (await conn.execute(sa.select(gateway_keys).order_by(gateway_keys.c.name))).all()
        return [_key(row) for row in rows]

    async def keys_since(self, version: int) -> builtins.list[GatewayKey]:
        """Keys written after ``version`` (revoked ones too), oldest write first: a replica
        applies them in order and polls again from the last one's version."""
        statement = sa.select(gateway_keys).where(gateway_keys.c.version > version).order_by(gateway_keys.c.version)
        async with self._transaction() as conn:
            rows = (await conn.execute(statement)).all()
        return [_key(row) for row in rows]

    # The audit log.

    async def audit(
        self, actor: str, action: str, target: str | None, detail: Mapping[str, Any] | None = None, *, at: float | None = None
    ) -> None:
        entry = Audit(actor, action, target, detail)
        async with self._transaction() as conn:
            await conn.execute(sa.insert(audit_log).values(entry.values(time.time() if at is None else at)))

    async def audit_log(self, limit: int = 100) -> builtins.list[AuditEntry]:
        """The newest ``limit`` entries, newest first."""
        if limit <= 0:
            return []
        statement = sa.select(audit_log).order_by(audit_log.c.id.desc()).limit(limit)
        async with self._transaction() as conn:
            rows = (await conn.execute(statement)).all()
        return [
            AuditEntry(id=m["id"], at=m["at"], actor=m["actor"], action=m["action"], target=m["target"], detail=m["detail"])
            for m in (row._mapping for row in rows)
        ]
