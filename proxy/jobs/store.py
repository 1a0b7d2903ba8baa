"""What a job store does, and the record format both stores share.

A job store keeps ``Job`` records where every process of the gateway (and
every replica) sees them, so an async job outlives the process that took it:
``proxy.jobs.sqlite_store`` (one file on local disk, the embedded default, for
the workers of one host) and ``proxy.jobs.redis_store`` (shared by replicas).

Every method that changes a record is atomic across everything sharing the
store, and conditional where two processes may race (``create`` with a cap,
``claim``, ``update``, ``renew``, ``request_cancel``, ``sweep``): the
condition and the write are one step, never a read followed by a write.

The record is kept whole, encoded with msgpack (``encode``), beside a few
*columns*: the fields the stores query or change without rewriting the record
(``key``, ``created_at``, ``status``, ``finished_at``, ``owner``,
``lease_until``, ``cancel_requested``). A claim or a renewal writes only its
columns, so on every read the columns override the record's copies of those
fields (``decode``). That split is what lets a claim be a single conditional
UPDATE (SQLite) or a short Lua script (Redis), with no decoding in the store.

Which writer owns which column:

- ``key`` and ``created_at``: fixed by ``create``;
- ``owner`` and ``lease_until``: ``claim`` and ``renew``. ``update`` leaves
  them alone, so a runner's stale copy cannot shorten a lease its renewal loop
  has just extended, except to give the job up: a record written with owner
  None releases it (owner None, ``lease_until`` the record's, 0 to let another
  process claim it at once, as a shutdown does);
- ``cancel_requested``: set by ``request_cancel``, and never cleared by
  ``update`` (a cancel that arrives while the runner writes is not lost);
- ``status`` and ``finished_at``: ``update`` (and ``request_cancel`` for a
  queued job nobody runs).
"""

from __future__ import annotations

import builtins
from typing import Protocol

import msgspec

from pixelgate.proxy.jobs.model import FINAL, Job, JobStatus

__all__ = ["ACTIVE", "Columns", "JobStore", "JobStoreUnavailable", "check_record", "decode", "encode"]

# The statuses a job can still leave, in the enum's order.
ACTIVE = tuple(s for s in JobStatus if s not in FINAL)


class JobStoreUnavailable(Exception):
    """The store cannot be reached or used (Redis down, the SQLite file unusable).

    The message says what failed and where; it never names a secret (a Redis
    password)."""


class JobStore(Protocol):
    """Every method raises ``JobStoreUnavailable`` when the backend cannot be reached."""

    async def start(self) -> None:
        """Open the backend (and create or migrate the schema)."""
        ...

    async def close(self) -> None: ...

    async def create(self, job: Job, max_active_per_key: int | None) -> bool:
        """Insert a new job. With a cap, atomically refuse (return False, insert nothing) when the job's key
        (``job.key``, None counts as its own key) already has ``max_active_per_key`` non-final jobs.

        The record is stored as given (a new job: QUEUED, no owner, ``lease_until`` 0, so it is
        ``recoverable`` until claimed). Raises ``ValueError`` if the id exists already."""
        ...

    async def get(self, job_id: str) -> Job | None: ...

    # Below this method, `list` in the class body is the method: annotations spell builtins.list.
    async def list(self, key: str | None, limit: int, before: float | None = None) -> list[Job]:
        """The key's jobs, newest first (``created_at`` descending, then id descending), at most ``limit``;
        ``before``: only jobs created before that time (pagination)."""
        ...

    async def claim(self, job_id: str, owner: str, lease_until: float, now: float) -> Job | None:
        """Atomically take the job to run it: only if it is not final and (it has no owner, or its
        ``lease_until < now``, or its owner is ``owner``). Sets owner and ``lease_until``; returns the job
        as stored after the claim, or None."""
        ...

    async def update(self, job: Job, owner: str) -> bool:
        """Write the record, only if the stored record's owner is still ``owner`` and it is not final
        (compare-and-set); False when the lease was lost (nothing written).

        Key and created_at stay as stored, and ``cancel_requested`` stays set once set. Owner and lease
        stay as stored too, unless ``job.owner`` is None: that gives the job up (owner None, lease
        ``job.lease_until``; 0 makes it recoverable at once). Writing a final status (with
        ``finished_at``, else ``ValueError``) is how a run ends: the job leaves the recoverable set,
        and ``sweep`` finds it by ``finished_at``."""
        ...

    async def renew(self, job_ids: builtins.list[str], owner: str, lease_until: float) -> builtins.list[str]:
        """Extend the lease of those of ``job_ids`` still owned by ``owner`` (and not final); return, in
        ``job_ids`` order, those of them with ``cancel_requested`` set. Ids no longer owned are skipped."""
        ...

    async def request_cancel(self, job_id: str, now: float) -> Job | None:
        """Ask a job to stop. A QUEUED job with no live lease (no owner, or ``lease_until < now``) becomes
        CANCELLED at once (``finished_at = now``, owner None); any other non-final job gets
        ``cancel_requested`` (its owner, or whoever recovers it, finishes it as CANCELLED). A final job is
        left as it is. Returns the record after the change, None if there is no such job."""
        ...

    async def recoverable(self, now: float, limit: int) -> builtins.list[str]:
        """Ids of non-final jobs whose lease has expired (``lease_until < now``), the lease that ran out
        first first (never-claimed jobs, lease 0, lead), at most ``limit``."""
        ...

    async def sweep(self, finished_before: float, limit: int) -> builtins.list[Job]:
        """Delete up to ``limit`` final jobs finished before that time, oldest first; return them (the
        caller deletes their stored objects). Each job is returned by one sweep only."""
        ...

    async def count_by_status(self) -> dict[JobStatus, int]:
        """Jobs per status, every status present (for a gauge)."""
        ...


class Columns(msgspec.Struct, frozen=True):
    """The fields a store keeps beside the record, which override the record's copies when read."""

    key: str | None
    created_at: float
    status: JobStatus
    finished_at: float | None
    owner: str | None
    lease_until: float
    cancel_requested: bool


def encode(job: Job) -> bytes:
    return msgspec.msgpack.encode(job)


def decode(record: bytes, columns: Columns) -> Job:
    job = msgspec.msgpack.decode(record, type=Job)
    return msgspec.structs.replace(
        job,
        key=columns.key,
        created_at=columns.created_at,
        status=columns.status,
        finished_at=columns.finished_at,
        owner=columns.owner,
        lease_until=columns.lease_until,
        cancel_requested=columns.cancel_requested,
    )


def check_record(job: Job) -> None:
    """What a store refuses to write: a final job without ``finished_at`` would never be swept."""
    if job.final and job.finished_at is None:
        raise ValueError(f"job {job.id}: a {job.status.value} job needs finished_at")
