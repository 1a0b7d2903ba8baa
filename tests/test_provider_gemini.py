"""Gemini end to end: the official SDK, the real gateway, a loopback server speaking
generateContent with image output (Gemini API form: x-goog-api-key, inlineData, usageMetadata)."""

from __future__ import annotations

import openai
import pytest

from pixelgate.proxy.config import ConfigError, parse_config
from tests.providers.common import (
    check_completed,
    gateway_for,
    png_size,
    provider_config,
    sdk,
    stream_events,
)
from tests.providers.gemini import gemini_app


@pytest.fixture
async def gemini(aiohttp_server):
    async def make(**kwargs):
        seen: list[dict] = []
        upstream = await aiohttp_server(gemini_app(seen, **kwargs))
        config = provider_config("gemini", str(upstream.make_url("/v1beta")), upstream_model="gemini-2.5-flash-image")
        gw = await gateway_for(aiohttp_server, config)
        return gw, seen

    return make


async def test_sdk_without_stream(gemini) -> None:
    gw, seen = await gemini()
    async with sdk(gw) as client:
        result = await client.images.generate(model="img", prompt="a fox", size="1024x1536")
    assert [png_size(d.b64_json) for d in result.data] == [(64, 64)]
    assert result.output_format == "png"
    assert result.usage is not None
    assert (result.usage.input_tokens, result.usage.output_tokens, result.usage.total_tokens) == (6, 1290, 1296)
    assert result.usage.input_tokens_details.text_tokens == 6
    assert seen == [{
        "model": "gemini-2.5-flash-image",
        "key": "provider-secret",
        "body": {"contents": [{"role": "user", "parts": [{"text": "a fox"}]}],
                 "generationConfig": {"responseModalities": ["TEXT", "IMAGE"], "imageConfig": {"aspectRatio": "2:3"}}},
    }]


async def test_sdk_stream(gemini) -> None:
    gw, _ = await gemini(delay=0.5)
    async with sdk(gw) as client:
        events = await stream_events(client, model="img", prompt="a fox")
    assert [e.type for e in events] == ["image_generation.completed"]
    check_completed(events[0])
    assert png_size(events[0].b64_json) == (64, 64)
    # usageMetadata came after the image; the event waited for it.
    assert events[0].usage.total_tokens == 1296


async def test_safety_finish_reason_is_moderation_blocked(gemini) -> None:
    gw, _ = await gemini(finish="IMAGE_SAFETY")
    async with sdk(gw) as client:
        with pytest.raises(openai.BadRequestError) as info:
            await client.images.generate(model="img", prompt="a fox")
    assert info.value.code == "moderation_blocked"
    assert "IMAGE_SAFETY" in info.value.message


async def test_rate_limit_keeps_google_retry_delay(gemini) -> None:
    gw, _ = await gemini(status=429)
    async with sdk(gw) as client:
        with pytest.raises(openai.RateLimitError) as info:
            await client.images.generate(model="img", prompt="a fox", stream=True)
    assert info.value.response.headers["retry-after"] == "3"
    assert "Resource has been exhausted" in info.value.message


async def test_stream_keeps_alive_while_gemini_works(gemini) -> None:
    # keepalive_interval is 0.2 s in these tests; the provider takes 0.7 s.
    gw, _ = await gemini(delay=0.7)
    async with sdk(gw) as client, client.with_streaming_response.images.generate(
        model="img", prompt="a fox", stream=True
    ) as response:
        assert response.status_code == 200
        raw = b"".join([chunk async for chunk in response.iter_bytes()])
    assert raw.startswith(b": keep-alive\n\n")
    assert raw.count(b"event: image_generation.completed") == 1


async def test_safety_block_after_keepalives_is_an_error_event(gemini) -> None:
    gw, _ = await gemini(finish="PROHIBITED_CONTENT", delay=0.5)
    async with sdk(gw) as client:
        stream = await client.images.generate(model="img", prompt="a fox", stream=True)
        with pytest.raises(openai.APIError) as info:
            async for _ in stream:
                pass
    assert info.value.body["code"] == "moderation_blocked"


@pytest.mark.parametrize(
    ("options", "api_key", "problem"),
    [
        ({"api": "vertex"}, "token", "providers.gemini.options.project: required when options.api is vertex"),
        ({"api": "vertex", "project": "p/../x"}, "token", "providers.gemini.options.project: not a Google Cloud"),
        ({"api": "vertex", "project": "my-project", "location": "x.evil.com/"}, "token", "options.location: not a"),
        ({}, None, "providers.gemini.api_key: required (the Gemini API key)"),
    ],
)
def test_config_is_checked(options, api_key, problem) -> None:
    config = provider_config("gemini", "https://example.test/v1beta", options=options)
    config["providers"]["gemini"]["api_key"] = api_key
    with pytest.raises(ConfigError) as info:
        parse_config(config, env={})
    assert problem in str(info.value)
