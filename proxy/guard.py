"""Checks on calls to URLs that came from a provider's answer.

A polling URL or a result URL is data from the upstream. Followed blindly it
would make the gateway an open fetcher (any host, any size, internal
addresses) and, for polls, hand the provider's key to whoever the URL names.
The adapter says which hosts its provider uses (``pixelgate.core.translator.Guard``);
the relay enforces it here before connecting, and the size while reading.
"""

from __future__ import annotations

import ipaddress

from yarl import URL

from pixelgate.core.errors import InvalidRequest, UpstreamProtocolError
from pixelgate.core.translator import Guard

__all__ = ["check_client_url", "check_url", "host_allowed"]

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


# Names that only mean something inside a network (RFC 6761, 6762, 8375 and common practice).
_INTERNAL_SUFFIXES = (".localhost", ".local", ".internal", ".home.arpa", ".lan", ".intranet")


def check_client_url(url: str, param: str) -> None:
    """``InvalidRequest`` unless a URL a client gave may be fetched for it.

    Only https, no credentials, and never an address inside a network:
    loopback, private, link-local (cloud metadata), shared or reserved ranges,
    by literal IP or by a name that can only resolve inside one. (A public
    name is resolved by whoever fetches it; a name that resolves to a private
    address is the fetcher's to refuse as well.)
    """
    try:
        parsed = URL(url)
    except ValueError:
        raise InvalidRequest(f"`{param}` is not a URL.", param=param, code="invalid_image_url") from None
    host = (parsed.host or "").lower().rstrip(".")
    if parsed.scheme != "https" or not host:
        raise InvalidRequest(f"`{param}` must be an https:// or data: URL.", param=param, code="invalid_image_url")
    if parsed.user is not None or parsed.password is not None:
        raise InvalidRequest(f"`{param}` must not carry credentials.", param=param, code="invalid_image_url")
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        address = None
    if address is not None:
        inside = not address.is_global or address.is_multicast
    else:
        inside = host == "localhost" or host.endswith(_INTERNAL_SUFFIXES) or "." not in host
    if inside:
        raise InvalidRequest(
            f"`{param}` points inside a private network (host {host!r}); the gateway fetches only public hosts for a client.",
            param=param,
            code="invalid_image_url",
        )
