"""Azure OpenAI end to end: the official SDK, the real gateway, a loopback
server speaking Azure's two URL forms (deployments + api-version, and v1)."""

from __future__ import annotations

import openai
import pytest

from pixelgate.proxy.config import ConfigError, parse_config
from tests.providers.azure import azure_app
from tests.providers.common import (
    check_completed,
    gateway_for,
    png_size,
    provider_config,
    sdk,
    stream_events,
)


@pytest.fixture
async def azure(aiohttp_server):
    async def make(*, options: dict | None = None, api_key: str = "provider-secret", **kwargs):
        seen: list[dict] = []
        upstream = await aiohttp_server(azure_app(seen, **kwargs))
        config = provider_config("azure", str(upstream.make_url("")), options=options, api_key=api_key,
                                 upstream_model="gpt-image-1-dep")
        return await gateway_for(aiohttp_server, config), seen

    return make


async def test_sdk_without_stream_on_the_deployments_path(azure) -> None:
    gw, seen = await azure()
    async with sdk(gw) as client:
        raw = await client.images.with_raw_response.generate(model="img", prompt="a fox", size="1024x1536", n=2)
        result = raw.parse()
    assert [png_size(d.b64_json) for d in result.data] == [(64, 64), (64, 64)]
    assert result.usage is not None and result.usage.total_tokens == 281
    assert seen[0]["path"] == "/openai/deployments/gpt-image-1-dep/images/generations"
    assert seen[0]["query"] == {"api-version": "2025-04-01-preview"}
    assert seen[0]["api-key"] == "provider-secret" and seen[0]["auth"] is None
    assert seen[0]["body"] == {"model": "gpt-image-1-dep", "prompt": "a fox", "size": "1024x1536", "n": 2}
    # Azure's own headers stay at the gateway; the rate-limit ones are allow-listed.
    headers = {k.lower() for k in raw.headers}
    assert not {"apim-request-id", "x-ms-region", "x-ms-client-request-id"} & headers
    assert raw.headers["x-ratelimit-remaining-requests"] == "59"


async def test_sdk_stream_on_the_v1_path_with_an_entra_token(azure) -> None:
    gw, seen = await azure(options={"api": "v1", "auth": "bearer"}, api_key="entra-token")
    async with sdk(gw) as client:
        events = await stream_events(client, model="img", prompt="a fox", n=2, partial_images=1)
    assert [e.type for e in events] == ["image_generation.partial_image", "image_generation.completed"] * 2
    for event in events:
        assert png_size(event.b64_json) == (64, 64)
        if event.type == "image_generation.completed":
            check_completed(event)
    assert seen[0]["path"] == "/openai/v1/images/generations" and seen[0]["query"] == {}
    assert seen[0]["auth"] == "Bearer entra-token" and seen[0]["api-key"] is None
    assert seen[0]["body"]["model"] == "gpt-image-1-dep"


async def test_stream_headers_do_not_leak_azure_ids(azure) -> None:
    gw, _ = await azure()
    async with sdk(gw) as client, client.with_streaming_response.images.generate(
        model="img", prompt="a fox", stream=True
    ) as response:
        raw = b"".join([chunk async for chunk in response.iter_bytes()])
        headers = {k.lower() for k in response.headers}
    assert raw.count(b"event: image_generation.completed") == 1
    assert not {"apim-request-id", "x-ms-region"} & headers


@pytest.mark.parametrize("stream", [False, True])
async def test_content_filter_is_moderation_blocked(azure, stream: bool) -> None:
    gw, _ = await azure(filtered=True)
    async with sdk(gw) as client:
        with pytest.raises(openai.BadRequestError) as info:
            await client.images.generate(model="img", prompt="something refused", stream=stream)
    assert info.value.code == "moderation_blocked"
    assert info.value.type == "image_generation_user_error"
    assert "Your task failed as a result of our safety system." in info.value.message


async def test_refused_key_is_not_the_clients_fault(azure) -> None:
    gw, _ = await azure(api_key="wrong")
    async with sdk(gw) as client:
        with pytest.raises(openai.APIStatusError) as info:
            await client.images.generate(model="img", prompt="a fox")
    assert info.value.status_code == 502
    assert info.value.code == "upstream_auth_failed"


def test_config_needs_the_resource_endpoint() -> None:
    config = provider_config("azure", "https://res.openai.azure.com")
    del config["providers"]["azure"]["base_url"]
    with pytest.raises(ConfigError, match=r"providers\.azure\.base_url: required"):
        parse_config(config, env={})
    bad = provider_config("azure", "https://res.openai.azure.com", options={"api": "v2"})
    with pytest.raises(ConfigError, match="options"):
        parse_config(bad, env={})
