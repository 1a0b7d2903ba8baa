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

from pixelgate.core.usage import Usage, decode_usage
from pixelgate.proxy.sse import Span, head_of

__all__ = ["BodyMeter", "EventInfo", "KeyScanner", "add_usage", "classify", "inspect_event"]

# A usage object is ~300 bytes; anything longer is not one we understand.
_USAGE_CAPTURE = 4096


class KeyScanner:
    """Finds JSON keys in bytes fed piece by piece; captures ``usage``.

    Base64 holds no ``"``, so the scan jumps from quote to quote with
    ``bytes.find(b'"')`` (memchr speed) and compares the few bytes after each.
    Searching for the keys themselves is ~10x slower on base64: CPython's
    substring search advances one byte at a time whenever the haystack's
    bytes resemble the needle's, and base64 resembles everything.

    A key is matched with its colon (``"usage":``): a string *value* is never
    followed by one, and an escaped quote inside a string (``\\"usage\\"``)
    never matches. The scanner also knows when the bytes are inside the
    ``b64_json`` string, where a relay that must cut an event short almost
    always is.
    """

    __slots__ = ("_after_b64", "_capture", "_keys", "_longest", "_tail", "counts")

    def __init__(self, *counted: bytes) -> None:
        self._keys = tuple(k + b'":' for k in dict.fromkeys((*counted, b"b64_json", b"usage")))
        self._longest = max(map(len, self._keys))
        # From a quote too near the end of the last piece to decide on.
        self._tail = b""
        self._capture: bytearray | None = None
        # Quotes seen since the key "b64_json": 1 while inside its value.
        self._after_b64 = -1
        self.counts = dict.fromkeys(counted, 0)

    @property
    def in_b64_value(self) -> bool:
        return self._after_b64 == 1

    def feed(self, buf: bytes, start: int = 0, end: int | None = None) -> None:
        end = len(buf) if end is None else end
        fresh = start
        if self._tail:
            # Rare (a quote within a few bytes of a chunk's end): re-scan with it.
            fresh = len(self._tail)
            buf, start, end = self._tail + buf[start:end], 0, fresh + end - start
            self._tail = b""
        if self._capture is not None and (room := _USAGE_CAPTURE - len(self._capture)) > 0:
            self._capture += buf[fresh : min(end, fresh + room)]
        q = buf.find(b'"', start, end)
        while q >= 0:
            if end - q <= self._longest:
                self._tail = buf[q:end]
                return
            q = buf.find(b'"', self._at_quote(buf, q, end), end)

    def finish(self) -> None:
        """Decide on a quote left at the very end (the bytes stopped there)."""
        tail, self._tail = self._tail, b""
        q = tail.find(b'"') if tail else -1
        while q >= 0:
            q = tail.find(b'"', self._at_quote(tail, q, len(tail)))

    def _at_quote(self, buf: bytes, q: int, end: int) -> int:
        """Handle the quote at ``q``; return where to look for the next one."""
        for key in self._keys:
            if buf.startswith(key, q + 1):
                after = q + 1 + len(key)
                name = key[:-2]
                if name in self.counts:
                    self.counts[name] += 1
                if name == b"b64_json":
                    self._after_b64 = 0
                elif name == b"usage" and self._capture is None:
                    self._capture = bytearray(buf[after : min(end, after + _USAGE_CAPTURE)])
                return after
        if self._after_b64 >= 0:
            # The value's opening quote, then its closing one.
            self._after_b64 = 1 if self._after_b64 == 0 else -1
        return q + 1

    def usage(self) -> Usage | None:
        if self._capture is None:
            return None
        data = bytes(self._capture)
        brace = data.find(b"{")
        if brace < 0 or data[:brace].strip():
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


class _ImageView(msgspec.Struct):
    # Raw: the base64 is skipped over (and checked as JSON), never materialised.
    b64_json: msgspec.Raw = msgspec.Raw()
    url: msgspec.Raw = msgspec.Raw()


class _BodyView(msgspec.Struct):
    # Raw too: a field of an unexpected shape must not fail a valid answer.
    data: msgspec.Raw = msgspec.Raw()
    usage: msgspec.Raw = msgspec.Raw()


_body_view = msgspec.json.Decoder(_BodyView)
_images_view = msgspec.json.Decoder(list[_ImageView])


class BodyMeter:
    """Images and usage of a non-streamed OpenAI ``ImagesResponse`` body."""

    __slots__ = ("_images", "_scanner", "_usage", "bytes")

    def __init__(self) -> None:
        # Made on first use: most small bodies are metered by whole() alone.
        self._scanner: KeyScanner | None = None
        self._images: int | None = None
        self._usage: Usage | None = None
        self.bytes = 0

    def whole(self, body: bytes) -> None:
        """Meter (and check) a small body that arrived in one piece, in one decode.

        Raises ``msgspec.DecodeError`` if it is not a JSON object; fields of
        an unexpected shape only leave images or usage unknown.
        """
        view = _body_view.decode(body)
        self.bytes += len(body)
        try:
            items = _images_view.decode(view.data) if view.data else []
        except msgspec.ValidationError:
            items = []
        self._images = sum(1 for item in items if item.b64_json or item.url)
        self._usage = decode_usage(view.usage) if view.usage else None

    def feed(self, chunk: bytes) -> None:
        self.bytes += len(chunk)
        if self._scanner is None:
            self._scanner = KeyScanner(b"b64_json", b"url")
        self._scanner.feed(chunk)

    @property
    def images(self) -> int:
        if self._images is not None or self._scanner is None:
            return self._images or 0
        counts = self._scanner.counts
        return counts[b"b64_json"] + counts[b"url"]

    def usage(self) -> Usage | None:
        if self._images is not None or self._scanner is None:
            return self._usage
        self._scanner.finish()
        return self._scanner.usage()


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


def classify(head: bytes, size: int = 0) -> EventInfo:
    """What an event is, from its first bytes (its field lines and data start)."""
    name = _field(head, b"event")
    data = _field(head, b"data")
    fields = head.splitlines()
    unsafe = any(line.startswith((b"id:", b"retry:")) or line in (b"id", b"retry") for line in fields)
    if data is None:
        comment = all(not line or line.startswith(b":") for line in fields)
        return EventInfo(name or b"", "comment" if comment else "empty", size, None, unsafe=unsafe)
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
    moderation = kind == "error" and (b"moderation" in head or b"content_polic" in head)
    return EventInfo(name, kind, size, None, moderation=moderation, unsafe=unsafe)


def inspect_event(spans: list[Span]) -> EventInfo:
    """Classify a whole event; read ``usage`` off completed ones."""
    size = sum(end - start for _, start, end in spans)
    head = head_of(spans)
    info = classify(head_of(spans, 1024) if _field(head, b"event") == b"error" else head, size)
    if info.kind == "completed":
        scanner = KeyScanner()
        for buf, start, end in spans:
            scanner.feed(buf, start, end)
        scanner.finish()
        info.usage = scanner.usage()
    return info


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
