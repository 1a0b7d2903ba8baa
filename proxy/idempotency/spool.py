"""One response on local disk while it is recorded, and readers that follow it as it grows.

The writer appends each piece the relay writes; each reader has its own file
descriptor and offset and reads what is there, then waits for the next write
(an ``asyncio.Event`` replaced at every change, so a wait never misses one).
Memory holds one read buffer per reader, whatever the response's size. A
spool removed from disk stays readable by readers already open (POSIX
unlink), so a response that turns out too large to keep still reaches the
clients following it.

Reads and writes are plain blocking calls, like the upload spool's
(``proxy.uploads``): they hit the page cache in microseconds, less than a
thread hop per piece would cost.
"""

from __future__ import annotations

import asyncio
import contextlib
import os

from pixelgate.proxy.idempotency.store import Ending, Head

__all__ = ["Spool", "SpoolReader"]

# A reader hands out at most this much at a time.
_CHUNK = 256 * 1024


class Spool:
    __slots__ = ("_changed", "_fd", "ending", "head", "path", "released", "size")

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self.size = 0
        self.head: Head | None = None
        self.ending: Ending | None = None
        # The key was released: readers still waiting for a head claim again.
        self.released = False
        self._changed = asyncio.Event()

    def changed(self) -> asyncio.Event:
        """Set at the next change; take it before looking, then wait on it."""
        return self._changed

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def set_head(self, head: Head) -> None:
        if self.head is None and self.ending is None:
            self.head = head
            self._notify()

    def write(self, data: bytes | memoryview) -> None:
        if self._fd is None or self.ending is not None:
            return
        view = memoryview(data)
        n = view.nbytes
        while view.nbytes:
            view = view[os.write(self._fd, view) :]
        self.size += n
        self._notify()

    def finish(self, ending: Ending) -> None:
        if self.ending is not None:
            return
        self.ending = ending
        self._close()
        self._notify()

    def release(self) -> None:
        self.released = True
        self.finish(Ending.CUT)

    def reader(self) -> SpoolReader:
        return SpoolReader(self)

    def remove(self) -> None:
        """Off the disk (open readers keep reading); the writer stops."""
        self._close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class SpoolReader:
    """A ``Source`` over a spool of this process."""

    __slots__ = ("_fd", "_offset", "_spool", "ending")

    def __init__(self, spool: Spool) -> None:
        self._spool = spool
        self._fd: int | None = os.open(spool.path, os.O_RDONLY)
        self._offset = 0
        self.ending: Ending | None = None

    async def head(self) -> Head | None:
        spool = self._spool
        while True:
            changed = spool.changed()
            if spool.head is not None:
                return spool.head
            if spool.released or spool.ending is not None:
                self.ending = None if spool.released else spool.ending
                return None
            await changed.wait()

    async def read(self) -> bytes | None:
        spool = self._spool
        while True:
            changed = spool.changed()
            if self._offset < spool.size:
                return self._take(spool.size)
            if spool.ending is not None:
                self.ending = spool.ending
                return None
            await changed.wait()

    def _take(self, size: int) -> bytes:
        assert self._fd is not None
        data = os.pread(self._fd, min(_CHUNK, size - self._offset), self._offset)
        if not data:
            raise OSError(f"idempotency spool {self._spool.path} is shorter than written")
        self._offset += len(data)
        return data

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
