"""Idempotency-Key against real servers: a loopback fake upstream that counts its calls, the gateway
over real HTTP (several gateways sharing one real redis-server for the Redis store), the real openai SDK.

The provider is called once per key, whatever the clients do; every retry gets the first response's
bytes, with ``Idempotent-Replayed: true``.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from PIL import Image

from pixelgate.proxy.access.config import RedisConfig
from pixelgate.proxy.config import IdempotencyConfig
from pixelgate.proxy.idempotency.redis_store import RedisStore
from pixelgate.proxy.idempotency.store import Ending, Follow, Own, Refused
from tests.access_util import bearer, burst, key_entry, new_key, post
from tests.conftest import single_provider_config, v1

GENERATIONS = "/v1/images/generations"
BODY = {"model": "gpt-image-1.5", "prompt": "a lighthouse at dusk"}
STREAM = {**BODY, "stream": True, "partial_images": 2}
USAGE = {"input_tokens": 5, "output_tokens": 272, "total_tokens": 277, "input_tokens_details": {"text_tokens": 5, "image_tokens": 0}}
FIELDS = {"created_at": 1, "size": "1024x1024", "quality": "low", "background": "opaque", "output_format": "png"}


def _event(kind: str, payload: bytes, **fields: object) -> bytes:
    data = json.dumps({"type": kind, "b64_json": payload.decode(), **fields}).encode()
    return b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"


def _png(color: tuple[int, int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGBA", (8, 8), color).save(out, "PNG")
    return out.getvalue()


class Upstream:
    """A fake OpenAI upstream: counts calls, answers slowly (so retries arrive while it runs), as told."""

    def __init__(self, delay: float = 0.4, gap: float = 0.05) -> None:
        self.calls = 0
        self.delay = delay
        self.gap = gap
        self.status = 200
        # About 300 KB: more than one read and one write on the way.
        self.body = b'{"created":1,"data":[{"b64_json":"' + b"Q" * 300_000 + b'"}],"usage":' + json.dumps(USAGE).encode() + b"}"
        self.events = [
            _event("image_generation.partial_image", b"P" * 120_000, partial_image_index=0, **FIELDS),
            _event("image_generation.partial_image", b"R" * 120_000, partial_image_index=1, **FIELDS),
            _event("image_generation.completed", b"C" * 200_000, **FIELDS, usage=USAGE),
        ]
        self.cut = False

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/images/generations", self.generations)
        app.router.add_post("/v1/images/edits", self.edits)
        return app

    async def generations(self, request: web.Request) -> web.StreamResponse:
        self.calls += 1
        body = await request.json()
        await asyncio.sleep(self.delay)
        if self.status != 200:
            error = {"error": {"message": "Your request was rejected.", "type": "invalid_request_error", "param": None,
                               "code": "rejected"}}
            return web.json_response(error, status=self.status)
        if self.cut:
            # A body that breaks off after two pieces: the gateway has started the client's response.
            resp = web.StreamResponse(headers={"Content-Type": "application/json", "Content-Length": str(len(self.body))})
            await resp.prepare(request)
            await resp.write(self.body[:1000])
            await asyncio.sleep(0.1)
            await resp.write(self.body[1000:2000])
            await asyncio.sleep(0.1)
            assert request.transport is not None
            request.transport.abort()
            return resp
        if body.get("stream"):
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            for event in self.events:
                await resp.write(event)
                await asyncio.sleep(self.gap)
            await resp.write_eof()
            return resp
        return web.Response(body=self.body, content_type="application/json")

    async def edits(self, request: web.Request) -> web.StreamResponse:
        self.calls += 1
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            await part.read()  # type: ignore[union-attr]
        await asyncio.sleep(self.delay)
        return web.Response(body=self.body, content_type="application/json")


@pytest.fixture
def upstream(aiohttp_server):
    async def make(**kw: Any) -> tuple[Upstream, TestServer]:
        up = Upstream(**kw)
        return up, await aiohttp_server(up.app())

    return make


def _config(server: TestServer, **extra: Any) -> dict[str, Any]:
    config = single_provider_config(v1(server))
    config["routing"] = {"retries": 0}
    config.update(extra)
    return config


def _key(value: str = "order-7731") -> dict[str, str]:
    return {"Idempotency-Key": value}


def _same_but_replay(first: dict[str, str], other: dict[str, str]) -> None:
    """Every header the gateway recorded is replayed as it was; only the replay's own are added."""
    skip = {"date", "server", "idempotent-replayed", "transfer-encoding", "connection", "keep-alive"}
    a = {k.lower(): v for k, v in first.items() if k.lower() not in skip}
    b = {k.lower(): v for k, v in other.items() if k.lower() not in skip}
    assert a == b


