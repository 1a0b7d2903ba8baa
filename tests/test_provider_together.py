"""Together end to end: the official SDK, the real gateway, a loopback server
speaking Together's wire format (width/height, response_format "base64")."""

from __future__ import annotations

import json

import openai
import pytest

from tests.providers.common import (
    check_completed,
    gateway_for,
    png_size,
    provider_config,
    sdk,
    stream_events,
)
from tests.providers.together import together_app


@pytest.fixture
async def together(aiohttp_server):
    async def make(**kwargs):
        seen: list[dict] = []
        upstream = await aiohttp_server(together_app(seen, **kwargs))
        gw = await gateway_for(aiohttp_server, provider_config("together", str(upstream.make_url("/v1"))))
        return gw, seen

    return make


async def test_sdk_without_stream(together) -> None:
    gw, seen = await together()
    async with sdk(gw) as client:
        result = await client.images.generate(model="img", prompt="a fox", size="1024x1536", n=2)
    assert [png_size(d.b64_json) for d in result.data] == [(64, 64), (64, 64)]
    assert seen[0]["body"] == {"model": "upstream-model", "prompt": "a fox", "n": 2, "width": 1024, "height": 1536,
                               "response_format": "base64", "output_format": "png"}
    assert seen[0]["auth"] == "Bearer provider-secret"


async def test_sdk_stream(together) -> None:
    gw, _ = await together()
    async with sdk(gw) as client:
        events = await stream_events(client, model="img", prompt="a fox", n=2)
    assert [e.type for e in events] == ["image_generation.completed"] * 2
    for event in events:
        check_completed(event)
        assert png_size(event.b64_json) == (64, 64)


async def test_stream_keeps_alive_while_the_provider_works(together) -> None:
    # keepalive_interval is 0.2 s in these tests; the provider takes 0.7 s.
    gw, _ = await together(delay=0.7)
    async with sdk(gw) as client, client.with_streaming_response.images.generate(
        model="img", prompt="a fox", stream=True
    ) as response:
        assert response.status_code == 200
        raw = b"".join([chunk async for chunk in response.iter_bytes()])
    assert raw.startswith(b": keep-alive\n\n")
    assert raw.count(b"event: image_generation.completed") == 1


async def test_error_before_first_byte_is_a_real_status(together) -> None:
    gw, _ = await together(status=429)
    async with sdk(gw) as client:
        with pytest.raises(openai.RateLimitError) as info:
            await client.images.generate(model="img", prompt="a fox", stream=True)
    assert info.value.response.headers["retry-after"] == "3"
    assert "Rate limit exceeded for this model" in info.value.message


async def test_error_after_keepalives_is_an_error_event(together) -> None:
    gw, _ = await together(status=500, delay=0.5)
    async with sdk(gw) as client:
        stream = await client.images.generate(model="img", prompt="a fox", stream=True)
        with pytest.raises(openai.APIError) as info:
            async for _ in stream:
                pass
    assert info.value.body["code"] == "upstream_error"
    json.dumps(info.value.body)
