"""Where every finished request is accounted: its access-log line and its usage-ledger row.

``record_request`` is called once per request at its end (the handlers, a
job's run, a refusal at the edge). The ledger row is queued, never awaited:
``LedgerWriter`` writes it off the hot path, in batches, and keeps it in a
local spool while the database is out of reach.

``ledger_context`` opens the ledger with the app (migrations at start), seeds
each budgeted key's spend from it (so a restart, with the in-process limits
backend too, forgets nothing the ledger has), and closes it last: every
row written (or spooled) before the process exits.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

from aiohttp import web

from pixelgate.core.record import RequestRecord
from pixelgate.proxy.access.limits import Period, period_of
from pixelgate.proxy.access_log import log_request
from pixelgate.proxy.app_keys import ACCESS, CONFIG, LEDGER, LEDGER_STORE, METRICS
from pixelgate.proxy.config import Config
from pixelgate.proxy.ledger import LedgerStore, LedgerUnavailable, LedgerWriter, SpoolInUse, row_from_record
from pixelgate.proxy.workers import WORKER_ENV

__all__ = ["DATA_DIR_ENV", "data_dir", "ledger_context", "ledger_url", "record_request", "reseed_budgets"]

log = logging.getLogger("pixelgate.ledger")

# The gateway's data directory (the embedded ledger's file, its spool).
DATA_DIR_ENV = "PIXELGATE_DATA_DIR"


def data_dir() -> Path:
    return Path(os.environ.get(DATA_DIR_ENV) or "./data")


def record_request(app: web.Application, record: RequestRecord, prompt: str | None) -> None:
    """The request's access-log line and ledger row. ``prompt``: the request's prompt,
    logged (and kept in the ledger) only with ``server.log_prompts``."""
    kept = prompt if app[CONFIG].server.log_prompts else None
    log_request(record, kept)
    writer = app.get(LEDGER)
    if writer is None:
        return
    client = app[ACCESS].client_named(record.key) if record.key is not None else None
    price = record.price(app[METRICS].prices)
    row = row_from_record(
        record, at=time.time(), key_id=client.key_id if client is not None else None, price=price,
        price_name=record.model if price is not None else None, prompt=kept,
    )
    writer.add(row)


def ledger_url(config: Config) -> str:
    """The ledger database a gateway with ``config`` uses (the CLI opens the same one)."""
    if config.ledger.url is not None:
        return config.ledger.url
    return f"sqlite+aiosqlite:///{(data_dir() / 'ledger.sqlite3').resolve()}"


async def _reconcile_budgets(app: web.Application, store: LedgerStore) -> None:
    """Each budgeted key starts its period from the spend the ledger recorded."""
    access = app[ACCESS]
    for key in app[CONFIG].access.keys:
        client = access.client_named(key.name)
        if client is None or client.limits.budget_usd is None:
            continue
        period = period_of(client.limits.budget_period)
        spent = await store.spend(client.name, _period_start(period))
        if spent:
            await access.backend.reconcile_spend(client.name, period, spent / 1_000_000)


async def reseed_budgets(app: web.Application) -> None:
    """After a config reload: each budgeted key's spend this period is at least the
    ledger's (a key the reload added, or gave a budget, starts where the ledger is,
    not at zero). Raising to the ledger's figure never lowers a counter, so doing it
    for keys that had their budget already changes nothing."""
    store = app.get(LEDGER_STORE)
    if store is None or not app[CONFIG].ledger.budgets_from_ledger:
        return
    try:
        await _reconcile_budgets(app, store)
    except LedgerUnavailable as exc:
        log.warning("ledger: could not read the keys' spend to seed their budgets after a reload: %s", exc)


def _period_start(period: Period) -> float:
    """When a budget period began (its id is the UTC day, YYYY-MM-DD, or month, YYYY-MM)."""
    fmt = "%Y-%m-%d" if len(period.id) == 10 else "%Y-%m"
    return datetime.strptime(period.id, fmt).replace(tzinfo=UTC).timestamp()


# Spool slots tried past a process's own before giving up (more gateways on one data directory).
_SLOTS = 64


async def _writer(
    store: LedgerStore, spool_dir: Path, batch_rows: int, interval: float, on_event: Callable[[str, int], None]
) -> LedgerWriter:
    """A started writer on the first free spool slot, from the worker's own.

    A spool is locked by its process: a worker that replaces another (same slot)
    replays what the dead one left, and another gateway sharing the data
    directory takes the next free slot instead of failing."""
    first = int(os.environ.get(WORKER_ENV) or 0)
    for slot in range(first, first + _SLOTS):
        writer = LedgerWriter(store, spool_dir / f"ledger-spool-{slot}.jsonl", batch_rows=batch_rows, interval=interval,
                              on_event=on_event)
        try:
            await writer.start()
        except SpoolInUse:
            continue
        return writer
    raise RuntimeError(f"ledger: every spool slot in {spool_dir} is in use ({_SLOTS} from {first})")


async def ledger_context(app: web.Application) -> AsyncIterator[None]:
    """``cleanup_ctx``, right after the limits backend's: started before requests, closed after them."""
    config = app[CONFIG].ledger
    if not config.enabled:
        yield
        return
    metrics = app[METRICS]
    store = LedgerStore(ledger_url(app[CONFIG]))
    spool_dir = Path(config.spool_dir) if config.spool_dir else data_dir()
    spool_dir.mkdir(parents=True, exist_ok=True)
    writer = await _writer(store, spool_dir, config.batch_rows, config.flush_interval, metrics.ledger_rows)
    try:
        await store.start()
    except LedgerUnavailable as exc:
        # Rows spool until it is back (the writer keeps trying); budgets start from zero.
        log.warning("ledger: the database is unreachable at start (%s); rows are spooled until it returns", exc)
    else:
        if config.budgets_from_ledger:
            try:
                await _reconcile_budgets(app, store)
            except LedgerUnavailable as exc:
                log.warning("ledger: could not read the keys' spend to seed their budgets: %s", exc)
    app[LEDGER], app[LEDGER_STORE] = writer, store
    try:
        yield
    finally:
        await writer.close()
        await store.close()
