"""xAI end to end: the official SDK, the real gateway, a loopback server
speaking xAI's images API (aspect_ratio, data-URI base64, silent moderation)."""

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
from tests.providers.xai import xai_app


@pytest.fixture
async def xai(aiohttp_server):
    async def make(*, options: dict | None = None, **kwargs):
        seen: list[dict] = []
        upstream = await aiohttp_server(xai_app(seen, **kwargs))
        config = provider_config("xai", str(upstream.make_url("/v1")), options=options,
                                 upstream_model="grok-imagine-image")
        return await gateway_for(aiohttp_server, config), seen

    return make


async def test_sdk_without_stream(xai) -> None:
    gw, seen = await xai()
    async with sdk(gw) as client:
        result = await client.images.generate(model="img", prompt="a fox", size="1024x1536", n=2, quality="low")
    assert [png_size(d.b64_json) for d in result.data] == [(64, 64), (64, 64)]
    # The data URI said png: that is what the client is told.
    assert result.output_format == "png" and result.size == "1024x1536" and result.quality == "low"
    assert seen[0]["body"] == {"model": "grok-imagine-image", "prompt": "a fox", "n": 2, "aspect_ratio": "2:3",
                               "quality": "low", "response_format": "b64_json"}
    assert seen[0]["auth"] == "Bearer provider-secret"


async def test_sdk_stream(xai) -> None:
    gw, _ = await xai()
    async with sdk(gw) as client:
        events = await stream_events(client, model="img", prompt="a fox", n=2, size="1536x1024")
    assert [e.type for e in events] == ["image_generation.completed"] * 2
    for event in events:
        check_completed(event)
        assert png_size(event.b64_json) == (64, 64)
        assert event.output_format == "png"


async def test_stream_keeps_alive_while_xai_works(xai) -> None:
    gw, _ = await xai(delay=0.7)
    async with sdk(gw) as client, client.with_streaming_response.images.generate(
        model="img", prompt="a fox", stream=True
    ) as response:
        raw = b"".join([chunk async for chunk in response.iter_bytes()])
    assert raw.startswith(b": keep-alive\n\n")
    assert raw.count(b"event: image_generation.completed") == 1


async def test_partly_withheld_returns_the_rest(xai) -> None:
    gw, _ = await xai(withhold=frozenset({0}))
    async with sdk(gw) as client:
        events = await stream_events(client, model="img", prompt="two foxes", n=2)
    assert len(events) == 1
    check_completed(events[0])
    assert png_size(events[0].b64_json) == (64, 64)


@pytest.mark.parametrize("stream", [False, True])
async def test_all_withheld_is_moderation_blocked(xai, stream: bool) -> None:
    gw, _ = await xai(withhold=frozenset({0}))
    async with sdk(gw) as client:
        with pytest.raises(openai.BadRequestError) as info:
            await client.images.generate(model="img", prompt="something refused", stream=stream)
    assert info.value.code == "moderation_blocked"


async def test_moderation_error_keeps_xais_words(xai) -> None:
    gw, _ = await xai(moderated=True)
    async with sdk(gw) as client:
        with pytest.raises(openai.BadRequestError) as info:
            await client.images.generate(model="img", prompt="something refused")
    assert info.value.code == "moderation_blocked"
    assert "Generated image rejected by content moderation." in info.value.message


async def test_unsupported_size_is_refused_before_any_call(xai) -> None:
    gw, seen = await xai()
    async with sdk(gw) as client:
        with pytest.raises(openai.BadRequestError) as info:
            await client.images.generate(model="img", prompt="a fox", size="1792x1024")
    assert info.value.code == "unsupported_parameter" and info.value.param == "size"
    assert seen == []


async def test_unsupported_dropped_and_named(xai) -> None:
    gw, seen = await xai(options={"unsupported": "drop"})
    async with sdk(gw) as client:
        raw = await client.images.with_raw_response.generate(model="img", prompt="a fox", style="vivid",
                                                            size="1792x1024")
    assert raw.headers["x-pixelgate-dropped-params"] == "size,style"
    assert png_size(raw.parse().data[0].b64_json) == (64, 64)
    assert "size" not in seen[0]["body"] and "style" not in seen[0]["body"]
