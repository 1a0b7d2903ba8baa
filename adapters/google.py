"""What the Google adapters (``gemini``, ``imagen``) share: URL forms, credentials, errors.

Both model families are reached in one of two forms, chosen by ``options.api``:

- ``gemini`` (the Gemini Developer API, the default):
  ``{base}/models/{model}:{method}`` with ``base`` =
  ``https://generativelanguage.googleapis.com/v1beta`` and the key in
  ``x-goog-api-key``.
- ``vertex``:
  ``{base}/projects/{project}/locations/{location}/publishers/google/models/{model}:{method}``
  with ``base`` = ``https://{location}-aiplatform.googleapis.com/v1``
  (``https://aiplatform.googleapis.com/v1`` for ``location: global``) and
  ``Authorization: Bearer <OAuth access token>``.

A configured ``base_url`` replaces ``base`` (a regional or private endpoint,
a test server); it includes the API version, as the defaults do.

Vertex tokens come from a ``TokenSource``. ``StaticToken`` (the provider's
``api_key``, e.g. ``${VERTEX_TOKEN}``) is enough to start; a refreshing
source (google-auth credentials) must refresh in the background and hand out
its cached token, because translators do no I/O. Assign it to the adapter's
``target.token_source``.

Errors come as a ``google.rpc.Status`` envelope,
``{"error":{"code":429,"message":"…","status":"RESOURCE_EXHAUSTED","details":[…]}}``.
The message is kept; an ``ErrorInfo`` reason ``API_KEY_INVALID`` (the Gemini
API's 400 for a bad key) is the gateway's credentials failing; a ``RetryInfo`` detail becomes ``Retry-After`` when the
response has none; a 400 saying the prompt violates "Google's Responsible AI
practices" (Imagen, Veo and Vertex do this for refused prompts) is
``moderation_blocked``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Literal

import msgspec

from pixelgate.adapters.base import check_base_url
from pixelgate.adapters.params import Policy
from pixelgate.adapters.provider_errors import auth_failed, error_message, moderation_blocked, provider_error
from pixelgate.adapters.tokens import StaticToken, TokenSource
from pixelgate.core.errors import GatewayError
from pixelgate.core.translator import ProviderSettings, UpstreamRequest
from pixelgate.core.upload import StreamedBody

__all__ = [
    "GoogleOptions",
    "GoogleTarget",
    "StaticToken",
    "TokenSource",
    "check_google",
    "format_of",
    "google_error",
    "image_tier",
]

GEMINI_URL = "https://generativelanguage.googleapis.com/v1beta"

# Project ids (also "domain.com:project") and region names: nothing that could
# change the URL's path or host.
_PROJECT = re.compile(r"^[a-z][a-z0-9.:-]{1,100}$")
_LOCATION = re.compile(r"^[a-z0-9-]{1,40}$")


class GoogleOptions(msgspec.Struct, forbid_unknown_fields=True):
    unsupported: Policy = "reject"
    api: Literal["gemini", "vertex"] = "gemini"
    # Vertex only: the Google Cloud project and region (or "global").
    project: str | None = None
    location: str = "us-central1"


def check_google(settings: ProviderSettings) -> None:
    options = settings.options
    assert isinstance(options, GoogleOptions)
    check_base_url(settings.base_url)
    if not settings.api_key:
        what = "the Gemini API key" if options.api == "gemini" else "a Vertex OAuth access token"
        raise ValueError(f"api_key: required ({what})")
    if options.api == "vertex":
        if options.project is None:
            raise ValueError("options.project: required when options.api is vertex")
        if not _PROJECT.match(options.project):
            raise ValueError(f"options.project: not a Google Cloud project id: {options.project!r}")
        if not _LOCATION.match(options.location):
            raise ValueError(f"options.location: not a Google Cloud location: {options.location!r}")


class GoogleTarget:
    """The URL and credentials of one configured Google provider."""

    __slots__ = ("_api_key", "_base", "_headers", "_prefix", "api", "token_source")

    def __init__(self, settings: ProviderSettings, options: GoogleOptions) -> None:
        base_url = settings.base_url
        self.api = options.api
        self._api_key = settings.api_key or ""
        self._headers = {"Content-Type": "application/json", **settings.headers}
        # Vertex credentials; replace for tokens that expire.
        self.token_source: TokenSource = StaticToken(self._api_key)
        if options.api == "gemini":
            self._base = (base_url or GEMINI_URL).rstrip("/")
            self._prefix = "/models/"
        else:
            loc = options.location
            host = "aiplatform.googleapis.com" if loc == "global" else f"{loc}-aiplatform.googleapis.com"
            self._base = (base_url or f"https://{host}/v1").rstrip("/")
            self._prefix = f"/projects/{options.project}/locations/{loc}/publishers/google/models/"

    def call(self, model: str, method: str, body: bytes | StreamedBody) -> UpstreamRequest:
        """``POST`` to ``model:method`` (``generateContent``, ``predict``) with the credentials.

        ``body`` is a ``StreamedBody`` when it carries uploaded images (edits)."""
        name = model.removeprefix("models/").removeprefix("publishers/google/models/")
        headers = dict(self._headers)
        if self.api == "gemini":
            headers["x-goog-api-key"] = self._api_key
        else:
            headers["Authorization"] = f"Bearer {self.token_source.token()}"
        return UpstreamRequest("POST", f"{self._base}{self._prefix}{name}:{method}", headers, body)


def image_tier(width: int, height: int, tiers: tuple[str, ...]) -> str | None:
    """The size tier (``"2K"``, ``"4K"``) for a requested size, or None for the 1K default.

    Tiers name the long edge (1K ≈ 1024 px). A request is given the nearest
    tier, ties going to the smaller one, so OpenAI's 1536-px sizes stay 1K
    and the provider's default is never sent explicitly.
    """
    edge = max(width, height)
    best = "1K"
    for tier in tiers:
        if edge > int(tier[:-1]) * 1024 * 3 // 4:  # past the midpoint below the tier
            best = tier
    return None if best == "1K" else best


_FORMATS = {"image/png": "png", "image/jpeg": "jpeg", "image/webp": "webp"}


def format_of(mime: str | None) -> str | None:
    """OpenAI's ``output_format`` for an image MIME type."""
    return _FORMATS.get((mime or "").partition(";")[0].strip().lower())


