"""In-process limit state: exact for one process (each worker of ``--workers N``
has its own; use Redis to share them).

Admission runs without an ``await`` between check and take, so on one event
loop it is atomic by construction.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from pixelgate.proxy.access.limits import WINDOW, Demand, Period, Quota, Refused, Ticket

__all__ = ["MemoryBackend"]


@dataclass(slots=True)
class _Batch:
    """The images one request was admitted for, at one time."""

    at: float
    count: int


@dataclass(slots=True)
class _KeyState:
    requests: deque[float] = field(default_factory=deque)
    images: deque[_Batch] = field(default_factory=deque)
    image_total: int = 0
    streams: int = 0
    period: str = ""
    spent_usd: float = 0.0

    def prune(self, now: float) -> None:
        horizon = now - WINDOW
        while self.requests and self.requests[0] <= horizon:
            self.requests.popleft()
        while self.images and self.images[0].at <= horizon:
            self.image_total -= self.images.popleft().count


class MemoryBackend:
    def __init__(self) -> None:
        self._keys: dict[str, _KeyState] = {}
        # Each admitted request's image batch, until it is settled.
        self._batches: dict[str, _Batch] = {}

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def reconcile_spend(self, key: str, period: Period, spent_usd: float) -> None:
        state = self._keys.setdefault(key, _KeyState())
        if state.period != period.id:
            state.period, state.spent_usd = period.id, 0.0
        state.spent_usd = max(state.spent_usd, spent_usd)

    async def admit(self, demand: Demand, ticket_id: str) -> Ticket | Refused:
        now = time.monotonic()
        state = self._keys.get(demand.key)
        if state is None:
            state = self._keys[demand.key] = _KeyState()
        state.prune(now)
        limits = demand.limits
        rpm, ipm = limits.requests_per_minute, limits.images_per_minute
        # Before this request: what a refusal reports.
        req_quota = img_quota = None
        if rpm is not None:
            reset = state.requests[-1] + WINDOW - now if state.requests else 0.0
            req_quota = Quota(rpm, rpm - len(state.requests), reset)
        if ipm is not None:
            reset = state.images[-1].at + WINDOW - now if state.images else 0.0
            img_quota = Quota(ipm, ipm - state.image_total, reset)
        if rpm is not None and len(state.requests) + 1 > rpm:
            # The oldest entries that must leave the window first.
            free_at = state.requests[len(state.requests) - rpm] + WINDOW
            return Refused("requests_per_minute", free_at - now, req_quota, img_quota)
        if ipm is not None and state.image_total + demand.images > ipm:
            wait = self._images_free_in(state, state.image_total + demand.images - ipm, now)
            return Refused("images_per_minute", wait, req_quota, img_quota)
        streams = limits.concurrent_streams
        holds_stream = demand.stream and streams is not None
        if streams is not None and holds_stream and state.streams >= streams:
            return Refused("concurrent_streams", 1.0, req_quota, img_quota)
        if demand.period is not None and limits.budget_usd is not None:
            if state.period != demand.period.id:
                state.period, state.spent_usd = demand.period.id, 0.0
            if state.spent_usd >= limits.budget_usd:
                return Refused("budget", demand.period.ends_at - time.time(), req_quota, img_quota)
        # Every limit passed: take them all.
        ticket = Ticket(demand, ticket_id, holds_stream)
        if rpm is not None:
            state.requests.append(now)
            ticket.requests = Quota(rpm, rpm - len(state.requests), WINDOW)
        if ipm is not None:
            batch = _Batch(now, demand.images)
            state.images.append(batch)
            state.image_total += demand.images
            self._batches[ticket_id] = batch
            ticket.images = Quota(ipm, ipm - state.image_total, WINDOW)
        if holds_stream:
            state.streams += 1
        return ticket

    @staticmethod
    def _images_free_in(state: _KeyState, needed: int, now: float) -> float:
        freed = 0
        for batch in state.images:
            freed += batch.count
            if freed >= needed:
                return batch.at + WINDOW - now
        # More than the limit itself: never admissible; try again in a window.
        return WINDOW

    async def settle(self, ticket: Ticket, images: int, cost_usd: float) -> None:
        demand = ticket.demand
        state = self._keys[demand.key]
        batch = self._batches.pop(ticket.id, None)
        if batch is not None and images != batch.count:
            if images < batch.count:
                if batch.at > time.monotonic() - WINDOW:
                    # Still in the window: give back the images not returned.
                    state.image_total -= batch.count - images
                    batch.count = images
            else:
                extra = _Batch(time.monotonic(), images - batch.count)
                state.images.append(extra)
                state.image_total += extra.count
        if ticket.holds_stream:
            state.streams -= 1
        if cost_usd > 0 and demand.period is not None:
            if state.period != demand.period.id:
                state.period, state.spent_usd = demand.period.id, 0.0
            state.spent_usd += cost_usd
