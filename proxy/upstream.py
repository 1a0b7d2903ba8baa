"""The upstream side of one exchange, read as the bytes the client gets.

This is the one place a translator is driven (see ``pixelgate.core.translator``).
Most providers answer in one call. Some answer in several: submit a job, poll
its status, download the result (one download per image). ``Upstream`` runs
whichever sequence the translator asks for (``collected``, ``Ending.then``)
and hands the relay one stream of client-shaped bytes, with what the
translator said about it (``waits``, ``client_headers``, ``usage``), so the
relay's pumps, framing, metering and error handling are the same for all.

Two rules keep it safe under the relay's timers:

- Reads can be interrupted (a keep-alive or idle timer cancels the wait) and
  resumed. Opening the next call of a sequence runs as its own task and is
  awaited through ``asyncio.shield``, so an interrupted wait never leaves a
  connect half-done.
- Calls to URLs taken from a provider's answer are checked against the
  adapter's ``Guard`` before connecting (and again at each redirect, up to
  three; the provider's headers only follow to the same host), and their
  bodies are cut at its size.

An exchange that ends by an exception while a provider job runs (the client
went away, the total timeout, shutdown past its grace period, a failed
poll) leaves that job running and billing. ``close`` then sends the call the
translator describes (``core.translator.Cancellable``) through the same
transport and guard: once, after the upstream connection is closed, bounded
by ``CANCEL_TIMEOUT``. It runs as a task of its own, so the cancellation
that is ending the handler cannot cut it halfway; ``close`` waits for it
(the handler, and so shutdown's drain, ends only after it), and if ``close``
is itself cancelled meanwhile, the call still ends on its own within the
bound. Its outcome is logged (provider and status, never the URL or key)
and counted, never raised.

When the exchange asks for them (``Exchange.checkpoint``, a job runner) and
the translator is ``core.translator.Resumable``, each status document read
(the submit's answer first) is followed by the translator's checkpoint,
handed over only when it differs from the last one told (or from the one a
resumed translator started from), so the runner can persist where the
provider's job stands.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Mapping
from contextlib import AbstractAsyncContextManager, suppress
from dataclasses import dataclass
from typing import Any

from yarl import URL

from pixelgate.core.errors import GatewayError, UpstreamProtocolError, UpstreamTimeout
from pixelgate.core.translator import Cancellable, Guard, MultiCallTranslator, ResponseHead, Resumable, UpstreamRequest
from pixelgate.core.upload import body_length
from pixelgate.core.usage import Usage
from pixelgate.proxy.exchange import Exchange, Outcome
from pixelgate.proxy.guard import check_url
from pixelgate.proxy.transport import UpstreamResponse, read_at_most

__all__ = ["CANCEL_TIMEOUT", "ERROR_BODY_LIMIT", "CancelObserver", "Cancels", "Upstream"]

log = logging.getLogger("pixelgate.upstream")

# Error bodies are small; a provider that sends a huge one gets cut here.
ERROR_BODY_LIMIT = 64 * 1024
# A status document of a multi-call exchange (job ids, polling URLs).
_COLLECT_LIMIT = 1024 * 1024


_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_MAX_HOPS = 3

# Seconds a cancel call of an abandoned job may take, connect to last byte.
CANCEL_TIMEOUT = 5.0
# Told how each cancel call went: (provider, "ok" | "error"); metrics' provider_cancel.
CancelObserver = Callable[[str, str], None]


@dataclass(frozen=True, slots=True)
class Cancels:
    """What the app lends the driver for cancel calls: where their tasks are
    held until they end (a close() cancelled while it waits no longer holds
    its call; see GatewayState.spawn), and who counts them."""

    spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]]
    observe: CancelObserver | None = None


async def _send_cancel(ex: Exchange, call: UpstreamRequest, observe: CancelObserver | None) -> None:
    """One cancel call: ``ok`` on a 2xx, else logged as ``error``; never raises (but a cancellation)."""
    provider, result = ex.provider, "error"
    try:
        async with asyncio.timeout(CANCEL_TIMEOUT):
            if call.guard is not None:
                check_url(call.url, call.guard, provider)
            async with ex.transport.open(call, provider, ex.timeouts) as response:
                status = response.status
                # Read (a little of) the answer, so the connection can go back to the pool.
                await read_at_most(response, ERROR_BODY_LIMIT)
        if 200 <= status < 300:
            result = "ok"
            log.info("provider %r: cancelled the abandoned job", provider)
        else:
            log.warning("provider %r answered the cancel call of an abandoned job with HTTP %d", provider, status)
    except TimeoutError:
        log.warning("provider %r: the cancel call of an abandoned job took over %g s; given up", provider, CANCEL_TIMEOUT)
    except GatewayError as exc:
        # Transport and guard messages name the provider (and a host), never a URL or a key.
        log.warning("provider %r: the cancel call of an abandoned job failed: %s", provider, exc.message)
    except Exception as exc:  # never raised: the exchange is over already
        log.warning("provider %r: the cancel call of an abandoned job failed (%s)", provider, type(exc).__name__)
    finally:
        if observe is not None:
            observe(provider, result)


def _redirected(call: UpstreamRequest, location: str) -> UpstreamRequest:
    """The GET a redirect asks for; the call's headers (the key) only on the same host."""
    source = URL(call.url)
    target = source.join(URL(location))
    headers = call.headers if (target.scheme, target.host, target.port) == (source.scheme, source.host, source.port) else {}
    return UpstreamRequest("GET", str(target), headers, b"", guard=call.guard)


