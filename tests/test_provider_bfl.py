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


# Edits: the uploaded file's base64 inside the JSON submit, then the usual job.

def _upload(fmt: str, size: tuple[int, int], color: tuple[int, ...]) -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    mode = "RGBA" if fmt == "PNG" else "RGB"
    Image.new(mode, size, color[: len(mode)]).save(out, fmt)
    return out.getvalue()


PHOTO = _upload("PNG", (96, 64), (30, 120, 200, 255))


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()


@pytest.fixture
def bfl_edits(aiohttp_server):
    async def make(upstream_model: str = "flux-kontext-pro", **options):
        seen: list[dict] = []
        upstream = await aiohttp_server(bfl_app(seen, pending_polls=1))
        config = provider_config("bfl", str(upstream.make_url("/v1")), options={**OPTIONS, **options},
                                 upstream_model=upstream_model)
        return await gateway_for(aiohttp_server, config), seen

    return make


async def test_sdk_edit_sends_the_upload_as_base64(bfl_edits) -> None:
    gw, seen = await bfl_edits(size_as="aspect_ratio")
    async with sdk(gw) as client:
        result = await client.images.edit(model="img", image=("photo.png", PHOTO, "image/png"), prompt="make it night",
                                          size="1536x1024", extra_body={"seed": "42"})
    assert png_size(result.data[0].b64_json) == (64, 64)
    assert result.size == "1536x1024"
    assert [s["path"] for s in seen] == ["/v1/flux-kontext-pro", "/v1/get_result", "/v1/get_result", "/delivery/task-1.png"]
    # The exact bytes uploaded, as base64 (the fake decoded them as an image too).
    assert seen[0]["body"] == {"prompt": "make it night", "seed": 42, "aspect_ratio": "3:2", "output_format": "png",
                               "input_image": _b64(PHOTO)}
    assert [s["key"] for s in seen] == ["provider-secret"] * 3 + [None]


async def test_sdk_streamed_edit_with_reference_images(bfl_edits) -> None:
    gw, seen = await bfl_edits(upstream_model="flux-2-pro", max_edit_images=2)
    second = _upload("JPEG", (64, 64), (220, 200, 20))
    async with sdk(gw) as client:
        stream = await client.images.edit(
            model="img", image=[("a.png", PHOTO, "image/png"), ("b.jpg", second, "image/jpeg")],
            prompt="the first in the style of the second", stream=True,
        )
        events = [event async for event in stream]
    assert [event.type for event in events] == ["image_edit.completed"]
    assert png_size(events[0].b64_json) == (64, 64)
    body = seen[0]["body"]
    assert (body["input_image"], body["input_image_2"]) == (_b64(PHOTO), _b64(second))
    assert "input_image_3" not in body


async def test_edit_refusals_reach_no_provider(bfl_edits) -> None:
    gw, seen = await bfl_edits()
    mask = _upload("PNG", (96, 64), (0, 0, 0, 0))
    async with sdk(gw) as client:
        with pytest.raises(openai.BadRequestError) as info:
            await client.images.edit(model="img", image=("a.png", PHOTO, "image/png"), mask=("m.png", mask, "image/png"),
                                     prompt="a balloon")
        assert (info.value.code, info.value.param) == ("unsupported_parameter", "mask")
        with pytest.raises(openai.BadRequestError) as info:
            await client.images.edit(model="img", image=[("a.png", PHOTO, "image/png"), ("b.png", PHOTO, "image/png")],
                                     prompt="merge them")
        assert (info.value.code, info.value.param) == ("unsupported_parameter", "image")
    assert seen == []


async def test_json_edits_data_url_passes_and_https_url_is_refused(bfl_edits) -> None:
    import aiohttp

    gw, seen = await bfl_edits()
    url = "data:image/png;base64," + _b64(PHOTO)
    async with aiohttp.ClientSession() as session:
        refused = {"model": "img", "prompt": "x", "images": [{"image_url": "https://images.example.com/a.png"}]}
        async with session.post(gw.make_url("/v1/images/edits"), json=refused) as resp:
            assert resp.status == 400
            error = (await resp.json())["error"]
        assert (error["param"], error["code"]) == ("images", "unsupported_parameter")
        assert seen == []
        body = {"model": "img", "prompt": "x", "raw": True, "images": [{"image_url": url}]}
        async with session.post(gw.make_url("/v1/images/edits"), json=body) as resp:
            assert resp.status == 200, await resp.text()
            result = await resp.json()
    assert png_size(result["data"][0]["b64_json"]) == (64, 64)
    assert seen[0]["body"] == {"prompt": "x", "raw": True, "output_format": "png", "input_image": _b64(PHOTO)}
