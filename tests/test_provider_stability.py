"""Stability end to end: the official SDK, the real gateway, a loopback server
speaking Stability's wire format (a multipart request, the raw image back)."""

from __future__ import annotations

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
from tests.providers.stability import stability_app


@pytest.fixture
def stability(aiohttp_server):
    async def make(upstream_model: str = "sd3.5-large", **kwargs):
        seen: list[dict] = []
        upstream = await aiohttp_server(stability_app(seen, **kwargs))
        config = provider_config("stability", str(upstream.make_url("/")), upstream_model=upstream_model)
        return await gateway_for(aiohttp_server, config), seen

    return make


async def test_sdk_without_stream(stability) -> None:
    gw, seen = await stability()
    async with sdk(gw) as client:
        result = await client.images.generate(
            model="img", prompt="a lighthouse — at dusk", size="1024x1536", extra_body={"seed": 5, "negative_prompt": "fog"}
        )
    assert png_size(result.data[0].b64_json) == (64, 64)
    assert result.size == "1024x1536" and result.output_format == "png"
    assert seen == [{
        "path": "/v2beta/stable-image/generate/sd3",
        # Stability's server reads it as a form: the non-ASCII prompt arrives intact.
        "fields": {"prompt": "a lighthouse — at dusk", "seed": "5", "negative_prompt": "fog", "aspect_ratio": "2:3",
                   "output_format": "png", "model": "sd3.5-large"},
        "auth": "Bearer provider-secret",
        "accept": "image/*",
        "content_type": "multipart/form-data",
    }]


async def test_sdk_stream(stability) -> None:
    gw, seen = await stability(upstream_model="ultra")
    async with sdk(gw) as client:
        events = await stream_events(client, model="img", prompt="a lighthouse", output_format="jpeg")
    assert len(events) == 1
    check_completed(events[0])
    assert png_size(events[0].b64_json) == (64, 64)
    assert seen[0]["path"] == "/v2beta/stable-image/generate/ultra"
    assert "model" not in seen[0]["fields"]


async def test_content_filtered(stability) -> None:
    gw, _ = await stability(finish_reason="CONTENT_FILTERED")
    async with sdk(gw) as client:
        with pytest.raises(openai.BadRequestError) as info:
            await client.images.generate(model="img", prompt="refused", stream=True)
    assert info.value.code == "moderation_blocked"


async def test_moderation_403(stability) -> None:
    gw, _ = await stability(status=403, error_name="content_moderation")
    async with sdk(gw) as client:
        with pytest.raises(openai.BadRequestError) as info:
            await client.images.generate(model="img", prompt="refused")
    assert info.value.code == "moderation_blocked"
    assert "Your request was refused." in info.value.message


async def test_rate_limited(stability) -> None:
    gw, _ = await stability(status=429, error_name="rate_limit_exceeded")
    async with sdk(gw) as client:
        with pytest.raises(openai.RateLimitError) as info:
            await client.images.generate(model="img", prompt="a lighthouse")
    assert info.value.response.headers["retry-after"] == "4"
