"""The local-directory store: one file per object and a JSON sidecar with its record.

Layout under ``storage.local.path``, one directory per hour of creation::

    <hour>/.<id>.part       being written (removed on failure)
    <hour>/<id>.json        the record (StoredObject), written before...
    <hour>/<id>             ...the bytes are renamed into place

``<hour>`` is the creation time in hours since the epoch, so the sweeper lists
one directory per hour of retention, removes whole expired hours and reads only
the first names of the hour the cutoff falls in (names start with the creation
time). An object is served only when both files exist; a crash leaves at most a
``.part`` file or a lone sidecar, which the sweeper removes with its hour.

Writes are plain blocking writes into the page cache, like the edit spool's
(``proxy/uploads.py``): less than a thread hop per chunk would cost. Listing and
removing, many calls at once, run in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path
from typing import BinaryIO

import msgspec

from pixelgate.proxy.storage.base import Opened, Sink, Storage, StorageError, StoredObject, created_ms, is_object_id

__all__ = ["LocalStorage"]

log = logging.getLogger("pixelgate.storage")

_HOUR_MS = 3_600_000
_decode_record = msgspec.json.Decoder(StoredObject).decode


def _hour(object_id: str) -> str:
    return str(created_ms(object_id) // _HOUR_MS)


def _id_of(name: str) -> str:
    """The object id a file name belongs to ('' when it is none of ours)."""
    name = name.removeprefix(".")
    object_id = name[:44]
    return object_id if is_object_id(object_id) else ""


class _LocalSink:
    __slots__ = ("_file", "_final", "_part", "_record")

    def __init__(self, directory: Path, object_id: str) -> None:
        self._part = directory / f".{object_id}.part"
        self._final = directory / object_id
        self._record = directory / f"{object_id}.json"
        self._file: BinaryIO | None = None

    def open(self) -> None:
        self._part.parent.mkdir(exist_ok=True)
        # x: a fresh random id never meets an existing file; if it did, fail.
        self._file = open(self._part, "xb")  # noqa: SIM115 (closed in commit/abort)

    async def write(self, data: bytes) -> None:
        assert self._file is not None
        try:
            self._file.write(data)
        except OSError as exc:
            raise StorageError(f"local storage: {exc.strerror}") from None

    async def commit(self, record: StoredObject) -> None:
        assert self._file is not None
        try:
            self._file.close()
            tmp = self._record.with_name(f".{record.id}.json.part")
            tmp.write_bytes(msgspec.json.encode(record))
            tmp.replace(self._record)
            self._part.replace(self._final)
        except OSError as exc:
            raise StorageError(f"local storage: {exc.strerror}") from None

    async def abort(self) -> None:
        try:
            if self._file is not None:
                self._file.close()
            for path in (self._part, self._record.with_name(f".{self._final.name}.json.part"), self._record, self._final):
                path.unlink(missing_ok=True)
        except OSError as exc:
            # Never instead of the error that failed the write; the sweeper takes what is left.
            log.warning("local storage: could not clean up a failed write of %s: %s", self._final.name, exc.strerror)


class LocalStorage(Storage):
    @property
    def root(self) -> Path:
        return Path(self.config.local.path)

    async def start(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"storage.local.path: cannot create {self.root}: {exc.strerror}") from None
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise StorageError(f"storage.local.path: {self.root} is not writable")

    async def close(self) -> None:
        return None

    def _paths(self, object_id: str) -> tuple[Path, Path]:
        directory = self.root / _hour(object_id)
        return directory / object_id, directory / f"{object_id}.json"

    async def _sink(self, object_id: str, content_type: str) -> Sink:
        sink = _LocalSink(self.root / _hour(object_id), object_id)
        try:
            sink.open()
        except OSError as exc:
            raise StorageError(f"local storage: {exc.strerror}") from None
        return sink

    async def record(self, object_id: str) -> StoredObject | None:
        data, meta = self._paths(object_id)
        try:
            record = _decode_record(meta.read_bytes())
        except (FileNotFoundError, msgspec.DecodeError):
            return None
        return record if data.exists() else None

    async def open(self, object_id: str) -> Opened | None:
        record = await self.record(object_id)
        if record is None:
            return None
        return Opened(content_type=record.content_type, size=record.size, path=self._paths(object_id)[0])

    async def delete(self, object_id: str) -> None:
        for path in self._paths(object_id):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    async def sweep(self, cutoff_ms: int, limit: int) -> int:
        return await asyncio.to_thread(self._sweep, cutoff_ms, limit)

    def _sweep(self, cutoff_ms: int, limit: int) -> int:
        removed = work = 0
        try:
            hours = sorted(int(e.name) for e in os.scandir(self.root) if e.name.isdigit() and e.is_dir())
        except FileNotFoundError:
            return 0
        for hour in hours:
            if hour * _HOUR_MS >= cutoff_ms or work >= limit:
                break
            directory = self.root / str(hour)
            whole = (hour + 1) * _HOUR_MS <= cutoff_ms
            by_id: dict[str, list[str]] = {}
            with contextlib.suppress(FileNotFoundError):
                for name in os.listdir(directory):
                    # Names that are none of ours are left alone.
                    if object_id := _id_of(name):
                        by_id.setdefault(object_id, []).append(name)
            # Sorted by id, i.e. by creation time: stop at the first one too young.
            for object_id in sorted(by_id):
                if work >= limit or (not whole and created_ms(object_id) >= cutoff_ms):
                    break
                for name in by_id[object_id]:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(directory / name)
                work += 1
                # A crashed write's .part or a lone sidecar is no object.
                removed += object_id in by_id[object_id]
            if whole and work < limit:
                with contextlib.suppress(OSError):
                    directory.rmdir()
        return removed
