"""Header values the gateway writes, made safe to write whatever went into them.

RFC 9110 (§5.5) leaves only visible ASCII, space and tab unambiguous in a
field value; aiohttp refuses control characters outright (a ``ValueError``
while the response is prepared, after the provider was called). Values the
gateway builds from client input (a model name routed by ``"*"``) or from
config pass through ``safe``: visible ASCII and spaces are kept, anything
else is percent-encoded as UTF-8 (``café`` → ``caf%C3%A9``), which the
official SDKs read back as the same bytes the header held.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import quote

__all__ = ["safe", "safe_headers"]

# Kept as they are: what quote() would otherwise encode but a header may hold.
_KEEP = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


def safe(value: str) -> str:
    if value.isascii() and value.isprintable():
        return value
    return quote(value, safe=_KEEP)


def safe_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {name: safe(value) for name, value in headers.items()}
