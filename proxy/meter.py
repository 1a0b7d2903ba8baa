"""Reading usage and image counts off the relayed bytes, on the fly.

The relay never parses a response whole: a 20 MB body is mostly one base64
string. These scanners look for a handful of JSON keys with ``bytes.find``
(memchr-speed, no copies) across the spans the relay already holds, and
decode only the small ``usage`` object they find.

JSON strings escape every ``"`` they contain, so a key pattern such as
``"b64_json"`` cannot match inside a string value (a prompt echoed back).
"""

from __future__ import annotations

import msgspec

from adapters.openai_wire import Usage, decode_usage
from proxy.sse import Span, head_of

__all__ = ["BodyMeter", "EventInfo", "add_usage", "inspect_event"]

_USAGE = b'"usage"'
# A usage object is ~300 bytes; anything longer is not one we understand.
_USAGE_CAPTURE = 4096


class _PatternCounter:
    """Counts a pattern across a sequence of buffers fed one after another."""

    __slots__ = ("_carry", "_pattern", "count")

    def __init__(self, pattern: bytes) -> None:
        self._pattern = pattern
        # The last len(pattern) - 1 bytes seen: a match may straddle buffers.
        self._carry = b""
        self.count = 0

    def feed(self, buf: bytes, start: int, end: int) -> int | None:
        """Count matches in ``buf[start:end]``; return where the first began.

        The offset is relative to ``buf`` and is below ``start`` when the
        match began in an earlier buffer; ``None`` when nothing matched.
        """
        p, first = self._pattern, None
        keep = len(p) - 1
        if self._carry:
            window = self._carry + buf[start : start + keep]
            k = window.find(p)
            if 0 <= k < len(self._carry):
                self.count += 1
                first = start - (len(self._carry) - k)
        k = buf.find(p, start, end)
        while k >= 0:
            self.count += 1
            if first is None:
                first = k
            k = buf.find(p, k + len(p), end)
        if end - start >= keep:
            self._carry = buf[end - keep : end]
        else:
            self._carry = (self._carry + buf[start:end])[-keep:]
        return first


class _UsageScanner:
    """Captures the bytes after the first ``"usage"`` key and decodes its object."""

    __slots__ = ("_capture", "_finder")

    def __init__(self) -> None:
        self._finder = _PatternCounter(_USAGE)
        self._capture: bytearray | None = None

    def feed(self, buf: bytes, start: int, end: int) -> None:
        if self._capture is None:
            at = self._finder.feed(buf, start, end)
            if at is None:
                return
            self._capture = bytearray()
            start = at + len(_USAGE)
        room = _USAGE_CAPTURE - len(self._capture)
        if room > 0 and start < end:
            self._capture += buf[start : min(end, start + room)]

    def usage(self) -> Usage | None:
        if self._capture is None:
            return None
        data = bytes(self._capture)
        brace = data.find(b"{")
        if brace < 0 or data[:brace].strip() != b":":
            return None
        # Usage holds numbers and nested objects only: count braces.
        depth = 0
        for i in range(brace, len(data)):
            c = data[i]
            if c == 0x7B:
                depth += 1
            elif c == 0x7D:
                depth -= 1
                if depth == 0:
                    return decode_usage(data[brace : i + 1])
        return None


class BodyMeter:
    """Images and usage of a non-streamed OpenAI ``ImagesResponse`` body."""

    __slots__ = ("_b64", "_url", "_usage", "bytes")

    def __init__(self) -> None:
        self._b64 = _PatternCounter(b'"b64_json"')
        self._url = _PatternCounter(b'"url"')
        self._usage = _UsageScanner()
        self.bytes = 0

    def feed(self, chunk: bytes) -> None:
        n = len(chunk)
        self.bytes += n
        self._b64.feed(chunk, 0, n)
        self._url.feed(chunk, 0, n)
        self._usage.feed(chunk, 0, n)

    @property
    def images(self) -> int:
        return self._b64.count + self._url.count

    def usage(self) -> Usage | None:
        return self._usage.usage()


class EventInfo:
    """What the relay needs to know about one SSE event."""

    __slots__ = ("kind", "moderation", "name", "size", "unsafe", "usage")

    def __init__(
        self, name: bytes, kind: str, size: int, usage: Usage | None, moderation: bool = False, unsafe: bool = False
    ) -> None:
        self.name = name
        # "partial", "completed", "error", "done", "other"; "comment" for
        # comment-only frames; "empty" for fields without data (event-only).
        self.kind = kind
        # Has `id:`/`retry:` lines, which break openai-python's stream parser.
        self.unsafe = unsafe
        self.size = size
        self.usage = usage
        # An error event from the provider's safety system.
        self.moderation = moderation


def _field(head: bytes, field: bytes) -> bytes | None:
    for line in head.splitlines():
        if line.startswith(field + b":"):
            return line[len(field) + 1 :].strip()
    return None


def _kind(name: bytes) -> str:
    if name.endswith(b".partial_image"):
        return "partial"
    if name.endswith(b".completed"):
        return "completed"
    if name == b"error":
        return "error"
    return "other"


def inspect_event(spans: list[Span]) -> EventInfo:
    """Classify an event from its first bytes; read ``usage`` off completed ones."""
    size = sum(end - start for _, start, end in spans)
    head = head_of(spans)
    name = _field(head, b"event")
    data = _field(head, b"data")
    head = head_of(spans, 1024) if name == b"error" else head
    fields = head.splitlines()
    unsafe = any(line.startswith((b"id:", b"retry:")) or line in (b"id", b"retry") for line in fields)
    if data is None:
        comment = all(not line or line.startswith(b":") for line in fields)
        return EventInfo(name or b"", "comment" if comment else "empty", size, None)
    if data.startswith(b"[DONE]"):
        return EventInfo(b"", "done", size, None, unsafe=unsafe)
    if name is None:
        # No `event:` line: the JSON's "type" names it (OpenAI puts it first).
        at = data.find(b'"type"')
        if at >= 0:
            rest = data[at + 6 :].lstrip(b": ")
            if rest.startswith(b'"'):
                name = rest[1 : rest.find(b'"', 1)]
        if name is None:
            name = b"error" if data.lstrip(b"{ ").startswith(b'"error"') else b""
    kind = _kind(name)
    if kind == "error":
        return EventInfo(name, kind, size, None, moderation=b"moderation" in head or b"content_polic" in head, unsafe=unsafe)
    usage = None
    if kind == "completed":
        scanner = _UsageScanner()
        for buf, start, end in spans:
            scanner.feed(buf, start, end)
        usage = scanner.usage()
    return EventInfo(name, kind, size, usage, unsafe=unsafe)


def add_usage(total: Usage | None, usage: Usage | None) -> Usage | None:
    """Sum usage over the completed events of a stream (one per image)."""
    if usage is None:
        return total
    if total is None:
        return msgspec.structs.replace(usage)
    total.input_tokens += usage.input_tokens
    total.output_tokens += usage.output_tokens
    total.total_tokens += usage.total_tokens
    return total
