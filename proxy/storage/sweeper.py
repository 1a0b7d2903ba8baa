"""Retention: a task that removes objects past ``storage.ttl``, a bounded batch at a time.

One sweep removes at most ``storage.sweep_batch`` objects (oldest first, with
their records); when it removed a full batch the next one follows within a
second, otherwise after ``storage.sweep_interval``. A failed sweep is logged and
tried again at the next interval: retention never stops the gateway.
"""

from __future__ import annotations

import asyncio
import logging

from pixelgate.proxy.storage.base import Storage

__all__ = ["run_sweeper", "sweep_once"]

log = logging.getLogger("pixelgate.storage")


async def sweep_once(storage: Storage) -> int:
    """One bounded sweep; the number of objects removed."""
    cutoff_ms = int((storage.clock() - storage.config.ttl) * 1000)
    removed = await storage.sweep(cutoff_ms, storage.config.sweep_batch)
    if removed:
        log.info("storage: removed %d expired object(s)", removed)
    return removed


async def run_sweeper(storage: Storage) -> None:
    """Sweep until cancelled."""
    config = storage.config
    while True:
        delay = config.sweep_interval
        try:
            if await sweep_once(storage) >= config.sweep_batch:
                delay = min(delay, 1.0)
        except Exception as exc:
            log.warning("storage: sweep failed (retried in %g s): %s", delay, exc)
        await asyncio.sleep(delay)
