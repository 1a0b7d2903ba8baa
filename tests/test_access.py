"""Gateway keys, per-key limits (in-process backend), CORS and request hygiene, through real sockets."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

import pixelgate.proxy.access.keys as keys_module
from pixelgate.proxy.access.keys import AuthFailure, KeyTable, generate_key, hash_key
from pixelgate.proxy.config import ConfigError, parse_config
from pixelgate.proxy.server import create_app, runner_options
from tests.access_util import (
    GENERATIONS,
    SMALL,
    bearer,
    burst,
    demo_config,
    key_entry,
    post,
)
from tests.conftest import single_provider_config, v1
from tests.procs import ROOT

KEY_A = generate_key()
KEY_B = generate_key()
KEY_REVOKED = generate_key()
A_ID = KEY_A.split("_")[1]
# Right id, wrong secret: the near miss a timing attack would work from.
KEY_A_WRONG = f"pgk_{A_ID}_" + ("x" * 43)

KEYS = [
    key_entry("team-a", KEY_A),
    key_entry("team-b", KEY_B, models=["other-*"]),
    key_entry("old", KEY_REVOKED, revoked=True),
]


async def metrics_text(gw: TestServer) -> str:
    async with aiohttp.ClientSession() as session, session.get(gw.make_url("/metrics")) as resp:
        return await resp.text()


@pytest.fixture
async def keyed(gateway) -> TestServer:
    return await gateway(demo_config(KEYS))


def _envelope(message: str, code: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}


AUTH_CASES = [
    # id, headers, body, status, envelope, metric reason
    ("missing", {}, SMALL, 401,
     _envelope("You didn't provide an API key. Send it as `Authorization: Bearer <key>` (or in an `api-key` header).",
               "missing_api_key"), "missing"),
    ("malformed-scheme", {"Authorization": f"Basic {KEY_A}"}, SMALL, 401,
     _envelope("Malformed API key header: expected `Authorization: Bearer <key>`.", "invalid_api_key"), "malformed"),
    ("malformed-empty", {"Authorization": "Bearer "}, SMALL, 401,
     _envelope("Malformed API key header: expected `Authorization: Bearer <key>`.", "invalid_api_key"), "malformed"),
    ("malformed-api-key", {"api-key": "two words"}, SMALL, 401,
     _envelope("Malformed API key header: expected `Authorization: Bearer <key>`.", "invalid_api_key"), "malformed"),
    ("wrong-secret", bearer(KEY_A_WRONG), SMALL, 401, _envelope("Incorrect API key provided.", "invalid_api_key"), "invalid"),
    ("not-a-gateway-key", bearer("sk-proj-abcdef0123456789"), SMALL, 401,
     _envelope("Incorrect API key provided.", "invalid_api_key"), "invalid"),
    ("revoked", bearer(KEY_REVOKED), SMALL, 401, _envelope("This API key has been revoked.", "revoked_api_key"), "revoked"),
    ("model-not-allowed", bearer(KEY_B), SMALL, 403,
     _envelope("This API key may not use the model `demo-image`.", "model_not_allowed", "model"), "model_not_allowed"),
]


@pytest.mark.parametrize(("headers", "body", "status", "envelope", "reason"), [c[1:] for c in AUTH_CASES],
                         ids=[c[0] for c in AUTH_CASES])
async def test_key_table(keyed: TestServer, headers, body, status: int, envelope: dict, reason: str) -> None:
    async with aiohttp.ClientSession() as session:
        got_status, got_headers, raw = await post(session, str(keyed.make_url(GENERATIONS)), body, headers)
    assert got_status == status
    assert json.loads(raw) == envelope
    assert got_headers["x-request-id"].startswith("req_")
    if status == 401:
        assert got_headers["WWW-Authenticate"] == 'Bearer realm="pixelgate"'
    # Nothing of a presented key comes back.
    for value in headers.values():
        token = value.split()[-1] if value.strip() else ""
        if len(token) > 8:
            assert token.encode() not in raw and token[-12:].encode() not in raw
    text = await metrics_text(keyed)
    assert f'pixelgate_auth_failures_total{{reason="{reason}"}} 1.0' in text
    assert f'pixelgate_requests_total{{endpoint="images.generations",model="other",provider="other",status="{status}",stream="false"}} 1.0' in text


async def test_valid_key_by_bearer_or_api_key_header(keyed: TestServer) -> None:
    async with aiohttp.ClientSession() as session:
        for headers in (bearer(KEY_A), {"api-key": KEY_A}, bearer(KEY_B)):
            body = SMALL if headers != bearer(KEY_B) else {**SMALL, "model": "other-image"}
            status, _, raw = await post(session, str(keyed.make_url(GENERATIONS)), body, headers)
            assert status == 200, raw
            assert len(json.loads(raw)["data"]) == 1


async def test_only_v1_needs_a_key(keyed: TestServer) -> None:
    async with aiohttp.ClientSession() as session:
        for path in ("/healthz", "/readyz", "/metrics", "/", "/static/pixelgate.js"):
            async with session.get(keyed.make_url(path)) as resp:
                assert resp.status == 200, path
        for path in ("/v1/models", "/v1/providers"):
            async with session.get(keyed.make_url(path)) as resp:
                assert resp.status == 401, path
        async with session.get(keyed.make_url("/v1/models"), headers=bearer(KEY_B)) as resp:
            # A key sees the models it may use.
            assert [m["id"] for m in (await resp.json())["data"]] == ["other-image"]


async def test_open_mode_warns_and_serves_everyone(gateway, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="pixelgate.access_control")
    gw = await gateway(demo_config())
    async with aiohttp.ClientSession() as session:
        status, headers, _ = await post(session, str(gw.make_url(GENERATIONS)), SMALL)
    assert status == 200
    assert not any(h.startswith("x-ratelimit") for h in headers)
    assert any("open mode" in r.getMessage() for r in caplog.records)


def test_comparison_is_constant_time_over_digests(monkeypatch) -> None:
    """Reasoned: the secret is checked by ``hmac.compare_digest`` of two 32-byte
    HMAC digests, never by comparing the presented string, so how much of a
    presented key is right cannot change the comparison's time."""
    calls: list[tuple[bytes, bytes]] = []
    real = keys_module.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(keys_module, "compare_digest", spy)
    table = KeyTable([(hash_key(KEY_A), "team-a", False)])
    assert table.check(KEY_A) == "team-a"
    assert table.check(KEY_A_WRONG) is AuthFailure.INVALID
    almost = KEY_A[:-1] + ("A" if KEY_A[-1] != "A" else "B")
    assert table.check(almost) is AuthFailure.INVALID
    assert len(calls) == 3
    for a, b in calls:
        assert isinstance(a, bytes) and isinstance(b, bytes) and len(a) == len(b) == 32
        assert KEY_A.encode() not in (a, b)
    # The stored digest is the same object every time; the computed one shares
    # no prefix with it for a near miss (HMAC output, not the key's bytes).
    assert calls[2][0][:4] != calls[2][1][:4]
    # Unknown ids and shapes are refused before any comparison: nothing to time.
    assert table.check("pgk_0000000000_" + "x" * 43) is AuthFailure.INVALID
    assert table.check("sk-" + "x" * 40) is AuthFailure.INVALID
    assert len(calls) == 3