class _Answered:
    """Stands for a response already read whole: the translator has it."""

    status = 200
    headers: Mapping[str, str] = {}

    async def read(self) -> bytes:
        return b""


_ANSWERED = _Answered()


class Upstream:
    __slots__ = (
        "_cancelled", "_cancels", "_cm", "_count", "_ex", "_guard", "_next", "_opening", "_outcome", "_response",
        "_resumable", "_started", "_told", "headers", "usage",
    )

    def __init__(self, ex: Exchange, outcome: Outcome, cancels: Cancels | None = None) -> None:
        self._ex = ex
        self._outcome = outcome
        self._cancels = cancels
        self._cancelled = False
        self._opening = ex.translator.request()
        self._cm: AbstractAsyncContextManager[UpstreamResponse] | None = None
        self._response: UpstreamResponse | None = None
        self._guard: Guard | None = None
        self._count = 0
        # The next call of a sequence, being opened while the relay waits.
        self._next: asyncio.Future[ResponseHead] | None = None
        self._started = asyncio.get_running_loop().time()
        # The headers of the response whose body is being relayed.
        self.headers: Mapping[str, str] = {}
        # Usage the translation took out of the bytes (the relay's meter reads the rest).
        self.usage: Usage | None = None
        # Whose checkpoints go to ex.checkpoint (None: nobody asked, or the
        # translator keeps none), and the last one told: a resumed translator
        # starts from the one its runner has already.
        self._resumable: Resumable | None = None
        self._told: bytes | None = None
        if ex.checkpoint is not None and isinstance(ex.translator, Resumable):
            self._resumable = ex.translator
            self._told = ex.translator.checkpoint()

    @property
    def waits(self) -> bool:
        """The upstream cannot stream: a streaming client needs keep-alives meanwhile."""
        return self._opening.waits

    @property
    def client_headers(self) -> Mapping[str, str]:
        """Gateway headers the translator has for the client (e.g. dropped parameters)."""
        return self._opening.headers

    async def start(self) -> ResponseHead:
        """Make the exchange's calls up to the first one that brings content."""
        return await self._calls(self._opening.call)

    async def read(self) -> tuple[bytes, bool]:
        """The next client-shaped bytes (possibly none yet), and whether that was the end."""
        if self._next is not None:
            # Resumable: an interrupted wait leaves the task running.
            await asyncio.shield(self._next)
            self._next = None
        assert self._response is not None
        translator = self._ex.translator
        chunk = await self._response.read()
        if chunk:
            if self._guard is not None:
                self._count += len(chunk)
                self._check_size(self._guard, self._count)
            out = translator.feed(chunk)
            return (chunk if out is None else out), False
        ending = translator.finish()
        if ending.usage is not None:
            self.usage = ending.usage
        await self._close(None)
        if ending.then is None:
            return ending.data, True
        self._next = asyncio.ensure_future(self._calls(ending.then))
        return ending.data, False

    async def close(self, exc: BaseException | None) -> None:
        """End the exchange: an error closes the connection, a clean end releases it.

        An error while the provider's job runs also cancels the job (see the
        module's docstring): this waits for that call, ``CANCEL_TIMEOUT`` at most.
        """
        if self._next is not None and not self._next.done():
            self._next.cancel()
            with suppress(BaseException):  # its outcome no longer matters
                await self._next
        elif self._next is not None and not self._next.cancelled():
            self._next.exception()  # retrieved: no "never retrieved" warning
        await self._close(exc)
        if exc is not None:
            await self._cancel_job()

    async def _cancel_job(self) -> None:
        translator = self._ex.translator
        if self._cancelled or not isinstance(translator, Cancellable):
            return
        call = translator.cancel()
        if call is None:
            return
        self._cancelled = True
        # A task of its own: the cancellation ending the caller (a client that
        # left, the total timeout, shutdown) does not reach it, and it is
        # bounded by its own timeout whether or not anyone still waits.
        cancels = self._cancels
        work = _send_cancel(self._ex, call, cancels.observe if cancels else None)
        # Without an app to hold it (a test driving Upstream alone), the wait below does.
        task = cancels.spawn(work) if cancels else asyncio.ensure_future(work)
        # wait() returns when it ends; if this close() is cancelled, the task goes on.
        await asyncio.wait((task,))

    async def _calls(self, call: UpstreamRequest) -> ResponseHead:
        ex = self._ex
        translator = ex.translator
        loop = asyncio.get_running_loop()
        hops = 0
        while True:
            if call.delay > 0:
                await asyncio.sleep(call.delay)
            if call.guard is not None:
                check_url(call.url, call.guard, ex.provider)
            self._outcome.bytes_sent += body_length(call.body)
            cm = ex.transport.open(call, ex.provider, ex.timeouts)
            response = await cm.__aenter__()
            self._cm, self._response, self._guard, self._count = cm, response, call.guard, 0
            if self._outcome.upstream_headers_s is None:
                self._outcome.upstream_headers_s = loop.time() - self._started
            if call.guard is not None and response.status in _REDIRECTS and hops < _MAX_HOPS:
                # File hosts redirect to storage; each hop is checked like the first.
                hops += 1
                await self._close(None)
                call = _redirected(call, response.headers.get("Location", ""))
                continue
            if not 200 <= response.status < 300:
                body = await read_at_most(response, ERROR_BODY_LIMIT)
                raise translator.error(response.status, response.headers, body)
            if call.guard is not None:
                length = response.headers.get("Content-Length", "")
                if length.isdigit():
                    self._check_size(call.guard, int(length))
            head = translator.response(response.status, response.headers)
            if not head.collect:
                self.headers = response.headers
                return head
            body = await self._collect(response)
            await self._close(None)
            assert isinstance(translator, MultiCallTranslator), f"{type(translator).__name__} collects no status documents"
            answer = translator.collected(body)
            if self._resumable is not None:
                self._checkpoint(self._resumable)
            if isinstance(answer, ResponseHead):
                # The document was the answer: finish() makes its bytes.
                self._response, self.headers = _ANSWERED, {}
                return answer
            call = answer

    def _checkpoint(self, translator: Resumable) -> None:
        """Tell the exchange's owner where the provider's job stands, if that changed."""
        checkpoint = translator.checkpoint()
        if checkpoint != self._told and self._ex.checkpoint is not None:
            self._told = checkpoint
            self._ex.checkpoint(checkpoint)

    async def _collect(self, response: UpstreamResponse) -> bytes:
        idle = self._ex.timeouts.idle
        try:
            async with asyncio.timeout(idle):
                body = await read_at_most(response, _COLLECT_LIMIT + 1)
        except TimeoutError:
            raise UpstreamTimeout(f"provider {self._ex.provider!r} sent nothing for {idle:g} s (idle timeout)") from None
        if len(body) > _COLLECT_LIMIT:
            raise UpstreamProtocolError(f"provider {self._ex.provider!r} sent a status document over {_COLLECT_LIMIT} bytes")
        return body

    def _check_size(self, guard: Guard, size: int) -> None:
        if size > guard.max_bytes:
            raise UpstreamProtocolError(
                f"provider {self._ex.provider!r} returned a file over the {guard.max_bytes}-byte limit "
                "(the provider's options.max_fetch_bytes)"
            )

    async def _close(self, exc: BaseException | None) -> None:
        cm, self._cm = self._cm, None
        if cm is not None:
            await cm.__aexit__(None if exc is None else type(exc), exc, None)
