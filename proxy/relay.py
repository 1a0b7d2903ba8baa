"""The relay: pumps one upstream answer to one client, chunk by chunk.

Nothing on this path holds a whole body, decodes base64 or turns bytes into
``str``. Bodies go out as they come in; server-sent events are framed from the
raw chunks (``proxy.sse``) and each goes out whole the moment its blank line
arrives. Usage and image counts are read off the passing bytes (``proxy.meter``).

The client's response is prepared lazily, at the first byte it gets, so every
failure before that is a real HTTP status with the OpenAI error envelope (and
room for failover). After it, a stream ends with an ``event: error`` frame and a
body ends with a broken connection, never with a clean end that hides the loss.

Backpressure is end to end: ``StreamResponse.write`` waits for a slow client to
drain, and while it waits no more upstream bytes are read.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass

import msgspec
from aiohttp import web

from pixelgate.core.errors import (
    GatewayError,
    GatewayShuttingDown,
    UpstreamProtocolError,
    UpstreamTimeout,
    error_body_json,
    error_event,
)
from pixelgate.core.translator import ResponseHead
from pixelgate.core.usage import Usage
from pixelgate.proxy.detached import start as start_response
from pixelgate.proxy.exchange import Exchange, Outcome
from pixelgate.proxy.header_values import safe_headers
from pixelgate.proxy.meter import BodyMeter, EventInfo, KeyScanner, add_usage, classify, inspect_event
from pixelgate.proxy.sse import KEEPALIVE, EventFramer, EventTooLarge, Span, span_views, without_unsafe_fields
from pixelgate.proxy.state import GatewayState
from pixelgate.proxy.upstream import Cancels, Upstream

__all__ = ["ClientTooSlow", "RelaySettings", "relay"]

log = logging.getLogger("pixelgate.relay")


@dataclass(frozen=True, slots=True)
class RelaySettings:
    max_event_bytes: int
    keepalive_interval: float
    # A write the client cannot take within this long ends its response.
    write_timeout: float
    # Whether shutdown has passed its grace period (see proxy.state).
    state: GatewayState
    # Makes the client's response; proxy.idempotency has it record instead of send.
    response: Callable[..., web.StreamResponse] = web.StreamResponse
    # Where provider cancel calls of abandoned jobs run, and who counts them.
    cancels: Cancels | None = None


class ClientTooSlow(ConnectionResetError):
    """The client did not take a write within ``server.write_timeout``."""


class _Client:
    """The client side of one relay: lazy ``prepare``, counted, bounded writes."""

    __slots__ = ("_request", "_write_timeout", "outcome", "response")

    def __init__(
        self, request: web.BaseRequest | None, response: web.StreamResponse, outcome: Outcome, write_timeout: float
    ) -> None:
        self._request = request
        self._write_timeout = write_timeout
        self.response = response
        self.outcome = outcome

    async def write(self, data: bytes | memoryview) -> None:
        if not self.response.prepared:
            await start_response(self.response, self._request)
        self.outcome.bytes_out += len(data)
        # write() waits while the client's socket is full: that wait is the
        # backpressure that stops upstream reads, and it must not be endless.
        try:
            async with asyncio.timeout(self._write_timeout):
                await self.response.write(data)
        except TimeoutError:
            raise ClientTooSlow(f"the client took no data for {self._write_timeout:g} s") from None

    def abort(self) -> None:
        """Break the connection: the client must not take a cut body as whole."""
        if self._request is not None and (transport := self._request.transport) is not None:
            transport.abort()


def _response(
    ex: Exchange, upstream: Upstream, head: ResponseHead, upstream_headers: Mapping[str, str], settings: RelaySettings
) -> web.StreamResponse:
    # Upstream headers came through an HTTP parser; the gateway's own may hold client input.
    resp = settings.response(status=200, headers={**head.headers, **safe_headers({**upstream.client_headers, **ex.headers})})
    resp.content_type = head.content_type
    if head.stream:
        resp.headers["Cache-Control"] = "no-cache"
        resp.headers["X-Accel-Buffering"] = "no"
    elif head.passthrough and "Content-Encoding" not in upstream_headers:
        # Unchanged bytes: the upstream's length holds, and a client can tell
        # a cut body from a whole one without chunked framing.
        length = upstream_headers.get("Content-Length", "")
        if length.isdigit():
            resp.content_length = int(length)
    return resp


# The head of a stream started before the upstream answered (see _keeping_alive).
_WAITING = ResponseHead(stream=True, content_type="text/event-stream", passthrough=False)


async def _keeping_alive(start: Awaitable[ResponseHead], client: _Client, interval: float) -> ResponseHead:
    """Await the upstream's answer, sending the client keep-alives meanwhile.

    For upstreams that cannot stream (a synchronous generation, a job being
    polled), a streaming client would otherwise see nothing for a minute and
    proxies in between would time the connection out. The first keep-alive
    commits the response (200, event stream): until then errors are still
    real statuses and failover is still possible, so quick answers lose
    nothing; after it, errors become ``event: error`` frames.
    """
    task = asyncio.ensure_future(start)
    try:
        while True:
            done, _ = await asyncio.wait((task,), timeout=interval)
            if done:
                return task.result()
            await client.write(KEEPALIVE)
            client.outcome.keepalives += 1
    finally:
        if not task.done():
            task.cancel()
            with suppress(BaseException):  # the relay is leaving already
                await task


async def relay(
    request: web.BaseRequest | None, ex: Exchange, settings: RelaySettings, outcome: Outcome
) -> web.StreamResponse:
    """Run the exchange; return the (already written) response.

    ``request`` is None for a job's run, whose response is ``Detached``.

    Raises ``GatewayError`` only before the first byte reached the client.
    """
    client: _Client | None = None
    stream = False
    loop = asyncio.get_running_loop()
    outcome.sent_at = loop.time()
    try:
        async with asyncio.timeout(ex.timeouts.total) as total:
            upstream = Upstream(ex, outcome, settings.cancels)
            try:
                if upstream.waits and settings.keepalive_interval:
                    stream = True
                    client = _Client(request, _response(ex, upstream, _WAITING, {}, settings), outcome, settings.write_timeout)
                    head = await _keeping_alive(upstream.start(), client, settings.keepalive_interval)
                    if not client.response.prepared:
                        client = None
                else:
                    head = await upstream.start()
                stream = head.stream
                if client is None:
                    client = _Client(request, _response(ex, upstream, head, upstream.headers, settings), outcome, settings.write_timeout)
                if stream:
                    await _EventPump(upstream, ex, settings, client).run()
                else:
                    await _pump_body(upstream, ex, client)
            except BaseException as exc:
                await upstream.close(exc)
                raise
            await upstream.close(None)
        outcome.status = 200
        return client.response
    except TimeoutError:
        if not total.expired():
            raise
        err: GatewayError = UpstreamTimeout(
            f"provider {ex.provider!r} did not finish within {ex.timeouts.total:g} s (total timeout)"
        )
    except GatewayError as exc:
        err = exc
    except ConnectionResetError as exc:
        # The client went away, or could not keep up: leaving the transport's
        # context above closed the upstream connection.
        outcome.error_type = "slow_client" if isinstance(exc, ClientTooSlow) else "client_disconnect"
        outcome.status = 499
        if client is not None:
            client.abort()
            return client.response
        raise
    except asyncio.CancelledError:
        shutdown = _shutdown_error(settings)
        if shutdown is None:
            # The client went away (aiohttp cancels its handler at once).
            outcome.error_type = "client_disconnect"
            outcome.status = 499
            raise
        err = shutdown
    outcome.error_type = err.error_type
    if client is None or not client.response.prepared:
        outcome.status = err.status
        raise err
    outcome.status = client.response.status
    if stream:
        try:
            await client.write(error_event(err))
            await client.response.write_eof()
        except ConnectionResetError:
            pass
    else:
        log.warning("relay: body from provider %r cut short after %d bytes: %s", ex.provider, outcome.bytes_out, err.message)
        client.abort()
    return client.response


def _shutdown_error(settings: RelaySettings) -> GatewayShuttingDown | None:
    """For a cancellation: None if the client went away, else (shutdown's grace
    period is over) the error that ends the response, the cancel taken back."""
    if not settings.state.closing:
        return None
    if (task := asyncio.current_task()) is not None:
        task.uncancel()
    return GatewayShuttingDown("The gateway is shutting down; retry the request.")


async def _read(upstream: Upstream, timeout: float) -> tuple[bytes, bool] | None:
    """The next bytes and whether they end it, or ``None`` if ``timeout`` passed first."""
    try:
        async with asyncio.timeout(timeout):
            return await upstream.read()
    except TimeoutError:
        return None


# A JSON body this small, whole in its first chunk, is parsed before relaying.
_CHECK_WHOLE = 64 * 1024


def _check_first(provider: str, data: bytes, whole: bool, meter: BodyMeter) -> None:
    """Catch a malformed 200 body while a failover is still possible.

    Only the first chunk is looked at (nothing has reached the client yet):
    it must open a JSON object; a small body that came whole is decoded as an
    ImagesResponse view, which also meters it. A large body is relayed as it
    streams and metered by scanning: it is never parsed whole.
    """
    if not data.lstrip().startswith(b"{"):
        raise UpstreamProtocolError(f"provider {provider!r} answered HTTP 200 with a body that is not a JSON object")
    if whole and len(data) <= _CHECK_WHOLE:
        try:
            meter.whole(data)
        except msgspec.DecodeError as exc:
            raise UpstreamProtocolError(f"provider {provider!r} answered HTTP 200 with malformed JSON: {exc}") from None
    else:
        meter.feed(data)


async def _pump_body(upstream: Upstream, ex: Exchange, client: _Client) -> None:
    loop = asyncio.get_running_loop()
    meter = BodyMeter()
    idle = ex.timeouts.idle
    # The first piece waits for one more read: if that read is the end, the
    # body came whole and is checked before anything reaches the client.
    held: bytes | None = None
    # Not the response's `prepared`: a StoringResponse (proxy.storage.rehost)
    # takes bytes long before its client gets any.
    first_written = False
    while True:
        piece = await _read(upstream, idle)
        if piece is None:
            raise UpstreamTimeout(f"provider {ex.provider!r} sent nothing for {idle:g} s (idle timeout)")
        data, end = piece
        if not first_written:
            if held is None and not end:
                held = data or None
                continue
            if held is None:
                first, data = data, b""
            elif end and data:
                # A translated body's closing bytes: whole, it is checked whole.
                first, data = held + data, b""
            else:
                first = held
            read_at = loop.time()
            _check_first(ex.provider, first, end, meter)
            first_written = True
            await client.write(first)
            client.outcome.response_overhead = loop.time() - read_at
        if data:
            meter.feed(data)
            await client.write(data)
        if end:
            break
    await client.response.write_eof()
    client.outcome.completed_at = loop.time()
    client.outcome.images = meter.images
    client.outcome.usage = meter.usage() or upstream.usage


class _CutThrough:
    """An event relayed piece by piece, before its end has arrived.

    Holding a multi-MB event until its blank line would add a whole transfer
    to the time to first image and make memory grow with the image; once its
    first bytes show what it is, the rest goes out as it comes.
    """

    __slots__ = ("info", "scanner")

    def __init__(self, info: EventInfo) -> None:
        self.info = info
        self.scanner = KeyScanner()

    def feed(self, spans: list[Span]) -> None:
        for buf, start, end in spans:
            self.scanner.feed(buf, start, end)

    def usage(self) -> Usage | None:
        self.scanner.finish()
        return self.scanner.usage()

    def abandon(self, err: GatewayError) -> bytes:
        """Bytes that end the half-sent event so no client takes it for whole.

        Cut inside the base64 string (nearly always: it is most of the
        event), closing the string and the object turns the event into one
        with a top-level ``error``, which both official SDKs raise as
        ``APIError``. Anywhere else the blank line leaves malformed JSON,
        which fails any parser. The ``event: error`` frame follows either way.
        """
        self.scanner.finish()
        if self.scanner.in_b64_value:
            return b'","error":' + error_body_json(err) + b"}\n\n"
        return b"\n\n"


# Bytes of an event held before relaying it piece by piece: enough for its
# field lines and the start of its data, to classify it and to catch fields
# that must not reach the client (see sse.without_unsafe_fields).
_HEAD = 256


class _EventPump:
    """Relays an event stream: each event out the moment it is whole (or, once
    its head shows what it is, piece by piece), keep-alives between events,
    the idle timeout, and the counts the outcome reports."""

    __slots__ = (
        "_client", "_completed", "_ex", "_framer", "_last_read", "_last_write", "_loop", "_outcome", "_settings",
        "_through", "_upstream", "_usage",
    )

    def __init__(self, upstream: Upstream, ex: Exchange, settings: RelaySettings, client: _Client) -> None:
        self._upstream = upstream
        self._ex = ex
        self._settings = settings
        self._client = client
        self._outcome = client.outcome
        self._loop = asyncio.get_running_loop()
        self._framer = EventFramer(settings.max_event_bytes)
        self._completed = 0
        self._usage: Usage | None = None
        # The event being relayed piece by piece, if one is.
        self._through: _CutThrough | None = None
        self._last_read = self._last_write = self._loop.time()

    async def run(self) -> None:
        try:
            try:
                if await self._relay_all():
                    return
            except asyncio.CancelledError:
                shutdown = _shutdown_error(self._settings)
                if shutdown is None:
                    raise
                raise shutdown from None
            except EventTooLarge as exc:
                raise UpstreamProtocolError(f"provider {self._ex.provider!r}: {exc} (server.max_event_bytes)") from None
        except GatewayError as err:
            if self._through is not None:
                await self._client.write(self._through.abandon(err))
            raise
        finally:
            self._outcome.images, self._outcome.usage = self._completed, self._usage or self._upstream.usage
        if not self._completed:
            raise UpstreamProtocolError(
                f"provider {self._ex.provider!r} ended the stream before any image_generation.completed event"
            )
        await self._client.response.write_eof()

    async def _relay_all(self) -> bool:
        """Until the upstream's end; True if an upstream error event ended the stream."""
        framer = self._framer
        while True:
            piece = await self._next_piece()
            if piece is None:
                continue
            data, end = piece
            for spans in framer.feed(data) if data else ():
                if await self._relay_whole(spans):
                    return True
            if framer.pending and (self._through is not None or framer.held >= _HEAD):
                await self._relay_partial()
            if self._through is not None or data:
                self._last_write = self._loop.time()
            if end:
                break
        if framer.pending:
            raise UpstreamProtocolError(f"provider {self._ex.provider!r} ended the stream in the middle of an event")
        return False

    async def _next_piece(self) -> tuple[bytes, bool] | None:
        """The next upstream bytes, or None after a keep-alive went out instead."""
        idle, keepalive = self._ex.timeouts.idle, self._settings.keepalive_interval
        now = self._loop.time()
        wait = idle - (now - self._last_read)
        # Keep-alives only between whole events: never inside a half-sent one.
        if keepalive and not self._framer.pending:
            wait = min(wait, keepalive - (now - self._last_write))
        piece = await _read(self._upstream, max(wait, 0))
        now = self._loop.time()
        if piece is None:
            if now - self._last_read >= idle:
                raise UpstreamTimeout(f"provider {self._ex.provider!r} sent nothing for {idle:g} s (idle timeout)")
            await self._client.write(KEEPALIVE)
            self._outcome.keepalives += 1
            self._last_write = now
            return None
        self._last_read = now
        return piece

    async def _relay_whole(self, spans: list[Span]) -> bool:
        """One event whose blank line has arrived; True if it was an error that ends the stream."""
        client = self._client
        if (through := self._through) is not None:
            # The rest of an event already on its way.
            through.feed(spans)
            await _write_spans(client, spans)
            self._count(through.info, through.usage())
            self._through = None
            return False
        info = inspect_event(spans)
        if info.kind == "empty":
            # An event-only frame (`event: ping`) reaches openai-python
            # as `data: ""` and crashes its JSON parser: keep it here.
            return False
        if info.unsafe:
            await client.write(without_unsafe_fields(spans))
        else:
            await _write_spans(client, spans)
        self._count(info, info.usage)
        if info.kind != "error":
            return False
        # The upstream's own error event went out as sent; it ends the stream.
        self._outcome.error_type = "moderation" if info.moderation else "status_5xx"
        await client.response.write_eof()
        return True

    async def _relay_partial(self) -> None:
        """Send what has come of a large event, once its head shows it may go."""
        if self._through is None:
            info = classify(self._framer.peek(_HEAD))
            if info.kind in ("empty", "comment") or info.unsafe:
                return
            self._through = _CutThrough(info)
        spans = self._framer.take()
        self._through.feed(spans)
        await _write_spans(self._client, spans)

    def _count(self, info: EventInfo, event_usage: Usage | None) -> None:
        outcome = self._outcome
        now = self._loop.time()
        if outcome.response_overhead is None:
            outcome.response_overhead = now - self._last_read
        if info.kind == "partial":
            outcome.partials += 1
            if outcome.first_partial_at is None:
                outcome.first_partial_at = now
        elif info.kind == "completed":
            self._completed += 1
            self._usage = add_usage(self._usage, event_usage)
            if outcome.completed_at is None:
                outcome.completed_at = now


async def _write_spans(client: _Client, spans: list[Span]) -> None:
    for view in span_views(spans):
        await client.write(view)
