"""What an idempotency store keeps, and what the rest of the gateway asks of it.

``claim(scope, digest, fingerprint)`` decides, atomically for one key across
everything sharing the store:

- ``Own``: nobody holds the key; this request runs, and records its response
  through the ``Owner`` (head, bytes, then ``finish`` to keep it for the
  retention, or ``release`` to forget the key as if never sent);
- ``Follow``: another request with the same fingerprint runs or ran; its
  recorded response is read from the start through a ``Source`` (following it
  as it grows while it still runs);
- ``Refused``: the key was used for another request, or its result is not
  replayable (too large, or it never finished);
- ``Busy``: a moment's inconsistency (a lock without its record); claim again.

The owner's own client reads ``Owner.local``, a spool on this gateway's disk
with the whole response, however large; followers read the store's copy.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

import msgspec

if TYPE_CHECKING:
    from pixelgate.proxy.idempotency.spool import Spool

__all__ = ["Busy", "Claim", "Ending", "Follow", "Head", "Own", "Owner", "Refused", "Source", "Store", "StoreUnavailable"]


class Ending(enum.Enum):
    """How a recorded response ended."""

    # Whole: write_eof after the last byte.
    COMPLETE = "complete"
    # The body broke off (the relay broke the client's connection): not replayable.
    CUT = "cut"
    # Over idempotency.max_response_bytes: not kept.
    TOO_LARGE = "too_large"
    # The request running it stopped before its end (its replica died, or lost its lock).
    LOST = "lost"


class Head(msgspec.Struct, frozen=True):
    """The status and the headers of a response, as the gateway wrote them."""

    status: int
    headers: tuple[tuple[str, str], ...]

    @property
    def stream(self) -> bool:
        return any(k.lower() == "content-type" and v.startswith("text/event-stream") for k, v in self.headers)


class StoreUnavailable(Exception):
    """The store cannot be reached (Redis down); the message names no secret."""


class Source(Protocol):
    """A recorded response, read from its start; waits while it is still being recorded."""

    # Set once head() returned None or read() returned None: how it ended;
    # None after head() returned None means the owner released the key (claim again).
    ending: Ending | None

    async def head(self) -> Head | None: ...

    async def read(self) -> bytes | None:
        """The next bytes, ``None`` at the end (see ``ending``)."""
        ...

    def close(self) -> None: ...


class Owner(Protocol):
    """The request that holds a key: what it writes is recorded."""

    @property
    def local(self) -> Spool: ...

    async def head(self, head: Head) -> None: ...

    async def write(self, data: bytes | memoryview) -> None: ...

    async def finish(self, ending: Ending) -> None:
        """The request is over; its result is kept for the retention (when replayable)."""
        ...

    async def release(self) -> None:
        """Forget the key: the next request with it runs anew. Followers waiting for a head claim again."""
        ...


@dataclass(frozen=True, slots=True)
class Own:
    owner: Owner


@dataclass(frozen=True, slots=True)
class Follow:
    source: Source
    # Still being recorded when claimed (a metric label: in_progress or completed).
    live: bool


@dataclass(frozen=True, slots=True)
class Refused:
    reason: Literal["mismatch", "too_large", "incomplete"]


@dataclass(frozen=True, slots=True)
class Busy:
    pass


Claim = Own | Follow | Refused | Busy


class Store(Protocol):
    # idempotency.max_response_bytes (for the 409's message).
    max_response_bytes: int

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def claim(self, scope: str, digest: str, fingerprint: str) -> Claim:
        """Raises ``StoreUnavailable``."""
        ...
