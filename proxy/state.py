"""What the gateway knows about itself while it runs: readiness and the work in flight."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

__all__ = ["GatewayState"]


@dataclass(slots=True)
class GatewayState:
    # False until start-up finished, and again from the first sign of shutdown.
    ready: bool = False
    # Set when the shutdown grace period is over: open streams end now.
    closing: bool = False
    # Handlers of generation requests still running (for draining).
    inflight: set[asyncio.Task[object]] = field(default_factory=set)
    # Set whenever `inflight` becomes empty.
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def enter(self, task: asyncio.Task[object]) -> None:
        self.inflight.add(task)
        self.idle.clear()

    def leave(self, task: asyncio.Task[object]) -> None:
        self.inflight.discard(task)
        if not self.inflight:
            self.idle.set()
