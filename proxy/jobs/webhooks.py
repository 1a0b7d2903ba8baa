"""Completion webhooks for async image jobs, signed as Standard Webhooks describes.

A client that submits a job with a ``webhook_url`` is told when it ends by a POST
of a small JSON event (``payload``), signed the way https://www.standardwebhooks.com
specifies, so any receiver with a Standard Webhooks library can check it::

    webhook-id:        the message id: the same on every retry (the receiver dedupes on it)
    webhook-timestamp: integer seconds, new per attempt (the receiver bounds replays with it)
    webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}"> [ v1,... ]

Design, and why:

- **Signing** is the maintained ``standardwebhooks`` package, not our own HMAC code:
  the signed string, the encodings and the secret format are its business, and a
  receiver's library is the same code. It signs ``str``; our bodies are UTF-8 JSON
  we encoded ourselves (``payload``), so decoding and its re-encoding give back the
  exact bytes sent. Secrets are checked strictly first (``check_webhook_config``):
  the library decodes leniently, dropping characters that are not base64, so a
  mistyped or URL-safe secret would sign with a key no receiver has.
- **Rotation**: every listed secret signs, the signatures space-separated as the
  spec allows, so a receiver that knows either the old or the new one accepts the
  message during the change-over.
- **Where it may go**: only https, no credentials, never a private, loopback,
  link-local (cloud metadata) or reserved address nor an internal name
  (``check_webhook_url``, built on ``proxy.guard.check_client_url``). A public name
  can still resolve to a private address (or be rebound to one after the check), so
  the sender's resolver drops non-public addresses at connect time, and redirects
  are never followed (a 3xx could point anywhere). ``allow_private_hosts`` lifts the
  address rules, for tests and receivers inside one's own network.
- **Delivery**: attempts with exponential backoff and full jitter (so receivers that
  come back are not hit by every sender at once), ``Retry-After`` honoured up to the
  cap. Retried: connection errors, timeouts, 5xx, 408/409/425/429. Any other status
  is the receiver's answer and final: 2xx delivered, 3xx and other 4xx refused.
  The response body is never read: the status says all, and an unread body cannot
  cost memory or time.
- **Background**: ``send`` schedules a delivery as a task tracked by the sender
  (no module state), at most ``max_concurrent`` at once. Deliveries live in this
  process only: a caller that must survive a restart awaits ``deliver`` itself and
  records its result. ``close(grace)`` lets attempts in flight finish for up to
  ``grace`` seconds, starts no retry, then cancels what is left.
- **Logs** name a delivery by its message id and the receiver's origin (scheme,
  host, port): never the path or query, which often carry a token (Slack- and
  Discord-style hook URLs do), and never a secret. Results reach ``on_result`` as
  ``"delivered"``, ``"retried"`` or ``"failed"``: a bounded set, for metric labels.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import email.utils
import ipaddress
import logging
import random
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Final, Literal

import aiohttp
import msgspec
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from msgspec import Meta
from standardwebhooks import Webhook
from yarl import URL

from pixelgate.core.errors import InvalidRequest
from pixelgate.proxy.guard import check_client_url

__all__ = [
    "EVENT_CANCELLED",
    "EVENT_COMPLETED",
    "EVENT_FAILED",
    "MAX_PAYLOAD_BYTES",
    "MAX_URL_LENGTH",
    "USER_AGENT",
    "Event",
    "NonPublicAddress",
    "Result",
    "WebhookConfig",
    "WebhookSender",
    "check_webhook_config",
    "check_webhook_url",
    "payload",
]

log = logging.getLogger("pixelgate.webhooks")

EVENT_COMPLETED: Final = "image.job.completed"
EVENT_FAILED: Final = "image.job.failed"
EVENT_CANCELLED: Final = "image.job.cancelled"

USER_AGENT: Final = "pixelgate-webhooks"
MAX_URL_LENGTH: Final = 2048
# An event says what happened and where to look (the job's id, status, result URLs);
# it is not a way to ship images: each retry would resend them to the receiver.
MAX_PAYLOAD_BYTES: Final = 256 * 1024
# The spec's secret: "whsec_" and the base64 of 24 to 64 random bytes; shorter is too weak.
MIN_SECRET_BYTES: Final = 24
_SECRET_PREFIX: Final = "whsec_"
# Dot-separated, as the spec's examples (``user.created``); also keeps odd strings out of logs.
_EVENT_TYPE = re.compile(r"[a-z0-9_]+(?:\.[a-z0-9_]+)+")
# A header value, one token: printable ASCII without spaces (ids are ours, e.g. the job id).
_MSG_ID = re.compile(r"[\x21-\x7e]{1,256}")
# Not the receiver's final word: a timeout, a conflict while it catches up, "too early", throttling.
_RETRY_STATUSES: Final = frozenset({408, 409, 425, 429})

Result = Literal["delivered", "retried", "failed"]


class WebhookConfig(msgspec.Struct, forbid_unknown_fields=True):
    # whsec_<base64>; all sign (rotation: add the new one, drop the old one once
    # receivers have switched). Checked by check_webhook_config.
    secrets: list[str]
    # Attempts in all, the first included; the gaps grow as backoff_base * 2**n, jittered.
    max_attempts: Annotated[int, Meta(ge=1, le=20)] = 6
    backoff_base: Annotated[float, Meta(ge=0)] = 2.0
    # Longest gap between two attempts, a receiver's Retry-After included.
    backoff_max: Annotated[float, Meta(ge=0)] = 300.0
    # One attempt: connect, send, and the receiver's status line and headers.
    timeout: Annotated[float, Meta(gt=0)] = 10.0
    # http and private or loopback addresses too: for tests and receivers inside one's network.
    allow_private_hosts: bool = False
    # Deliveries in flight at once (and connections open); more wait their turn.
    max_concurrent: Annotated[int, Meta(ge=1, le=10_000)] = 32

    def __repr__(self) -> str:
        # A config logged or shown in a traceback must not print the secrets.
        return (
            f"WebhookConfig(secrets=<{len(self.secrets)} hidden>, max_attempts={self.max_attempts}, "
            f"backoff_base={self.backoff_base}, backoff_max={self.backoff_max}, timeout={self.timeout}, "
            f"allow_private_hosts={self.allow_private_hosts}, max_concurrent={self.max_concurrent})"
        )


def _secret_key(secret: str) -> bytes | None:
    """The key a receiver decodes from ``secret``, or None if it is not ``whsec_`` and strict base64."""
    if not secret.startswith(_SECRET_PREFIX):
        return None
    encoded = secret[len(_SECRET_PREFIX) :]
    try:
        # Padding is optional in the wild; the characters are not.
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None
    # What standardwebhooks will sign with (it decodes leniently): must be the same key.
    if base64.b64decode(encoded + "==") != key:
        return None
    return key


def check_webhook_config(config: WebhookConfig) -> None:
    """What the types cannot say. Raises ``ValueError("secrets: ...")`` (never showing a secret)."""
    # The numeric bounds are the Meta annotations: applied again here, for a config built in code.
    try:
        msgspec.convert(msgspec.structs.asdict(config), WebhookConfig)
    except msgspec.ValidationError as exc:
        text = str(exc)
        where = re.search(r" - at `\$\.([^`]*)`$", text)
        raise ValueError(f"{where.group(1)}: {text[: where.start()]}" if where else text) from None
    if not config.secrets:
        raise ValueError("secrets: at least one is needed, e.g. whsec_ followed by `openssl rand -base64 32`")
    seen: set[bytes] = set()
    for i, secret in enumerate(config.secrets):
        key = _secret_key(secret)
        if key is None:
            raise ValueError(f"secrets[{i}]: not whsec_ followed by standard base64")
        if len(key) < MIN_SECRET_BYTES:
            raise ValueError(f"secrets[{i}]: {len(key)} bytes; at least {MIN_SECRET_BYTES} random bytes are needed")
        if key in seen:
            raise ValueError(f"secrets[{i}]: the same secret is listed twice")
        seen.add(key)


def _public_ip(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Reachable on the internet only, IPv4 embedded in IPv6 judged as the IPv4 it carries."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return _public_ip(embedded)
    return address.is_global and not address.is_multicast


# RFC 6052's well-known NAT64 prefix: the last 32 bits are an IPv4 address, routed to it.
_NAT64: Final = ipaddress.IPv6Network("64:ff9b::/96")


def _refuse(message: str) -> InvalidRequest:
    return InvalidRequest(message, param="webhook_url", code="invalid_webhook_url")


def check_webhook_url(url: str, config: WebhookConfig) -> None:
    """``InvalidRequest`` (param ``webhook_url``, code ``invalid_webhook_url``) unless ``url`` may receive webhooks.

    Messages name the host at most, never the URL: its path or query may be a token.
    """
    if len(url) > MAX_URL_LENGTH:
        raise _refuse(f"`webhook_url` is longer than {MAX_URL_LENGTH} characters.")
    # Spaces and control characters have no place in a URL (and CR/LF none near a request line).
    if any(c <= " " or c == "\x7f" for c in url):
        raise _refuse("`webhook_url` contains spaces or control characters.")
    try:
        # yarl refuses a port out of range here, and a host it cannot encode.
        parsed = URL(url)
        host = (parsed.host or "").lower().rstrip(".")
    except ValueError:
        raise _refuse("`webhook_url` is not a URL.") from None
    schemes = ("http", "https") if config.allow_private_hosts else ("https",)
    if parsed.scheme not in schemes or not host:
        raise _refuse(f"`webhook_url` must be an absolute {' or '.join(s + '://' for s in schemes)} URL.")
    if parsed.user is not None or parsed.password is not None:
        raise _refuse("`webhook_url` must not carry credentials.")
    if config.allow_private_hosts:
        return
    # The guard's rules for client-given URLs (the same words for every URL a client gives);
    # its message speaks of fetching, so ours replaces it.
    try:
        check_client_url(url, "webhook_url")
    except InvalidRequest:
        raise _refuse(f"`webhook_url` must name a public host; {host!r} is inside a private network or reserved.") from None
    # Stricter than the guard: IPv4 inside IPv6 (mapped, 6to4, NAT64), and numeric forms such
    # as 127.1 or 0x7f.1 that are not addresses to ipaddress but are to a resolver (no
    # top-level domain is all digits, RFC 3696).
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        last = host.rsplit(".", 1)[-1]
        if last.isdigit() or last.startswith("0x"):
            raise _refuse(f"`webhook_url` names a numeric host {host!r} that is not an IP address.") from None
    else:
        if not _public_ip(address):
            raise _refuse(f"`webhook_url` must name a public host; {host!r} is inside a private network or reserved.")


class Event(msgspec.Struct, frozen=True):
    """The body of every webhook, the shape the spec recommends."""

    type: str
    # RFC 3339, UTC: when the event happened (the same on every retry, unlike webhook-timestamp).
    timestamp: str
    data: object


_encoder: Final = msgspec.json.Encoder()


def _rfc3339(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def payload(event_type: str, data: object, timestamp: float) -> bytes:
    """The JSON body ``{"type", "timestamp", "data"}``, UTF-8.

    ``data`` is anything msgspec encodes (a Struct, a dict), or ``bytes`` holding
    its JSON already encoded (checked to be JSON, then embedded as it is).
    """
    if not _EVENT_TYPE.fullmatch(event_type):
        raise ValueError(f"event type {event_type!r} is not dot-separated lowercase words")
    if isinstance(data, bytes | bytearray | memoryview):
        raw = bytes(data)
        msgspec.json.decode(raw)  # a malformed body would be signed and sent as if valid
        data = msgspec.Raw(raw)
    body = _encoder.encode(Event(type=event_type, timestamp=_rfc3339(timestamp), data=data))
    if len(body) > MAX_PAYLOAD_BYTES:
        raise ValueError(f"webhook payload of {len(body)} bytes is over {MAX_PAYLOAD_BYTES}: send ids and URLs, not images")
    return body


class NonPublicAddress(OSError):
    """A receiver's name resolved to no public address."""


