"""Split a streamed JSON document into its large strings and a small skeleton.

Providers put images in JSON as base64 strings (``inlineData.data``,
``bytesBase64Encoded``, ``image``, ``b64_json``). To carry them into the
client's ``b64_json`` without holding them, ``JsonTap`` reads the document as
it arrives: the strings at the paths it is told to tap go out in pieces as
they pass (escapes and all, which stay valid inside any JSON string); the
rest of the document, the skeleton, is kept with ``""`` in their place. The
skeleton is small (metadata, usage, finish reasons) and is decoded whole at
the end with msgspec, so nothing here parses values.

It is a tokenizer for structure only: it tracks strings, escapes, nesting and
keys. Inside a tapped string it jumps from quote to quote with ``bytes.find``
(memchr), so a 20 MB image costs a few finds, not a loop over its bytes.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from pixelgate.core.errors import UpstreamProtocolError

__all__ = ["Close", "Data", "JsonTap", "Open", "Path", "Piece"]

Path = tuple[str | int, ...]


class Open:
    """A tapped string starts; ``path`` says where (keys and array indexes)."""

    __slots__ = ("path",)

    def __init__(self, path: Path) -> None:
        self.path = path


class Close:
    __slots__ = ("path",)

    def __init__(self, path: Path) -> None:
        self.path = path


Data = bytes
Piece = Open | Close | Data

_STRUCTURE = re.compile(rb'["{}\[\],:]')
_QUOTE, _BACKSLASH = 0x22, 0x5C
_LBRACE, _RBRACE, _LBRACKET, _RBRACKET, _COMMA, _COLON = b"{}[],:"

# Where a string is: a key, a kept value, a tapped value.
_KEY, _VALUE, _TAP = 1, 2, 3


class _Level:
    __slots__ = ("at", "expect_key", "is_object")

    def __init__(self, is_object: bool) -> None:
        self.is_object = is_object
        self.expect_key = is_object
        self.at: str | int = "" if is_object else 0


class JsonTap:
    __slots__ = ("_escape", "_key", "_limit", "_path", "_select", "_stack", "_string", "skeleton")

    def __init__(self, select: Callable[[Path], bool], limit: int = 1024 * 1024) -> None:
        self._select = select
        self._limit = limit
        self._stack: list[_Level] = []
        self._string = 0
        self._escape = False
        self._key = bytearray()
        self._path: Path = ()
        self.skeleton = bytearray()

    def feed(self, data: bytes) -> list[Piece]:
        out: list[Piece] = []
        pos, end = 0, len(data)
        while pos < end:
            if self._string:
                pos = self._in_string(data, pos, out)
                continue
            m = _STRUCTURE.search(data, pos)
            if m is None:
                self._keep(data[pos:])
                break
            i = m.start()
            if i > pos:
                self._keep(data[pos:i])  # numbers, literals, whitespace
            pos = i + 1
            self._structure(data[i], out)
        if len(self.skeleton) > self._limit:
            raise UpstreamProtocolError(f"the provider's JSON answer has over {self._limit} bytes besides its images")
        return out

    def finish(self) -> bytes:
        """The skeleton, once the document is complete."""
        if self._stack or self._string:
            raise UpstreamProtocolError("the provider's JSON answer ended before it was complete")
        return bytes(self.skeleton)

    def _structure(self, c: int, out: list[Piece]) -> None:
        stack = self._stack
        top = stack[-1] if stack else None
        if c == _QUOTE:
            if top is not None and top.is_object and top.expect_key:
                self._string = _KEY
                self._key.clear()
            else:
                path = tuple(level.at for level in stack)
                if self._select(path):
                    self._string = _TAP
                    self._path = path
                    out.append(Open(path))
                else:
                    self._string = _VALUE
            self.skeleton.append(c)
            return
        self.skeleton.append(c)
        if c == _LBRACE or c == _LBRACKET:
            stack.append(_Level(c == _LBRACE))
        elif c == _RBRACE or c == _RBRACKET:
            if not stack:
                raise UpstreamProtocolError("the provider's JSON answer is malformed (unbalanced brackets)")
            stack.pop()
        elif c == _COMMA and top is not None:
            if top.is_object:
                top.expect_key = True
            else:
                top.at = int(top.at) + 1
        elif c == _COLON and top is not None:
            top.expect_key = False

    def _in_string(self, data: bytes, pos: int, out: list[Piece]) -> int:
        end = len(data)
        if self._escape:
            # The character after a backslash that ended the previous chunk.
            self._escape = False
            self._take(data[pos : pos + 1], out)
            return pos + 1
        quote = data.find(b'"', pos)
        stop = end if quote < 0 else quote
        slash = data.find(b"\\", pos, stop)
        if slash >= 0:
            if slash + 1 < end:
                self._take(data[pos : slash + 2], out)
                return slash + 2
            self._take(data[pos:], out)
            self._escape = True
            return end
        if quote < 0:
            self._take(data[pos:] if pos else data, out)
            return end
        if quote > pos:
            self._take(data[pos:quote], out)
        kind, self._string = self._string, 0
        self.skeleton.append(_QUOTE)
        if kind == _KEY:
            # Keys are short structure names (never payload), kept as str for
            # readable path tests in the adapters.
            self._stack[-1].at = self._key.decode("utf-8", "replace")
        elif kind == _TAP:
            out.append(Close(self._path))
        return quote + 1

    def _take(self, piece: bytes, out: list[Piece]) -> None:
        if self._string == _TAP:
            out.append(piece)
        elif self._string == _KEY:
            self._key += piece
            self.skeleton += piece
        else:
            self.skeleton += piece

    def _keep(self, piece: bytes) -> None:
        self.skeleton += piece
