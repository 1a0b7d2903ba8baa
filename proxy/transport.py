"""The one seam between the relay and an upstream.

``Transport.open(request, timeouts)`` yields an ``UpstreamResponse`` once the
upstream's status and headers are in, and closes the exchange on exit: an exit
by exception closes the connection (the upstream sees the client go away);
a clean exit after EOF returns it to the pool.

``HttpTransport`` speaks HTTP through one shared aiohttp ``ClientSession``;
``DemoTransport`` runs the demo engine in-process for ``demo://`` URLs. Tests
swap what is behind the seam by pointing providers at real loopback servers.

Transport errors are translated here, at the boundary, into ``pixelgate.core.errors``.
Messages name the provider, never its URL or credentials.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from pixelgate.core.errors import UpstreamProtocolError, UpstreamTimeout, UpstreamUnreachable
from pixelgate.core.translator import UpstreamRequest
from pixelgate.core.upload import StreamedBody
from pixelgate.proxy.bodies import chunks, read_all
from pixelgate.proxy.config import Timeouts
from pixelgate.proxy.demo.engine import DemoEngine, DemoFault

__all__ = ["DemoTransport", "HttpTransport", "SchemeTransport", "Transport", "UpstreamResponse", "read_at_most"]


class UpstreamResponse(Protocol):
    status: int

    @property
    def headers(self) -> Mapping[str, str]: ...

    async def read(self) -> bytes:
        """The next body chunk as it arrived; ``b""`` at the end."""
        ...


async def read_at_most(response: UpstreamResponse, limit: int) -> bytes:
    """Up to ``limit`` bytes of a body: enough of an error body, never more."""
    out = bytearray()
    while len(out) < limit and (chunk := await response.read()):
        out += chunk
    return bytes(out[:limit])


class Transport(Protocol):
    def open(
        self, request: UpstreamRequest, provider: str, timeouts: Timeouts
    ) -> AbstractAsyncContextManager[UpstreamResponse]: ...


def _first_byte_timeout(provider: str, timeouts: Timeouts) -> UpstreamTimeout:
    return UpstreamTimeout(f"provider {provider!r} did not answer within {timeouts.first_byte:g} s (first_byte timeout)")


class _HttpResponse:
    __slots__ = ("_content", "_provider", "headers", "status")

    def __init__(self, resp: aiohttp.ClientResponse, provider: str) -> None:
        self.status = resp.status
        self.headers = resp.headers
        self._content = resp.content
        self._provider = provider

    async def read(self) -> bytes:
        try:
            # readchunk(), not readany(): readany joins every piece buffered
            # so far into one new bytes object (a copy of up to 2 x
            # read_bufsize); readchunk hands over the pieces as they came.
            # (b"", True) only marks an HTTP chunk boundary; (b"", False) is EOF.
            while True:
                data, boundary = await self._content.readchunk()
                if data or not boundary:
                    return data
        except aiohttp.ClientPayloadError as exc:
            raise UpstreamProtocolError(f"provider {self._provider!r} sent a malformed or truncated body: {exc}") from None
        except aiohttp.ClientError as exc:
            raise UpstreamProtocolError(f"provider {self._provider!r} closed the connection mid-body ({type(exc).__name__})") from None


class HttpTransport:
    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session
        # Parsed once per distinct URL (from config; bounded all the same,
        # for adapters whose URLs vary per request) and per connect timeout.
        self._urls: dict[str, URL] = {}
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}

    def open(self, request: UpstreamRequest, provider: str, timeouts: Timeouts) -> _HttpExchange:
        url = self._urls.get(request.url)
        if url is None:
            if len(self._urls) >= 256:
                self._urls.clear()
            url = self._urls[request.url] = URL(request.url)
        client_timeout = self._timeouts.get(timeouts.connect)
        if client_timeout is None:
            # aiohttp's own limits cover the connect phase only; waiting for
            # the headers is bounded by first_byte, silences in the body by the
            # relay, so a minutes-long generation is not cut off at 300 s.
            client_timeout = aiohttp.ClientTimeout(total=None, connect=timeouts.connect, sock_connect=timeouts.connect)
            self._timeouts[timeouts.connect] = client_timeout
        return _HttpExchange(self._session, request, url, client_timeout, provider, timeouts)


class _HttpExchange:
    """``async with``: the response once its headers are in; closed on exit.

    A class rather than ``@asynccontextmanager``: it runs once per request,
    and the generator machinery costs more than the few lines it saves.
    """

    __slots__ = ("_client_timeout", "_provider", "_request", "_response", "_session", "_timeouts", "_url")

    def __init__(
        self,
        session: aiohttp.ClientSession,
        request: UpstreamRequest,
        url: URL,
        client_timeout: aiohttp.ClientTimeout,
        provider: str,
        timeouts: Timeouts,
    ) -> None:
        self._session = session
        self._request = request
        self._url = url
        self._client_timeout = client_timeout
        self._provider = provider
        self._timeouts = timeouts
        self._response: aiohttp.ClientResponse | None = None

    async def __aenter__(self) -> UpstreamResponse:
        provider, timeouts = self._provider, self._timeouts
        try:
            request = self._request
            headers, body = request.headers, request.body
            data: bytes | AsyncIterator[bytes] = body if isinstance(body, bytes) else chunks(body)
            if isinstance(body, StreamedBody):
                # Sent as it is read from the spool; the length is known, so no chunked framing.
                headers = {**headers, "Content-Length": str(body.length)}
            async with asyncio.timeout(timeouts.first_byte):
                self._response = await self._session.request(
                    request.method,
                    self._url,
                    headers=headers,
                    data=data,
                    timeout=self._client_timeout,
                    allow_redirects=False,
                )
        except TimeoutError:
            raise _first_byte_timeout(provider, timeouts) from None
        except aiohttp.ConnectionTimeoutError:
            raise UpstreamTimeout(f"could not connect to provider {provider!r} within {timeouts.connect:g} s") from None
        except aiohttp.ClientError as exc:
            raise UpstreamUnreachable(f"could not reach provider {provider!r} ({type(exc).__name__})") from None
        return _HttpResponse(self._response, provider)

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        assert self._response is not None
        if exc_type is None:
            self._response.release()
        else:
            # Closing (not releasing) drops the connection: the upstream sees
            # the client go away and stops generating.
            self._response.close()


class _DemoResponse:
    __slots__ = ("_chunks", "headers", "status")

    def __init__(self, status: int, headers: Mapping[str, str], chunks: AsyncIterator[bytes | memoryview]) -> None:
        self.status = status
        self.headers = CIMultiDict(headers)
        self._chunks = chunks

    async def read(self) -> bytes:
        try:
            # The relay searches chunks with bytes.find: hand it bytes, as aiohttp does.
            return bytes(await anext(self._chunks, b""))
        except DemoFault as exc:
            raise UpstreamProtocolError(f"demo provider: {exc}") from None


class DemoTransport:
    """The demo engine, in-process: no socket, same bytes as the HTTP form."""

    def __init__(self, engine: DemoEngine) -> None:
        self._engine = engine

    @asynccontextmanager
    async def open(self, request: UpstreamRequest, provider: str, timeouts: Timeouts) -> AsyncIterator[UpstreamResponse]:
        try:
            async with asyncio.timeout(timeouts.first_byte):
                answer = await self._engine.answer(await read_all(request.body), request.headers)
        except TimeoutError:
            raise _first_byte_timeout(provider, timeouts) from None
        try:
            yield _DemoResponse(answer.status, answer.headers, answer.chunks)
        finally:
            await answer.chunks.aclose()


class SchemeTransport:
    """``demo://`` URLs to the in-process demo engine, the rest over HTTP."""

    def __init__(self, http: Transport, demo: Transport) -> None:
        self._http = http
        self._demo = demo

    def open(
        self, request: UpstreamRequest, provider: str, timeouts: Timeouts
    ) -> AbstractAsyncContextManager[UpstreamResponse]:
        transport = self._demo if request.url.startswith("demo:") else self._http
        return transport.open(request, provider, timeouts)
