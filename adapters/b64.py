"""Base64 encoding of a body as it arrives, for providers that answer with files.

Each chunk is encoded up to its last whole 3-byte group and the rest (0-2
bytes) carried into the next, so the pieces join into exactly the base64 of
the whole file, and memory holds one chunk, never the image. Encoding is the
one transformation this path cannot avoid: the client asked for ``b64_json``.
"""

from __future__ import annotations

import binascii

__all__ = ["Base64Encoder"]


class Base64Encoder:
    __slots__ = ("_carry",)

    def __init__(self) -> None:
        self._carry = b""

    def feed(self, chunk: bytes) -> bytes:
        data = self._carry + chunk if self._carry else chunk
        cut = len(data) - len(data) % 3
        self._carry = data[cut:]
        # b2a_base64 on a memoryview: no copy of the aligned part.
        return binascii.b2a_base64(memoryview(data)[:cut], newline=False) if cut else b""

    def finish(self) -> bytes:
        carry, self._carry = self._carry, b""
        return binascii.b2a_base64(carry, newline=False) if carry else b""