async def _metrics(gw: TestServer, prefix: str) -> list[str]:
    async with aiohttp.ClientSession() as session, session.get(gw.make_url("/metrics")) as resp:
        return [line for line in (await resp.text()).splitlines() if line.startswith(prefix)]


@pytest.mark.parametrize("body", [BODY, STREAM], ids=["json", "stream"])
async def test_twenty_concurrent_requests_with_one_key_call_the_provider_once(upstream, gateway, body) -> None:
    up, server = await upstream()
    gw = await gateway(_config(server))
    results = await burst(str(gw.make_url(GENERATIONS)), 20, body, _key())
    assert up.calls == 1
    assert [status for status, _, _ in results] == [200] * 20
    expected = up.body if body is BODY else b"".join(up.events)
    assert all(raw == expected for _, _, raw in results)
    replayed = [headers for _, headers, _ in results if headers.get("Idempotent-Replayed") == "true"]
    assert len(replayed) == 19
    # One response, recorded once: the first request's id on every copy.
    assert len({headers["x-request-id"] for _, headers, _ in results}) == 1
    lines = await _metrics(gw, "pixelgate_idempotent_replays_total")
    assert lines == ['pixelgate_idempotent_replays_total{endpoint="images.generations",state="in_progress"} 19.0']


@pytest.mark.parametrize("body", [BODY, STREAM], ids=["json", "stream"])
async def test_retry_after_completion_replays_byte_for_byte(upstream, gateway, body) -> None:
    up, server = await upstream(delay=0.0)
    gw = await gateway(_config(server))
    url = str(gw.make_url(GENERATIONS))
    async with aiohttp.ClientSession() as session:
        status, first_headers, first = await post(session, url, body, _key())
        assert status == 200 and "Idempotent-Replayed" not in first_headers
        for _ in range(2):
            status, headers, again = await post(session, url, body, _key())
            assert status == 200
            assert again == first
            assert headers["Idempotent-Replayed"] == "true"
            _same_but_replay(first_headers, headers)
    assert up.calls == 1
    if body is STREAM:
        assert first_headers["Content-Type"].startswith("text/event-stream")
    else:
        assert first_headers["Content-Length"] == str(len(up.body))
    lines = await _metrics(gw, "pixelgate_idempotent_replays_total")
    assert lines == ['pixelgate_idempotent_replays_total{endpoint="images.generations",state="completed"} 2.0']


async def test_a_streamed_replay_is_a_stream_the_sdk_reads(upstream, gateway) -> None:
    up, server = await upstream(delay=0.0)
    gw = await gateway(_config(server))
    client = openai.AsyncOpenAI(base_url=v1(gw), api_key="sk-unused", max_retries=0)
    try:
        for _ in range(2):
            stream = await client.images.generate(
                model="gpt-image-1.5", prompt=BODY["prompt"], stream=True, partial_images=2,
                extra_headers=_key("sdk-key-1"),
            )
            kinds = [event.type async for event in stream]
            assert kinds == ["image_generation.partial_image", "image_generation.partial_image", "image_generation.completed"]
    finally:
        await client.close()
    assert up.calls == 1


