"""Base64 decoding of a stream as it arrives, so a ``b64_json`` image can be stored as bytes.

The reverse of ``adapters/b64.py``'s encoder: each chunk is decoded up to its
last whole 4-character group and the rest (0-3 characters) carried into the
next, so the pieces join into exactly the bytes of the whole image, and memory
holds one chunk. Line breaks and spaces (MIME-style base64) are skipped; any
other character outside the standard alphabet, or data after the padding, is
an error, never silently dropped.

With ``json_escapes=True`` the input is the raw inside of a JSON string (as
``adapters/jsontap.py`` passes it, escapes and all): ``\\/`` is ``/``,
``\\n``, ``\\r`` and ``\\t`` are line breaks, ``\\u00XX`` is that ASCII
character; an escape cut by a chunk boundary is carried like a partial group.
"""

from __future__ import annotations

import binascii
import re

__all__ = ["Base64Error", "Base64ToBytes"]

_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
_SPACE = b" \t\r\n"
_ESCAPE = re.compile(rb"\\(?:u([0-9a-fA-F]{4})|(.))", re.DOTALL)
_SIMPLE = {b"/": b"/", b"n": b"\n", b"r": b"\r", b"t": b"\t"}


class Base64Error(ValueError):
    """The stream is not base64."""


def _unescape(m: re.Match[bytes]) -> bytes:
    code, char = m.group(1), m.group(2)
    if char is not None:
        if char in _SIMPLE:
            return _SIMPLE[char]
        raise Base64Error(f"JSON escape \\{char.decode(errors='replace')} in base64")
    value = int(code, 16)
    if value < 0x80 and (byte := bytes([value])) in _ALPHABET + _SPACE:
        return byte
    raise Base64Error(f"JSON escape \\u{code.decode()} in base64")


def _escape_tail(data: bytes) -> int:
    """Where an escape cut short at the end of ``data`` starts (len(data) if none)."""
    i = data.rfind(b"\\", max(0, len(data) - 6))
    if i < 0:
        return len(data)
    tail = data[i + 1:]
    if not tail or (tail[:1] == b"u" and len(tail) < 5):
        return i
    return len(data)


class Base64ToBytes:
    __slots__ = ("_carry", "_ended", "_escape", "_json")

    def __init__(self, *, json_escapes: bool = False) -> None:
        self._carry = b""
        self._escape = b""
        self._ended = False
        self._json = json_escapes

    def feed(self, chunk: bytes) -> bytes:
        if self._json and (self._escape or b"\\" in chunk):
            chunk = self._escape + chunk
            cut = _escape_tail(chunk)
            chunk, self._escape = _ESCAPE.sub(_unescape, chunk[:cut]), chunk[cut:]
            if b"\\" in chunk:
                raise Base64Error("a lone backslash in base64")
        if chunk.translate(None, _ALPHABET):
            if chunk.translate(None, _ALPHABET + _SPACE):
                raise Base64Error("a character outside the base64 alphabet")
            chunk = chunk.translate(None, _SPACE)
        if not chunk:
            return b""
        if self._ended:
            raise Base64Error("data after the base64 padding")
        data = self._carry + chunk if self._carry else chunk
        cut = len(data) - len(data) % 4
        self._carry = data[cut:]
        if not cut:
            return b""
        if data[cut - 1] == 0x3D:  # "=": the last group
            self._ended = True
            if self._carry:
                raise Base64Error("data after the base64 padding")
        try:
            return binascii.a2b_base64(memoryview(data)[:cut], strict_mode=True)
        except binascii.Error as exc:
            raise Base64Error(f"not base64: {exc}") from None

    def finish(self) -> bytes:
        """The last bytes; accepts a missing ``=`` padding."""
        if self._escape:
            raise Base64Error("the base64 ends inside a JSON escape")
        carry, self._carry = self._carry.rstrip(b"="), b""
        if not carry:
            return b""
        if len(carry) == 1:
            raise Base64Error("the base64 ends with a partial group")
        try:
            return binascii.a2b_base64(carry + b"=" * (-len(carry) % 4), strict_mode=True)
        except binascii.Error as exc:
            raise Base64Error(f"not base64: {exc}") from None
