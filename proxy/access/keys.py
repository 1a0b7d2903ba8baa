"""Gateway keys: their format, their stored hash, and the lookup that checks them.

A key is ``pgk_<id>_<secret>``: ``id`` is 10 hex characters that name the
key (public, like a user name: it only finds the config entry), ``secret`` is
32 random bytes (url-safe base64). The config stores
``sha256$<id>$<salt>$<digest>`` with ``digest = HMAC-SHA256(salt, key)`` and a
16-byte random salt per key.

Why not a slow KDF (scrypt, PBKDF2): those protect low-entropy passwords from
guessing. These keys carry 256 random bits, so no speed of hashing makes a
stolen hash guessable; the salt still makes every stored value unique. Checking
a key costs one dict lookup and one HMAC (about a microsecond), whatever the
number of keys, so a flood of wrong keys cannot burn the CPU.

The comparison is ``hmac.compare_digest`` of two 32-byte digests: its time does
not depend on how much of the presented key is right, and the presented bytes
are never compared directly.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from enum import Enum
from hmac import compare_digest
from typing import Generic, TypeVar

__all__ = [
    "KEY_PREFIX",
    "AuthFailure",
    "KeyHash",
    "KeyTable",
    "generate_key",
    "hash_key",
    "parse_hash",
    "parse_key",
    "presented_key",
]

KEY_PREFIX = "pgk_"
_SCHEME = "sha256"
_KEY = re.compile(r"^pgk_([0-9a-f]{10})_([A-Za-z0-9_-]{43})$")
T = TypeVar("T")

_HASH = re.compile(r"^sha256\$([0-9a-f]{10})\$([0-9a-f]{32})\$([0-9a-f]{64})$")


class AuthFailure(Enum):
    """Why a request was refused; the values are metric labels."""

    MISSING = "missing"
    MALFORMED = "malformed"
    INVALID = "invalid"
    REVOKED = "revoked"


@dataclass(frozen=True, slots=True)
class KeyHash:
    key_id: str
    salt: bytes
    digest: bytes


def generate_key() -> str:
    return f"{KEY_PREFIX}{secrets.token_hex(5)}_{secrets.token_urlsafe(32)}"


def parse_key(key: str) -> str | None:
    """The key's id, or None if ``key`` is not shaped like a gateway key."""
    m = _KEY.match(key)
    return m.group(1) if m else None


def _digest(salt: bytes, key: str) -> bytes:
    return hmac.new(salt, key.encode(), hashlib.sha256).digest()


def hash_key(key: str, salt: bytes | None = None) -> str:
    """The config value for ``key`` (a fresh random salt unless given)."""
    key_id = parse_key(key)
    if key_id is None:
        raise ValueError("not a Pixelgate key (pgk_<10 hex>_<43 url-safe characters>); generate one with --generate")
    salt = salt if salt is not None else secrets.token_bytes(16)
    return f"{_SCHEME}${key_id}${salt.hex()}${_digest(salt, key).hex()}"


def parse_hash(value: str) -> KeyHash:
    m = _HASH.match(value)
    if m is None:
        raise ValueError("not a Pixelgate key hash (expected sha256$<id>$<salt>$<digest>, from `pixelgate keys hash`)")
    return KeyHash(m.group(1), bytes.fromhex(m.group(2)), bytes.fromhex(m.group(3)))


@dataclass(frozen=True, slots=True)
class _Entry(Generic[T]):
    stored: KeyHash
    value: T
    revoked: bool


class KeyTable(Generic[T]):
    """Configured keys by id; ``check`` returns the entry's value or why not."""

    __slots__ = ("_by_id",)

    def __init__(self, entries: list[tuple[str, T, bool]]) -> None:
        """``entries``: (stored hash, value, revoked)."""
        self._by_id: dict[str, _Entry[T]] = {}
        for stored, value, revoked in entries:
            h = parse_hash(stored)
            self._by_id[h.key_id] = _Entry(h, value, revoked)

    def __len__(self) -> int:
        return len(self._by_id)

    def check(self, key: str) -> T | AuthFailure:
        key_id = parse_key(key)
        if key_id is None:
            return AuthFailure.INVALID
        entry = self._by_id.get(key_id)
        if entry is None:
            return AuthFailure.INVALID
        if not compare_digest(_digest(entry.stored.salt, key), entry.stored.digest):
            return AuthFailure.INVALID
        # Said only to whoever holds the whole secret.
        return AuthFailure.REVOKED if entry.revoked else entry.value


def presented_key(authorization: str | None, api_key: str | None) -> str | AuthFailure:
    """The key from ``Authorization: Bearer <key>``, else from ``api-key``."""
    if authorization is not None:
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or any(c.isspace() for c in token):
            return AuthFailure.MALFORMED
        return token
    if api_key is not None:
        token = api_key.strip()
        if not token or any(c.isspace() for c in token):
            return AuthFailure.MALFORMED
        return token
    return AuthFailure.MISSING
