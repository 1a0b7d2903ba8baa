"""The SQLite job store: the embedded default, one file on local disk.

Every gateway worker of the host opens the same file (``aiosqlite``: one
connection per store, its statements run on a thread of their own, so the
event loop never blocks on the disk). One table, ``jobs``: the record whole
(msgpack, ``store.encode``) and the columns the queries need (see
``proxy.jobs.store``).

Atomic across processes, with no lock of our own:

- every operation is ONE SQL statement in autocommit mode (a conditional
  ``UPDATE ... WHERE owner = ? ... RETURNING``, an ``INSERT ... SELECT ...
  WHERE (count) < cap``, a ``DELETE ... RETURNING``). SQLite starts a write
  statement's transaction as a write transaction: it takes the file's write
  lock before it reads the rows its condition tests, so the test and the write
  are one step that no other process can come between (what ``BEGIN
  IMMEDIATE`` does for a transaction of several statements);
- the one transaction of several statements, creating or migrating the schema
  at start, is ``BEGIN IMMEDIATE``: a deferred transaction would read the
  schema version under a read lock, and two workers starting at once would
  both try to create the schema; with ``IMMEDIATE`` the second waits and then
  sees it done;
- statements that are not in a transaction of ours never hold a lock while
  the event loop runs something else, so the coroutines of one process share
  the one connection safely (aiosqlite runs its statements one at a time).

WAL mode, so readers never wait for the writer (and the writer never waits for
readers); ``busy_timeout``, so a write that finds the lock taken by another
process waits for it instead of failing at once. Past that wait the store is
unavailable (``JobStoreUnavailable``). ``synchronous=FULL``: a job the gateway
answered 202 for must survive a power cut, not only a crash.

The schema version is ``PRAGMA user_version``: each entry of ``_MIGRATIONS``
takes the file from one version to the next, so a later release adds an entry
and older files are brought up to date at start. A file of a newer version
than this code knows is refused.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import math
import os
import sqlite3
from collections.abc import Iterable, Mapping
from typing import Any

import aiosqlite

from pixelgate.proxy.jobs.model import FINAL, Job, JobStatus
from pixelgate.proxy.jobs.store import ACTIVE, Columns, JobStoreUnavailable, check_record, decode, encode

__all__ = ["SCHEMA_VERSION", "SqliteJobStore"]


def _in(statuses: Iterable[JobStatus]) -> str:
    return "status IN (" + ", ".join(f"'{s.value}'" for s in sorted(statuses, key=list(JobStatus).index)) + ")"


# The partial indexes' conditions, spelled exactly as the queries spell them:
# SQLite uses a partial index only for a query whose WHERE contains its condition.
_ACTIVE = _in(ACTIVE)
_FINAL = _in(FINAL)

# Each entry takes the file from version i to i + 1 (run in one BEGIN IMMEDIATE transaction).
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE jobs (
            id TEXT PRIMARY KEY NOT NULL,
            key TEXT,
            created_at REAL NOT NULL,
            status TEXT NOT NULL,
            finished_at REAL,
            owner TEXT,
            lease_until REAL NOT NULL,
            cancel_requested INTEGER NOT NULL,
            record BLOB NOT NULL
        )""",
        # list(): a key's jobs, newest first (read backwards).
        "CREATE INDEX jobs_by_key ON jobs (key, created_at, id)",
        # create() with a cap: a key's non-final jobs, counted.
        f"CREATE INDEX jobs_active_by_key ON jobs (key) WHERE {_ACTIVE}",
        # recoverable(): non-final jobs by lease expiry.
        f"CREATE INDEX jobs_recoverable ON jobs (lease_until, id) WHERE {_ACTIVE}",
        # sweep(): final jobs by when they ended.
        f"CREATE INDEX jobs_finished ON jobs (finished_at, id) WHERE {_FINAL}",
    ),
)
SCHEMA_VERSION = len(_MIGRATIONS)

# The columns decode() takes, in Columns' order, then the record.
_ROW = "key, created_at, status, finished_at, owner, lease_until, cancel_requested, record"

_INSERT = f"""
INSERT INTO jobs (id, key, created_at, status, finished_at, owner, lease_until, cancel_requested, record)
SELECT :id, :key, :created_at, :status, :finished_at, :owner, :lease_until, :cancel_requested, :record
WHERE :cap IS NULL OR (SELECT count(*) FROM jobs WHERE key IS :key AND {_ACTIVE}) < :cap
RETURNING id
"""

_GET = f"SELECT {_ROW} FROM jobs WHERE id = ?"

_LIST = f"""
SELECT {_ROW} FROM jobs
WHERE key IS :key AND created_at < :before
ORDER BY created_at DESC, id DESC LIMIT :limit
"""