class _PublicResolver(AbstractResolver):
    """Resolves as ``inner`` does, keeping only public addresses.

    The URL was checked by name; this checks the addresses actually connected to, so a
    public name that resolves (or is rebound) to 169.254.169.254 or 10.x goes nowhere.
    aiohttp wraps the error in ``ClientConnectorDNSError``; the sender does not retry it.
    """

    def __init__(self, inner: AbstractResolver) -> None:
        self._inner = inner

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        public = [r for r in results if _public_ip(ipaddress.ip_address(r["host"]))]
        if not public:
            raise NonPublicAddress(f"{host} resolves to no public address")
        return public

    async def close(self) -> None:
        await self._inner.close()


def _origin(url: str) -> str:
    """What the logs show of a receiver: scheme, host and port (see the module docstring)."""
    try:
        return str(URL(url).origin())
    except ValueError:
        return "<not a URL>"


def _retry_after(value: str | None, cap: float) -> float | None:
    """Seconds a receiver asked to wait (seconds or an HTTP date), at most ``cap``; None if absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        seconds = float(value)
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - time.time()
    return min(max(seconds, 0.0), cap)


@dataclass(frozen=True, slots=True)
class _Outcome:
    ok: bool
    retry: bool
    # For the logs: "HTTP 503", "timeout", an exception class; never a URL.
    reason: str
    # The receiver's Retry-After, if it sent one.
    wait: float | None = None


class WebhookSender:
    """Signs and delivers webhooks over its own HTTP session (see the module docstring).

    ``start()`` before use, ``close(grace)`` at shutdown. ``resolver`` replaces the
    system's name resolution (filtered to public addresses all the same unless
    ``allow_private_hosts``); tests use it to make a public name resolve to loopback.
    """

    def __init__(
        self,
        config: WebhookConfig,
        on_result: Callable[[Result], None] | None = None,
        *,
        resolver: AbstractResolver | None = None,
    ) -> None:
        check_webhook_config(config)
        self._config = config
        self._on_result = on_result
        # Checked above: the library decodes them as check_webhook_config did.
        self._signers = [Webhook(secret) for secret in config.secrets]
        self._inner_resolver = resolver
        self._resolver: AbstractResolver | None = None
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(config.max_concurrent)
        # Set by close(): no retry waits any more, no send is accepted.
        self._stopping = asyncio.Event()

    def __repr__(self) -> str:
        return f"WebhookSender({self._config!r}, pending={len(self._tasks)})"

    async def start(self) -> None:
        if self._session is not None or self._stopping.is_set():
            raise RuntimeError("WebhookSender.start() is called once, before close()")
        inner = self._inner_resolver or DefaultResolver()
        self._resolver = inner if self._config.allow_private_hosts else _PublicResolver(inner)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self._config.max_concurrent, resolver=self._resolver),
            # Per attempt, with asyncio.timeout (see _attempt).
            timeout=aiohttp.ClientTimeout(total=None),
            # A receiver's cookies are never kept, let alone sent to another receiver.
            cookie_jar=aiohttp.DummyCookieJar(),
            # No HTTP(S)_PROXY from the environment: the address checks are for direct connections.
            trust_env=False,
            # The body is never read; nothing to decompress.
            auto_decompress=False,
        )

    async def close(self, grace: float) -> None:
        """Wait up to ``grace`` seconds for deliveries in flight (starting no retry), then cancel the rest."""
        self._stopping.set()
        if self._tasks:
            _, late = await asyncio.wait(set(self._tasks), timeout=grace)
            for task in late:
                task.cancel()
            # They end at their next await: no delivery catches the cancellation.
            await asyncio.gather(*late, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._resolver is not None:
            # A connector closes only a resolver it made itself.
            await self._resolver.close()
            self._resolver = None

    def send(self, url: str, event_type: str, data: object, msg_id: str) -> None:
        """Deliver ``payload(event_type, data, now)`` to ``url`` in the background, as ``msg_id``.

        Errors in the arguments (a bad event type, data too large) raise here, not in the task.
        """
        if self._session is None or self._stopping.is_set():
            raise RuntimeError("WebhookSender.send() needs start() and no close() yet")
        if not _MSG_ID.fullmatch(msg_id):
            raise ValueError("webhook message id must be 1 to 256 printable ASCII characters without spaces")
        body = payload(event_type, data, time.time())
        task = asyncio.get_running_loop().create_task(self._send(url, body, msg_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, url: str, body: bytes, msg_id: str) -> None:
        try:
            async with self._slots:
                await self.deliver(url, body, msg_id)
        except asyncio.CancelledError:
            log.warning("webhook %s to %s: not delivered, cancelled at shutdown", msg_id, _origin(url))
            self._report("failed")
            raise
        except Exception:
            # A bug, not the receiver: logged here, since nobody awaits this task.
            log.exception("webhook %s to %s: delivery failed unexpectedly", msg_id, _origin(url))
            self._report("failed")

    def _report(self, result: Result) -> None:
        if self._on_result is not None:
            self._on_result(result)

    async def deliver(self, url: str, body: bytes, msg_id: str) -> bool:
        """Attempt delivery until a final answer or ``max_attempts``; True if the receiver took it (2xx)."""
        session = self._session
        if session is None:
            raise RuntimeError("WebhookSender.deliver() needs start()")
        if not _MSG_ID.fullmatch(msg_id):
            raise ValueError("webhook message id must be 1 to 256 printable ASCII characters without spaces")
        # The library signs text; strict UTF-8 decoding round-trips to exactly these bytes.
        text = body.decode("utf-8")
        origin = _origin(url)
        try:
            # Again at delivery: the URL was checked when the job came in, maybe under another config.
            check_webhook_url(url, self._config)
        except InvalidRequest as exc:
            log.warning("webhook %s to %s: not sent, %s", msg_id, origin, exc.message)
            self._report("failed")
            return False
        attempts = self._config.max_attempts
        for attempt in range(1, attempts + 1):
            outcome = await self._attempt(session, url, body, text, msg_id)
            if outcome.ok:
                log.debug("webhook %s to %s: delivered (attempt %d)", msg_id, origin, attempt)
                self._report("delivered")
                return True
            if not outcome.retry or attempt == attempts:
                break
            delay = outcome.wait if outcome.wait is not None else self._backoff(attempt)
            log.debug("webhook %s to %s: attempt %d failed (%s), next in %.2f s", msg_id, origin, attempt, outcome.reason, delay)
            if not await self._pause(delay):
                log.warning("webhook %s to %s: not delivered, shutting down after attempt %d (%s)", msg_id, origin, attempt, outcome.reason)
                self._report("failed")
                return False
            self._report("retried")
        final = "gave up" if outcome.retry else "not retried"
        log.warning("webhook %s to %s: not delivered after %d attempt(s), %s (%s)", msg_id, origin, attempt, final, outcome.reason)
        self._report("failed")
        return False

    def _backoff(self, attempt: int) -> float:
        """Full jitter: anywhere up to the exponential step, so retries from many senders spread out."""
        step = min(self._config.backoff_max, self._config.backoff_base * 2 ** (attempt - 1))
        return random.uniform(0, step)

    async def _pause(self, delay: float) -> bool:
        """Wait ``delay`` before the next attempt; False if close() began (then no retry)."""
        if self._stopping.is_set():
            return False
        try:
            async with asyncio.timeout(delay):
                await self._stopping.wait()
        except TimeoutError:
            return True
        return False

    async def _attempt(self, session: aiohttp.ClientSession, url: str, body: bytes, text: str, msg_id: str) -> _Outcome:
        # Wall-clock time: the receiver compares it with its own clock. Whole seconds, as the
        # spec's header is; the library floors the same way, so header and signature agree.
        now = int(time.time())
        signed_at = datetime.fromtimestamp(now, tz=UTC)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "webhook-id": msg_id,
            "webhook-timestamp": str(now),
            "webhook-signature": " ".join(signer.sign(msg_id, signed_at, text) for signer in self._signers),
        }
        try:
            async with asyncio.timeout(self._config.timeout):
                # Never redirected: a 3xx could send the event (and our address checks) anywhere.
                async with session.post(url, data=body, headers=headers, allow_redirects=False) as resp:
                    status = resp.status
                    wait = _retry_after(resp.headers.get("Retry-After"), self._config.backoff_max)
        except TimeoutError:
            return _Outcome(ok=False, retry=True, reason="timeout")
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, NonPublicAddress):
                return _Outcome(ok=False, retry=False, reason="resolves to no public address")
            return _Outcome(ok=False, retry=True, reason=type(exc).__name__)
        except aiohttp.InvalidURL:
            return _Outcome(ok=False, retry=False, reason="invalid URL")
        except aiohttp.ClientError as exc:
            # Reset, disconnected, malformed answer: the class names it (its text could hold the URL).
            return _Outcome(ok=False, retry=True, reason=type(exc).__name__)
        if 200 <= status < 300:
            return _Outcome(ok=True, retry=False, reason=f"HTTP {status}")
        retry = status >= 500 or status in _RETRY_STATUSES
        return _Outcome(ok=False, retry=retry, reason=f"HTTP {status}", wait=wait if retry else None)
