"""Every process follows the keys in the ledger database: loaded at start, then polled.

``key_poller`` (``cleanup_ctx``, after the ledger's) loads every database key
before the first request, then asks ``keys_since(last version)`` every
``admin.key_poll_interval`` seconds and applies what changed
(``AccessControl.apply_keys``). Versions are given in commit order (see
``LedgerStore.put_key``), so a poll never skips a write.

Propagation: a key created, changed, revoked or rotated through any replica's
admin API (or the CLI) takes effect on every process by its next poll, at most
``key_poll_interval`` (default 2 s) plus one query later; on the process that
made the change at once. While the database is unreachable no change arrives
(revocations neither): each process keeps the keys it has, logs a warning and
catches up on the first poll that succeeds.

A newly seen key with a budget starts from the spend the ledger has for it
this period (``ledger.budgets_from_ledger``), as config keys do at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime

from aiohttp import web

from pixelgate.proxy.access.limits import Period, period_of
from pixelgate.proxy.app_keys import ACCESS, CONFIG, LEDGER_STORE
from pixelgate.proxy.ledger import LedgerStore, LedgerUnavailable

__all__ = ["KeyPoller", "key_poller"]

log = logging.getLogger("pixelgate.admin")


def period_start(period: Period) -> float:
    """When a budget period began (its id is the UTC day, YYYY-MM-DD, or month, YYYY-MM)."""
    fmt = "%Y-%m-%d" if len(period.id) == 10 else "%Y-%m"
    return datetime.strptime(period.id, fmt).replace(tzinfo=UTC).timestamp()


class KeyPoller:
    def __init__(self, app: web.Application, store: LedgerStore) -> None:
        self._app = app
        self._store = store
        self.version = 0
        self._seen: set[str] = set()
        self._failing = False

    async def poll(self) -> int:
        """Apply the keys written since the last poll; how many were applied. Raises LedgerUnavailable."""
        keys = await self._store.keys_since(self.version)
        if not keys:
            return 0
        access = self._app[ACCESS]
        applied = access.apply_keys(keys)
        self.version = max(self.version, *(k.version for k in keys))
        if self._app[CONFIG].ledger.budgets_from_ledger:
            for name in applied:
                if name in self._seen:
                    continue
                client = access.client_named(name)
                if client is not None and client.limits.budget_usd is not None:
                    period = period_of(client.limits.budget_period)
                    spent = await self._store.spend(name, period_start(period))
                    if spent:
                        await access.backend.reconcile_spend(name, period, spent / 1_000_000)
        self._seen.update(applied)
        return len(applied)

    async def safe_poll(self) -> None:
        try:
            await self.poll()
        except LedgerUnavailable as exc:
            if not self._failing:
                log.warning("admin: cannot read the gateway keys from the ledger database (%s); keeping the keys this process has", exc)
            self._failing = True
        else:
            if self._failing:
                log.info("admin: the ledger database answers again; gateway keys are up to date")
            self._failing = False

    async def run(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            await self.safe_poll()


async def key_poller(app: web.Application) -> AsyncIterator[None]:
    """``cleanup_ctx``, after ``ledger_context``: the database's keys loaded before requests, then followed."""
    config = app[CONFIG]
    store = app.get(LEDGER_STORE)
    if store is None:
        if config.admin.keys:
            log.warning("admin: the ledger is disabled (ledger.enabled: false): the admin API cannot manage keys or report usage")
        yield
        return
    poller = KeyPoller(app, store)
    await poller.safe_poll()
    task = asyncio.create_task(poller.run(config.admin.key_poll_interval), name="pixelgate-key-poller")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
