"""A minimal HTTP/1.1 keep-alive client connection for the load generator.

Why not aiohttp's client: on a 2-core machine every microsecond the load
generator spends is taken from the upstream or the gateway it measures. This
connection is an ``asyncio.BufferedProtocol``: the kernel reads into one
preallocated buffer, response bodies are counted and dropped where they land
(no per-read ``bytes`` objects, no joining of 20 MB bodies), and the only
per-response work is parsing the status line and a few headers.

It speaks just enough HTTP/1.1 for the bench: one request at a time per
connection, ``Content-Length`` or ``chunked`` bodies, ``Connection: close``.
For ``text/event-stream`` answers it counts SSE event boundaries (a blank
line, ``\\n\\n``) in the de-chunked payload, in place, and notes when the
first one arrived, for time-to-first-event.
"""

from __future__ import annotations

import asyncio
import time
from typing import cast

__all__ = ["Connection", "HttpError", "Response", "build_request"]

_READ_BUFFER = 1024 * 1024
_MAX_HEAD = 64 * 1024

# Parser states.
_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_CRLF, _TRAILER, _IDLE = range(7)


class HttpError(Exception):
    """The server broke the protocol or the connection mid-response."""


class Response:
    """What the bench needs to know about one response; the body is not kept."""

    __slots__ = ("body", "body_bytes", "close", "events", "first_event_at", "status")

    def __init__(self) -> None:
        self.status = 0
        self.body_bytes = 0
        # SSE event boundaries seen in the payload (0 for plain bodies).
        self.events = 0
        # perf_counter() when the first event boundary arrived, else None.
        self.first_event_at: float | None = None
        # The server asked to close the connection after this response.
        self.close = False
        # The whole payload, only when the request asked to capture it.
        self.body: bytearray | None = None


def build_request(host: str, port: int, path: str, body: bytes, content_type: str = "application/json") -> bytes:
    """The request bytes, built once and written as-is for every request."""
    head = (
        f"POST {path} HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\n"
        f"Content-Type: {content_type}\r\n"
        "Accept: */*\r\n"
        f"Content-Length: {len(body)}\r\n"
        "\r\n"
    )
    return head.encode("ascii") + body