async def test_same_key_with_another_body_is_409(upstream, gateway) -> None:
    up, server = await upstream(delay=0.0)
    gw = await gateway(_config(server))
    url = str(gw.make_url(GENERATIONS))
    async with aiohttp.ClientSession() as session:
        assert (await post(session, url, BODY, _key()))[0] == 200
        status, headers, raw = await post(session, url, {**BODY, "prompt": "a lighthouse at dawn"}, _key())
    assert status == 409
    error = json.loads(raw)["error"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "idempotency_key_reused"
    assert error["param"] == "Idempotency-Key"
    assert "already used with a different request" in error["message"]
    assert headers["x-should-retry"] == "false"
    assert up.calls == 1
    assert await _metrics(gw, "pixelgate_idempotency_conflicts_total") == [
        'pixelgate_idempotency_conflicts_total{reason="mismatch"} 1.0'
    ]


async def test_keys_are_scoped_to_the_gateway_key(upstream, gateway) -> None:
    up, server = await upstream(delay=0.0)
    alice, bob = new_key(), new_key()
    gw = await gateway(_config(server, access={"keys": [key_entry("alice", alice), key_entry("bob", bob)]}))
    url = str(gw.make_url(GENERATIONS))
    async with aiohttp.ClientSession() as session:
        a = await post(session, url, BODY, {**bearer(alice), **_key("shared")})
        b = await post(session, url, BODY, {**bearer(bob), **_key("shared")})
        # Another body under bob's key is no conflict with alice's record either way.
        again = await post(session, url, BODY, {**bearer(alice), **_key("shared")})
    assert [r[0] for r in (a, b, again)] == [200, 200, 200]
    assert "Idempotent-Replayed" not in a[1] and "Idempotent-Replayed" not in b[1]
    assert a[1]["x-request-id"] != b[1]["x-request-id"]
    assert again[1]["Idempotent-Replayed"] == "true" and again[1]["x-request-id"] == a[1]["x-request-id"]
    assert up.calls == 2


async def test_first_client_that_goes_away_does_not_stop_the_request(upstream, gateway) -> None:
    """A load balancer cutting the first request: the generation goes on, the retry gets its result."""
    up, server = await upstream(delay=0.8)
    gw = await gateway(_config(server))
    url = gw.make_url(GENERATIONS)
    async with aiohttp.ClientSession() as session:
        with pytest.raises(TimeoutError):
            async with session.post(url, json=BODY, headers=_key(), timeout=aiohttp.ClientTimeout(total=0.2)) as resp:
                await resp.read()
        status, headers, raw = await post(session, str(url), BODY, _key())
        assert status == 200 and raw == up.body and headers["Idempotent-Replayed"] == "true"
        # And again, once it is done.
        status, headers, raw = await post(session, str(url), BODY, _key())
        assert status == 200 and raw == up.body
    assert up.calls == 1


async def test_a_failed_first_request_is_recorded_and_replayed(upstream, gateway) -> None:
    up, server = await upstream(delay=0.0)
    up.status = 500
    gw = await gateway(_config(server))
    url = str(gw.make_url(GENERATIONS))
    async with aiohttp.ClientSession() as session:
        status, first_headers, first = await post(session, url, BODY, _key())
        assert status == 500
        up.status = 200  # the provider would answer now: the record still holds
        status, headers, again = await post(session, url, BODY, _key())
    assert status == 500 and again == first and headers["Idempotent-Replayed"] == "true"
    assert json.loads(again)["error"]["code"] == "rejected"
    _same_but_replay(first_headers, headers)
    assert up.calls == 1


async def test_a_provider_429_releases_the_key(upstream, gateway) -> None:
    """Rate limited, the provider did no work: the retry with the key runs, it is not answered 429 for a day."""
    up, server = await upstream(delay=0.0)
    up.status = 429
    gw = await gateway(_config(server))
    url = str(gw.make_url(GENERATIONS))
    async with aiohttp.ClientSession() as session:
        assert (await post(session, url, BODY, _key()))[0] == 429
        up.status = 200
        status, headers, raw = await post(session, url, BODY, _key())
    assert status == 200 and raw == up.body and "Idempotent-Replayed" not in headers
    assert up.calls == 2


async def test_a_body_cut_short_is_not_replayed(upstream, gateway) -> None:
    up, server = await upstream(delay=0.0)
    up.cut = True
    gw = await gateway(_config(server))
    url = gw.make_url(GENERATIONS)
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientPayloadError):
            async with session.post(url, json=BODY, headers=_key()) as resp:
                assert resp.status == 200
                await resp.read()
        status, headers, raw = await post(session, str(url), BODY, _key())
    assert status == 409
    assert json.loads(raw)["error"]["code"] == "idempotency_result_incomplete"
    assert headers["x-should-retry"] == "false"
    assert up.calls == 1


