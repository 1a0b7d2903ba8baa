"""The gateway's side of the SQLite writer process (``pixelgate.proxy.sqlite_writer``).

``SqliteSink.insert(rows)`` encodes a batch, sends it down the process's
stdin and waits for its answer: it returns once the rows are committed, and
raises ``LedgerUnavailable`` for an outage (the file locked past its busy
timeout, the process gone), ``RowRefused`` for a row SQLite refuses as it is
(the writer then isolates it, as it does for a driver's refusal), and
``RuntimeError`` for anything else. A process that died is started again by
the next insert; one that does not answer within its busy timeout (and a
margin) is killed, so a hung child cannot hold a batch forever.

Why a hand-written pipe rather than ``concurrent.futures.ProcessPoolExecutor``:
a pool's worker imports the parent's ``__main__`` (for the ``pixelgate``
script that is the whole gateway: SQLAlchemy and all, half a second and tens of
MB), where this child imports only sqlite3 and msgspec; and a batch here is one
msgpack frame each way, which a pool would pickle, feed through a thread of its
own and a second queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Sequence

import msgspec

from pixelgate.proxy import sqlite_writer
from pixelgate.proxy.ledger.errors import LedgerUnavailable
from pixelgate.proxy.ledger.row import LedgerRow

__all__ = ["RowRefused", "SqliteSink"]

log = logging.getLogger("pixelgate.ledger")

_COLUMNS = tuple(LedgerRow.__struct_fields__)
# Beyond the busy timeout, how long an answer may take (a large batch's own work, a slow disk).
_MARGIN = 30.0


class RowRefused(ValueError):
    """SQLite refused a row of the batch as it is (a constraint, a value it cannot store)."""


class SqliteSink:
    """Inserts ledger rows into the SQLite file at ``path`` from a process of its own."""

    def __init__(self, path: str, timeout: float, where: str) -> None:
        self._path = path
        self._timeout = timeout
        # The database as messages name it (no secrets on SQLite, but one format for both).
        self._where = where
        self._proc: asyncio.subprocess.Process | None = None
        # One batch in flight: answers come in order, and the writer sends one at a time anyway.
        self._lock = asyncio.Lock()
        self._encode = msgspec.msgpack.Encoder().encode

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.returncode is None else None

    def _unavailable(self, what: str) -> LedgerUnavailable:
        return LedgerUnavailable(f"the ledger database {self._where} cannot be used: {what}")

    async def _start(self) -> asyncio.subprocess.Process:
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "pixelgate.proxy.sqlite_writer", self._path, repr(self._timeout), *_COLUMNS,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise self._unavailable(f"its writer process could not start: {exc}") from None
        await self._exchange(proc, None)  # its first answer: opening the file
        return proc

    async def _exchange(self, proc: asyncio.subprocess.Process, body: bytes | None) -> None:
        """Send ``body`` (if any) and read its answer. A process whose state is unknown
        after it (gone, silent, or the exchange cut short) is killed and forgotten."""
        assert proc.stdin is not None and proc.stdout is not None
        try:
            async with asyncio.timeout(self._timeout + _MARGIN):
                if body is not None:
                    proc.stdin.write(sqlite_writer.frame(body))
                    await proc.stdin.drain()
                head = await proc.stdout.readexactly(4)
                answer = await proc.stdout.readexactly(int.from_bytes(head, "little"))
        except (asyncio.IncompleteReadError, ConnectionError):
            await self._forget(proc)
            raise self._unavailable(f"its writer process ended (exit status {proc.returncode})") from None
        except TimeoutError:
            await self._forget(proc)
            raise self._unavailable(f"its writer process did not answer within {self._timeout + _MARGIN:g} s") from None
        except BaseException:
            # Cancelled mid-exchange: an answer may still be on its way, so the process cannot be reused.
            await self._forget(proc)
            raise
        # The rows of a batch whose answer was lost may be in: a retry's ON CONFLICT DO NOTHING skips them.
        fault = msgspec.msgpack.decode(answer, type=list[str])
        if not fault:
            return
        kind, name, message = fault
        if kind == sqlite_writer.UNAVAILABLE:
            raise self._unavailable(f"{name}: {message}")
        if kind == sqlite_writer.ROW:
            raise RowRefused(f"{name}: {message}")
        raise RuntimeError(f"the ledger's SQLite writer failed an insert: {name}: {message}")

    async def insert(self, rows: Sequence[LedgerRow]) -> None:
        # Encoded here: an int beyond 64 bits raises OverflowError, a row fault, as sqlite3's binding did.
        body = self._encode([msgspec.structs.astuple(row) for row in rows])
        async with self._lock:
            if self._proc is None or self._proc.returncode is not None:
                self._proc = None
                self._proc = await self._start()
            await self._exchange(self._proc, body)

    async def _forget(self, proc: asyncio.subprocess.Process) -> None:
        if self._proc is proc:
            self._proc = None
        await self._kill(proc)

    async def _kill(self, proc: asyncio.subprocess.Process) -> None:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        await proc.wait()

    async def close(self) -> None:
        """Close its pipe (it commits what it has and exits), then wait for it."""
        async with self._lock:
            proc, self._proc = self._proc, None
            if proc is None:
                return
            if proc.stdin is not None:
                proc.stdin.close()
            try:
                async with asyncio.timeout(self._timeout + _MARGIN):
                    await proc.wait()
            except TimeoutError:
                log.warning("ledger: the SQLite writer process %d did not exit; killed", proc.pid)
                await self._kill(proc)
