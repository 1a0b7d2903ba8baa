"""Circuit breakers, one per deployment (provider + upstream model).

    closed ──(N consecutive failures, or failure ratio >= R over the window
    │         with at least M requests)──► open
    open ──(cool-down elapsed)──► half-open: one probe request is let through
    half-open ──probe succeeds──► closed      ──probe fails──► open again

Only the provider's own failures count (connect errors, timeouts, 429, 5xx,
malformed answers); a client's bad request or a moderation refusal shows the
provider is up. State lives in each worker process: breakers are a fast local
reaction to a failing provider, not a cluster-wide view.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from enum import StrEnum

import msgspec

from pixelgate.proxy.config import BreakerConfig

__all__ = ["Breaker", "BreakerSnapshot", "State"]


class State(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class BreakerSnapshot(msgspec.Struct):
    state: str
    requests: int
    error_ratio: float
    latency_p50_seconds: float | None
    latency_p95_seconds: float | None
    opens_in_seconds: float | None = None


class Breaker:
    __slots__ = ("_clock", "_config", "_consecutive", "_opened_at", "_probing", "_samples", "state")

    def __init__(self, config: BreakerConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self._config = config
        self._clock = clock
        self.state = State.CLOSED
        self._consecutive = 0
        self._opened_at = 0.0
        self._probing = False
        # (time, ok, latency) of recent outcomes, for the ratio and for /v1/providers.
        self._samples: deque[tuple[float, bool, float]] = deque()

    def allow(self) -> bool:
        """May a request go to this deployment now? Reserves the probe when half-open."""
        if self.state is State.CLOSED:
            return True
        if self.state is State.OPEN:
            if self._clock() - self._opened_at < self._config.cooldown:
                return False
            self.state = State.HALF_OPEN
            self._probing = False
        if self._probing:
            return False
        self._probing = True
        return True

    def retry_in(self) -> float:
        """Seconds until an open breaker lets a probe through."""
        if self.state is not State.OPEN:
            return 0.0
        return max(0.0, self._config.cooldown - (self._clock() - self._opened_at))

    def record(self, ok: bool, latency: float) -> None:
        now = self._clock()
        self._samples.append((now, ok, latency))
        self._trim(now)
        if ok:
            self._consecutive = 0
            if self.state is State.HALF_OPEN:
                self._close()
            return
        self._consecutive += 1
        if self.state is State.HALF_OPEN or self._tripped():
            self._open(now)

    def release(self) -> None:
        """The request stopped with no verdict (client left): free the probe slot."""
        self._probing = False

    def snapshot(self) -> BreakerSnapshot:
        self._trim(self._clock())
        total = len(self._samples)
        failures = sum(1 for _, ok, _ in self._samples if not ok)
        latencies = sorted(lat for _, ok, lat in self._samples if ok)

        def pct(q: float) -> float | None:
            return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))], 6) if latencies else None

        return BreakerSnapshot(
            state=self.state.value,
            requests=total,
            error_ratio=round(failures / total, 4) if total else 0.0,
            latency_p50_seconds=pct(0.5),
            latency_p95_seconds=pct(0.95),
            opens_in_seconds=round(self.retry_in(), 3) if self.state is State.OPEN else None,
        )

    def _tripped(self) -> bool:
        c = self._config
        if self._consecutive >= c.consecutive_failures:
            return True
        total = len(self._samples)
        if total < c.min_requests:
            return False
        failures = sum(1 for _, ok, _ in self._samples if not ok)
        return failures / total >= c.failure_ratio

    def _open(self, now: float) -> None:
        self.state = State.OPEN
        self._opened_at = now
        self._probing = False

    def _close(self) -> None:
        self.state = State.CLOSED
        self._probing = False
        self._consecutive = 0
        # A fresh start: failures from before the outage must not re-trip it.
        self._samples.clear()

    def _trim(self, now: float) -> None:
        horizon = now - self._config.window
        while self._samples and self._samples[0][0] < horizon:
            self._samples.popleft()