class _Detail(msgspec.Struct):
    type: str = msgspec.field(default="", name="@type")
    retryDelay: str | None = None  # RetryInfo
    reason: str | None = None  # ErrorInfo


class _Status(msgspec.Struct):
    message: str | None = None
    status: str | None = None
    details: list[_Detail] = []


class _Envelope(msgspec.Struct):
    error: _Status


_envelope = msgspec.json.Decoder(_Envelope)
_BAD_KEY = frozenset({"API_KEY_INVALID", "API_KEY_EXPIRED", "API_KEY_SERVICE_BLOCKED"})
_REFUSED = re.compile(r"responsible ai practices", re.IGNORECASE)


def _retry_delay(details: list[_Detail]) -> str | None:
    """Whole seconds from a ``google.rpc.RetryInfo`` detail (``"17s"``, ``"0.5s"``)."""
    for d in details:
        if d.type.endswith("google.rpc.RetryInfo") and d.retryDelay and d.retryDelay.endswith("s"):
            try:
                return str(max(1, math.ceil(float(d.retryDelay[:-1]))))
            except ValueError:
                return None
    return None


def google_error(provider: str, status: int, headers: Mapping[str, str], body: bytes) -> GatewayError:
    """A Google error response in OpenAI's terms."""
    try:
        rpc: _Status | None = _envelope.decode(body).error
    except (msgspec.DecodeError, msgspec.ValidationError):
        rpc = None
    if rpc is None or not rpc.message:
        return provider_error(provider, status, headers, error_message(body))
    if any(d.reason in _BAD_KEY for d in rpc.details):
        # The Gemini API answers a bad key with 400 INVALID_ARGUMENT.
        return auth_failed(provider, status)
    message = f"{rpc.status}: {rpc.message}" if rpc.status else rpc.message
    if status == 400 and _REFUSED.search(rpc.message):
        return moderation_blocked(provider, message, headers)
    retry_known = any(k.lower() == "retry-after" for k in headers)
    if status == 429 and not retry_known and (delay := _retry_delay(rpc.details)) is not None:
        headers = {**headers, "Retry-After": delay}
    return provider_error(provider, status, headers, message)
