"""Fault injection: for each upstream failure, the client's exact outcome, the
gateway's health afterwards, and the metric that counted it."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import openai
import pytest

from tests.conftest import v1
from tests.faults import COMPLETED, PARTIAL, event, hang, ok, raw, status

BODY = {"model": "m", "prompt": "a fox"}
STREAM = BODY | {"stream": True}


async def post(gw, body=BODY) -> tuple[int, dict, bytes]:
    async with aiohttp.ClientSession() as session:
        async with session.post(gw.make_url("/v1/images/generations"), json=body) as resp:
            return resp.status, dict(resp.headers), await resp.read()


async def metrics(gw) -> str:
    async with aiohttp.ClientSession() as session:
        async with session.get(gw.make_url("/metrics")) as resp:
            return await resp.text()


async def assert_healthy(gw, upstreams) -> None:
    """The next request (to a healthy script) still works."""
    for upstream in upstreams.values():
        upstream.script[:] = [ok()]
        upstream.log.clear()
    code, _, _ = await post(gw, BODY | {"provider": {"only": [next(iter(upstreams))]}})
    assert code == 200


def sent_to(upstreams) -> dict[str, int]:
    return {name: len(u.log) for name, u in upstreams.items()}


async def test_connection_refused_fails_over(scripted) -> None:
    gw, ups = await scripted({"b": [ok()]}, dead=("a",), model=[{"provider": "a"}, {"provider": "b"}])
    code, headers, body = await post(gw)
    assert code == 200 and json.loads(body)["data"]
    assert headers["x-pixelgate-provider"] == "b"
    assert headers["x-pixelgate-attempt-log"] == "a=connect, a=connect, b=200"
    assert headers["x-pixelgate-attempts"] == "3"
    text = await metrics(gw)
    assert 'pixelgate_upstream_attempts_total{model="m",provider="a",result="connect"} 2.0' in text
    assert 'pixelgate_fallbacks_total{model="m",provider="b"} 1.0' in text
    assert 'pixelgate_retries_total{model="m",provider="a"} 1.0' in text
    await assert_healthy(gw, ups)


async def test_500_then_503_then_success_on_next_deployment(scripted) -> None:
    gw, ups = await scripted({"a": [status(500), status(503)], "b": [ok()]})
    code, headers, _ = await post(gw)
    assert code == 200
    assert headers["x-pixelgate-attempt-log"] == "a=500, a=503, b=200"
    assert sent_to(ups) == {"a": 2, "b": 1}
    text = await metrics(gw)
    assert 'pixelgate_upstream_attempts_total{model="m",provider="a",result="status_5xx"} 2.0' in text
    assert 'pixelgate_requests_total{endpoint="images.generations",model="m",provider="b",status="200",stream="false"} 1.0' in text
    await assert_healthy(gw, ups)


async def test_429_retry_after_is_honoured_on_the_only_deployment(scripted) -> None:
    gw, _ups = await scripted({"a": [status(429, "slow down", "rate_limit_exceeded", {"Retry-After": "1"}), ok()]})
    started = time.monotonic()
    code, headers, _ = await post(gw)
    waited = time.monotonic() - started
    assert code == 200 and headers["x-pixelgate-attempt-log"] == "a=429, a=200"
    assert 1.0 <= waited < 3.0, waited
    assert 'result="rate_limited"} 1.0' in await metrics(gw)


async def test_persistent_429_stays_a_429_with_retry_after(scripted) -> None:
    gw, ups = await scripted({"a": [status(429, "Rate limit exceeded for images per minute", "rate_limit_exceeded", {"Retry-After": "0"})]})
    code, headers, body = await post(gw)
    assert code == 429
    assert headers["Retry-After"] == "0"
    assert headers["x-pixelgate-attempts"] == "2"
    assert json.loads(body)["error"]["code"] == "rate_limit_exceeded"
    await assert_healthy(gw, ups)


async def test_retry_after_over_the_cap_fails_over_at_once(scripted) -> None:
    gw, ups = await scripted(
        {"a": [status(429, headers={"Retry-After": "120"})], "b": [ok()]}, routing={"retry_after_max": 5}
    )
    started = time.monotonic()
    code, headers, _ = await post(gw)
    assert code == 200 and headers["x-pixelgate-attempt-log"] == "a=429, b=200"
    assert time.monotonic() - started < 1
    assert 'pixelgate_fallbacks_total{model="m",provider="b"} 1.0' in await metrics(gw)
    await assert_healthy(gw, ups)


async def test_moderation_400_is_returned_at_once_never_retried(scripted) -> None:
    gw, ups = await scripted({"a": [status(400, "Rejected by the safety system.", "moderation_blocked")], "b": [ok()]})
    client = openai.AsyncOpenAI(base_url=v1(gw), api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as info:
        await client.images.generate(model="m", prompt="a fox")
    await client.close()
    assert info.value.code == "moderation_blocked"
    assert info.value.response.headers["x-pixelgate-attempts"] == "1"
    assert sent_to(ups) == {"a": 1, "b": 0}
    assert 'pixelgate_upstream_attempts_total{model="m",provider="a",result="moderation"} 1.0' in await metrics(gw)
    await assert_healthy(gw, ups)


async def test_hang_before_headers_times_out_and_fails_over(scripted) -> None:
    gw, _ups = await scripted({"a": [hang()], "b": [ok()]}, timeouts={"first_byte": 0.3}, routing={"retries": 0})
    started = time.monotonic()
    code, headers, _ = await post(gw)
    assert code == 200 and headers["x-pixelgate-attempt-log"] == "a=timeout, b=200"
    assert time.monotonic() - started < 2
    assert 'result="timeout"} 1.0' in await metrics(gw)


async def test_timeout_everywhere_tells_sdks_not_to_retry(scripted) -> None:
    gw, _ups = await scripted({"a": [hang()]}, timeouts={"first_byte": 0.2}, routing={"retries": 0})
    code, headers, body = await post(gw)
    assert code == 504 and headers["x-should-retry"] == "false"
    assert json.loads(body)["error"]["code"] == "upstream_timeout"


async def test_hang_mid_stream_ends_with_error_event(scripted) -> None:
    gw, ups = await scripted({"a": [raw([PARTIAL], then="hang")], "b": [ok()]}, timeouts={"idle": 0.3})
    code, headers, body = await post(gw, STREAM)
    assert code == 200 and headers["x-pixelgate-provider"] == "a"
    assert body.startswith(PARTIAL)
    assert body[len(PARTIAL):].startswith(b"event: error\n") and b'"code":"upstream_timeout"' in body
    assert sent_to(ups)["b"] == 0  # no failover after the first byte
    assert 'pixelgate_errors_total{error_type="timeout",model="m",provider="a"} 1.0' in await metrics(gw)
    await assert_healthy(gw, ups)


async def test_connection_closed_mid_event(scripted) -> None:
    gw, ups = await scripted({"a": [raw([PARTIAL, COMPLETED[:200]], then="drop")]})
    code, _, body = await post(gw, STREAM)
    assert code == 200 and body.startswith(PARTIAL)
    assert body.endswith(b"\n\n") and b"event: error\n" in body[len(PARTIAL):]
    assert 'pixelgate_errors_total{error_type="protocol",model="m",provider="a"} 1.0' in await metrics(gw)
    await assert_healthy(gw, ups)


async def test_malformed_sse_without_event_end(scripted) -> None:
    # Nothing reached the client yet: a real status, after a failover try.
    gw, ups = await scripted({"a": [raw([b"this is not server-sent events at all"])]}, routing={"retries": 0})
    code, headers, body = await post(gw, STREAM)
    assert code == 502 and headers["x-pixelgate-attempt-log"] == "a=protocol"
    assert json.loads(body)["error"]["code"] == "upstream_protocol_error"
    assert 'pixelgate_errors_total{error_type="protocol",model="m",provider="a"} 1.0' in await metrics(gw)
    await assert_healthy(gw, ups)


async def test_malformed_sse_after_events_ends_with_error_event(scripted) -> None:
    gw, ups = await scripted({"a": [raw([PARTIAL, b"data: {not json"])]})
    code, _, body = await post(gw, STREAM)
    assert code == 200 and body.startswith(PARTIAL)
    assert body[len(PARTIAL):].startswith(b"event: error\n") and b"middle of an event" in body
    await assert_healthy(gw, ups)


async def test_event_over_the_size_limit(scripted) -> None:
    big = event("image_generation.completed", b64="A" * 100_000, usage={"input_tokens": 1})
    gw, ups = await scripted({"a": [raw([PARTIAL, big])]}, server={"max_event_bytes": 65536})
    code, _, body = await post(gw, STREAM)
    assert code == 200 and body.startswith(PARTIAL) and b"max_event_bytes" in body
    assert 'pixelgate_errors_total{error_type="protocol",model="m",provider="a"} 1.0' in await metrics(gw)
    await assert_healthy(gw, ups)


async def test_invalid_json_with_status_200_fails_over(scripted) -> None:
    gw, ups = await scripted({"a": [raw([b'{"created": 1, "data": [{"b64_json": "QUFB"'], content_type="application/json")], "b": [ok()]},
                             routing={"retries": 0})
    code, headers, body = await post(gw)
    assert code == 200 and headers["x-pixelgate-attempt-log"] == "a=protocol, b=200"
    assert json.loads(body)["data"]
    assert 'pixelgate_upstream_attempts_total{model="m",provider="a",result="protocol"} 1.0' in await metrics(gw)
    await assert_healthy(gw, ups)


async def test_wrong_content_type_fails_over(scripted) -> None:
    gw, ups = await scripted({"a": [raw([b"<html>upstream proxy error</html>"], content_type="text/html")], "b": [ok()]},
                             routing={"retries": 0})
    for body in (BODY, STREAM):
        code, headers, _ = await post(gw, body)
        assert code == 200 and headers["x-pixelgate-provider"] == "b"
    assert 'pixelgate_upstream_attempts_total{model="m",provider="a",result="protocol"} 2.0' in await metrics(gw)
    await assert_healthy(gw, ups)


async def test_every_deployment_failing_gives_the_most_informative_error(scripted) -> None:
    gw, _ups = await scripted({"a": [status(503, "a is down")], "b": [status(429, "b is busy", headers={"Retry-After": "0"})]},
                             dead=("c",), routing={"retries": 0})
    code, headers, body = await post(gw)
    assert code == 429 and json.loads(body)["error"]["message"] == "b is busy"
    assert headers["x-pixelgate-attempt-log"] == "a=503, b=429, c=connect"
    assert headers["x-pixelgate-provider"] == "b"
    assert 'pixelgate_errors_total{error_type="rate_limited",model="m",provider="b"} 1.0' in await metrics(gw)


@pytest.mark.parametrize(
    ("prefs", "expected"),
    [
        ({}, ["a", "b", "c"]),
        ({"only": ["c", "a"]}, ["a", "c"]),
        ({"ignore": ["a"]}, ["b", "c"]),
        ({"order": ["c"]}, ["c", "a", "b"]),
        ({"order": ["c", "b"], "ignore": ["a"]}, ["c", "b"]),
        ({"allow_fallbacks": False}, ["a"]),
        ({"order": ["b"], "allow_fallbacks": False}, ["b"]),
        ({"include_alpha": True}, ["a", "b", "c", "d"]),
        ({"include_alpha": True, "order": ["d"]}, ["d", "a", "b", "c"]),
    ],
    ids=lambda v: json.dumps(v) if isinstance(v, dict) else None,
)
async def test_provider_preferences_choose_exactly_the_expected_sequence(scripted, prefs, expected) -> None:
    model = [{"provider": "a"}, {"provider": "b"}, {"provider": "c"}, {"provider": "d", "alpha": True}]
    gw, ups = await scripted({n: [status(503)] for n in "abcd"}, model=model, routing={"retries": 0})
    code, headers, _ = await post(gw, BODY | {"provider": prefs})
    assert code == 503
    assert headers["x-pixelgate-attempt-log"] == ", ".join(f"{n}=503" for n in expected)
    assert [n for n in "abcd" if ups[n].log] == sorted(expected)


async def test_circuit_breaker_opens_skips_then_probes_and_closes(scripted) -> None:
    gw, ups = await scripted(
        {"a": [status(500), status(500), ok()], "b": [ok()]},
        routing={"retries": 0, "breaker": {"consecutive_failures": 2, "cooldown": 0.5}},
    )
    assert (await post(gw))[1]["x-pixelgate-attempt-log"] == "a=500, b=200"
    assert (await post(gw))[1]["x-pixelgate-attempt-log"] == "a=500, b=200"
    # Open: a is skipped without a request.
    assert (await post(gw))[1]["x-pixelgate-attempt-log"] == "a=circuit_open, b=200"
    assert len(ups["a"].log) == 2
    async with aiohttp.ClientSession() as session:
        async with session.get(gw.make_url("/v1/providers")) as resp:
            states = {d["provider"]: d for d in (await resp.json())["data"]}
    assert states["a"]["state"] == "open" and states["a"]["error_ratio"] == 1.0
    assert states["b"]["state"] == "closed" and states["b"]["latency_p50_seconds"] is not None
    assert 'pixelgate_breaker_state{model="m",provider="a"} 2.0' in await metrics(gw)
    await asyncio.sleep(0.6)
    # Half-open: one probe goes to a, succeeds, and closes the circuit.
    assert (await post(gw))[1]["x-pixelgate-attempt-log"] == "a=200"
    assert (await post(gw))[1]["x-pixelgate-provider"] == "a"
    assert 'pixelgate_breaker_state{model="m",provider="a"} 0.0' in await metrics(gw)


async def test_all_circuits_open_is_503_with_retry_after(scripted) -> None:
    gw, ups = await scripted({"a": [status(500)]}, routing={"retries": 0, "breaker": {"consecutive_failures": 1, "cooldown": 30}})
    assert (await post(gw))[0] == 500
    code, headers, body = await post(gw)
    assert code == 503 and json.loads(body)["error"]["code"] == "no_provider_available"
    assert 25 <= int(headers["Retry-After"]) <= 30
    assert len(ups["a"].log) == 1


async def test_weighted_strategy_draws_by_weight(scripted) -> None:
    model = {"strategy": "weighted", "deployments": [{"provider": "a", "weight": 1}, {"provider": "b", "weight": 3}]}
    gw, ups = await scripted({"a": [ok()], "b": [ok()]}, model=model)
    for _ in range(200):
        assert (await post(gw))[0] == 200
    share = len(ups["b"].log) / 200
    # Expected 0.75; the bounds hold with probability > 0.999.
    assert 0.62 <= share <= 0.87, share
