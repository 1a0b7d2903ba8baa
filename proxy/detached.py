"""Responses with no client connection behind them: what an async job's run writes into.

The relay writes to a ``web.StreamResponse``. A synchronous request's goes to
its client's socket; a job runs with no request at all (it may run on
another process, after a restart), so the relay is given ``None`` for the
request and a ``Detached`` response, which it starts with ``start()`` instead
of ``prepare(request)``.
"""

from __future__ import annotations

import abc

from aiohttp import web

__all__ = ["Detached", "start"]


class Detached(web.StreamResponse, abc.ABC):
    """A response that goes somewhere other than a client (storage, a record)."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Begin the response (what ``prepare`` is for a client's)."""


async def start(response: web.StreamResponse, request: web.BaseRequest | None) -> None:
    """``prepare`` for a client's response; ``start`` for a detached one (no request)."""
    if request is not None:
        await response.prepare(request)
    elif isinstance(response, Detached):
        await response.start()
    else:
        raise TypeError("a response without a request must be Detached")