class Connection(asyncio.BufferedProtocol):
    """One keep-alive connection; ``request()`` sends and awaits a whole response."""

    def __init__(self) -> None:
        self._buf = bytearray(_READ_BUFFER)
        self._view = memoryview(self._buf)
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[Response] | None = None
        self._resp = Response()
        self._state = _IDLE
        self._remaining = 0
        self._pending = bytearray()  # a header block or chunk-size line split across reads
        self._count_events = False
        self._last_lf = False
        self.closed = True

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(cls, host, port)
        return conn

    # -- asyncio.BufferedProtocol -------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport does not subclass asyncio.Transport: no isinstance check.
        self._transport = cast(asyncio.Transport, transport)
        self.closed = False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(HttpError(f"connection lost mid-response ({exc!r})"))

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        try:
            self._parse(0, nbytes)
        except HttpError as exc:
            self._fail(exc)
            self.close()

    def eof_received(self) -> bool:
        return False

    # -- public -----------------------------------------------------------------------

    def request(self, data: bytes, *, capture: bool = False) -> asyncio.Future[Response]:
        """Send ``data`` (a whole request); the future resolves at the response's end."""
        if self.closed or self._transport is None:
            raise HttpError("connection is closed")
        if self._waiter is not None:
            raise RuntimeError("one request at a time per connection")
        self._resp = Response()
        if capture:
            self._resp.body = bytearray()
        self._state = _HEAD
        self._pending.clear()
        self._last_lf = False
        self._waiter = asyncio.get_running_loop().create_future()
        self._transport.write(data)
        return self._waiter

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        self.closed = True

    # -- parsing ------------------------------------------------------------------------

    def _fail(self, exc: Exception) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        self._state = _IDLE

    def _done(self) -> None:
        self._state = _IDLE
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(self._resp)
        if self._resp.close:
            self.close()

    def _parse(self, i: int, n: int) -> None:
        buf = self._buf
        while i < n:
            state = self._state
            if state in (_LENGTH, _CHUNK_DATA):
                take = min(self._remaining, n - i)
                self._payload(i, i + take)
                i += take
                self._remaining -= take
                if self._remaining == 0:
                    if state == _LENGTH:
                        self._done()
                    else:
                        self._state, self._remaining = _CHUNK_CRLF, 2
            elif state == _CHUNK_CRLF:
                take = min(self._remaining, n - i)
                i += take
                self._remaining -= take
                if self._remaining == 0:
                    self._state = _CHUNK_SIZE
            elif state == _HEAD:
                block, i = self._take_until(b"\r\n\r\n", i, n)
                if block is not None:
                    self._start_body(block)
            elif state == _CHUNK_SIZE:
                line, i = self._take_until(b"\r\n", i, n)
                if line is not None:
                    self._chunk_size(line)
            elif state == _TRAILER:
                line, i = self._take_until(b"\r\n", i, n)
                if line is not None and not line:
                    self._done()
            else:
                raise HttpError(f"{n - i} unexpected bytes while no request was pending: {bytes(buf[i:i + 80])!r}")

    def _take_until(self, sep: bytes, i: int, n: int) -> tuple[bytes | None, int]:
        """The bytes up to ``sep`` (which may straddle reads), and where parsing resumes."""
        buf, pending = self._buf, self._pending
        if not pending:
            k = buf.find(sep, i, n)
            if k >= 0:
                return bytes(buf[i:k]), k + len(sep)
        old = len(pending)
        pending += buf[i:n]
        k = pending.find(sep, max(0, old - len(sep) + 1))
        if k < 0:
            if len(pending) > _MAX_HEAD:
                raise HttpError("response head or chunk line too long")
            return None, n
        out = bytes(pending[:k])
        pending.clear()
        return out, i + (k + len(sep) - old)

    def _start_body(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        status = lines[0]
        if not status.startswith(b"HTTP/1.") or len(status) < 12:
            raise HttpError(f"bad status line {status[:80]!r}")
        resp = self._resp
        resp.status = int(status[9:12])
        length: int | None = None
        chunked = False
        self._count_events = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"connection":
                resp.close = b"close" in value.lower()
            elif name == b"content-type":
                self._count_events = value.strip().lower().startswith(b"text/event-stream")
        if chunked:
            self._state = _CHUNK_SIZE
        elif length is not None:
            self._state, self._remaining = _LENGTH, length
            if length == 0:
                self._done()
        else:
            raise HttpError("response without Content-Length or chunked encoding (read-to-close is not supported)")

    def _chunk_size(self, line: bytes) -> None:
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise HttpError(f"bad chunk size line {line[:80]!r}") from None
        if size == 0:
            self._state = _TRAILER
        else:
            self._state, self._remaining = _CHUNK_DATA, size

    def _payload(self, start: int, end: int) -> None:
        """Account for payload bytes ``buf[start:end]`` without copying them."""
        if start == end:
            return
        resp = self._resp
        resp.body_bytes += end - start
        if resp.body is not None:
            resp.body += self._view[start:end]
        if self._count_events:
            self._count_blank_lines(start, end)

    def _count_blank_lines(self, start: int, end: int) -> None:
        """Count LF LF pairs (SSE event ends) in ``buf[start:end]``.

        ``find(b"\n")`` is a memchr: multi-MB ``data:`` lines hold no LF, so this
        visits only the few line ends instead of scanning byte pairs. The bench
        servers end lines with LF only (no CR), as both the demo upstream and a
        byte-for-byte relay of it do.
        """
        buf, resp = self._buf, self._resp
        last = start - 1 if self._last_lf else -2  # the last LF not yet paired
        found = 0
        k = buf.find(b"\n", start, end)
        while k >= 0:
            if k == last + 1:
                found += 1
                last = -2
            else:
                last = k
            k = buf.find(b"\n", k + 1, end)
        self._last_lf = last == end - 1
        if found:
            if resp.events == 0:
                resp.first_event_at = time.perf_counter()
            resp.events += found