async def test_a_request_refused_before_any_provider_call_releases_the_key(upstream, gateway) -> None:
    """A 429 from the key's own limits: nothing ran, so the next request with the key runs."""
    up, server = await upstream(delay=0.5)
    key = new_key()
    gw = await gateway(_config(server, access={"keys": [key_entry("alice", key, limits={"concurrent_streams": 1})]}))
    url = str(gw.make_url(GENERATIONS))
    async with aiohttp.ClientSession() as session:
        holding = asyncio.create_task(post(session, url, STREAM, bearer(key)))
        await asyncio.sleep(0.2)
        status, _, raw = await post(session, url, STREAM, {**bearer(key), **_key()})
        assert status == 429 and json.loads(raw)["error"]["code"] == "concurrent_streams_exceeded"
        assert (await holding)[0] == 200
        await asyncio.sleep(0.1)  # its stream slot is given back just after its last byte
        status, headers, raw = await post(session, url, STREAM, {**bearer(key), **_key()})
    assert status == 200 and "Idempotent-Replayed" not in headers and raw == b"".join(up.events)
    assert up.calls == 2


async def test_a_response_over_the_limit_is_not_kept(upstream, gateway) -> None:
    up, server = await upstream(delay=0.0)
    gw = await gateway(_config(server, idempotency={"max_response_bytes": 1024}))
    url = str(gw.make_url(GENERATIONS))
    async with aiohttp.ClientSession() as session:
        status, _, raw = await post(session, url, BODY, _key())
        assert status == 200 and raw == up.body  # the first client gets it all
        status, headers, raw = await post(session, url, BODY, _key())
    assert status == 409
    error = json.loads(raw)["error"]
    assert error["code"] == "idempotency_result_too_large" and "1024 bytes" in error["message"]
    assert headers["x-should-retry"] == "false"
    assert up.calls == 1


async def _raw_post(server: TestServer, header_lines: bytes) -> tuple[int, dict[str, Any]]:
    """A request written by hand, for header bytes no client library sends."""
    body = json.dumps(BODY).encode()
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(
        b"POST " + GENERATIONS.encode() + b" HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\nContent-Length: " + str(len(body)).encode() + b"\r\n" + header_lines + b"\r\n" + body
    )
    response = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, payload = response.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(payload)


@pytest.mark.parametrize(
    "line",
    [b"Idempotency-Key: \r\n", b"Idempotency-Key: " + b"k" * 256 + b"\r\n", b"Idempotency-Key: caf\xc3\xa9\r\n",
     b"Idempotency-Key: two words\r\n", b"Idempotency-Key: a\r\nIdempotency-Key: b\r\n"],
    ids=["empty", "256-chars", "non-ascii", "space", "twice"],
)
async def test_an_invalid_key_is_400_naming_the_header(upstream, gateway, line: bytes) -> None:
    up, server = await upstream(delay=0.0)
    gw = await gateway(_config(server))
    status, body = await _raw_post(gw, line)
    assert status == 400
    assert body["error"]["param"] == "Idempotency-Key"
    assert body["error"]["code"] == "invalid_idempotency_key"
    assert "Idempotency-Key" in body["error"]["message"]
    assert up.calls == 0


async def test_a_key_of_255_visible_characters_is_valid(upstream, gateway) -> None:
    up, server = await upstream(delay=0.0)
    gw = await gateway(_config(server))
    async with aiohttp.ClientSession() as session:
        status, _, _ = await post(session, str(gw.make_url(GENERATIONS)), BODY, _key("~!" + "k" * 253))
    assert status == 200 and up.calls == 1


