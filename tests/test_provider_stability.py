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


# Edits: the SDK's multipart upload, re-framed for Stability around the spooled files.

def _upload(fmt: str, size: tuple[int, int], color: tuple[int, ...]) -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    mode = "RGBA" if fmt == "PNG" else "RGB"
    Image.new(mode, size, color[: len(mode)]).save(out, fmt)
    return out.getvalue()


PHOTO = _upload("PNG", (96, 64), (30, 120, 200, 255))
# White = edit, as Stability reads a mask (the operator vouches for it with edit_mask: white).
MASK = _upload("PNG", (96, 64), (255, 255, 255, 255))


async def test_sdk_edit_without_mask_is_sd3_image_to_image(stability) -> None:
    gw, seen = await stability()
    async with sdk(gw) as client:
        result = await client.images.edit(
            model="img", image=("photo.png", PHOTO, "image/png"), prompt="as a watercolour", size="960x640",
            extra_body={"seed": "5", "negative_prompt": "fog"},
        )
    assert png_size(result.data[0].b64_json) == (64, 64)
    assert result.size == "auto" and result.output_format == "png"
    (call,) = seen
    assert call["path"] == "/v2beta/stable-image/generate/sd3"
    assert call["fields"] == {"prompt": "as a watercolour", "strength": "0.6", "seed": "5", "negative_prompt": "fog",
                              "mode": "image-to-image", "output_format": "png", "model": "sd3.5-large"}
    # The uploaded bytes, exactly: the gateway neither decoded nor re-encoded them.
    assert call["files"] == {"image": {"filename": "image.png", "content_type": "image/png", "data": PHOTO}}
    assert call["auth"] == "Bearer provider-secret" and call["accept"] == "image/*"


async def test_sdk_streamed_inpaint_with_a_white_mask(aiohttp_server) -> None:
    seen: list[dict] = []
    upstream = await aiohttp_server(stability_app(seen))
    config = provider_config("stability", str(upstream.make_url("/")), upstream_model="sd3.5-large",
                             options={"edit_mask": "white"})
    gw = await gateway_for(aiohttp_server, config)
    photo = _upload("JPEG", (96, 64), (200, 40, 40))
    async with sdk(gw) as client:
        stream = await client.images.edit(
            model="img", image=("photo.jpg", photo, "image/jpeg"), mask=("mask.png", MASK, "image/png"),
            prompt="a red balloon", stream=True, output_format="webp",
        )
        events = [event async for event in stream]
    assert [event.type for event in events] == ["image_edit.completed"]
    assert png_size(events[0].b64_json) == (64, 64)
    assert events[0].usage is not None and events[0].output_format == "webp"
    (call,) = seen
    assert call["path"] == "/v2beta/stable-image/edit/inpaint"
    assert call["fields"] == {"prompt": "a red balloon", "output_format": "webp"}
    assert call["files"] == {
        "image": {"filename": "image.jpeg", "content_type": "image/jpeg", "data": photo},
        "mask": {"filename": "mask.png", "content_type": "image/png", "data": MASK},
    }


async def test_edit_with_an_openai_mask_is_refused_before_any_call(stability) -> None:
    gw, seen = await stability()
    async with sdk(gw) as client:
        with pytest.raises(openai.BadRequestError) as info:
            await client.images.edit(model="img", image=("photo.png", PHOTO, "image/png"),
                                     mask=("mask.png", MASK, "image/png"), prompt="a red balloon")
    assert info.value.code == "unsupported_parameter" and info.value.param == "mask"
    assert "options.edit_mask" in info.value.message
    assert seen == []


async def test_json_edit_with_a_data_url_sends_the_decoded_bytes(stability) -> None:
    import base64

    import aiohttp

    gw, seen = await stability()
    body = {"model": "img", "prompt": "snow", "seed": 7,
            "images": [{"image_url": "data:image/png;base64," + base64.b64encode(PHOTO).decode()}]}
    async with aiohttp.ClientSession() as session:
        async with session.post(gw.make_url("/v1/images/edits"), json=body) as resp:
            assert resp.status == 200, await resp.text()
            result = await resp.json()
    assert png_size(result["data"][0]["b64_json"]) == (64, 64)
    (call,) = seen
    assert call["fields"]["seed"] == "7" and call["fields"]["mode"] == "image-to-image"
    assert call["files"]["image"]["data"] == PHOTO


async def test_json_edit_with_an_https_url_is_refused_before_any_call(stability) -> None:
    import aiohttp

    gw, seen = await stability()
    body = {"model": "img", "prompt": "snow", "images": [{"image_url": "https://images.example.com/a.png"}]}
    async with aiohttp.ClientSession() as session:
        async with session.post(gw.make_url("/v1/images/edits"), json=body) as resp:
            assert resp.status == 400
            error = (await resp.json())["error"]
    assert error["param"] == "images" and error["code"] == "unsupported_parameter"
    assert "data: URL" in error["message"]
    assert seen == []
