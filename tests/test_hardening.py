"""What real clients and spec fuzzing found (issue 16): each case failed before its fix."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.conftest import GatewayFactory, v1

OK = {"prompt": "a fox"}


class Recorder:
    """A fake OpenAI upstream that counts its calls."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.bodies.append(await request.json())
        return web.json_response({"created": 1, "data": [{"b64_json": "AAAA"}]})


@pytest.fixture
async def wildcard(gateway: GatewayFactory, fake_upstream: Any) -> tuple[TestServer, Recorder]:
    recorder = Recorder()
    up = await fake_upstream(recorder.handle)
    gw = await gateway({"providers": {"up": {"adapter": "openai", "base_url": v1(up)}}, "models": {"*": [{"provider": "up"}]}})
    return gw, recorder


async def _post(gw: TestServer, body: dict[str, Any], path: str = "/v1/images/generations") -> tuple[int, aiohttp.typedefs.LooseHeaders, Any]:
    async with aiohttp.ClientSession() as session, session.post(gw.make_url(path), data=json.dumps(body),
                                                                headers={"Content-Type": "application/json"}) as resp:
        return resp.status, resp.headers.copy(), await resp.json()


@pytest.mark.parametrize("model", ["a\nb", "a\rb", "a\x00b", "a\x12b", "a\x7fb"], ids=["LF", "CR", "NUL", "DC2", "DEL"])
async def test_a_model_name_with_a_control_character_is_a_400_before_any_provider_call(wildcard: tuple[TestServer, Recorder], model: str) -> None:
    gw, recorder = wildcard
    status, headers, body = await _post(gw, OK | {"model": model})
    assert status == 400, body
    assert body["error"]["param"] == "model" and body["error"]["code"] == "invalid_value"
    assert headers["x-request-id"].startswith("req_")
    assert recorder.bodies == []


async def test_a_non_ascii_model_name_is_percent_encoded_in_the_gateway_headers(wildcard: tuple[TestServer, Recorder]) -> None:
    gw, recorder = wildcard
    status, headers, _ = await _post(gw, OK | {"model": "modèle-café"})
    assert status == 200
    assert headers["x-pixelgate-upstream-model"] == "mod%C3%A8le-caf%C3%A9"
    assert recorder.bodies[0]["model"] == "modèle-café"  # the upstream gets the name itself


async def test_user_null_is_accepted_like_every_other_optional_field(wildcard: tuple[TestServer, Recorder]) -> None:
    gw, recorder = wildcard
    status, _, body = await _post(gw, OK | {"model": "m", "user": None})
    assert status == 200, body
    assert recorder.bodies[0]["user"] is None


@pytest.mark.parametrize(("field", "value"), [("response_format", "url"), ("background", "transparent")])
async def test_the_demo_refuses_what_it_cannot_do(demo_gateway: TestServer, field: str, value: str) -> None:
    status, _, body = await _post(demo_gateway, OK | {"model": "gpt-image-1.5", field: value, "size": "64x64"})
    assert status == 400, body
    assert body["error"]["param"] == field


async def test_a_default_model_serves_requests_that_name_none(gateway: GatewayFactory, fake_upstream: Any) -> None:
    recorder = Recorder()
    up = await fake_upstream(recorder.handle)
    config = {"providers": {"up": {"adapter": "openai", "base_url": v1(up)}}, "models": {"house": [{"provider": "up", "model": "gpt-image-1.5"}]}}
    without = await gateway(config)
    status, _, body = await _post(without, OK)
    assert status == 400 and body["error"]["code"] == "missing_required_parameter"
    with_default = await gateway({**config, "routing": {"default_model": "house"}})
    status, headers, _ = await _post(with_default, OK)
    assert status == 200 and headers["x-pixelgate-upstream-model"] == "gpt-image-1.5"
    assert recorder.bodies == [OK | {"model": "gpt-image-1.5"}]


def test_a_default_model_must_be_configured() -> None:
    from pixelgate.proxy.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match=r"routing\.default_model"):
        parse_config({"providers": {"d": {"adapter": "demo"}}, "models": {"m": [{"provider": "d"}]},
                      "routing": {"default_model": "other"}}, env={})


async def test_models_retrieve_for_configured_and_wildcard_models(gateway: GatewayFactory, fake_upstream: Any) -> None:
    recorder = Recorder()
    up = await fake_upstream(recorder.handle)
    explicit = await gateway({"providers": {"up": {"adapter": "openai", "base_url": v1(up)}}, "models": {"house": [{"provider": "up"}]}})
    async with openai.AsyncOpenAI(base_url=v1(explicit), api_key="unused", max_retries=0) as client:
        assert (await client.models.retrieve("house")).id == "house"
        with pytest.raises(openai.NotFoundError) as info:
            await client.models.retrieve("nope")
        assert info.value.body["code"] == "model_not_found"  # type: ignore[index]
    wild = await gateway({"providers": {"up": {"adapter": "openai", "base_url": v1(up)}}, "models": {"*": [{"provider": "up"}]},
                          "prices": {}, "routing": {"default_model": "gpt-image-1.5"}})
    async with openai.AsyncOpenAI(base_url=v1(wild), api_key="unused", max_retries=0) as client:
        assert (await client.models.retrieve("fal-ai/flux/dev")).id == "fal-ai/flux/dev"
        # With only a "*" route the list names what the config knows: here the default.
        assert [m.id async for m in client.models.list()] == ["gpt-image-1.5"]
