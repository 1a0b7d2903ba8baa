"""The Redis client every shared backend uses (access limits, idempotency keys)."""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from pixelgate.proxy.access.config import RedisConfig

__all__ = ["connect"]


def connect(config: RedisConfig, socket_timeout: float | None = None) -> aioredis.Redis:
    """A pooled client for ``config.url``.

    One retry, at once: a stale pooled connection after a Redis restart is
    retried on a new one; a dead Redis fails fast. ``socket_timeout`` bounds
    each command (default ``config.timeout``; longer for blocking reads).
    """
    return aioredis.from_url(
        config.url,
        socket_timeout=config.timeout if socket_timeout is None else socket_timeout,
        socket_connect_timeout=config.timeout,
        retry=Retry(NoBackoff(), 1),
        health_check_interval=0,
    )