def test_check_time_does_not_depend_on_matching_prefix() -> None:
    """A basic statistical check on top: best-of-N times of a near miss (all
    but the last character right) and a far miss (none right) are alike."""
    table = KeyTable([(hash_key(KEY_A), "team-a", False)])
    near = KEY_A[:-1] + ("A" if KEY_A[-1] != "A" else "B")
    far = f"pgk_{A_ID}_" + "".join("A" if c != "A" else "B" for c in KEY_A.split("_", 2)[2])

    def best(key: str) -> float:
        times = []
        for _ in range(7):
            t = time.perf_counter()
            for _ in range(300):
                table.check(key)
            times.append(time.perf_counter() - t)
        return min(times)

    best(near), best(far)  # warm up
    ratios = [best(near) / best(far) for _ in range(3)]
    assert 0.7 < sorted(ratios)[1] < 1.4, ratios


async def test_requests_per_minute_exact_under_concurrency(gateway) -> None:
    gw = await gateway(demo_config([key_entry("team-a", KEY_A, limits={"requests_per_minute": 50})]))
    results = await burst(str(gw.make_url(GENERATIONS)), 200, SMALL, bearer(KEY_A))
    statuses = [r[0] for r in results]
    assert (statuses.count(200), statuses.count(429)) == (50, 150)
    ok = [h for s, h, _ in results if s == 200]
    assert {h["x-ratelimit-limit-requests"] for h in ok} == {"50"}
    assert sorted(int(h["x-ratelimit-remaining-requests"]) for h in ok) == list(range(50))
    assert {h["x-ratelimit-reset-requests"] for h in ok} == {"1m0s"}
    refused = [(h, json.loads(b)) for s, h, b in results if s == 429]
    headers, envelope = refused[0]
    assert envelope["error"]["type"] == "rate_limit_exceeded"
    assert envelope["error"]["code"] == "requests_per_minute_exceeded"
    assert envelope["error"]["param"] is None
    assert 1 <= int(headers["Retry-After"]) <= 60
    assert headers["x-ratelimit-remaining-requests"] == "0"
    text = await metrics_text(gw)
    assert 'pixelgate_limit_rejections_total{key="team-a",limit="requests_per_minute"} 150.0' in text


