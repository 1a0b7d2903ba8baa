"""An edit job's input images: kept in ``storage`` from submission until the job ends.

A job may run on another process, or after a restart, when the submission's
spool is long gone; so a multipart edit's files are copied into the store at
submission (streamed, a chunk at a time) and spooled again when the job runs.
An edit sent as JSON keeps its body instead (its ``data:`` URLs are spooled
again from it; ``https`` URLs stay the upstream's to fetch), bounded by
``MAX_JSON_EDIT_BYTES`` so a job record stays small.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import Iterable

import msgspec

from pixelgate.core.errors import InvalidRequest, StorageUnavailable
from pixelgate.core.upload import InputImage
from pixelgate.proxy.jobs.model import InputFile
from pixelgate.proxy.storage.base import Storage, StorageError
from pixelgate.proxy.uploads import Spool

__all__ = ["MAX_JSON_EDIT_BYTES", "check_json_edit", "drop_inputs", "keep_inputs", "restore_inputs"]

MAX_JSON_EDIT_BYTES = 1024 * 1024
_CHUNK = 256 * 1024
_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


def check_json_edit(body: bytes) -> None:
    if len(body) > MAX_JSON_EDIT_BYTES:
        raise InvalidRequest(
            f"An edit job sent as JSON must be under {MAX_JSON_EDIT_BYTES // 1024} KiB; send its images as "
            "multipart/form-data files (or https URLs) instead.",
            code="job_body_too_large",
        )


async def keep_inputs(storage: Storage, images: Iterable[InputImage], mask: InputImage | None) -> tuple[InputFile, ...]:
    """Copy the spooled inputs into the store; on a failure nothing stays."""
    kept: list[InputFile] = []
    named = [("image", image) for image in images] + ([("mask", mask)] if mask is not None else [])
    try:
        for field, image in named:
            async with storage.writer(_TYPES[image.format]) as w:
                f = await asyncio.to_thread(open, image.path, "rb")
                try:
                    while data := await asyncio.to_thread(f.read, _CHUNK):
                        await w.write(data)
                finally:
                    f.close()
            kept.append(InputFile(field="mask" if field == "mask" else "image", object_id=w.id, image=image))
    except StorageError as exc:
        await drop_inputs(storage, kept)
        raise StorageUnavailable(f"The image store failed while keeping the job's input images: {exc}") from None
    return tuple(kept)


async def restore_inputs(
    storage: Storage, files: Iterable[InputFile], spool: Spool
) -> tuple[tuple[InputImage, ...], InputImage | None]:
    """Spool the kept inputs again: the images in order, and the mask."""
    try:
        return await _restore(storage, files, spool)
    except StorageError as exc:
        raise StorageUnavailable(f"The image store failed while reading the job's input images: {exc}") from None


async def _restore(
    storage: Storage, files: Iterable[InputFile], spool: Spool
) -> tuple[tuple[InputImage, ...], InputImage | None]:
    images: list[InputImage] = []
    mask = None
    for kept in files:
        opened = await storage.open(kept.object_id)
        if opened is None:
            raise StorageUnavailable("The job's input images are gone from the image store (past its retention).")
        path = spool.new_file()
        if opened.path is not None:
            await asyncio.to_thread(shutil.copyfile, opened.path, path)
        else:
            assert opened.chunks is not None
            f = await asyncio.to_thread(open, path, "wb")
            try:
                async for data in opened.chunks:
                    await asyncio.to_thread(f.write, data)
            finally:
                f.close()
        image = msgspec.structs.replace(kept.image, path=path)
        if kept.field == "mask":
            mask = image
        else:
            images.append(image)
    return tuple(images), mask


async def drop_inputs(storage: Storage, files: Iterable[InputFile]) -> None:
    for kept in files:
        with contextlib.suppress(StorageError):  # else the sweeper removes it at its retention
            await storage.delete(kept.object_id)
