"""Storage in the aiohttp app: which store the config asks for, and its lifetime (``cleanup_ctx``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiohttp import web

from pixelgate.proxy.app_keys import STORAGE
from pixelgate.proxy.storage.base import Storage
from pixelgate.proxy.storage.config import StorageConfig
from pixelgate.proxy.storage.local import LocalStorage
from pixelgate.proxy.storage.sweeper import run_sweeper

__all__ = ["open_storage", "storage_context"]


def open_storage(config: StorageConfig) -> Storage:
    """The configured store, not started yet (no I/O)."""
    if config.backend == "s3":
        # Imported only when used: a local store loads no S3 client.
        from pixelgate.proxy.storage.s3 import S3Storage

        return S3Storage(config)
    return LocalStorage(config)


async def storage_context(app: web.Application) -> AsyncIterator[None]:
    """Start the store and its sweeper with the app; stop both with it."""
    storage = app[STORAGE]
    await storage.start()
    sweeper = asyncio.create_task(run_sweeper(storage), name="pixelgate-storage-sweeper")
    try:
        yield
    finally:
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper
        await storage.close()
