"""CORS for browser frontends on ``/v1/*``.

Origins are allowed globally (``access.cors_origins``) and per key (a key's
own ``cors_origins`` replace the global list for that key). A preflight carries
no credentials, so it is answered for the union of every configured origin;
the actual request is then checked against its key's origins.

The allowed origin is always echoed (with ``Vary: Origin``), never ``*``, and
``Access-Control-Allow-Credentials`` is never sent: keys travel in the
``Authorization`` header, which CORS allows by name, not in cookies.
Nothing configured: no CORS headers at all (the same-origin playground needs none).
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

__all__ = ["CorsPolicy", "origin_set"]

ALLOW_METHODS = "GET, POST, OPTIONS"
ALLOW_HEADERS = ("authorization", "content-type", "api-key", "x-request-id", "idempotency-key")
# Sent by the official SDKs from a browser (dangerouslyAllowBrowser).
_ALLOWED_PREFIXES = ("x-stainless-", "openai-")
EXPOSE_HEADERS = (
    "x-request-id, x-upstream-request-id, retry-after, retry-after-ms, x-should-retry, "
    "x-ratelimit-limit-requests, x-ratelimit-remaining-requests, x-ratelimit-reset-requests, "
    "x-ratelimit-limit-images, x-ratelimit-remaining-images, x-ratelimit-reset-images, "
    "x-pixelgate-provider, x-pixelgate-upstream-model, x-pixelgate-attempts, x-pixelgate-attempt-log, "
    "x-pixelgate-dropped-params, idempotent-replayed"
)
_ANY = "*"


def _normalise(origin: str) -> str:
    return origin.rstrip("/").lower()


def origin_set(origins: Iterable[str]) -> frozenset[str]:
    """Configured origins in the form ``allowed`` compares against."""
    return frozenset(_normalise(o) for o in origins)


class CorsPolicy:
    def __init__(self, global_origins: Iterable[str], key_origins: Iterable[Iterable[str] | None], max_age: int) -> None:
        self._global = origin_set(global_origins)
        union = set(self._global)
        for origins in key_origins:
            union.update(_normalise(o) for o in origins or ())
        self._union = frozenset(union)
        self._max_age = str(max_age)

    @property
    def enabled(self) -> bool:
        return bool(self._union)

    @staticmethod
    def cross_origin(origin: str, host: str) -> bool:
        """Browsers send ``Origin`` on same-origin POSTs too (the playground):
        an origin naming the host the request came to is not cross-origin."""
        return urlsplit(origin).netloc.lower() != host.lower()

    @staticmethod
    def _matches(origin: str, allowed: frozenset[str]) -> bool:
        return _ANY in allowed or _normalise(origin) in allowed

    def preflight_allowed(self, origin: str) -> bool:
        return self._matches(origin, self._union)

    def allowed(self, origin: str, key_origins: frozenset[str] | None) -> bool:
        """For an actual request: the key's own origins (``origin_set``), else the global ones."""
        return self._matches(origin, self._global if key_origins is None else key_origins)

    def preflight_headers(self, origin: str, requested: str | None) -> dict[str, str]:
        headers = list(ALLOW_HEADERS)
        for name in (requested or "").split(","):
            name = name.strip().lower()
            if name and name not in headers and name.startswith(_ALLOWED_PREFIXES):
                headers.append(name)
        return {
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Methods": ALLOW_METHODS,
            "Access-Control-Allow-Headers": ", ".join(headers),
            "Access-Control-Max-Age": self._max_age,
            "Vary": "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
        }

    @staticmethod
    def response_headers(origin: str) -> dict[str, str]:
        return {"Access-Control-Allow-Origin": origin, "Access-Control-Expose-Headers": EXPOSE_HEADERS, "Vary": "Origin"}
