"""What the gateway knows about itself while it runs: readiness and the work in flight."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

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
    # Work that outlives the request that started it (a provider cancel call):
    # held here until it ends, since the loop keeps only weak references to
    # tasks, and awaited (bounded) at shutdown.
    background: set[asyncio.Task[Any]] = field(default_factory=set)

    def spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(work)
        self.background.add(task)
        task.add_done_callback(self.background.discard)
        return task

    def enter(self, task: asyncio.Task[object]) -> None:
        self.inflight.add(task)
        self.idle.clear()

    def leave(self, task: asyncio.Task[object]) -> None:
        self.inflight.discard(task)
        if not self.inflight:
            self.idle.set()
