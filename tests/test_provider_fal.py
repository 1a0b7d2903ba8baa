"""fal end to end: submit to the queue, poll the status, read the result,
download each image, through the real relay, driven by the official SDK."""

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
from tests.providers.fal import fal_app

OPTIONS = {"poll_interval": 0.05, "fetch_hosts": ["127.0.0.1"]}


@pytest.fixture
def fal(aiohttp_server):
    async def make(**kwargs):
        seen: list[dict] = []
        upstream = await aiohttp_server(fal_app(seen, **kwargs))
        config = provider_config("fal", str(upstream.make_url("/")), options=OPTIONS, upstream_model="fal-ai/flux/dev")
        return await gateway_for(aiohttp_server, config), seen

    return make


async def test_sdk_without_stream(fal) -> None:
    gw, seen = await fal(queued_polls=2)
    async with sdk(gw) as client:
        result = await client.images.generate(model="img", prompt="two lighthouses", size="1024x768", n=2)
    assert [png_size(d.b64_json) for d in result.data] == [(64, 64), (64, 64)]
    assert [s["path"] for s in seen] == [
        "/fal-ai/flux/dev",
        "/fal-ai/flux/requests/req-1/status", "/fal-ai/flux/requests/req-1/status", "/fal-ai/flux/requests/req-1/status",
        "/fal-ai/flux/requests/req-1",
        "/files/req-1-0.png", "/files/req-1-1.png",
    ]
    assert seen[0]["body"] == {"prompt": "two lighthouses", "num_images": 2,
                               "image_size": {"width": 1024, "height": 768}, "output_format": "png"}
    # The key goes to the queue API, never to the file host.
    assert [s["key"] for s in seen] == ["Key provider-secret"] * 5 + [None, None]


async def test_sdk_stream_with_keepalives(fal) -> None:
    gw, _ = await fal(queued_polls=6)  # ~0.3 s of polling at 0.05 s; keep-alives every 0.2 s
    async with sdk(gw) as client:
        events = await stream_events(client, model="img", prompt="two lighthouses", n=2)
    assert [e.type for e in events] == ["image_generation.completed"] * 2
    for event in events:
        check_completed(event)
        assert png_size(event.b64_json) == (64, 64)


async def test_flagged_image_is_dropped(fal) -> None:
    gw, seen = await fal(queued_polls=0, nsfw=[True, False])
    async with sdk(gw) as client:
        result = await client.images.generate(model="img", prompt="two lighthouses", n=2)
    assert len(result.data) == 1 and png_size(result.data[0].b64_json) == (64, 64)
    assert [s["path"] for s in seen if s["path"].startswith("/files")] == ["/files/req-1-1.png"]


async def test_all_flagged_is_moderation_blocked(fal) -> None:
    gw, _ = await fal(queued_polls=0, nsfw=[True])
    async with sdk(gw) as client:
        with pytest.raises(openai.BadRequestError) as info:
            await client.images.generate(model="img", prompt="refused")
    assert info.value.code == "moderation_blocked"


async def test_policy_error_after_keepalives_is_an_error_event(fal) -> None:
    body = {"detail": [{"loc": ["body", "prompt"], "msg": "flagged by a content checker",
                        "type": "content_policy_violation"}]}
    gw, _ = await fal(queued_polls=6, result_status=422, result_body=body)
    async with sdk(gw) as client:
        stream = await client.images.generate(model="img", prompt="refused", stream=True)
        with pytest.raises(openai.APIError) as info:
            async for _ in stream:
                pass
    assert info.value.body["code"] == "moderation_blocked"
    assert "flagged by a content checker" in info.value.body["message"]