async def test_a_result_expires_after_the_retention(upstream, gateway) -> None:
    up, server = await upstream(delay=0.0)
    gw = await gateway(_config(server, idempotency={"retention": 0.3}))
    url = str(gw.make_url(GENERATIONS))
    async with aiohttp.ClientSession() as session:
        assert (await post(session, url, BODY, _key()))[0] == 200
        assert (await post(session, url, BODY, _key()))[1]["Idempotent-Replayed"] == "true"
        await asyncio.sleep(0.5)
        status, headers, _ = await post(session, url, BODY, _key())
        assert status == 200 and "Idempotent-Replayed" not in headers
        # Expired, the key is a new one: another body is no conflict.
        await asyncio.sleep(0.5)
        assert (await post(session, url, {**BODY, "prompt": "other"}, _key()))[0] == 200
    assert up.calls == 3


async def test_disabled_ignores_the_header(upstream, gateway) -> None:
    up, server = await upstream(delay=0.0)
    gw = await gateway(_config(server, idempotency={"enabled": False}))
    async with aiohttp.ClientSession() as session:
        for _ in range(2):
            status, headers, _ = await post(session, str(gw.make_url(GENERATIONS)), BODY, _key(""))
            assert status == 200 and "Idempotent-Replayed" not in headers
    assert up.calls == 2


async def test_access_log_has_the_key_hash_never_the_key(upstream, gateway, caplog) -> None:
    caplog.set_level(logging.INFO, logger="pixelgate.access")
    up, server = await upstream(delay=0.0)
    gw = await gateway(_config(server))
    secret = "idem-5f1c9e2a-hush"
    async with aiohttp.ClientSession() as session:
        for _ in range(2):
            assert (await post(session, str(gw.make_url(GENERATIONS)), BODY, _key(secret)))[0] == 200
    for _ in range(100):  # the first request's line is written when its run ends, maybe after its client's
        lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "pixelgate.access"]
        if len(lines) == 2:
            break
        await asyncio.sleep(0.02)
    lines.sort(key=lambda line: line.get("replayed", False))
    digest = hashlib.sha256(secret.encode()).hexdigest()[:16]
    assert [(line["idempotency_key"], line.get("replayed", False), line["status"]) for line in lines] == [
        (digest, False, 200), (digest, True, 200),
    ]
    assert all(secret not in r.getMessage() for r in caplog.records)
    assert up.calls == 1


async def test_edits_replay_through_the_sdk_and_another_image_conflicts(upstream, gateway) -> None:
    """The SDK draws a new multipart boundary per request: the fingerprint is the content, not the bytes on the wire."""
    up, server = await upstream(delay=0.0)
    gw = await gateway(single_provider_config(v1(server)))
    client = openai.AsyncOpenAI(base_url=v1(gw), api_key="sk-unused", max_retries=0)
    red, blue = _png((200, 30, 30, 255)), _png((30, 30, 200, 255))
    try:
        first = await client.images.edit(
            model="gpt-image-1.5", prompt="make it night", image=("red.png", red, "image/png"),
            extra_headers=_key("edit-1"),
        )
        again = await client.images.with_raw_response.edit(
            model="gpt-image-1.5", prompt="make it night", image=("red.png", red, "image/png"),
            extra_headers=_key("edit-1"),
        )
        assert again.headers["Idempotent-Replayed"] == "true"
        assert again.parse().data[0].b64_json == first.data[0].b64_json
        with pytest.raises(openai.ConflictError) as caught:
            await client.images.edit(
                model="gpt-image-1.5", prompt="make it night", image=("red.png", blue, "image/png"),
                extra_headers=_key("edit-1"),
            )
        assert caught.value.code == "idempotency_key_reused"
    finally:
        await client.close()
    assert up.calls == 1


# --- The Redis store: gateways (replicas) sharing one real redis-server.


