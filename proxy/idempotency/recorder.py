"""Recording a response as the relay writes it, and replaying a record to a client.

The request that owns a key runs detached from its client's connection (see
``proxy.idempotency.flow``): the relay writes into a ``RecordingResponse``,
which has the ``web.StreamResponse`` interface the relay uses (``prepare``,
``write``, ``write_eof``, ``prepared``) and sends nothing anywhere: its head and
bytes go to the store. Every client, the owner's own included, then gets the
response through ``replay``, from the record, with its own write timeout; a
client that goes away or falls behind loses its copy, never the record.

What is recorded and what releases the key (``produce``), in the words of
docs/idempotency.md:

- a response the relay started (a 200 body or stream, including a stream that
  ended with an ``event: error``) is recorded as it went out;
- an error answered before any byte (the provider's 4xx/5xx, a 502/504 after
  the gateway's own retries) is recorded like a response, as Stripe does;
- the key is released, and the next request with it runs anew, when no
  provider ran it: none was called (refused by limits or permissions, every
  circuit open: 429, 403, 404, 503 and the like) or the provider answered 429
  (rate limited, no work done); and when the gateway's shutdown stopped the
  request (503 gateway_shutting_down, or a stream it ended).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from multidict import CIMultiDict

from pixelgate.core.errors import GatewayError, GatewayShuttingDown, error_event, render_error
from pixelgate.core.record import RequestRecord
from pixelgate.proxy.header_values import safe_headers
from pixelgate.proxy.idempotency import errors
from pixelgate.proxy.idempotency.store import Ending, Head, Owner, Source, StoreUnavailable
from pixelgate.proxy.relay import RelaySettings

__all__ = ["REPLAYED", "SHUTDOWN_TAIL", "RecordingResponse", "produce", "replay"]

log = logging.getLogger("pixelgate.idempotency")

# On every response a follower gets (Stripe's name for it).
REPLAYED = "Idempotent-Replayed"
# After shutdown cancelled a replay, how long it may still pass on the record's end.
SHUTDOWN_TAIL = 3.0


class RecordingResponse(web.StreamResponse):
    """What the relay writes an owned request's response into: the owner's record, not a socket."""

    def __init__(self, owner: Owner, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._owner = owner
        self._started = False
        # write_eof came: the whole response is recorded.
        self.ended = False

    @property
    def prepared(self) -> bool:
        return self._started

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        if not self._started:
            self._started = True
            # The headers the relay set; per-client ones (CORS, rate limits) are each replay's own.
            await self._owner.head(Head(self.status, tuple((str(k), v) for k, v in self.headers.items())))
        return None

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._started or self.ended:
            raise RuntimeError("write() outside prepare() and write_eof()")
        await self._owner.write(data if isinstance(data, bytes | memoryview) else bytes(data))

    async def write_eof(self, data: bytes = b"") -> None:
        if self.ended:
            return
        if data:
            await self._owner.write(data)
        self.ended = True
        # The owner's own client may end now; the store's verdict follows (produce).
        self._owner.local.finish(Ending.COMPLETE)


def _released(err: GatewayError, record: RequestRecord) -> bool:
    """No provider ran it: none was called (nothing was sent upstream), or the last one answered 429
    (rate limited: it did no work); or shutdown stopped the request."""
    return isinstance(err, GatewayShuttingDown) or record.bytes_in == 0 or err.error_type == "rate_limited"


async def produce(owner: Owner, work: Awaitable[web.StreamResponse], record: RequestRecord) -> None:
    """Run the owned request (``work``, dispatched with a RecordingResponse) and settle its record.

    Raises the request's error when the key was released for it (the owner's
    client gets that error as is); a recorded error is replayed to it instead.
    """
    try:
        try:
            response = await work
        except GatewayError as err:
            if _released(err, record):
                await owner.release()
                raise
            status, headers, body = render_error(err)
            headers = {**headers, "x-request-id": record.request_id, "Content-Length": str(len(body))}
            await owner.head(Head(status, tuple(safe_headers(headers).items())))
            await owner.write(body)
            await owner.finish(Ending.COMPLETE)
            return
        except asyncio.CancelledError:
            # Shutdown before the relay, or the app closing: the key is free again.
            await owner.release()
            raise
        except BaseException:
            # A bug (what aiohttp would log for a handler): logged here, since no handler may be left to.
            log.exception("idempotency: an owned request failed")
            await owner.release()
            raise
        ending = Ending.COMPLETE if isinstance(response, RecordingResponse) and response.ended else Ending.CUT
        if record.error_type == "shutdown":
            owner.local.finish(ending)
            await owner.release()
        else:
            await owner.finish(ending)
    finally:
        # Whatever happened above, the owner's own client is never left waiting for more.
        owner.local.finish(Ending.CUT)


async def replay(
    request: web.Request, source: Source, head: Head, settings: RelaySettings, *, replayed: bool,
    record: RequestRecord | None = None,
) -> web.StreamResponse:
    """Write the record ``source`` (whose head was read) to this request's client, as it grows.

    A client that goes away, or takes no write for ``server.write_timeout``,
    loses its copy only. A record that ends cut (or lost) breaks the body's
    connection, as the relay does; a stream ends with an ``event: error``.
    """
    headers = CIMultiDict(head.headers)
    if replayed:
        headers[REPLAYED] = "true"
    response = web.StreamResponse(status=head.status, headers=headers)
    pump = _Pump(request, response, source, settings, record)
    try:
        await pump.run()
    except asyncio.CancelledError:
        if not settings.state.closing:
            raise
        # Shutdown's grace period is over: the record ends with the relay's error event any moment now.
        if (task := asyncio.current_task()) is not None:
            task.uncancel()
        try:
            async with asyncio.timeout(SHUTDOWN_TAIL):
                await pump.run()
        except TimeoutError:
            pump.abort()
    return response


class _Pump:
    __slots__ = ("_record", "_request", "_response", "_settings", "_source")

    def __init__(
        self, request: web.Request, response: web.StreamResponse, source: Source, settings: RelaySettings,
        record: RequestRecord | None,
    ) -> None:
        self._request = request
        self._response = response
        self._source = source
        self._settings = settings
        self._record = record

    async def run(self) -> None:
        response = self._response
        try:
            if not response.prepared:
                await response.prepare(self._request)
            while (data := await self._source.read()) is not None:
                async with asyncio.timeout(self._settings.write_timeout):
                    await response.write(data)
                if self._record is not None:
                    self._record.bytes_out += len(data)
            ending = self._source.ending
            if ending is Ending.COMPLETE:
                await response.write_eof()
            elif _is_stream(response):
                err = errors.outgrown() if ending is Ending.TOO_LARGE else errors.incomplete()
                await response.write(error_event(err))
                await response.write_eof()
            else:
                self.abort()
        except (ConnectionResetError, TimeoutError, StoreUnavailable):
            # Gone, or too slow (or the store went away): this client's copy ends; the record is whole.
            self.abort()

    def abort(self) -> None:
        if (transport := self._request.transport) is not None:
            transport.abort()


def _is_stream(response: web.StreamResponse) -> bool:
    return response.headers.get("Content-Type", "").startswith("text/event-stream")