async def test_images_counted_from_n_and_given_back_when_not_returned(gateway) -> None:
    gw = await gateway(demo_config([key_entry("team-a", KEY_A, limits={"images_per_minute": 4})]))
    url = str(gw.make_url(GENERATIONS))
    async with aiohttp.ClientSession() as session:
        # Three images asked for, none returned (the provider refuses): all given back.
        status, _, _ = await post(session, url, {**SMALL, "n": 3, "demo": {"error_status": 400}}, bearer(KEY_A))
        assert status == 400
        status, headers, raw = await post(session, url, {**SMALL, "n": 4}, bearer(KEY_A))
        assert status == 200, raw
        assert len(json.loads(raw)["data"]) == 4
        assert (headers["x-ratelimit-limit-images"], headers["x-ratelimit-remaining-images"]) == ("4", "0")
        status, headers, raw = await post(session, url, SMALL, bearer(KEY_A))
    assert status == 429
    assert json.loads(raw)["error"]["code"] == "images_per_minute_exceeded"
    assert headers["x-ratelimit-remaining-images"] == "0"
    assert 55 <= int(headers["Retry-After"]) <= 60


async def _open_stream(session: aiohttp.ClientSession, url: str, key: str) -> aiohttp.ClientResponse:
    body = {**SMALL, "stream": True, "partial_images": 2, "demo": {"interval_ms": 150}}
    resp = await session.post(url, json=body, headers=bearer(key))
    assert resp.status == 200
    await resp.content.readuntil(b"\n\n")  # the first event: the stream is open
    return resp


async def test_concurrent_streams_held_until_the_end_and_released_on_disconnect(gateway) -> None:
    gw = await gateway(demo_config([key_entry("team-a", KEY_A, limits={"concurrent_streams": 1})]))
    url = str(gw.make_url(GENERATIONS))
    async with aiohttp.ClientSession() as session:
        first = await _open_stream(session, url, KEY_A)
        status, headers, raw = await post(session, url, {**SMALL, "stream": True}, bearer(KEY_A))
        assert status == 429
        assert json.loads(raw)["error"]["code"] == "concurrent_streams_exceeded"
        assert headers["Retry-After"] == "1"
        # Non-streamed requests do not take a stream slot.
        assert (await post(session, url, SMALL, bearer(KEY_A)))[0] == 200
        await first.read()
        first.release()
        # Ended: the slot is free again. Then a client that leaves mid-stream frees it too.
        second = await _open_stream(session, url, KEY_A)
        second.close()
        for _ in range(100):
            status, _, _ = await post(session, url, {**SMALL, "stream": True}, bearer(KEY_A))
            if status == 200:
                break
            await asyncio.sleep(0.02)
        assert status == 200


PRICES = {"demo-image": {"output_image": 10_000.0}}  # USD per million tokens: 1 cent a token