_CLAIM = f"""
UPDATE jobs SET owner = :owner, lease_until = :lease_until
WHERE id = :id AND {_ACTIVE} AND (owner IS NULL OR lease_until < :now OR owner = :owner)
RETURNING {_ROW}
"""

# The lease is the owner's (claim, renew) unless the record gives the job up, and a cancel
# request stays: see proxy.jobs.store.
_UPDATE = f"""
UPDATE jobs SET record = :record, status = :status, finished_at = :finished_at,
    cancel_requested = cancel_requested OR :cancel_requested,
    owner = CASE WHEN :release THEN NULL ELSE owner END,
    lease_until = CASE WHEN :release THEN :lease_until ELSE lease_until END
WHERE id = :id AND owner = :owner AND {_ACTIVE}
RETURNING id
"""

# One parameter, a JSON array of ids, whatever their number (no statement per id, no variable limit).
_RENEW = f"""
UPDATE jobs SET lease_until = :lease_until
WHERE id IN (SELECT value FROM json_each(:ids)) AND owner = :owner AND {_ACTIVE}
RETURNING id, cancel_requested
"""

# SET expressions all see the row as it was, so each CASE tests the same thing.
_NOBODY_RUNS_IT = f"status = '{JobStatus.QUEUED.value}' AND (owner IS NULL OR lease_until < :now)"
_CANCEL = f"""
UPDATE jobs SET
    status = CASE WHEN {_NOBODY_RUNS_IT} THEN '{JobStatus.CANCELLED.value}' ELSE status END,
    finished_at = CASE WHEN {_NOBODY_RUNS_IT} THEN :now ELSE finished_at END,
    owner = CASE WHEN {_NOBODY_RUNS_IT} THEN NULL ELSE owner END,
    cancel_requested = CASE WHEN {_NOBODY_RUNS_IT} THEN cancel_requested ELSE 1 END
WHERE id = :id AND {_ACTIVE}
RETURNING {_ROW}
"""

_RECOVERABLE = f"SELECT id FROM jobs WHERE {_ACTIVE} AND lease_until < ? ORDER BY lease_until, id LIMIT ?"

# One statement: two sweepers never both get (and both delete the objects of) one job.
_SWEEP = f"""
DELETE FROM jobs WHERE id IN (
    SELECT id FROM jobs WHERE {_FINAL} AND finished_at < ? ORDER BY finished_at, id LIMIT ?
)
RETURNING {_ROW}
"""

_COUNT = "SELECT status, count(*) FROM jobs GROUP BY status"

# Errors that say the file cannot be used (locked past busy_timeout, unreadable, not a
# database, disk full); a ProgrammingError or an IntegrityError is a bug, and is raised as it is.
_UNUSABLE = (sqlite3.OperationalError, sqlite3.DatabaseError, OSError)
_BUGS = (sqlite3.ProgrammingError, sqlite3.IntegrityError, sqlite3.InterfaceError)


def _job(row: Any) -> Job:
    key, created_at, status, finished_at, owner, lease_until, cancel_requested, record = row
    columns = Columns(key, created_at, JobStatus(status), finished_at, owner, lease_until, bool(cancel_requested))
    return decode(record, columns)


def _params(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "key": job.key,
        "created_at": job.created_at,
        "status": job.status.value,
        "finished_at": job.finished_at,
        "owner": job.owner,
        "lease_until": job.lease_until,
        "cancel_requested": int(job.cancel_requested),
        "record": encode(job),
    }


