"""Job webhooks against real receivers: aiohttp servers on loopback that record every request
and answer as each test scripts (statuses, Retry-After, redirects, hanging).

Signatures are checked three ways: by a verifier written here from the Standard Webhooks
spec (HMAC-SHA256 over the raw body bytes, by hand), by the ``standardwebhooks`` library's
own ``Webhook.verify``, and by the openai SDK's (OpenAI sends Standard Webhooks too).
Receivers need ``allow_private_hosts`` (they are on 127.0.0.1), except where a test shows
the address rules themselves.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import os
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import msgspec
import openai
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.test_utils import TestServer
from pytest_aiohttp import AiohttpServer
from standardwebhooks import Webhook, WebhookVerificationError

from pixelgate.core.errors import InvalidRequest
from pixelgate.proxy.jobs.webhooks import (
    EVENT_COMPLETED,
    MAX_PAYLOAD_BYTES,
    USER_AGENT,
    Result,
    WebhookConfig,
    WebhookSender,
    check_webhook_config,
    check_webhook_url,
    payload,
)


def new_secret(size: int = 32) -> str:
    return "whsec_" + base64.b64encode(os.urandom(size)).decode()


SECRET = new_secret()
# Non-ASCII on purpose: what is signed is the UTF-8 body, byte for byte.
DATA = {"id": "imgjob_0123", "status": "completed", "prompt": "a lighthouse at dusk, café 🌅"}


def spec_verify(secret: str, headers: dict[str, str], body: bytes, tolerance: int = 300) -> bool:
    """Standard Webhooks verification, from the spec alone (no library shared with the sender)."""
    assert secret.startswith("whsec_")
    key = base64.b64decode(secret[len("whsec_"):], validate=True)
    msg_id, stamp = headers["webhook-id"], headers["webhook-timestamp"]
    assert stamp.isdigit() and abs(int(stamp) - time.time()) <= tolerance
    signed = msg_id.encode() + b"." + stamp.encode() + b"." + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    for part in headers["webhook-signature"].split(" "):
        version, _, signature = part.partition(",")
        if version == "v1" and hmac.compare_digest(signature, expected):
            return True
    return False


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    # Answer only when the test releases the receiver (at most 5 s).
    hang: bool = False


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float
    path: str


class Receiver:
    """Records each POST and answers with the next scripted reply (then ``default``)."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.script: list[Reply] = []
        self.default = Reply()
        self.elsewhere = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.release = asyncio.Event()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/hook", self.hook)
        app.router.add_route("*", "/elsewhere", self.other)
        return app

    async def hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append(Received({k.lower(): v for k, v in request.headers.items()}, body, time.monotonic(), request.path_qs))
        reply = self.script.pop(0) if self.script else self.default
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if reply.hang:
                with suppress(TimeoutError):
                    await asyncio.wait_for(self.release.wait(), 5)
            elif reply.delay:
                await asyncio.sleep(reply.delay)
        finally:
            self.in_flight -= 1
        return web.Response(status=reply.status, headers=reply.headers)

    async def other(self, request: web.Request) -> web.Response:
        self.elsewhere += 1
        return web.Response(status=200)


@pytest.fixture
async def receiver(aiohttp_server: AiohttpServer) -> AsyncIterator[tuple[Receiver, TestServer]]:
    r = Receiver()
    server = await aiohttp_server(r.app())
    yield r, server
    # Hanging handlers end before the server closes.
    r.release.set()


def hook_url(server: TestServer, query: str = "") -> str:
    return str(server.make_url("/hook")) + query


def config(**kw: Any) -> WebhookConfig:
    """Receivers on loopback, quick retries; decoded as a config file would be."""
    defaults: dict[str, Any] = {"secrets": [SECRET], "allow_private_hosts": True, "backoff_base": 0.01, "timeout": 2.0}
    return msgspec.convert(defaults | kw, WebhookConfig)


@asynccontextmanager
async def started(cfg: WebhookConfig, results: list[Result] | None = None, resolver: AbstractResolver | None = None,
                  grace: float = 2.0) -> AsyncIterator[WebhookSender]:
    sender = WebhookSender(cfg, None if results is None else results.append, resolver=resolver)
    await sender.start()
    try:
        yield sender
    finally:
        await sender.close(grace)


