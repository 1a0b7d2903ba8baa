"""The writer's local spool: ledger rows kept on disk while the database is out of reach.

Files, beside ``path`` (one spool per process: the lock refuses a second user):

- ``path``: append-only JSON lines (one ``LedgerRow`` each, msgspec), each
  batch written with one ``write`` and fsynced before the rows leave memory;
- ``path.replay``: the spool being replayed. ``take`` renames the spool to it
  (atomic), so appends during a replay go to a fresh spool and the file being
  read never grows; it is deleted only once every row in it is in the
  database. A crash mid-replay leaves it, and the next replay starts it over:
  rows inserted already are skipped by the ledger's unique ``request_id``;
- ``path.rejected``: rows the database refused as they are (a bug, not an
  outage), kept for a person to look at rather than retried forever;
- ``path.lock``: held (``flock``) for the writer's lifetime.

A crash in the middle of an append can leave a torn last line. The next
append starts on a fresh line (``_append`` checks the last byte), so a torn
line never swallows the rows after it, and a line that does not decode is
skipped at replay and counted (its rows were never whole on disk).

Every method is blocking (plain file calls, fsync): the writer runs them with
``asyncio.to_thread``, one at a time.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Sequence
from typing import BinaryIO

import msgspec

from pixelgate.proxy.ledger.row import LedgerRow

__all__ = ["Spool", "SpoolInUse"]


class SpoolInUse(RuntimeError):
    """Another process (or writer) holds the spool: each needs a path of its own."""


def _fsync_dir(path: str) -> None:
    """Makes a file's creation, rename or removal in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.path.abspath(os.fspath(path))
        self.replay_path = self.path + ".replay"
        self.rejected_path = self.path + ".rejected"
        self._dir = os.path.dirname(self.path)
        self._lock_fd: int | None = None
        self._encoder = msgspec.json.Encoder()
        self._decoder = msgspec.json.Decoder(LedgerRow)

    def lock(self) -> None:
        os.makedirs(self._dir, exist_ok=True)
        fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SpoolInUse(f"the ledger spool {self.path} is in use by another writer: give each process a spool path of its own") from None
        self._lock_fd = fd

    def unlock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)  # releases the flock

    def pending(self) -> bool:
        """Whether there are rows to replay (a spool, or a replay a crash interrupted)."""
        return any(os.path.exists(p) and os.path.getsize(p) > 0 for p in (self.path, self.replay_path))

    def append(self, rows: Sequence[LedgerRow]) -> None:
        self._append(self.path, rows)

    def reject(self, rows: Sequence[LedgerRow]) -> None:
        self._append(self.rejected_path, rows)

    def _append(self, path: str, rows: Sequence[LedgerRow]) -> None:
        """Appends the rows as lines, durably: on return they are on disk."""
        if not rows:
            return
        buffer = bytearray()
        for row in rows:
            self._encoder.encode_into(row, buffer, len(buffer))
            buffer += b"\n"
        created = not os.path.exists(path)
        # Read and write: the last byte is read (pread) before appending.
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            size = os.fstat(fd).st_size
            # A torn last line (a crash mid-append) must not run into our first one.
            if size and os.pread(fd, 1, size - 1) != b"\n":
                buffer[:0] = b"\n"
            view = memoryview(buffer)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            _fsync_dir(self._dir)

    def take(self) -> bool:
        """Makes the rows to replay the replay file; False when there are none.

        An existing replay file (a replay that did not finish) is taken as it is,
        and the spool stays for the next replay."""
        if os.path.exists(self.replay_path):
            return True
        if not os.path.exists(self.path):
            return False
        os.replace(self.path, self.replay_path)
        _fsync_dir(self._dir)
        return True

    def open_replay(self) -> BinaryIO:
        return open(self.replay_path, "rb")  # closed by the caller (a thread of its own, as each read)

    def read(self, file: BinaryIO, limit: int) -> tuple[list[LedgerRow], int, bool]:
        """Up to ``limit`` rows from the replay file: the rows, how many lines did not
        decode, and whether the file is at its end."""
        rows: list[LedgerRow] = []
        corrupt = 0
        while len(rows) < limit:
            line = file.readline()
            if not line:
                return rows, corrupt, True
            if not line.strip():
                continue
            try:
                rows.append(self._decoder.decode(line))
            except msgspec.DecodeError:
                corrupt += 1
        return rows, corrupt, False

    def finish_replay(self) -> None:
        """Every row of the replay file is in the database: it goes."""
        os.unlink(self.replay_path)
        _fsync_dir(self._dir)