async def test_budget_spent_by_a_streams_final_usage_refuses_the_next_request(gateway, caplog) -> None:
    caplog.set_level(logging.INFO, logger="pixelgate.access")
    limits = {"budget_usd": 0.5, "budget_period": "day"}
    gw = await gateway(demo_config([key_entry("team-a", KEY_A, limits=limits)], prices=PRICES))
    url = str(gw.make_url(GENERATIONS))
    async with aiohttp.ClientSession() as session:
        async with session.post(url, json={**SMALL, "stream": True, "partial_images": 1}, headers=bearer(KEY_A)) as resp:
            assert resp.status == 200
            events = (await resp.read()).decode()
        assert '"type":"image_generation.completed"' in events.replace(" ", "")
        status, headers, raw = await post(session, url, SMALL, bearer(KEY_A))
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "pixelgate.access"]
    assert lines[0]["stream"] is True and lines[0]["cost_usd"] >= 0.5 and lines[0]["key"] == "team-a"
    assert status == 429
    midnight = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT00:00:00Z")
    assert json.loads(raw) == {"error": {
        "message": f"This API key's daily budget of $0.5 is spent; it renews at {midnight}.",
        "type": "insufficient_quota", "param": None, "code": "insufficient_quota"}}
    assert headers["x-should-retry"] == "false"
    to_midnight = (datetime.fromisoformat(midnight) - datetime.now(UTC)).total_seconds()
    assert abs(int(headers["Retry-After"]) - to_midnight) <= 2


async def test_access_log_names_the_key_never_the_key(gateway, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    gw = await gateway(demo_config(KEYS))
    async with aiohttp.ClientSession() as session:
        await post(session, str(gw.make_url(GENERATIONS)), SMALL, bearer(KEY_A))
        await post(session, str(gw.make_url(GENERATIONS)), SMALL, bearer(KEY_A_WRONG))
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "pixelgate.access"]
    assert [(line["status"], line.get("key"), line.get("error_type")) for line in lines] == [
        (200, "team-a", None), (401, None, "unauthorized")]
    everything = "\n".join(r.getMessage() for r in caplog.records)
    for secret in (KEY_A, KEY_A_WRONG, KEY_A.split("_", 2)[2], "x" * 43):
        assert secret not in everything


# CORS

APP = "https://app.example.com"
TOOL = "https://tool.example.com"
EVIL = "https://evil.example.net"


@pytest.fixture
async def cors_gw(gateway) -> TestServer:
    keys = [key_entry("team-a", KEY_A), key_entry("team-b", KEY_B, models=["*"], cors_origins=[TOOL])]
    return await gateway(demo_config(keys, cors_origins=[APP]))