def body() -> bytes:
    return payload(EVENT_COMPLETED, DATA, time.time())


# --- signing ------------------------------------------------------------------------------


async def test_signed_as_the_spec_says(receiver: tuple[Receiver, TestServer]) -> None:
    r, server = receiver
    results: list[Result] = []
    sent = body()
    async with started(config(), results) as sender:
        assert await sender.deliver(hook_url(server), sent, "imgjob_0123") is True
    assert results == ["delivered"]
    [got] = r.requests
    assert got.body == sent
    assert got.headers["content-type"] == "application/json"
    assert got.headers["user-agent"] == USER_AGENT
    assert got.headers["webhook-id"] == "imgjob_0123"
    assert got.headers["webhook-signature"].startswith("v1,") and " " not in got.headers["webhook-signature"]
    assert spec_verify(SECRET, got.headers, got.body)
    # Any byte changed, or another id: the signature no longer holds.
    assert not spec_verify(SECRET, got.headers, got.body.replace(b"dusk", b"dawn"))
    assert not spec_verify(SECRET, got.headers | {"webhook-id": "imgjob_other"}, got.body)
    assert not spec_verify(new_secret(), got.headers, got.body)
    # The library a receiver would use, and the openai SDK's verifier.
    assert Webhook(SECRET).verify(got.body, got.headers) == json.loads(got.body)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(got.body, got.headers)
    client = openai.OpenAI(api_key="unused", base_url="http://127.0.0.1:9/v1")
    client.webhooks.verify_signature(got.body, got.headers, secret=SECRET)

    # The payload: the spec's recommended shape.
    event = json.loads(got.body)
    assert set(event) == {"type", "timestamp", "data"}
    assert event["type"] == "image.job.completed" and event["data"] == DATA
    assert event["timestamp"].endswith("Z")
    assert abs(datetime.fromisoformat(event["timestamp"]).timestamp() - time.time()) < 60


async def test_rotation_signs_with_every_secret(receiver: tuple[Receiver, TestServer]) -> None:
    r, server = receiver
    old, new = new_secret(), new_secret(48)
    async with started(config(secrets=[new, old])) as sender:
        assert await sender.deliver(hook_url(server), body(), "msg_rotation")
    [got] = r.requests
    signatures = got.headers["webhook-signature"].split(" ")
    assert len(signatures) == 2 and all(s.startswith("v1,") for s in signatures)
    for secret in (old, new):
        # A receiver that knows only one of the two accepts the message.
        assert spec_verify(secret, got.headers, got.body)
        Webhook(secret).verify(got.body, got.headers)
    assert not spec_verify(new_secret(), got.headers, got.body)


# --- retries ------------------------------------------------------------------------------


async def test_retries_5xx_then_delivers(receiver: tuple[Receiver, TestServer]) -> None:
    r, server = receiver
    r.script = [Reply(500), Reply(503)]
    results: list[Result] = []
    async with started(config(), results) as sender:
        assert await sender.deliver(hook_url(server), body(), "msg_retry")
    assert results == ["retried", "retried", "delivered"]
    assert len(r.requests) == 3
    # The same id every time (receivers dedupe on it); each attempt signed for its own timestamp.
    assert {got.headers["webhook-id"] for got in r.requests} == {"msg_retry"}
    for got in r.requests:
        assert spec_verify(SECRET, got.headers, got.body)
        Webhook(SECRET).verify(got.body, got.headers)
    assert len({got.body for got in r.requests}) == 1


