"""Black Forest Labs end to end: submit, poll, download, through the real
relay, driven by the official SDK."""

from __future__ import annotations

import openai
import pytest

from tests.providers.bfl import bfl_app
from tests.providers.common import check_completed, gateway_for, png_size, provider_config, sdk, stream_events

OPTIONS = {"poll_interval": 0.05, "fetch_hosts": ["127.0.0.1"]}


@pytest.fixture
def bfl(aiohttp_server):
    async def make(**kwargs):
        seen: list[dict] = []
        upstream = await aiohttp_server(bfl_app(seen, **kwargs))
        config = provider_config("bfl", str(upstream.make_url("/v1")), options=OPTIONS, upstream_model="flux-pro-1.1")
        return await gateway_for(aiohttp_server, config), seen

    return make


async def test_sdk_without_stream(bfl) -> None:
    gw, seen = await bfl(pending_polls=2)
    async with sdk(gw) as client:
        result = await client.images.generate(model="img", prompt="a lighthouse", size="1024x1024")
    assert png_size(result.data[0].b64_json) == (64, 64)
    assert [s["path"] for s in seen] == ["/v1/flux-pro-1.1", "/v1/get_result", "/v1/get_result", "/v1/get_result",
                                         "/delivery/task-1.png"]
    assert seen[0]["body"] == {"prompt": "a lighthouse", "width": 1024, "height": 1024, "output_format": "png"}
    # The key goes to the API host, never to the file host.
    assert [s["key"] for s in seen] == ["provider-secret"] * 4 + [None]


async def test_sdk_stream_with_keepalives(bfl) -> None:
    gw, _ = await bfl(pending_polls=6)  # ~0.3 s of polling at 0.05 s; keep-alives every 0.2 s
    async with sdk(gw) as client:
        events = await stream_events(client, model="img", prompt="a lighthouse")
    assert len(events) == 1
    check_completed(events[0])
    assert png_size(events[0].b64_json) == (64, 64)


async def test_url_response_format(bfl) -> None:
    gw, seen = await bfl(pending_polls=0)
    async with sdk(gw) as client:
        result = await client.images.generate(model="img", prompt="a lighthouse", response_format="url")
    assert result.data[0].url.endswith("/delivery/task-1.png?sig=signed")
    assert not any(s["path"].startswith("/delivery") for s in seen)


async def test_moderated(bfl) -> None:
    gw, _ = await bfl(pending_polls=0, status="Request Moderated")
    async with sdk(gw) as client:
        with pytest.raises(openai.BadRequestError) as info:
            await client.images.generate(model="img", prompt="refused")
    assert info.value.code == "moderation_blocked"


async def test_moderated_after_keepalives_is_an_error_event(bfl) -> None:
    gw, _ = await bfl(pending_polls=6, status="Content Moderated")
    async with sdk(gw) as client:
        stream = await client.images.generate(model="img", prompt="refused", stream=True)
        with pytest.raises(openai.APIError) as info:
            async for _ in stream:
                pass
    assert info.value.body["code"] == "moderation_blocked"


async def test_client_leaving_stops_the_polling(bfl) -> None:
    import asyncio

    import aiohttp

    gw, seen = await bfl(pending_polls=10_000)  # never ready
    async with aiohttp.ClientSession() as session:
        resp = await session.post(gw.make_url("/v1/images/generations"),
                                  json={"model": "img", "prompt": "a lighthouse", "stream": True})
        assert await resp.content.readuntil(b"\n\n") == b": keep-alive\n\n"
        resp.close()  # the client leaves mid-job
    await asyncio.sleep(0.15)
    polls = len(seen)
    await asyncio.sleep(0.3)  # six poll intervals
    assert len(seen) == polls, "the gateway kept polling for a client that left"
