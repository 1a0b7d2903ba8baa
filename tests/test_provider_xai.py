"""xAI end to end: the official SDK, the real gateway, a loopback server
speaking xAI's images API (aspect_ratio, data-URI base64, silent moderation)."""

from __future__ import annotations

import base64
import io

import aiohttp
import openai
import pytest
from PIL import Image

from tests.providers.common import (
    PNG,
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


# Edits: the SDK's multipart upload becomes xAI's JSON edit, the image a data
# URI whose base64 the fake checks against the file sent.

def _image(fmt: str, size: tuple[int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 90, 30)).save(out, fmt)
    return out.getvalue()


JPEG = _image("JPEG", (40, 32))
WEBP = _image("WEBP", (24, 24))


def _check_edit_completed(event) -> None:
    assert event.type == "image_edit.completed"
    for field in ("b64_json", "created_at", "size", "quality", "background", "output_format", "usage"):
        assert getattr(event, field, None) is not None, field


async def test_sdk_edit_without_stream(xai) -> None:
    gw, seen = await xai(uploads=[(PNG, "image/png")])
    async with sdk(gw) as client:
        result = await client.images.edit(model="img", image=("fox.png", PNG, "image/png"), prompt="give it a hat",
                                          size="1024x1536", n=2, quality="low", extra_body={"seed": 7})
    assert [png_size(d.b64_json) for d in result.data] == [(64, 64), (64, 64)]
    assert result.output_format == "png" and result.size == "1024x1536" and result.quality == "low"
    (call,) = seen
    assert call["path"] == "/v1/images/edits" and call["auth"] == "Bearer provider-secret" and call["sized"]
    body = {k: v for k, v in call["body"].items() if k != "image"}
    # The form's "7" reaches xAI as the number it is; "2" as n.
    assert body == {"model": "grok-imagine-image", "prompt": "give it a hat", "n": 2, "aspect_ratio": "2:3",
                    "quality": "low", "response_format": "b64_json", "seed": 7}


async def test_sdk_edit_stream_three_images(xai) -> None:
    uploads = [(PNG, "image/png"), (JPEG, "image/jpeg"), (WEBP, "image/webp")]
    gw, seen = await xai(uploads=uploads)
    async with sdk(gw) as client:
        stream = await client.images.edit(
            model="img", image=[("a.png", PNG, "image/png"), ("b.jpg", JPEG, "image/jpeg"), ("c.webp", WEBP, "image/webp")],
            prompt="<IMAGE_0> in <IMAGE_1>'s hat on <IMAGE_2>'s sofa", stream=True,
        )
        events = [event async for event in stream]
    assert [e.type for e in events] == ["image_edit.completed"]
    _check_edit_completed(events[0])
    assert png_size(events[0].b64_json) == (64, 64)
    assert len(seen[0]["body"]["images"]) == 3 and "image" not in seen[0]["body"]


async def test_json_edit_with_data_url(xai) -> None:
    gw, seen = await xai(uploads=[(JPEG, "image/jpeg")])
    url = "data:image/jpeg;base64," + base64.b64encode(JPEG).decode()
    body = {"model": "img", "prompt": "at night", "images": [{"image_url": url}], "resolution": "2k"}
    async with aiohttp.ClientSession() as session, session.post(gw.make_url("/v1/images/edits"), json=body) as resp:
        assert resp.status == 200, await resp.text()
        answer = await resp.json()
    assert png_size(answer["data"][0]["b64_json"]) == (64, 64)
    assert seen[0]["body"]["resolution"] == "2k" and seen[0]["body"]["image"]["type"] == "image_url"


async def test_json_edit_with_https_url_is_refused_before_any_call(xai) -> None:
    gw, seen = await xai()
    body = {"model": "img", "prompt": "at night", "images": [{"image_url": "https://example.com/fox.png"}]}
    async with aiohttp.ClientSession() as session, session.post(gw.make_url("/v1/images/edits"), json=body) as resp:
        assert resp.status == 400
        error = (await resp.json())["error"]
    assert error["code"] == "unsupported_parameter" and error["param"] == "images"
    assert seen == []


@pytest.mark.parametrize("what", ["mask", "four images", "input_fidelity"])
async def test_edit_refused_before_any_call(xai, what: str) -> None:
    gw, seen = await xai()
    image = ("a.png", PNG, "image/png")
    kwargs = {"mask": {"mask": image}, "four images": {"image": [image] * 4},
              "input_fidelity": {"input_fidelity": "high"}}[what]
    async with sdk(gw) as client:
        with pytest.raises(openai.BadRequestError) as info:
            await client.images.edit(**{"model": "img", "image": image, "prompt": "p", **kwargs})
    assert info.value.code == "unsupported_parameter"
    assert info.value.param == {"mask": "mask", "four images": "image", "input_fidelity": "input_fidelity"}[what]
    assert seen == []