def _redis_config(server: TestServer, url: str, prefix: str) -> dict[str, Any]:
    return _config(server, idempotency={"backend": "redis"}, access={"redis": {"url": url, "prefix": prefix}})


@pytest.mark.parametrize("body", [BODY, STREAM], ids=["json", "stream"])
async def test_two_gateways_sharing_redis_call_the_provider_once(upstream, gateway, redis_url, redis_prefix, body) -> None:
    up, server = await upstream()
    config = _redis_config(server, redis_url, redis_prefix)
    first, second = await gateway(config), await gateway(config)
    urls = [str(first.make_url(GENERATIONS)), str(second.make_url(GENERATIONS))]
    results = await burst(urls, 20, body, _key("shared-order"))
    expected = up.body if body is BODY else b"".join(up.events)
    assert up.calls == 1
    assert [status for status, _, _ in results] == [200] * 20
    assert all(raw == expected for _, _, raw in results)
    assert sum(headers.get("Idempotent-Replayed") == "true" for _, headers, _ in results) == 19
    # Done: either gateway replays it from Redis.
    async with aiohttp.ClientSession() as session:
        for url in urls:
            status, headers, raw = await post(session, url, body, _key("shared-order"))
            assert status == 200 and raw == expected and headers["Idempotent-Replayed"] == "true"
        status, _, raw = await post(session, urls[1], {**body, "prompt": "other"}, _key("shared-order"))
        assert status == 409 and json.loads(raw)["error"]["code"] == "idempotency_key_reused"
    assert up.calls == 1


async def test_redis_too_large_and_released_keys(upstream, gateway, redis_url, redis_prefix) -> None:
    up, server = await upstream(delay=0.0)
    config = _redis_config(server, redis_url, redis_prefix)
    config["idempotency"]["max_response_bytes"] = 4096
    gw = await gateway(config)
    url = str(gw.make_url(GENERATIONS))
    async with aiohttp.ClientSession() as session:
        status, _, raw = await post(session, url, BODY, _key("big"))
        assert status == 200 and raw == up.body
        status, _, raw = await post(session, url, BODY, _key("big"))
        assert status == 409 and json.loads(raw)["error"]["code"] == "idempotency_result_too_large"
        # An unknown model is refused before any provider call: the key stays free.
        status, _, _ = await post(session, url, {**BODY, "model": "nope"}, _key("free"))
        assert status == 404
        status, _, _ = await post(session, url, BODY, _key("free"))
        assert status == 200
    assert up.calls == 2


async def test_redis_owner_that_dies_is_found_lost_never_run_twice(redis_url, redis_prefix, tmp_path) -> None:
    """A replica that stops refreshing its lock: a follower and later claims see it lost (409), not free."""
    redis = RedisConfig(url=redis_url, prefix=redis_prefix, lease_seconds=1)
    dying = RedisStore(redis, IdempotencyConfig(), str(tmp_path))
    other = RedisStore(redis, IdempotencyConfig(), str(tmp_path))
    await dying.start()
    await other.start()
    try:
        claim = await dying.claim("anonymous", "d" * 64, "fp")
        assert isinstance(claim, Own)
        await dying.close()  # the replica is gone: no refresh, no finish
        follow = await other.claim("anonymous", "d" * 64, "fp")
        assert isinstance(follow, Follow) and follow.live
        async with asyncio.timeout(5):
            assert await follow.source.head() is None
        assert follow.source.ending is Ending.LOST
        assert await other.claim("anonymous", "d" * 64, "fp") == Refused("incomplete")
        assert await other.claim("anonymous", "d" * 64, "another") == Refused("mismatch")
    finally:
        await other.close()


async def test_redis_unreachable_is_503_and_nothing_runs(upstream, gateway, redis_prefix) -> None:
    from tests.procs import free_port

    up, server = await upstream(delay=0.0)
    config = _redis_config(server, f"redis://127.0.0.1:{free_port()}/0", redis_prefix)
    config["access"]["redis"]["timeout"] = 0.2
    gw = await gateway(config)
    async with aiohttp.ClientSession() as session:
        status, headers, raw = await post(session, str(gw.make_url(GENERATIONS)), BODY, _key())
        assert status == 503 and headers["Retry-After"] == "1"
        assert json.loads(raw)["error"]["code"] == "idempotency_unavailable"
        # Without a key, requests do not need the store.
        assert (await post(session, str(gw.make_url(GENERATIONS)), BODY))[0] == 200
    assert up.calls == 1


