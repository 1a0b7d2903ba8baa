"""Ledger rows to the database off the hot path, with a local spool so that none is lost.

``add(row)`` only appends to a bounded in-memory queue: it never waits, never
raises, never touches the disk or the database. A background task takes
batches from the queue (``batch_rows`` rows, or whatever has waited
``interval`` seconds) and inserts each in one transaction.

No loss: a batch leaves memory only once it is committed to the database or
appended (and fsynced) to the spool (``spool``). When the database cannot be
reached (``LedgerUnavailable``), the batch goes to the spool, a warning is
logged (once per outage), and until the database answers again every batch
goes straight to the spool (no batch waits for a dead database's timeout).
When the queue is full (an outage on a slow disk, a burst beyond what the
database takes), rows go to the spool too, by a task of their own, never
dropped. A row the database refuses as it is (a value it cannot store: a NUL
in a PostgreSQL text, a number beyond BIGINT) is isolated from its batch and
kept in the spool's ``.rejected`` file, so it can neither be lost nor block
the rows behind it; any other error is taken for an outage (spooled, tried
again), since an error of no row in particular would reject them all.

No duplicates: a background loop replays the spool when the database answers
(and at start, for a previous process's leftovers): the spool is renamed to a
replay file, inserted batch by batch, and deleted once all of it is in. A
crash or an outage mid-replay leaves the replay file, and the next replay goes
through it again from the start: whatever was inserted already, or committed
by a transaction whose answer was lost, is skipped by the ledger's unique
``request_id`` (``ON CONFLICT DO NOTHING``).

``close()`` is the SIGTERM path: it flushes everything (the queue to the
database, or to the spool while the database is down) before it returns. A
replay in progress stops at its next batch. Then, if the spool holds rows and
the database answers, close replays them (for at most ``close_replay``
seconds): a process that never starts again (a replica scaled away, its disk
with it) must not leave rows behind only because the database came back
between two of its retries. Whatever is left waits in the spool or replay file
for the next start. A row added after ``close()`` (a request finishing late)
is appended to the spool at once, synchronously: there is no task left to do
it, and it must not be lost.

Events (``on_event(name, rows)``, e.g. for counters): ``written`` (inserted
from the queue), ``spooled`` (to the spool, the database being down),
``overflow`` (to the spool, the queue being full), ``replayed`` (inserted
from the spool), ``rejected`` (refused by the database, kept aside),
``corrupt`` (spool lines that did not decode: torn by a crash), ``lost``
(only when the spool cannot be written either while closing). Every added
row ends up ``written``, ``spooled``, ``overflow``, ``rejected`` or ``lost``;
every spooled or overflowed row is later ``replayed`` or ``rejected``.

Each process needs a spool path of its own (a worker index or the pid in the
name): the spool is locked for the writer's lifetime (``SpoolInUse``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Sequence

from pixelgate.proxy.ledger.errors import LedgerUnavailable, describe, is_row_fault
from pixelgate.proxy.ledger.row import LedgerRow
from pixelgate.proxy.ledger.spool import Spool
from pixelgate.proxy.ledger.store import LedgerStore

__all__ = ["LedgerWriter"]

log = logging.getLogger("pixelgate.ledger")

# How often a spool that cannot be written is tried again while closing, before its rows count as lost.
_CLOSING_SPOOL_TRIES = 3
# How much of a driver's message goes into a log line (it may quote a value).
_DETAIL = 300


async def _wait(event: asyncio.Event, timeout: float | None) -> None:
    """Until ``event`` is set (after clearing it) or ``timeout`` seconds have passed."""
    event.clear()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()


class LedgerWriter:
    def __init__(
        self,
        store: LedgerStore,
        spool_path: str | os.PathLike[str],
        *,
        batch_rows: int = 500,
        interval: float = 1.0,
        max_queue: int = 100_000,
        on_event: Callable[[str, int], None] | None = None,
        retry_interval: float = 2.0,
        close_replay: float = 10.0,
    ) -> None:
        if batch_rows < 1 or max_queue < 1:
            raise ValueError("batch_rows and max_queue must be at least 1")
        self._store = store
        self._spool = Spool(spool_path)
        self._batch_rows = batch_rows
        self._interval = interval
        self._max_queue = max_queue
        self._on_event = on_event
        # How often the database is asked again while it is down.
        self._retry_interval = retry_interval
        self._close_replay = close_replay
        self._queue: deque[LedgerRow] = deque()
        # When the oldest row in the queue arrived (time.monotonic).
        self._first_at = 0.0
        self._overflow: list[LedgerRow] = []
        self._db_up = True
        # Whether the spool may hold rows not yet replayed (set by every append).
        self._pending = False
        self._closing = False
        # Set once the flusher has emptied the queue for good: add() then spools itself.
        self._flushed = False
        self._started = False
        self._wake = asyncio.Event()
        self._overflow_wake = asyncio.Event()
        self._replay_wake = asyncio.Event()
        # Spool appends, rejects and the replay's rename, one at a time.
        self._spool_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._closed: asyncio.Future[None] | None = None

    async def start(self) -> None:
        """Lock the spool and start the background tasks; leftovers of a previous process are replayed."""
        if self._started:
            return
        await asyncio.to_thread(self._spool.lock)
        self._pending = await asyncio.to_thread(self._spool.pending)
        if self._pending:
            log.info("ledger: replaying the rows a previous process left in %s", self._spool.path)
        self._started = True
        self._tasks = [
            asyncio.create_task(self._flush_loop(), name="ledger-flush"),
            asyncio.create_task(self._overflow_loop(), name="ledger-overflow"),
            asyncio.create_task(self._replay_loop(), name="ledger-replay"),
        ]

    def add(self, row: LedgerRow) -> None:
        """Queue one row (never blocks, never raises)."""
        try:
            if self._flushed:
                self._spool_now([row])
            elif len(self._queue) >= self._max_queue:
                self._overflow.append(row)
                self._overflow_wake.set()
            else:
                self._queue.append(row)
                if len(self._queue) == 1:
                    self._first_at = time.monotonic()
                    self._wake.set()
                elif len(self._queue) >= self._batch_rows:
                    self._wake.set()
        except Exception:
            log.exception("ledger: could not queue row %s", getattr(row, "request_id", "?"))

    async def close(self) -> None:
        """Flush every row (to the database, or to the spool while it is down), then stop.

        Idempotent: a second call waits for the first one's flush."""
        if self._closed is None:
            self._closed = asyncio.ensure_future(self._close())
        await self._closed

    async def _close(self) -> None:
        if not self._started:
            await self.start()  # rows added before start() are flushed too
        self._closing = True
        flusher, overflow, replay = self._tasks
        self._wake.set()
        await flusher
        self._flushed = True
        self._overflow_wake.set()
        await overflow
        self._replay_wake.set()
        await replay
        await self._replay_before_exit()
        await asyncio.to_thread(self._spool.unlock)

    async def _replay_before_exit(self) -> None:
        if not self._pending:
            return
        try:
            await self._store.ping()
        except Exception:
            log.warning("ledger: the database is still unavailable; spooled rows wait in %s for the next start", self._spool.path)
            return
        deadline = time.monotonic() + self._close_replay
        try:
            # A replay file left by an interrupted replay goes first, the spool in a second round.
            while self._pending and time.monotonic() <= deadline:
                await self._replay(deadline)
        except Exception as exc:  # LedgerUnavailable, an unreadable file: what is left waits for the next start
            log.warning("ledger: replaying the spool before exit stopped (%s); the rest waits for the next start", describe(exc))
            return
        if self._pending:
            log.warning("ledger: replaying the spool before exit took longer than %gs; the rest waits for the next start",
                        self._close_replay)

    def _emit(self, event: str, rows: int) -> None:
        if rows and self._on_event is not None:
            try:
                self._on_event(event, rows)
            except Exception:
                log.exception("ledger: on_event(%r, %d) failed", event, rows)

    # Queue to database.

    async def _next_batch(self) -> list[LedgerRow] | None:
        """The next batch: full, or its oldest row has waited ``interval``; None once closed and empty."""
        while not self._queue:
            if self._closing:
                return None
            await _wait(self._wake, None)
        deadline = self._first_at + self._interval
        while len(self._queue) < self._batch_rows and not self._closing:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            await _wait(self._wake, remaining)
        batch = [self._queue.popleft() for _ in range(min(self._batch_rows, len(self._queue)))]
        # The rows left arrived while this batch waited: theirs starts now.
        self._first_at = time.monotonic()
        return batch

    async def _flush_loop(self) -> None:
        while (batch := await self._next_batch()) is not None:
            try:
                await self._deliver(batch)
            except Exception:
                # Not reached by design (_deliver spools what it cannot insert); the loop must live on.
                log.exception("ledger: a batch of %d rows could not be delivered", len(batch))

    async def _deliver(self, batch: list[LedgerRow]) -> None:
        if self._db_up:
            try:
                self._emit("written", await self._insert(batch))
                return
            except LedgerUnavailable as exc:
                self._down(exc)
        await self._to_spool(batch, "spooled")

    async def _insert(self, rows: Sequence[LedgerRow]) -> int:
        """Insert the rows; returns how many went in.

        A row the database refuses as it is (``is_row_fault``) is found by
        inserting its batch row by row, and set aside in the rejected file. Any
        other error is taken for an outage (LedgerUnavailable): the rows are
        spooled and tried again later rather than set aside, since a fault of no
        row in particular (a bug, a schema someone changed) would have every
        row rejected. Messages are the driver's, never SQLAlchemy's (which
        carries the parameters, prompts among them)."""
        try:
            await self._store.insert(rows)
            return len(rows)
        except LedgerUnavailable:
            raise
        except Exception as exc:
            if not is_row_fault(exc):
                raise LedgerUnavailable(f"the ledger database failed an insert: {describe(exc)[:_DETAIL]}") from None
            reason = describe(exc)[:_DETAIL]
        if len(rows) == 1:
            log.error("ledger: the database refused row %s (%s); it is kept in %s", rows[0].request_id, reason, self._spool.rejected_path)
            await self._reject(rows)
            return 0
        # One bad row fails its whole batch: find it (them), row by row.
        inserted = 0
        for row in rows:
            inserted += await self._insert([row])
        return inserted

    async def _reject(self, rows: Sequence[LedgerRow]) -> None:
        try:
            async with self._spool_lock:
                await asyncio.to_thread(self._spool.reject, rows)
        except OSError:
            log.exception("ledger: %d refused rows could not be kept in %s", len(rows), self._spool.rejected_path)
            self._emit("lost", len(rows))
            return
        self._emit("rejected", len(rows))

    def _down(self, exc: LedgerUnavailable) -> None:
        if self._db_up:
            self._db_up = False
            log.warning("ledger: the database is unavailable, spooling rows to %s until it is back: %s", self._spool.path, exc)

    # Spool.

    async def _to_spool(self, rows: list[LedgerRow], event: str) -> None:
        """Append the rows to the spool, durably; tried until it works (a few times only while closing)."""
        tries = 0
        while True:
            try:
                async with self._spool_lock:
                    await asyncio.to_thread(self._spool.append, rows)
                break
            except OSError:
                tries += 1
                if tries == 1:
                    log.exception("ledger: cannot write the spool %s; %d rows wait in memory", self._spool.path, len(rows))
                if self._closing and tries >= _CLOSING_SPOOL_TRIES:
                    log.error("ledger: %d rows lost: neither the database nor the spool %s can take them", len(rows), self._spool.path)
                    self._emit("lost", len(rows))
                    return
                await asyncio.sleep(self._retry_interval)
        self._pending = True
        self._replay_wake.set()
        self._emit(event, len(rows))

    def _spool_now(self, rows: list[LedgerRow]) -> None:
        """After close(): append at once, on this thread (blocking; a shutdown's late rows only)."""
        try:
            self._spool.append(rows)
        except OSError:
            log.exception("ledger: %d rows added after close() lost: the spool %s cannot be written", len(rows), self._spool.path)
            self._emit("lost", len(rows))
            return
        self._emit("spooled", len(rows))

    async def _overflow_loop(self) -> None:
        while True:
            if not self._overflow:
                if self._flushed:
                    return
                await _wait(self._overflow_wake, None)
                continue
            rows, self._overflow = self._overflow, []
            await self._to_spool(rows, "overflow")

    # Spool to database.

    async def _replay_loop(self) -> None:
        while not self._closing:
            if not self._pending:
                await _wait(self._replay_wake, None)
                continue
            if not self._db_up:
                await _wait(self._replay_wake, self._retry_interval)
                if self._closing:
                    return
                try:
                    await self._store.ping()
                except LedgerUnavailable:
                    continue
                except Exception:
                    log.exception("ledger: checking the database failed")
                    continue
            try:
                await self._replay()
            except LedgerUnavailable as exc:
                self._down(exc)
                continue
            except Exception:
                # An unreadable replay file, say: it stays, and is tried again later.
                log.exception("ledger: replaying %s failed", self._spool.replay_path)
                self._pending = True
                await _wait(self._replay_wake, self._retry_interval)
                continue
            if not self._db_up and not self._closing:
                self._db_up = True
                log.warning("ledger: the database is back; rows go to it again")

    async def _replay(self, deadline: float | None = None) -> None:
        """Insert the replay file (the spool, renamed) batch by batch, then delete it.

        It stops at the next batch once closing (the replay loop's), or, given a
        ``deadline`` (close's own replay), once that has passed."""
        async with self._spool_lock:
            # Cleared before the rename: an append after it sets it again, for another round.
            self._pending = False
            if not await asyncio.to_thread(self._spool.take):
                return
        file = await asyncio.to_thread(self._spool.open_replay)
        try:
            corrupt = 0
            while True:
                if self._closing if deadline is None else time.monotonic() > deadline:
                    self._pending = True  # the rest waits in the replay file for the next start
                    return
                rows, bad, end = await asyncio.to_thread(self._spool.read, file, self._batch_rows)
                corrupt += bad
                if rows:
                    try:
                        self._emit("replayed", await self._insert(rows))
                    except BaseException:
                        self._pending = True
                        raise
                if end:
                    break
        finally:
            await asyncio.to_thread(file.close)
        if corrupt:
            log.warning("ledger: %d lines of %s did not decode (torn by a crash) and were skipped", corrupt, self._spool.replay_path)
            self._emit("corrupt", corrupt)
        await asyncio.to_thread(self._spool.finish_replay)
        # A replay a crash interrupted was taken as it was, leaving the spool beside it for another round.
        if await asyncio.to_thread(self._spool.pending):
            self._pending = True
