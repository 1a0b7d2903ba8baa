"""Per-key limits: what a backend is asked, what it answers, and the headers that say so.

The window is a **sliding log** over the last 60 s: a request (or an image) is
admitted only if fewer than the limit were admitted in the 60 s before it. It
is exact, with no burst at a window boundary (the weakness of fixed windows)
and no refill during a burst (a token bucket admits ``limit`` plus what it
refilled meanwhile): 200 concurrent requests against 50 per minute admit 50.
Its state is one entry per admitted request or image, so at most ``limit``
entries per key.

Images are counted from ``n`` at admission and corrected when the request
ends: images not returned are given back, extra ones are added. Stream slots
are held from admission to the end of the response. The budget is checked at
admission (refused once the period's spend reached it) and charged when the
request ends, so requests already in flight can overshoot it once.

Backends (``proxy.access.memory``, ``proxy.access.redis_backend``) decide
admission atomically: all limits pass, then all are taken, or none is.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, Protocol

from pixelgate.proxy.access.config import Limits

__all__ = [
    "WINDOW",
    "BackendUnavailable",
    "Demand",
    "LimitBackend",
    "LimitName",
    "Period",
    "Quota",
    "Refused",
    "Ticket",
    "duration",
    "period_of",
    "quota_headers",
]

WINDOW = 60.0

LimitName = Literal["requests_per_minute", "images_per_minute", "concurrent_streams", "budget"]


class BackendUnavailable(Exception):
    """The limit state could not be read or written (Redis down, timeout)."""


@dataclass(frozen=True, slots=True)
class Period:
    """A budget period (UTC): its id and when it ends (Unix time)."""

    id: str
    ends_at: float


def period_of(kind: Literal["day", "month"], now: float | None = None) -> Period:
    t = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    if kind == "day":
        start = t.replace(hour=0, minute=0, second=0, microsecond=0)
        end = start.timestamp() + 86400
        return Period(start.strftime("%Y-%m-%d"), end)
    start = t.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    nxt = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
    return Period(start.strftime("%Y-%m"), nxt.timestamp())


@dataclass(frozen=True, slots=True)
class Demand:
    """What one request asks of its key's limits."""

    key: str
    limits: Limits
    images: int
    stream: bool
    # The current budget period, when the key has a budget.
    period: Period | None


@dataclass(frozen=True, slots=True)
class Quota:
    limit: int
    remaining: int
    # Seconds until the window is empty again (OpenAI: "resets to its initial state").
    reset: float


@dataclass(slots=True)
class Ticket:
    """An admitted request, to be settled when it ends."""

    demand: Demand
    # Names this admission's entries in the backend (to correct or release them).
    id: str
    holds_stream: bool
    requests: Quota | None = None
    images: Quota | None = None


@dataclass(frozen=True, slots=True)
class Refused:
    limit: LimitName
    # Seconds until the request could be admitted (the budget: the period's end).
    retry_after: float
    requests: Quota | None = None
    images: Quota | None = None


class LimitBackend(Protocol):
    """Keeps the limit state of every key; shared by all workers for Redis."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def admit(self, demand: Demand, ticket_id: str) -> Ticket | Refused:
        """Check every limit and take them all, atomically; raises BackendUnavailable."""
        ...

    async def settle(self, ticket: Ticket, images: int, cost_usd: float) -> None:
        """Correct the image count, release the stream slot, charge the cost."""
        ...

    async def reconcile_spend(self, key: str, period: Period, spent_usd: float) -> None:
        """At start: the key's spend this period is at least ``spent_usd`` (what the
        usage ledger has recorded), so a restart loses no spend."""
        ...


def duration(seconds: float) -> str:
    """OpenAI's reset format: ``250ms``, ``12.5s``, ``1m0s``."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    ms = math.ceil(seconds * 1000)
    minutes, ms = divmod(ms, 60_000)
    secs = f"{ms / 1000:.3f}".rstrip("0").rstrip(".")
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def quota_headers(requests: Quota | None, images: Quota | None) -> dict[str, str]:
    headers: dict[str, str] = {}
    for kind, quota in (("requests", requests), ("images", images)):
        if quota is not None:
            headers[f"x-ratelimit-limit-{kind}"] = str(quota.limit)
            headers[f"x-ratelimit-remaining-{kind}"] = str(max(0, quota.remaining))
            headers[f"x-ratelimit-reset-{kind}"] = duration(quota.reset)
    return headers
