"""What makes a request idempotent: the ``Idempotency-Key`` header, its scope, and the request's fingerprint.

- The key: 1 to 255 visible ASCII characters (``!`` to ``~``), one header;
  anything else is a 400 naming ``Idempotency-Key``. It is never stored, logged
  or sent anywhere: the store keeps its sha256, the access log a prefix of that.
- The scope: the gateway key's configured name, or ``anonymous`` in open mode.
  Two gateway keys never share a record, whatever key their clients send.
- The fingerprint: a sha256 over the method, the path and the request. A JSON
  body counts as it was sent. A multipart edit counts by its content: its text
  fields in order, then each uploaded file's name and bytes (read back from the
  upload spool, chunk by chunk), not the raw multipart body, whose boundary is
  random per send: a client retrying the same edit (the openai SDKs draw a new
  boundary for every attempt) sends the same request.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

from multidict import CIMultiDictProxy

from pixelgate.core.errors import InvalidRequest

__all__ = ["HEADER", "IdempotencyKey", "RequestIdentity", "fingerprint", "parse_key"]

HEADER = "Idempotency-Key"
_VALID = re.compile(r"[\x21-\x7e]{1,255}")
# Files are hashed this much at a time.
_CHUNK = 1024 * 1024


@dataclass(frozen=True, slots=True)
class IdempotencyKey:
    # "key:<gateway key name>" or "anonymous" (a key name cannot contain ':').
    scope: str
    # sha256 of the key as sent, hex.
    digest: str

    @property
    def log_id(self) -> str:
        """What the access log shows: a prefix of the key's sha256, never the key."""
        return self.digest[:16]


def parse_key(headers: CIMultiDictProxy[str], client: str | None) -> IdempotencyKey | None:
    """The request's key, ``None`` without the header; ``InvalidRequest`` if it is malformed."""
    values = headers.getall(HEADER, [])
    if not values:
        return None
    if len(values) > 1:
        raise InvalidRequest(f"Send one `{HEADER}` header, not {len(values)}.", param=HEADER, code="invalid_idempotency_key")
    value = values[0]
    if not _VALID.fullmatch(value):
        problem = "is empty" if not value else f"has {len(value)} characters" if len(value) > 255 else "has other characters"
        raise InvalidRequest(
            f"`{HEADER}` must be 1 to 255 visible ASCII characters (no spaces), such as a UUID; this one {problem}.",
            param=HEADER,
            code="invalid_idempotency_key",
        )
    scope = f"key:{client}" if client is not None else "anonymous"
    return IdempotencyKey(scope, hashlib.sha256(value.encode("ascii")).hexdigest())


@dataclass(frozen=True, slots=True)
class RequestIdentity:
    """What the fingerprint is made of, gathered while the request is read."""

    method: str
    path: str
    # A JSON body, as sent (empty for a multipart edit).
    body: bytes = b""
    # A multipart edit's text fields, in order.
    fields: tuple[tuple[str, str], ...] = ()
    # A multipart edit's files: (field, file name, spooled path), in order.
    files: tuple[tuple[str, str, str], ...] = ()


def fingerprint(identity: RequestIdentity) -> str:
    """sha256 (hex) of the request. Reads the spooled files: off the loop when there are any."""
    h = hashlib.sha256()

    def put(data: bytes) -> None:
        # Length-prefixed: no two different requests hash the same concatenation.
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)

    def text(values: Iterable[str]) -> None:
        for value in values:
            put(value.encode("utf-8", "surrogatepass"))

    text((identity.method, identity.path))
    put(identity.body)
    put(len(identity.fields).to_bytes(4, "big"))
    for name, value in identity.fields:
        text((name, value))
    put(len(identity.files).to_bytes(4, "big"))
    for name, filename, path in identity.files:
        text((name, filename))
        file_hash = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                file_hash.update(chunk)
        put(file_hash.digest())
    return h.hexdigest()
