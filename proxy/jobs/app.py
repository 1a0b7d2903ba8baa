"""Jobs in the aiohttp app: the configured job store, the webhook sender and the runner, with the app's lifetime."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from pixelgate.proxy.app_keys import CONFIG, JOBS, METRICS
from pixelgate.proxy.jobs.api import render
from pixelgate.proxy.jobs.runner import JobRunner
from pixelgate.proxy.jobs.store import JobStore
from pixelgate.proxy.jobs.webhooks import WebhookSender

__all__ = ["jobs_context"]


def _store(app: web.Application) -> JobStore:
    config = app[CONFIG]
    jobs = config.jobs
    assert jobs is not None
    if jobs.backend == "redis":
        # Imported only when used, like the other Redis backends.
        from pixelgate.proxy.access.redis_client import connect
        from pixelgate.proxy.jobs.redis_store import RedisJobStore

        redis = config.access.redis
        return RedisJobStore(connect(redis), redis.prefix, timeout=max(1.0, redis.timeout))
    from pixelgate.proxy.jobs.sqlite_store import SqliteJobStore

    return SqliteJobStore(jobs.path)


async def jobs_context(app: web.Application) -> AsyncIterator[None]:
    """``cleanup_ctx``, after the storage's: jobs stop before the store of their results closes."""
    config = app[CONFIG]
    jobs = config.jobs
    assert jobs is not None
    store = _store(app)
    await store.start()
    webhooks = WebhookSender(jobs.webhooks, app[METRICS].webhook) if jobs.webhooks is not None else None
    if webhooks is not None:
        await webhooks.start()
    runner = JobRunner(app, store, jobs, webhooks, render)
    app[JOBS] = runner
    await runner.start()
    try:
        yield
    finally:
        await runner.close(config.server.shutdown_timeout)
        if webhooks is not None:
            await webhooks.close(grace=5.0)
        await store.close()
