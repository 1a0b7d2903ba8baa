"""Checks on calls to URLs that came from a provider's answer.

A polling URL or a result URL is data from the upstream. Followed blindly it
would make the gateway an open fetcher (any host, any size, internal
addresses) and, for polls, hand the provider's key to whoever the URL names.
The adapter says which hosts its provider uses (``pixelgate.core.translator.Guard``);
the relay enforces it here before connecting, and the size while reading.
"""

from __future__ import annotations

from yarl import URL

from pixelgate.core.errors import UpstreamProtocolError
from pixelgate.core.translator import Guard

__all__ = ["check_url", "host_allowed"]

_LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


def host_allowed(host: str, patterns: tuple[str, ...]) -> bool:
    host = host.lower().rstrip(".")
    for pattern in patterns:
        pattern = pattern.lower()
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]) and len(host) > len(pattern) - 1:
                return True
        elif host == pattern:
            return True
    return False


def check_url(url: str, guard: Guard, provider: str) -> None:
    """Raise ``UpstreamProtocolError`` unless ``url`` may be fetched.

    Messages name the host, never the URL: result URLs are signed, and the
    signature is a credential for as long as it lives.
    """
    try:
        parsed = URL(url)
    except ValueError:
        raise UpstreamProtocolError(f"provider {provider!r} returned a URL that does not parse") from None
    host = parsed.host or ""
    if parsed.scheme != "https" and not (parsed.scheme == "http" and host in _LOOPBACK):
        raise UpstreamProtocolError(
            f"provider {provider!r} returned a {parsed.scheme or 'relative'} URL; only https is fetched"
        )
    if parsed.user is not None or parsed.password is not None:
        raise UpstreamProtocolError(f"provider {provider!r} returned a URL with credentials in it")
    if not host_allowed(host, guard.hosts):
        raise UpstreamProtocolError(
            f"provider {provider!r} returned a URL on host {host!r}, which is not among its allowed hosts "
            "(set the provider's options.fetch_hosts to allow it)"
        )
