"""Where a provider credential comes from, asked once per request.

Azure (Entra ID) and Google (Vertex OAuth) take short-lived bearer tokens.
Translators do no I/O, so ``token()`` must not block: a refreshing source
keeps a current token that something outside the adapter renews. A static
token from config (``api_key: ${TOKEN}``) is the one built in.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["StaticToken", "TokenSource"]


class TokenSource(Protocol):
    def token(self) -> str: ...


class StaticToken:
    """A key or token fixed in config."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def token(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "StaticToken(<redacted>)"  # never a credential in a log line
