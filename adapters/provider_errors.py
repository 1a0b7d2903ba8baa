"""Provider failures in OpenAI's terms, the same way for every adapter.

An adapter reads its provider's error body (each has its own shape) into a
message and, where it can tell, a moderation verdict; these helpers pick the
status, ``type`` and ``code`` a client of the OpenAI API expects, keep the
provider's own message, and keep ``Retry-After`` so clients and the router
can back off.
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from pixelgate.adapters.openai_wire import FORWARDED_ERROR_HEADERS, forward_headers
from pixelgate.core.errors import GatewayError, UpstreamError, UpstreamFailure, UpstreamProtocolError

__all__ = ["auth_failed", "error_message", "json_media", "malformed", "moderation_blocked", "provider_error", "unexpected_status"]

# OpenAI's own values for a refused prompt or image.
_MODERATION_TYPE = "image_generation_user_error"
_MAX_MESSAGE = 2000


def _relayed(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in forward_headers(headers, FORWARDED_ERROR_HEADERS).items() if k != "x-upstream-request-id"}


def auth_failed(provider: str, status: int) -> GatewayError:
    # The provider rejected the *gateway's* credentials: the client cannot fix
    # it, and the provider's message may echo part of the key.
    return UpstreamFailure(
        f"Provider {provider!r} rejected the gateway's credentials (HTTP {status}); "
        "the gateway operator must fix the provider configuration.",
        code="upstream_auth_failed",
    )


def json_media(provider: str, status: int, headers: Mapping[str, str], expected: str = "JSON") -> None:
    """Refuse a success that is not JSON (an HTML page from a proxy in front of
    the provider, say): not an answer to relay as a success."""
    media = headers.get("Content-Type", "").partition(";")[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise UpstreamProtocolError(
            f"provider {provider!r} answered HTTP {status} with Content-Type {media or 'none'!r}, not {expected}"
        )


def malformed(provider: str, exc: Exception) -> UpstreamProtocolError:
    return UpstreamProtocolError(f"provider {provider!r} answered with malformed JSON: {exc}")


def unexpected_status(provider: str, status: int) -> GatewayError:
    # A redirect (or another non-error, non-success status) from an API call:
    # never followed there, and never passed on as the client's status.
    return UpstreamProtocolError(f"provider {provider!r} answered HTTP {status}, neither a success nor an error")


def moderation_blocked(provider: str, message: str, headers: Mapping[str, str] | None = None) -> GatewayError:
    return UpstreamError(
        f"{message[:_MAX_MESSAGE]} (provider {provider!r})",
        status=400,
        type=_MODERATION_TYPE,
        code="moderation_blocked",
        headers=_relayed(headers or {}),
    )


def provider_error(
    provider: str,
    status: int,
    headers: Mapping[str, str],
    message: str | None,
    *,
    code: str | None = None,
    param: str | None = None,
) -> GatewayError:
    """An HTTP error status from a provider, with its message if it sent one."""
    if status < 400:
        return unexpected_status(provider, status)
    if status in (401, 403):
        return auth_failed(provider, status)
    text = f"{(message or f'HTTP {status}')[:_MAX_MESSAGE]} (provider {provider!r})"
    relayed = _relayed(headers)
    if status == 429:
        return UpstreamError(text, status=429, type="rate_limit_error", code="rate_limit_exceeded", headers=relayed)
    if status == 402:
        # Out of credits at the provider: the operator's problem, and another
        # provider may still answer, so it fails over like a 5xx.
        return UpstreamError(text, status=502, code="upstream_quota_exhausted", headers=relayed)
    if status >= 500 or status == 408:
        return UpstreamError(text, status=status, code="upstream_error", headers=relayed)
    # 400, 404, 413, 422: the request as translated was refused.
    return UpstreamError(
        text,
        status=400 if status == 422 else status,
        type="invalid_request_error",
        param=param,
        code=code or "invalid_request",
        headers=relayed,
    )


class _Detail(msgspec.Struct):
    msg: str | None = None
    message: str | None = None


class _Nested(msgspec.Struct):
    message: str | None = None
    status: str | None = None
    code: str | int | None = None


class _AnyError(msgspec.Struct):
    # The shapes providers use: {"error":{"message"}}, {"error":"…"},
    # {"message"}, {"detail":"…"|[{"msg"}]}, {"name","errors":[…]}.
    error: _Nested | str | None = None
    message: str | None = None
    detail: str | list[_Detail] | None = None
    errors: list[str] | None = None
    name: str | None = None


_any_error = msgspec.json.Decoder(_AnyError)


def error_message(body: bytes) -> str | None:
    """The provider's own words from an error body of any common shape."""
    try:
        doc = _any_error.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    if isinstance(doc.error, _Nested) and doc.error.message:
        return doc.error.message
    if isinstance(doc.error, str):
        return doc.error
    if doc.errors:
        return "; ".join(doc.errors)
    if isinstance(doc.detail, str):
        return doc.detail
    if isinstance(doc.detail, list):
        return "; ".join(d.msg or d.message or "" for d in doc.detail) or None
    return doc.message
