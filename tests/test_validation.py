"""Bad input: exact statuses, the OpenAI envelope, and ``param`` naming the field."""

from __future__ import annotations

import json

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from tests.conftest import single_provider_config, v1

OK = {"model": "gpt-image-1.5", "prompt": "a fox"}

CASES = [
    # id, body (bytes or JSON-able), status, param, code
    ("malformed-json", b'{"model": "gpt-image-1.5", "prompt": ', 400, None, "invalid_json"),
    ("not-an-object", b"[1, 2]", 400, None, "invalid_value"),
    ("empty-body", b"", 400, None, "invalid_json"),
    ("missing-prompt", {"model": "gpt-image-1.5"}, 400, "prompt", "invalid_value"),
    ("empty-prompt", OK | {"prompt": ""}, 400, "prompt", "invalid_value"),
    ("prompt-wrong-type", OK | {"prompt": 42}, 400, "prompt", "invalid_value"),
    ("n-zero", OK | {"n": 0}, 400, "n", "invalid_value"),
    ("n-eleven", OK | {"n": 11}, 400, "n", "invalid_value"),
    ("n-string", OK | {"n": "2"}, 400, "n", "invalid_value"),
    ("partial-images-4", OK | {"partial_images": 4}, 400, "partial_images", "invalid_value"),
    ("partial-images-negative", OK | {"partial_images": -1}, 400, "partial_images", "invalid_value"),
    ("stream-wrong-type", OK | {"stream": "yes"}, 400, "stream", "invalid_value"),
    ("size-garbage", OK | {"size": "big"}, 400, "size", "invalid_value"),
    ("quality-not-a-value", OK | {"quality": "ultra high!"}, 400, "quality", "invalid_value"),
    ("output-compression-101", OK | {"output_compression": 101}, 400, "output_compression", "invalid_value"),
    ("response-format-unknown", OK | {"response_format": "png"}, 400, "response_format", "invalid_value"),
    ("background-wrong-type", OK | {"background": 3}, 400, "background", "invalid_value"),
    ("output-format-too-long", OK | {"output_format": "x" * 65}, 400, "output_format", "invalid_value"),
    ("provider-not-object", OK | {"provider": ["up"]}, 400, "provider", "invalid_value"),
    ("provider-unknown-field", OK | {"provider": {"prefer": ["up"]}}, 400, "provider.prefer", "invalid_value"),
    ("provider-only-wrong-type", OK | {"provider": {"only": "up"}}, 400, "provider.only", "invalid_value"),
    ("provider-order-item-type", OK | {"provider": {"order": [1]}}, 400, "provider.order[0]", "invalid_value"),
    ("provider-unknown-name", OK | {"provider": {"only": ["nope"]}}, 400, "provider.only", "unknown_provider"),
    ("provider-ignore-all", OK | {"provider": {"ignore": ["up"]}}, 400, "provider", "no_eligible_provider"),
    ("missing-model", {"prompt": "a fox"}, 400, "model", "missing_required_parameter"),
    ("unknown-model", OK | {"model": "dall-e-9"}, 404, "model", "model_not_found"),
]


@pytest.fixture
async def gw(gateway, demo_upstream) -> TestServer:
    return await gateway(single_provider_config(v1(demo_upstream), server={"max_body_bytes": 4096}))


@pytest.mark.parametrize(("body", "status", "param", "code"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_bad_input(gw: TestServer, body, status: int, param: str | None, code: str) -> None:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with aiohttp.ClientSession() as session:
        async with session.post(gw.make_url("/v1/images/generations"), data=data, headers={"Content-Type": "application/json"}) as resp:
            assert resp.status == status
            assert resp.headers["x-request-id"].startswith("req_")
            envelope = await resp.json()
    error = envelope["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["param"], error["code"]) == (param, code)
    assert error["type"] == "invalid_request_error"
    assert error["message"]
    if param:
        # The message names the field too, for humans reading logs.
        assert param.split(".")[0].split("[")[0] in error["message"]


async def test_oversized_body_is_413(gw: TestServer) -> None:
    body = json.dumps(OK | {"prompt": "x" * 5000}).encode()
    async with aiohttp.ClientSession() as session:
        async with session.post(gw.make_url("/v1/images/generations"), data=body) as resp:
            assert resp.status == 413
            error = (await resp.json())["error"]
    assert error["code"] == "request_too_large" and "4096" in error["message"]


async def test_oversized_chunked_body_is_413(gw: TestServer) -> None:
    async def chunks():
        for _ in range(10):
            yield b"x" * 1000

    async with aiohttp.ClientSession() as session:
        async with session.post(gw.make_url("/v1/images/generations"), data=chunks()) as resp:
            assert resp.status == 413
            assert (await resp.json())["error"]["code"] == "request_too_large"


async def test_body_without_json_content_type_is_still_decoded(gw: TestServer) -> None:
    # curl -d sends application/x-www-form-urlencoded; the body is JSON all the same.
    async with aiohttp.ClientSession() as session:
        async with session.post(gw.make_url("/v1/images/generations"), data=json.dumps(OK | {"size": "32x32"}).encode(),
                                headers={"Content-Type": "application/x-www-form-urlencoded"}) as resp:
            assert resp.status == 200


async def test_unknown_endpoint_and_method_get_envelopes(gw: TestServer) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(gw.make_url("/v1/images/variations"), json=OK) as resp:
            assert resp.status == 404
            assert (await resp.json())["error"]["code"] == "unknown_url"
        async with session.get(gw.make_url("/v1/images/generations")) as resp:
            assert resp.status == 405
            assert (await resp.json())["error"]["code"] == "method_not_allowed"


async def test_models_lists_configured_public_names(gw: TestServer) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(gw.make_url("/v1/models")) as resp:
            body = await resp.json()
    assert body == {"object": "list", "data": [{"id": "gpt-image-1.5", "object": "model", "created": 0, "owned_by": "pixelgate"}]}


async def test_health_and_readiness(gw: TestServer) -> None:
    async with aiohttp.ClientSession() as session:
        for path in ("/healthz", "/readyz"):
            async with session.get(gw.make_url(path)) as resp:
                assert resp.status == 200


async def test_values_openai_may_add_pass_to_an_openai_compatible_upstream(gateway, fake_upstream) -> None:
    """New OpenAI values (a format, a quality) are the upstream's to judge: the gateway
    keeps only its type and bound checks for pass-through providers. Translating
    adapters refuse them (tests/golden/*/unknown_value*.yaml)."""
    seen: list[dict] = []

    async def upstream(request):
        from aiohttp import web

        seen.append(await request.json())
        return web.json_response({"created": 1, "data": [{"b64_json": "AAAA"}]})

    up = await fake_upstream(upstream)
    gw = await gateway(single_provider_config(v1(up)))
    body = OK | {"output_format": "gif", "quality": "ultra", "background": "green", "moderation": "strict", "style": "noir"}
    async with aiohttp.ClientSession() as session, session.post(gw.make_url("/v1/images/generations"), json=body) as resp:
        assert resp.status == 200, await resp.text()
    assert seen == [body]
