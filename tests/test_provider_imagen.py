"""Imagen end to end: the official SDK, the real gateway, a loopback server speaking
Imagen's :predict in the Vertex form (project/location path, Bearer token)."""

from __future__ import annotations

import openai
import pytest

from tests.providers.common import (
    PNG,
    check_completed,
    gateway_for,
    png_size,
    provider_config,
    sdk,
    stream_events,
)
from tests.providers.imagen import imagen_app

VERTEX = {"api": "vertex", "project": "test-project", "location": "us-central1"}


# For an error answered before any byte: with the suite's 0.2 s keep-alive, a loaded machine
# can send a keep-alive first, and the error then is an event (the subject of another test).
_NO_EARLY_KEEPALIVE = {"keepalive_interval": 30}


@pytest.fixture
async def imagen(aiohttp_server):
    async def make(server: dict | None = None, **kwargs):
        seen: list[dict] = []
        upstream = await aiohttp_server(imagen_app(seen, **kwargs))
        config = provider_config("imagen", str(upstream.make_url("/v1")), options=VERTEX,
                                 upstream_model="imagen-4.0-generate-001", server=server)
        gw = await gateway_for(aiohttp_server, config)
        return gw, seen

    return make


async def test_sdk_without_stream(imagen) -> None:
    gw, seen = await imagen()
    async with sdk(gw) as client:
        result = await client.images.generate(model="img", prompt="a fox", size="1792x1024", n=2)
    assert [png_size(d.b64_json) for d in result.data] == [(64, 64), (64, 64)]
    assert result.usage is None  # per-image billing: the relay counts images
    assert seen == [{
        "model": "imagen-4.0-generate-001",
        "auth": "Bearer provider-secret",
        "body": {"instances": [{"prompt": "a fox"}],
                 "parameters": {"sampleCount": 2, "aspectRatio": "16:9", "sampleImageSize": "2K",
                                "outputOptions": {"mimeType": "image/png"}, "includeRaiReason": True}},
    }]


async def test_sdk_stream(imagen) -> None:
    gw, _ = await imagen(delay=0.5)
    async with sdk(gw) as client:
        events = await stream_events(client, model="img", prompt="a fox", n=3)
    assert [e.type for e in events] == ["image_generation.completed"] * 3
    for event in events:
        check_completed(event)
        assert png_size(event.b64_json) == (64, 64)


async def test_some_filtered_returns_the_rest(imagen) -> None:
    gw, _ = await imagen(filtered=1)
    async with sdk(gw) as client:
        result = await client.images.generate(model="img", prompt="foxes", n=3)
    assert [png_size(d.b64_json) for d in result.data] == [(64, 64), (64, 64)]


async def test_all_filtered_is_moderation_blocked(imagen) -> None:
    gw, _ = await imagen(filtered=2)
    async with sdk(gw) as client:
        with pytest.raises(openai.BadRequestError) as info:
            await client.images.generate(model="img", prompt="foxes", n=2)
    assert info.value.code == "moderation_blocked"
    assert "filtered out 2 generated images" in info.value.message


async def test_rate_limit_keeps_retry_after(imagen) -> None:
    gw, _ = await imagen(status=429, server=_NO_EARLY_KEEPALIVE)
    async with sdk(gw) as client:
        with pytest.raises(openai.RateLimitError) as info:
            await client.images.generate(model="img", prompt="a fox", stream=True)
    assert info.value.response.headers["retry-after"] == "3"
    assert "Quota exceeded" in info.value.message


async def test_edit_is_unsupported_and_reaches_no_imagen(imagen) -> None:
    # The generate models cannot edit (see adapters/imagen.py): a 400 the client can act on, no call.
    gw, seen = await imagen()
    async with sdk(gw) as client:
        with pytest.raises(openai.BadRequestError) as info:
            await client.images.edit(model="img", prompt="add a hat", image=("a.png", PNG, "image/png"))
    assert (info.value.code, info.value.param) == ("unsupported_operation", "model")
    assert "cannot edit images" in info.value.message
    assert seen == []
