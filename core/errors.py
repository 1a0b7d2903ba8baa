"""Errors the gateway reports to clients, and the one place they are rendered.

Every failure is translated at a boundary into one of these, then rendered here
as the OpenAI error envelope ``{"error": {"message", "type", "param", "code"}}``:
as an HTTP response before the first byte of a response was sent, or as an
``event: error`` frame after it::

    GatewayError                    (status, type, code, param, message)
    ├── InvalidRequest              400  the client's request is wrong
    ├── AuthenticationFailed        401  no, malformed, wrong or revoked gateway key
    ├── PermissionDenied            403  model (or browser origin) not allowed for the key
    ├── ModelNotFound               404  no configured model of that name
    ├── PayloadTooLarge             413  body over the configured limit
    ├── RateLimited                 429  a per-key limit (requests, images, streams)
    │   └── QuotaExceeded           429  the key's spend budget for the period
    ├── LimitsUnavailable           503  the limit backend is down (fail closed)
    ├── GatewayShuttingDown         503  stopped by shutdown's grace period
    ├── NoProviderAvailable         503  every deployment's circuit is open
    └── UpstreamFailure             5xx  the provider could not answer
        ├── UpstreamUnreachable     502  connect error, reset before headers
        ├── UpstreamTimeout         504  connect / first byte / idle / total
        └── UpstreamProtocolError   502  malformed or truncated upstream answer
    UpstreamError                   the provider answered with an error; its
                                    status and envelope are relayed as sent

Messages never contain provider credentials: they are built from the gateway's
own words or from an upstream error body that has been checked (see adapters).
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

__all__ = [
    "AuthenticationFailed",
    "ErrorBody",
    "ErrorEnvelope",
    "GatewayError",
    "GatewayShuttingDown",
    "InvalidRequest",
    "LimitsUnavailable",
    "ModelNotFound",
    "NoProviderAvailable",
    "PayloadTooLarge",
    "PermissionDenied",
    "QuotaExceeded",
    "RateLimited",
    "StorageUnavailable",
    "UpstreamError",
    "UpstreamFailure",
    "UpstreamProtocolError",
    "UpstreamTimeout",
    "UpstreamUnreachable",
    "error_body_json",
    "error_event",
    "render_error",
]


class ErrorBody(msgspec.Struct, omit_defaults=False):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorEnvelope(msgspec.Struct):
    error: ErrorBody


class _StreamError(msgspec.Struct, tag_field="type", tag="error"):
    error: ErrorBody


_encoder = msgspec.json.Encoder()


class GatewayError(Exception):
    """A failure with an HTTP status and an OpenAI-shaped error body."""

    status: int = 500
    type: str = "server_error"
    code: str | None = None
    # Metric label for the failure; a fixed set (see metrics.ERROR_TYPES).
    error_type: str = "internal"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.headers: dict[str, str] = dict(headers or {})

    def body(self) -> ErrorBody:
        return ErrorBody(message=self.message, type=self.type, param=self.param, code=self.code)

    def envelope_bytes(self) -> bytes:
        return _encoder.encode(ErrorEnvelope(self.body()))


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"
    error_type = "invalid_request"


class ModelNotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"
    error_type = "invalid_request"


class PayloadTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"
    error_type = "invalid_request"


class GatewayShuttingDown(GatewayError):
    """The gateway stopped this request because it is shutting down."""

    status = 503
    type = "server_error"
    code = "gateway_shutting_down"
    error_type = "shutdown"


class NoProviderAvailable(GatewayError):
    """Every deployment of the model is behind an open circuit breaker."""

    status = 503
    type = "server_error"
    code = "no_provider_available"
    error_type = "circuit_open"


class UpstreamFailure(GatewayError):
    """The provider could not produce an answer; a client retry may succeed."""

    status = 502
    type = "upstream_error"
    code = "upstream_error"
    error_type = "protocol"


class UpstreamUnreachable(UpstreamFailure):
    code = "upstream_unreachable"
    error_type = "connect"


class UpstreamTimeout(UpstreamFailure):
    status = 504
    code = "upstream_timeout"
    error_type = "timeout"


class UpstreamProtocolError(UpstreamFailure):
    code = "upstream_protocol_error"
    error_type = "protocol"


class UpstreamError(GatewayError):
    """The provider answered with an error; relayed with its own status.

    ``raw`` is the upstream's envelope when it was a well-formed OpenAI error
    body: those bytes are relayed unchanged so fields such as
    ``moderation_details`` survive. Otherwise the gateway's own envelope is used.
    """

    type = "upstream_error"

    def __init__(
        self,
        message: str,
        *,
        status: int,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        raw: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, param=param, code=code, status=status, headers=headers)
        if type is not None:
            self.type = type
        self.raw = raw
        if status == 429:
            self.error_type = "rate_limited"
        elif code in ("moderation_blocked", "content_policy_violation", "content_filter"):
            self.error_type = "moderation"
        elif status >= 500:
            self.error_type = "status_5xx"
        else:
            self.error_type = "status_4xx"

    def envelope_bytes(self) -> bytes:
        return self.raw if self.raw is not None else super().envelope_bytes()


def render_error(err: GatewayError) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of the HTTP response for ``err``."""
    headers = {"Content-Type": "application/json", **err.headers}
    return err.status, headers, err.envelope_bytes()


def error_body_json(err: GatewayError) -> bytes:
    """``{"message", "type", "param", "code"}`` of ``err`` as JSON."""
    return _encoder.encode(err.body())


def error_event(err: GatewayError) -> bytes:
    """The ``event: error`` frame that ends a stream that has already started.

    Both official SDKs raise ``APIError`` on a data object with a top-level
    ``error`` key, so the client sees the failure instead of a silent end.
    """
    data = _encoder.encode(_StreamError(err.body()))
    return b"event: error\ndata: " + data + b"\n\n"


# Access control (proxy.access): the gateway's own keys and limits.


class AuthenticationFailed(GatewayError):
    """No gateway key, or one that is malformed, wrong or revoked. The message
    never repeats any part of the key that was presented."""

    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"
    error_type = "unauthorized"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message, code=code, headers={"WWW-Authenticate": 'Bearer realm="pixelgate"'})


class PermissionDenied(GatewayError):
    status = 403
    type = "invalid_request_error"
    code = "model_not_allowed"
    error_type = "unauthorized"


class RateLimited(GatewayError):
    """A per-key limit; ``code`` names it, ``Retry-After`` says when to retry."""

    status = 429
    type = "rate_limit_exceeded"
    code = "rate_limit_exceeded"
    error_type = "over_limit"


class QuotaExceeded(RateLimited):
    """The key's spend budget for the period is spent (OpenAI's own shape)."""

    type = "insufficient_quota"
    code = "insufficient_quota"


class LimitsUnavailable(GatewayError):
    """The limit backend (Redis) cannot be reached and access fails closed."""

    status = 503
    type = "server_error"
    code = "limits_unavailable"
    error_type = "limits_unavailable"


class StorageUnavailable(GatewayError):
    """The image store (``storage``) failed while the gateway wrote an image or a job's result into it."""

    status = 503
    type = "server_error"
    code = "storage_unavailable"
    error_type = "storage_unavailable"