async def test_a_retry_still_waiting_at_its_deadline_is_a_retryable_409(upstream, gateway, redis_url, redis_prefix) -> None:
    up, server = await upstream(delay=1.5)
    patient = _redis_config(server, redis_url, redis_prefix)
    hasty = _redis_config(server, redis_url, redis_prefix)
    hasty["routing"]["deadline"] = 0.4
    first, second = await gateway(patient), await gateway(hasty)
    async with aiohttp.ClientSession() as session:
        running = asyncio.create_task(post(session, str(first.make_url(GENERATIONS)), BODY, _key("slow")))
        await asyncio.sleep(0.2)
        status, headers, raw = await post(session, str(second.make_url(GENERATIONS)), BODY, _key("slow"))
        assert status == 409 and headers["Retry-After"] == "1" and "x-should-retry" not in headers
        assert json.loads(raw)["error"]["code"] == "idempotency_key_in_use"
        assert (await running)[0] == 200
        # Now it is done, the same retry is answered.
        status, headers, raw = await post(session, str(second.make_url(GENERATIONS)), BODY, _key("slow"))
        assert status == 200 and raw == up.body and headers["Idempotent-Replayed"] == "true"
    assert up.calls == 1
    assert await _metrics(second, "pixelgate_idempotency_conflicts_total") == [
        'pixelgate_idempotency_conflicts_total{reason="in_progress"} 1.0'
    ]


async def test_shutdown_releases_the_key_for_another_replica(tmp_path, redis_url, redis_prefix) -> None:
    """A stream stopped by shutdown's grace period: its client gets the error event, and a retry on
    another replica runs it anew (the key was released, not left as a 409)."""
    import signal

    from tests.procs import free_port, pixelgate

    up, a, b = free_port(), free_port(), free_port()
    body = {"model": "m", "prompt": "a fox", "size": "64x64", "stream": True, "partial_images": 3, "demo": {"interval_ms": 400}}

    def config(port: int) -> str:
        path = tmp_path / f"{port}.yaml"
        path.write_text(
            f"server: {{port: {port}, shutdown_timeout: 0.5}}\n"
            f"providers:\n  up: {{adapter: openai, base_url: 'http://127.0.0.1:{up}/v1'}}\n"
            "models:\n  m: [{provider: up}]\n"
            f"access: {{redis: {{url: '{redis_url}', prefix: '{redis_prefix}'}}}}\n"
            "idempotency: {backend: redis}\n"
        )
        return str(path)

    with pixelgate("demo-upstream", "--port", str(up), ready=f"http://127.0.0.1:{up}/v1/models"):
        async with aiohttp.ClientSession() as session:
            with pixelgate("serve", "--config", config(a), ready=f"http://127.0.0.1:{a}/healthz") as proc:
                stream = asyncio.create_task(post(session, f"http://127.0.0.1:{a}{GENERATIONS}", body, _key("drained")))
                await asyncio.sleep(0.4)
                proc.send_signal(signal.SIGTERM)
                status, _, raw = await asyncio.wait_for(stream, 15)
                assert status == 200
                assert b"event: error\n" in raw and b'"code":"gateway_shutting_down"' in raw
                assert await asyncio.to_thread(proc.wait, 15) == 0
            with pixelgate("serve", "--config", config(b), ready=f"http://127.0.0.1:{b}/healthz"):
                status, headers, raw = await post(session, f"http://127.0.0.1:{b}{GENERATIONS}", body, _key("drained"))
    assert status == 200 and "Idempotent-Replayed" not in headers
    assert raw.count(b"event: image_generation.completed\n") == 1 and b"event: error" not in raw
