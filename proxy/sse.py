"""Byte-level server-sent-event framing for the relay.

The relay must hand each upstream event to the client whole and unchanged, as
soon as its terminating blank line arrives. Events can be many megabytes on a
single ``data:`` line, which defeats line readers (aiohttp's ``readline`` stops
at 2 x ``read_bufsize``), so the framer works on the raw chunks of
``iter_any()``/``readany()``: it records *spans* of the chunks it was fed and
never joins, decodes or copies the payload.

aiohttp-sse is not used here on purpose: its ``send()`` takes ``str`` (a
multi-MB event would be decoded, split and re-encoded) and its ping task writes
on its own schedule, so a ping could land inside a half-relayed event.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

__all__ = ["KEEPALIVE", "EventFramer", "EventTooLarge", "Span", "head_of", "span_views", "without_unsafe_fields"]

# A comment line: ignored by every SSE parser, including both official SDKs.
# Never ``id:``/``retry:`` or event-only frames: they crash openai-python.
KEEPALIVE = b": keep-alive\n\n"

# A slice (buffer, start, end) of a chunk read from the upstream.
Span = tuple[bytes, int, int]

_LF, _CR = 0x0A, 0x0D


class EventTooLarge(Exception):
    """An upstream event grew past the configured maximum."""


class EventFramer:
    """Splits a byte stream into whole SSE events, terminators included.

    Lines may end in LF, CRLF or CR (the SSE spec allows all three); an event
    ends at an empty line. Blank lines outside an event come out as events of
    their own, so the concatenation of all output equals the input.
    """

    __slots__ = ("_cr", "_line_len", "_max", "_size", "_spans")

    def __init__(self, max_event_bytes: int) -> None:
        self._max = max_event_bytes
        self._spans: list[Span] = []
        self._size = 0
        self._line_len = 0
        # The last byte seen was CR: an LF right after it is part of that line end.
        self._cr = False

    @property
    def pending(self) -> bool:
        """True while part of an event has been received but not its end."""
        return self._size > 0

    @property
    def held(self) -> int:
        """Bytes of the current event received and not yet taken."""
        return sum(end - start for _, start, end in self._spans)

    def peek(self, limit: int) -> bytes:
        """The first ``limit`` held bytes of the current event (a small copy)."""
        return head_of(self._spans, limit)

    def take(self) -> list[Span]:
        """Hand over the held part of the current event, to relay it before its end.

        The event stays open: its size still counts against the maximum, and
        ``feed`` yields only the rest of it when its end arrives.
        """
        spans, self._spans = self._spans, []
        return spans

    def feed(self, chunk: bytes) -> Iterator[list[Span]]:
        """Yield every event that ``chunk`` completes, in order."""
        n = len(chunk)
        if not n:
            return
        i = start = 0
        # Most streams never contain CR: search for it once per chunk at most.
        next_cr = chunk.find(b"\r")
        if self._cr:
            self._cr = False
            if chunk[0] == _LF:
                i = 1
                if self._size == 0:
                    # The CR before it ended an event that is already out:
                    # pass the rest of that line end on by itself.
                    start = 1
                    yield [(chunk, 0, 1)]
        while i < n:
            lf = chunk.find(b"\n", i)
            if 0 <= next_cr < i:
                next_cr = chunk.find(b"\r", i)
            if lf < 0 and next_cr < 0:
                self._line_len += n - i
                break
            j = lf if next_cr < 0 or (0 <= lf < next_cr) else next_cr
            blank = self._line_len == 0 and j == i
            self._line_len = 0
            end = j + 1
            if chunk[j] == _CR:
                if end < n:
                    if chunk[end] == _LF:
                        end += 1
                else:
                    self._cr = True
            i = end
            if blank:
                if self._size + end - start > self._max:
                    raise EventTooLarge(f"an upstream event exceeded {self._max} bytes")
                self._spans.append((chunk, start, end))
                spans, self._spans, self._size = self._spans, [], 0
                start = end
                yield spans
        # Reached only at the end of the chunk: keep what is left of the event.
        if start < n:
            self._spans.append((chunk, start, n))
            self._size += n - start
            if self._size > self._max:
                raise EventTooLarge(f"an upstream event exceeded {self._max} bytes")


def span_views(spans: list[Span]) -> Iterator[bytes | memoryview]:
    """The spans as zero-copy buffers for ``StreamResponse.write``."""
    for buf, start, end in spans:
        if start == 0 and end == len(buf):
            yield buf
        else:
            yield memoryview(buf)[start:end]


def head_of(spans: list[Span], limit: int = 256) -> bytes:
    """The first ``limit`` bytes of an event (a small copy, for its field lines)."""
    out = bytearray()
    for buf, start, end in spans:
        out += buf[start : min(end, start + limit - len(out))]
        if len(out) >= limit:
            break
    return bytes(out)


_UNSAFE_FIELD = re.compile(rb"^(?:id|retry)(?::[^\r\n]*)?(?:\r\n|\r|\n)", re.MULTILINE)


def without_unsafe_fields(spans: list[Span]) -> bytes:
    """The event without ``id:``/``retry:`` lines (a copy; such events are rare).

    openai-python never resets its last event id: once one is seen, every
    later blank line dispatches an empty event and crashes its JSON parser.
    """
    return _UNSAFE_FIELD.sub(b"", b"".join(buf[start:end] for buf, start, end in spans))