class SqliteJobStore:
    def __init__(self, path: str, *, busy_timeout: float = 5.0) -> None:
        self._path = path
        self._parent = os.path.dirname(os.path.abspath(path))
        # How long a write waits for another process's write lock before the store is unavailable.
        self._busy_timeout = busy_timeout
        self._db: aiosqlite.Connection | None = None

    def _unavailable(self, exc: BaseException) -> JobStoreUnavailable:
        return JobStoreUnavailable(f"the SQLite job store {self._path!r} cannot be used: {type(exc).__name__}: {exc}")

    async def start(self) -> None:
        if self._db is not None:
            return
        try:
            await asyncio.to_thread(os.makedirs, self._parent, exist_ok=True)
            # isolation_level None: autocommit, each statement its own transaction (no implicit
            # BEGIN). sqlite3's timeout is SQLite's busy_timeout, in force from the first statement.
            db = await aiosqlite.connect(self._path, isolation_level=None, timeout=self._busy_timeout)
        except _BUGS:
            raise
        except _UNUSABLE as exc:
            raise self._unavailable(exc) from None
        try:
            await self._prepare(db)
        except BaseException as exc:
            await db.close()
            if isinstance(exc, _BUGS) or not isinstance(exc, _UNUSABLE):
                raise
            raise self._unavailable(exc) from None
        self._db = db

    async def _prepare(self, db: aiosqlite.Connection) -> None:
        # Persistent in the file; the first worker to open it switches it, the others find it so.
        [(mode,)] = await db.execute_fetchall("PRAGMA journal_mode = WAL")
        if str(mode).lower() != "wal":
            raise JobStoreUnavailable(
                f"the SQLite job store {self._path!r} cannot use WAL mode (journal_mode is {mode!r}): it needs a file on local disk"
            )
        await db.execute("PRAGMA synchronous = FULL")
        await db.execute("BEGIN IMMEDIATE")
        try:
            [(version,)] = await db.execute_fetchall("PRAGMA user_version")
            if version > SCHEMA_VERSION:
                raise JobStoreUnavailable(
                    f"the SQLite job store {self._path!r} has schema version {version}, newer than this "
                    f"Pixelgate's {SCHEMA_VERSION}: it was written by a later release"
                )
            for migration in _MIGRATIONS[version:]:
                for statement in migration:
                    await db.execute(statement)
            if version < SCHEMA_VERSION:
                # A PRAGMA takes no parameters; SCHEMA_VERSION is this module's int.
                await db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            await db.execute("COMMIT")
        except BaseException:
            await db.execute("ROLLBACK")
            raise

    async def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            await db.close()

    async def _rows(self, sql: str, params: Mapping[str, Any] | tuple[Any, ...]) -> builtins.list[Any]:
        """All the rows of one statement (fetched at once: a RETURNING statement ends, and
        commits, only when its last row has been read)."""
        if self._db is None:
            raise RuntimeError("SqliteJobStore used before start() or after close()")
        try:
            return list(await self._db.execute_fetchall(sql, params))
        except _BUGS:
            raise
        except _UNUSABLE as exc:
            raise self._unavailable(exc) from None

    async def create(self, job: Job, max_active_per_key: int | None) -> bool:
        check_record(job)
        try:
            rows = await self._rows(_INSERT, {**_params(job), "cap": max_active_per_key})
        except sqlite3.IntegrityError:
            raise ValueError(f"job {job.id} exists already") from None
        return bool(rows)

    async def get(self, job_id: str) -> Job | None:
        rows = await self._rows(_GET, (job_id,))
        return _job(rows[0]) if rows else None

    async def list(self, key: str | None, limit: int, before: float | None = None) -> builtins.list[Job]:
        if limit <= 0:
            return []  # LIMIT -1 would be no limit at all
        # No before: +inf, so the query is always one range of the index.
        until = math.inf if before is None else before
        rows = await self._rows(_LIST, {"key": key, "before": until, "limit": limit})
        return [_job(row) for row in rows]

    async def claim(self, job_id: str, owner: str, lease_until: float, now: float) -> Job | None:
        rows = await self._rows(_CLAIM, {"id": job_id, "owner": owner, "lease_until": lease_until, "now": now})
        return _job(rows[0]) if rows else None

    async def update(self, job: Job, owner: str) -> bool:
        check_record(job)
        params = {
            "id": job.id,
            "owner": owner,
            "record": encode(job),
            "status": job.status.value,
            "finished_at": job.finished_at,
            "cancel_requested": int(job.cancel_requested),
            "release": int(job.owner is None),
            "lease_until": job.lease_until,
        }
        return bool(await self._rows(_UPDATE, params))

    async def renew(self, job_ids: builtins.list[str], owner: str, lease_until: float) -> builtins.list[str]:
        if not job_ids:
            return []
        rows = await self._rows(_RENEW, {"ids": json.dumps(job_ids), "owner": owner, "lease_until": lease_until})
        cancelled = {job_id for job_id, cancel_requested in rows if cancel_requested}
        return [job_id for job_id in job_ids if job_id in cancelled]

    async def request_cancel(self, job_id: str, now: float) -> Job | None:
        rows = await self._rows(_CANCEL, {"id": job_id, "now": now})
        if rows:
            return _job(rows[0])
        # Final (left as it is) or not there: either way what get() says is the answer.
        return await self.get(job_id)

    async def recoverable(self, now: float, limit: int) -> builtins.list[str]:
        if limit <= 0:
            return []
        return [job_id for (job_id,) in await self._rows(_RECOVERABLE, (now, limit))]

    async def sweep(self, finished_before: float, limit: int) -> builtins.list[Job]:
        if limit <= 0:
            return []
        jobs = [_job(row) for row in await self._rows(_SWEEP, (finished_before, limit))]
        # RETURNING gives rows in no promised order.
        return sorted(jobs, key=lambda job: (job.finished_at or 0.0, job.id))

    async def count_by_status(self) -> dict[JobStatus, int]:
        counts = {status: 0 for status in JobStatus}
        for status, count in await self._rows(_COUNT, ()):
            counts[JobStatus(status)] = count
        return counts