async def test_gives_up_after_max_attempts(receiver: tuple[Receiver, TestServer], caplog: pytest.LogCaptureFixture) -> None:
    r, server = receiver
    r.default = Reply(500)
    results: list[Result] = []
    caplog.set_level(logging.DEBUG, logger="pixelgate.webhooks")
    async with started(config(max_attempts=3), results) as sender:
        assert not await sender.deliver(hook_url(server, "?token=s3cr3t-token"), body(), "msg_gives_up")
    assert len(r.requests) == 3
    assert results == ["retried", "retried", "failed"]
    assert r.requests[0].path == "/hook?token=s3cr3t-token"
    warnings = [rec for rec in caplog.records if rec.levelno == logging.WARNING]
    assert len(warnings) == 1 and "msg_gives_up" in warnings[0].getMessage() and "HTTP 500" in warnings[0].getMessage()
    # Neither the URL's path and query (a token, often) nor a secret reaches the logs.
    text = "\n".join(rec.getMessage() for rec in caplog.records)
    assert "s3cr3t-token" not in text and "/hook" not in text
    assert SECRET not in text and SECRET.removeprefix("whsec_") not in text
    assert f"http://127.0.0.1:{server.port}" in text


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 422])
async def test_refused_is_not_retried(receiver: tuple[Receiver, TestServer], status: int) -> None:
    r, server = receiver
    r.default = Reply(status)
    results: list[Result] = []
    async with started(config(), results) as sender:
        assert not await sender.deliver(hook_url(server), body(), "msg_refused")
    assert len(r.requests) == 1
    assert results == ["failed"]


@pytest.mark.parametrize("status", [408, 409, 425, 429, 502])
async def test_transient_4xx_are_retried(receiver: tuple[Receiver, TestServer], status: int) -> None:
    r, server = receiver
    r.script = [Reply(status)]
    results: list[Result] = []
    async with started(config(), results) as sender:
        assert await sender.deliver(hook_url(server), body(), "msg_transient")
    assert results == ["retried", "delivered"]


async def test_retry_after_is_honoured_up_to_the_cap(receiver: tuple[Receiver, TestServer]) -> None:
    r, server = receiver
    r.script = [Reply(429, {"Retry-After": "1"})]
    results: list[Result] = []
    async with started(config(backoff_base=0.001), results) as sender:
        assert await sender.deliver(hook_url(server), body(), "msg_retry_after")
    first, second = r.requests
    # Backoff alone would have waited at most a millisecond.
    assert 0.9 <= second.at - first.at < 3
    assert results == ["retried", "delivered"]

    # An hour asked, backoff_max allowed: the cap wins.
    r.requests.clear()
    r.script = [Reply(503, {"Retry-After": "3600"})]
    async with started(config(backoff_base=0.001, backoff_max=0.05)) as sender:
        assert await sender.deliver(hook_url(server), body(), "msg_capped")
    first, second = r.requests
    assert second.at - first.at < 1


async def test_redirect_is_not_followed(receiver: tuple[Receiver, TestServer]) -> None:
    r, server = receiver
    r.default = Reply(307, {"Location": str(server.make_url("/elsewhere"))})
    results: list[Result] = []
    async with started(config(), results) as sender:
        assert not await sender.deliver(hook_url(server), body(), "msg_redirect")
    assert len(r.requests) == 1 and r.elsewhere == 0
    assert results == ["failed"]


async def test_timeout_counts_as_a_retry(receiver: tuple[Receiver, TestServer]) -> None:
    r, server = receiver
    r.script = [Reply(hang=True)]
    results: list[Result] = []
    started_at = time.monotonic()
    async with started(config(timeout=0.3), results) as sender:
        assert await sender.deliver(hook_url(server), body(), "msg_timeout")
    assert time.monotonic() - started_at < 3
    assert len(r.requests) == 2
    assert results == ["retried", "delivered"]


