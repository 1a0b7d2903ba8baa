"""HMAC-SHA256 signatures of the gateway's file URLs: ``/files/<id>?expires=<unix s>&sig=<base64url>``.

The signature covers a fixed label, the object id and the expiry, so neither
can be changed without the key. Several keys allow rotation: the first signs,
every one verifies. A check compares the presented signature with each key's
in constant time (``hmac.compare_digest``) and always tries them all, so its
time says nothing about how close a forgery came, or which key matched.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Sequence
from enum import Enum

__all__ = ["UrlSigner", "Verdict"]

_LABEL = b"pixelgate-file-url-v1\n"
# 32 bytes in unpadded base64url.
_SIG = re.compile(r"^[A-Za-z0-9_-]{43}$")
_EXPIRES = re.compile(r"^[0-9]{1,12}$")


class Verdict(Enum):
    VALID = "valid"
    # The signature is right, the time is over.
    EXPIRED = "expired"
    # Missing, malformed, or not made by any configured key.
    INVALID = "invalid"


class UrlSigner:
    __slots__ = ("_keys",)

    def __init__(self, keys: Sequence[str]) -> None:
        if not keys:
            raise ValueError("at least one signing key")
        self._keys = [k.encode() for k in keys]

    @staticmethod
    def _mac(key: bytes, object_id: str, expires: int) -> bytes:
        return hmac.new(key, _LABEL + f"{object_id}\n{expires}".encode(), hashlib.sha256).digest()

    @classmethod
    def _sig(cls, key: bytes, object_id: str, expires: int) -> bytes:
        return base64.urlsafe_b64encode(cls._mac(key, object_id, expires)).rstrip(b"=")

    def sign(self, object_id: str, expires: int) -> str:
        return self._sig(self._keys[0], object_id, expires).decode()

    def query(self, object_id: str, expires: int) -> str:
        return f"expires={expires}&sig={self.sign(object_id, expires)}"

    def verify(self, object_id: str, expires: str | None, sig: str | None, now: float) -> Verdict:
        if expires is None or sig is None or not _EXPIRES.fullmatch(expires) or not _SIG.fullmatch(sig):
            return Verdict.INVALID
        # Compared as text: base64 has several spellings of one digest (the
        # last character's spare bits); only the canonical one is accepted.
        presented = sig.encode()
        at = int(expires)
        matched = False
        for key in self._keys:
            # No early exit: every key costs the same, matched or not.
            matched |= hmac.compare_digest(self._sig(key, object_id, at), presented)
        if not matched:
            return Verdict.INVALID
        return Verdict.VALID if now < at else Verdict.EXPIRED