def _preflight(origin: str, headers: str = "authorization, content-type") -> dict[str, str]:
    return {"Origin": origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": headers}


async def test_cors_preflight_allowed_for_any_configured_origin(cors_gw: TestServer) -> None:
    async with aiohttp.ClientSession() as session:
        for origin in (APP, TOOL):
            async with session.options(cors_gw.make_url(GENERATIONS), headers=_preflight(origin, "authorization, content-type, x-stainless-os")) as resp:
                assert resp.status == 204
                h = resp.headers
                assert h["Access-Control-Allow-Origin"] == origin
                assert h["Access-Control-Allow-Methods"] == "GET, POST, OPTIONS"
                assert h["Access-Control-Allow-Headers"] == "authorization, content-type, api-key, x-request-id, idempotency-key, x-stainless-os"
                assert "Origin" in h["Vary"]
                assert "Access-Control-Allow-Credentials" not in h
        async with session.options(cors_gw.make_url(GENERATIONS), headers=_preflight(EVIL)) as resp:
            assert resp.status == 403
            assert "Access-Control-Allow-Origin" not in resp.headers
            assert (await resp.json())["error"]["code"] == "origin_not_allowed"


async def test_cors_actual_request_checked_against_the_keys_origins(cors_gw: TestServer) -> None:
    url = str(cors_gw.make_url(GENERATIONS))
    async with aiohttp.ClientSession() as session:
        # team-a has no origins of its own: the global ones apply.
        status, h, _ = await post(session, url, SMALL, {**bearer(KEY_A), "Origin": APP})
        assert status == 200
        assert h["Access-Control-Allow-Origin"] == APP and h["Vary"] == "Origin"
        exposed = h["Access-Control-Expose-Headers"].split(", ")
        assert {"x-request-id", "x-ratelimit-remaining-requests", "x-ratelimit-remaining-images", "retry-after",
                "x-pixelgate-provider"} <= set(exposed)
        # team-b's own list replaces the global one.
        status, h, _ = await post(session, url, SMALL, {**bearer(KEY_B), "Origin": TOOL})
        assert status == 200 and h["Access-Control-Allow-Origin"] == TOOL
        status, h, raw = await post(session, url, SMALL, {**bearer(KEY_B), "Origin": APP})
        assert status == 403 and json.loads(raw)["error"]["code"] == "origin_not_allowed"
        # Readable by the page, so it can show why.
        assert h["Access-Control-Allow-Origin"] == APP
        status, h, _ = await post(session, url, SMALL, {**bearer(KEY_A), "Origin": EVIL})
        assert status == 403 and "Access-Control-Allow-Origin" not in h
        # Same origin (the playground) and no Origin at all (not a browser) are not CORS.
        status, h, _ = await post(session, url, SMALL, {**bearer(KEY_B), "Origin": f"http://{cors_gw.host}:{cors_gw.port}"})
        assert status == 200 and "Access-Control-Allow-Origin" not in h
        status, h, _ = await post(session, url, SMALL, bearer(KEY_B))
        assert status == 200 and "Access-Control-Allow-Origin" not in h
        # Errors before the key is known are readable too.
        status, h, _ = await post(session, url, SMALL, {"Origin": APP})
        assert status == 401 and h["Access-Control-Allow-Origin"] == APP


async def test_cors_streamed_response_carries_headers(cors_gw: TestServer) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(cors_gw.make_url(GENERATIONS), json={**SMALL, "stream": True},
                                headers={**bearer(KEY_A), "Origin": APP}) as resp:
            assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
            assert resp.headers["Access-Control-Allow-Origin"] == APP
            await resp.read()


async def test_cors_wildcard_echoes_the_origin_never_star(gateway) -> None:
    gw = await gateway(demo_config([key_entry("team-a", KEY_A)], cors_origins=["*"]))
    async with aiohttp.ClientSession() as session:
        async with session.options(gw.make_url(GENERATIONS), headers=_preflight(EVIL)) as resp:
            assert resp.status == 204 and resp.headers["Access-Control-Allow-Origin"] == EVIL
            assert "Access-Control-Allow-Credentials" not in resp.headers
        status, h, _ = await post(session, str(gw.make_url(GENERATIONS)), SMALL, {**bearer(KEY_A), "Origin": EVIL})
        assert status == 200 and h["Access-Control-Allow-Origin"] == EVIL and "Access-Control-Allow-Credentials" not in h


async def test_cors_unconfigured_sends_no_cors_headers(keyed: TestServer) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.options(keyed.make_url(GENERATIONS), headers=_preflight(APP)) as resp:
            assert resp.status == 405
            assert not any(k.lower().startswith("access-control") for k in resp.headers)
        status, h, _ = await post(session, str(keyed.make_url(GENERATIONS)), SMALL, {**bearer(KEY_A), "Origin": APP})
        assert status == 200 and not any(k.lower().startswith("access-control") for k in h)


# Request hygiene


async def test_client_key_is_never_forwarded_and_user_is_set_from_the_key(gateway, fake_upstream) -> None:
    seen: list[tuple[dict[str, str], dict[str, Any]]] = []

    async def upstream(request: web.Request) -> web.Response:
        seen.append((dict(request.headers), await request.json()))
        return web.json_response({"created": 1, "data": [{"b64_json": "AAAA"}]})

    up = await fake_upstream(upstream)
    config = single_provider_config(v1(up), provider={"api_key": "sk-provider-upstream-only"}, model="demo-image")
    config["access"] = {"keys": [key_entry("team-a", KEY_A)], "set_user": True}
    gw = await gateway(config)
    async with aiohttp.ClientSession() as session:
        for headers in (bearer(KEY_A), {"api-key": KEY_A}):
            status, _, raw = await post(session, str(gw.make_url(GENERATIONS)),
                                        {**SMALL, "user": "someone-else", "extra_field": {"kept": [1, 2]}}, headers)
            assert status == 200, raw
    assert len(seen) == 2
    for headers, body in seen:
        assert headers["Authorization"] == "Bearer sk-provider-upstream-only"
        assert "api-key" not in {k.lower() for k in headers}
        assert not any(KEY_A in v or KEY_A.split("_", 2)[2] in v for v in headers.values())
        assert body["user"] == "team-a" and body["extra_field"] == {"kept": [1, 2]}


async def test_user_is_forwarded_as_sent_without_set_user(gateway, fake_upstream) -> None:
    bodies: list[bytes] = []

    async def upstream(request: web.Request) -> web.Response:
        bodies.append(await request.read())
        return web.json_response({"created": 1, "data": [{"b64_json": "AAAA"}]})

    up = await fake_upstream(upstream)
    config = single_provider_config(v1(up), model="demo-image")
    config["access"] = {"keys": [key_entry("team-a", KEY_A)]}
    gw = await gateway(config)
    async with aiohttp.ClientSession() as session:
        await post(session, str(gw.make_url(GENERATIONS)), {**SMALL, "user": "u-42"}, bearer(KEY_A))
    assert json.loads(bodies[0])["user"] == "u-42"


async def test_body_limit_per_endpoint(gateway) -> None:
    server = {"max_body_bytes": 65536, "endpoint_max_body_bytes": {GENERATIONS: 2048}}
    gw = await gateway(demo_config([key_entry("team-a", KEY_A)], server=server))
    big = {**SMALL, "prompt": "x" * 3000}
    async with aiohttp.ClientSession() as session:
        status, _, raw = await post(session, str(gw.make_url(GENERATIONS)), big, bearer(KEY_A))
        assert status == 413
        error = json.loads(raw)["error"]
        assert error["code"] == "request_too_large" and "2048 bytes (server.endpoint_max_body_bytes)" in error["message"]

        async def chunked():
            yield json.dumps(big).encode()

        async with session.post(gw.make_url(GENERATIONS), data=chunked(), headers=bearer(KEY_A)) as resp:
            assert resp.status == 413
        assert (await post(session, str(gw.make_url(GENERATIONS)), SMALL, bearer(KEY_A)))[0] == 200


async def test_header_size_limit(aiohttp_server) -> None:
    config = parse_config(demo_config([key_entry("team-a", KEY_A)], server={"max_header_bytes": 2048}), env={})
    gw = await aiohttp_server(create_app(config), **runner_options(config))
    async with aiohttp.ClientSession() as session:
        async with session.get(gw.make_url("/healthz"), headers={"X-Big": "y" * 1500}) as resp:
            assert resp.status == 200
        async with session.get(gw.make_url("/healthz"), headers={"X-Big": "y" * 4096}) as resp:
            # aiohttp refuses the head before any handler runs.
            assert resp.status == 400
            assert "Got more than 2048 bytes" in await resp.text()


# The official SDK


async def test_openai_sdk_authenticated_call_and_rate_limit_error(gateway) -> None:
    gw = await gateway(demo_config([key_entry("team-a", KEY_A, limits={"requests_per_minute": 1, "images_per_minute": 5})]))
    client = openai.AsyncOpenAI(base_url=v1(gw), api_key=KEY_A, max_retries=0)
    try:
        raw = await client.images.with_raw_response.generate(model="demo-image", prompt="a fox", size="16x16")
        assert len(raw.parse().data) == 1
        assert raw.headers["x-ratelimit-remaining-requests"] == "0"
        assert raw.headers["x-ratelimit-remaining-images"] == "4"
        with pytest.raises(openai.RateLimitError) as caught:
            await client.images.generate(model="demo-image", prompt="a fox", size="16x16")
        err = caught.value
        assert err.status_code == 429 and err.code == "requests_per_minute_exceeded"
        assert 1 <= int(err.response.headers["retry-after"]) <= 60
        assert err.response.headers["x-ratelimit-limit-requests"] == "1"
        bad = openai.AsyncOpenAI(base_url=v1(gw), api_key=KEY_A_WRONG, max_retries=0)
        with pytest.raises(openai.AuthenticationError) as auth:
            await bad.images.generate(model="demo-image", prompt="a fox", size="16x16")
        assert auth.value.code == "invalid_api_key"
        await bad.close()
    finally:
        await client.close()


# Config and CLI


@pytest.mark.parametrize(
    ("access", "message"),
    [
        ({"keys": [{"name": "a", "hash": KEY_A}]}, r"^access\.keys\[0\]\.hash: this is a plaintext key"),
        ({"keys": [{"name": "a", "key": KEY_A}]}, r"^access\.keys\[0\]: plaintext keys are refused"),
        ({"keys": [{"name": "a", "hash": "md5$abc"}]}, r"^access\.keys\[0\]\.hash: not a Pixelgate key hash"),
        ({"keys": [key_entry("a", KEY_A), key_entry("a", KEY_B)]}, r"^access\.keys\[1\]\.name: duplicate key name 'a'$"),
        ({"keys": [key_entry("a", KEY_A), key_entry("b", KEY_A)]}, r"^access\.keys\[1\]\.hash: same key id as key 'a'"),
        ({"keys": [key_entry("a", KEY_A, limits={"images_per_minute": 0})]},
         r"^access\.keys\[0\]\.limits\.images_per_minute: Expected `int` >= 1$"),
        ({"keys": [key_entry("a", KEY_A, cors_origins=["app.example.com"])]}, r"^access\.keys\[0\]\.cors_origins\[0\]: "),
        ({"on_backend_error": "maybe"}, r"^access\.on_backend_error: Invalid enum value 'maybe'$"),
        ({"redis": {"timeout": 0}}, r"^access\.redis\.timeout: Expected `float` > 0\.0$"),
    ],
)
def test_config_errors_name_the_key(access: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        parse_config(demo_config(**access), env={})
    # A refused plaintext key is not repeated in the error.
    assert KEY_A not in str(caught.value)


def test_body_limit_for_an_unknown_endpoint_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"^server\.endpoint_max_body_bytes\./v1/images/edit: not an endpoint"):
        parse_config(demo_config(server={"endpoint_max_body_bytes": {"/v1/images/edit": 4096}}), env={})


def test_cli_keys_hash() -> None:
    made = subprocess.run([sys.executable, "-m", "pixelgate", "keys", "hash", "--generate"], cwd=ROOT,
                          capture_output=True, text=True, timeout=30, check=False)
    assert made.returncode == 0
    key_line, hash_line = made.stdout.splitlines()
    key, stored = key_line.split()[1], hash_line.split()[1]
    assert KeyTable([(stored, "k", False)]).check(key) == "k"
    rehashed = subprocess.run([sys.executable, "-m", "pixelgate", "keys", "hash"], cwd=ROOT, input=key + "\n",
                              capture_output=True, text=True, timeout=30, check=False)
    assert rehashed.returncode == 0 and rehashed.stdout.startswith("sha256$")
    # Salted: the same key hashes differently each time, and both verify.
    assert rehashed.stdout.strip() != stored
    assert KeyTable([(rehashed.stdout.strip(), "k", False)]).check(key) == "k"
    bad = subprocess.run([sys.executable, "-m", "pixelgate", "keys", "hash"], cwd=ROOT, input="hunter2\n",
                         capture_output=True, text=True, timeout=30, check=False)
    assert bad.returncode == 2 and "hunter2" not in bad.stderr


def test_reset_format_and_budget_periods() -> None:
    from pixelgate.proxy.access.limits import duration, period_of

    assert [duration(s) for s in (0.0, 0.2501, 1.0, 12.5, 59.9996, 60.0, 61.25)] == [
        "0ms", "251ms", "1s", "12.5s", "1m0s", "1m0s", "1m1.25s"]
    december = datetime(2025, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()
    day, month = period_of("day", december), period_of("month", december)
    assert (day.id, day.ends_at) == ("2025-12-31", datetime(2026, 1, 1, tzinfo=UTC).timestamp())
    assert (month.id, month.ends_at) == ("2025-12", datetime(2026, 1, 1, tzinfo=UTC).timestamp())