async def test_name_resolving_to_a_private_address_goes_nowhere(receiver: tuple[Receiver, TestServer],
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """A public-looking name passes the URL check; its address (loopback here) is refused at connect."""
    r, server = receiver
    caplog.set_level(logging.WARNING, logger="pixelgate.webhooks")

    class Rebinding(AbstractResolver):
        async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
            return [{"hostname": host, "host": "127.0.0.1", "port": port, "family": socket.AF_INET, "proto": 0, "flags": 0}]

        async def close(self) -> None:
            pass

    url = f"https://hooks.example.com:{server.port}/hook"
    cfg = config(allow_private_hosts=False)
    check_webhook_url(url, cfg)
    results: list[Result] = []
    async with started(cfg, results, resolver=Rebinding()) as sender:
        assert not await sender.deliver(url, body(), "msg_rebinding")
        # And a URL the rules refuse is not sent at all, even when handed to deliver().
        assert not await sender.deliver(hook_url(server), body(), "msg_loopback")
    assert r.requests == []
    # Not retried: the address will not become public in a second.
    assert results == ["failed", "failed"]
    rebinding, loopback = (rec.getMessage() for rec in caplog.records)
    assert "msg_rebinding" in rebinding and "resolves to no public address" in rebinding
    assert "msg_loopback" in loopback and "must be an absolute https:// URL" in loopback


# --- background delivery and shutdown -----------------------------------------------------


async def test_send_runs_in_the_background_bounded(receiver: tuple[Receiver, TestServer]) -> None:
    r, server = receiver
    r.default = Reply(delay=0.15)
    results: list[Result] = []
    async with started(config(max_concurrent=2), results, grace=5) as sender:
        for i in range(5):
            sender.send(hook_url(server), EVENT_COMPLETED, DATA, f"msg_bg_{i}")
        await asyncio.sleep(0)
        assert results == []
    # close() waited for all of them.
    assert results == ["delivered"] * 5
    assert r.max_in_flight == 2
    assert sorted(got.headers["webhook-id"] for got in r.requests) == [f"msg_bg_{i}" for i in range(5)]
    for got in r.requests:
        assert spec_verify(SECRET, got.headers, got.body)
        assert json.loads(got.body)["data"] == DATA


async def test_close_returns_within_grace_with_a_hanging_receiver(receiver: tuple[Receiver, TestServer]) -> None:
    r, server = receiver
    r.default = Reply(hang=True)
    results: list[Result] = []
    sender = WebhookSender(config(timeout=30), results.append)
    await sender.start()
    sender.send(hook_url(server), EVENT_COMPLETED, DATA, "msg_hang")
    for _ in range(200):
        if r.requests:
            break
        await asyncio.sleep(0.01)
    assert len(r.requests) == 1
    started_at = time.monotonic()
    await sender.close(grace=0.3)
    assert 0.25 <= time.monotonic() - started_at < 1.5
    assert results == ["failed"]
    with pytest.raises(RuntimeError):
        sender.send(hook_url(server), EVENT_COMPLETED, DATA, "msg_late")


async def test_close_starts_no_retry(receiver: tuple[Receiver, TestServer]) -> None:
    r, server = receiver
    r.default = Reply(500)
    results: list[Result] = []
    sender = WebhookSender(config(backoff_base=60, backoff_max=60), results.append)
    await sender.start()
    sender.send(hook_url(server), EVENT_COMPLETED, DATA, "msg_backoff")
    for _ in range(200):
        if r.requests:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    started_at = time.monotonic()
    # The delivery is waiting up to a minute for its retry: close() does not wait for that.
    await sender.close(grace=10)
    assert time.monotonic() - started_at < 1
    assert len(r.requests) == 1 and results == ["failed"]


# --- URLs, config, payload ----------------------------------------------------------------


@pytest.mark.parametrize("url", [
    "http://127.0.0.1/hook",
    "https://127.0.0.1/hook",
    "https://10.0.0.1/hook",
    "https://192.168.1.1/hook",
    "https://169.254.169.254/latest/meta-data",
    "https://[::1]/hook",
    "https://[::ffff:127.0.0.1]/hook",
    "https://[64:ff9b::a9fe:a9fe]/hook",
    "https://127.1/hook",
    "https://0x7f.1/hook",
    "https://localhost/hook",
    "https://localhost./hook",
    "https://hooks.internal/hook",
    "https://printer.local/hook",
    "https://intranet/hook",
    "https://user:pw@example.com/hook",
    "https://token@example.com/hook",
    "http://example.com/hook",
    "ftp://x",
    "example.com/hook",
    "https:///hook",
    "https://example.com:99999/hook",
    "https://example.com/ho ok",
    "https://example.com/hook\r\nX-Injected: 1",
    "https://example.com/" + "a" * 2048,
])
def test_refused_urls(url: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        check_webhook_url(url, config(allow_private_hosts=False))
    assert caught.value.param == "webhook_url" and caught.value.code == "invalid_webhook_url"
    assert caught.value.status == 400


@pytest.mark.parametrize("url", ["https://example.com/hook", "https://hooks.example.com:8443/a/b?token=x", "https://8.8.8.8/hook"])
def test_allowed_urls(url: str) -> None:
    check_webhook_url(url, config(allow_private_hosts=False))


def test_allow_private_hosts() -> None:
    cfg = config(allow_private_hosts=True)
    for url in ("http://127.0.0.1:8080/hook", "https://10.0.0.1/hook", "http://localhost/hook", "http://receiver/hook"):
        check_webhook_url(url, cfg)
    for url in ("http://user:pw@127.0.0.1/hook", "ftp://127.0.0.1/", "http://127.0.0.1/" + "a" * 2048):
        with pytest.raises(InvalidRequest):
            check_webhook_url(url, cfg)


@pytest.mark.parametrize(("secrets", "message"), [
    ([], "secrets: at least one"),
    (["c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"], "secrets[0]: not whsec_"),
    (["whsec_"], "secrets[0]: 0 bytes"),
    (["whsec_not base64!!"], "secrets[0]: not whsec_"),
    # URL-safe base64: the library would silently drop - and _ and sign with another key.
    (["whsec_" + base64.urlsafe_b64encode(b"\xfb\xff" * 16).decode()], "secrets[0]: not whsec_"),
    (["whsec_" + base64.b64encode(b"k" * 16).decode()], "secrets[0]: 16 bytes"),
    ([SECRET, SECRET], "secrets[1]: the same secret"),
    # Padded or not, the same key.
    ([SECRET, SECRET.rstrip("=")], "secrets[1]: the same secret"),
])
def test_check_webhook_config(secrets: list[str], message: str) -> None:
    with pytest.raises(ValueError) as caught:
        check_webhook_config(WebhookConfig(secrets=secrets))
    assert str(caught.value).startswith(message)
    for secret in secrets:
        if len(secret) > len("whsec_"):
            assert secret not in str(caught.value)
    with pytest.raises(ValueError):
        WebhookSender(WebhookConfig(secrets=secrets))


def test_config_decodes_and_hides_its_secrets() -> None:
    unpadded = new_secret(25).rstrip("=")
    cfg = msgspec.convert({"secrets": [SECRET, unpadded], "max_attempts": 3, "backoff_base": 1, "timeout": 5}, WebhookConfig)
    check_webhook_config(cfg)
    assert cfg.max_attempts == 3 and cfg.backoff_base == 1.0 and cfg.allow_private_hosts is False
    assert SECRET not in repr(cfg) and unpadded not in repr(cfg)
    with pytest.raises(msgspec.ValidationError, match="unknown field"):
        msgspec.convert({"secrets": [SECRET], "retries": 3}, WebhookConfig)
    with pytest.raises(msgspec.ValidationError, match="max_attempts"):
        msgspec.convert({"secrets": [SECRET], "max_attempts": 0}, WebhookConfig)
    # The same bounds for a config built in code.
    with pytest.raises(ValueError, match=r"^timeout: "):
        check_webhook_config(WebhookConfig(secrets=[SECRET], timeout=0))


def test_payload() -> None:
    event = json.loads(payload(EVENT_COMPLETED, DATA, 1_700_000_000.5))
    assert event == {"type": "image.job.completed", "timestamp": "2023-11-14T22:13:20.500000Z", "data": DATA}
    # Data already encoded is embedded as it is.
    assert payload("image.job.failed", b'{"id":"imgjob_1"}', 0) == b'{"type":"image.job.failed","timestamp":"1970-01-01T00:00:00.000000Z","data":{"id":"imgjob_1"}}'
    with pytest.raises(msgspec.DecodeError):
        payload(EVENT_COMPLETED, b"{not json", 0)
    with pytest.raises(ValueError, match="event type"):
        payload("Completed!", DATA, 0)
    with pytest.raises(ValueError, match="not images"):
        payload(EVENT_COMPLETED, {"b64_json": "A" * MAX_PAYLOAD_BYTES}, 0)


async def test_send_refuses_bad_arguments(receiver: tuple[Receiver, TestServer]) -> None:
    _, server = receiver
    sender = WebhookSender(config())
    with pytest.raises(RuntimeError):
        sender.send(hook_url(server), EVENT_COMPLETED, DATA, "msg_early")
    async with started(config()) as sender:
        with pytest.raises(ValueError, match="message id"):
            sender.send(hook_url(server), EVENT_COMPLETED, DATA, "two words")
        with pytest.raises(ValueError, match="event type"):
            sender.send(hook_url(server), "done", DATA, "msg_type")
