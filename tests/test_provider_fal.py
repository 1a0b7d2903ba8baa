"""fal end to end: submit to the queue, poll the status, read the result,
download each image, through the real relay, driven by the official SDK;
edits with the uploads sent to the app as data: URIs."""

from __future__ import annotations

import io
from typing import Any

import aiohttp
import openai
import pytest
from PIL import Image

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
    async def make(*, upstream_model: str = "fal-ai/flux/dev", options: dict[str, Any] | None = None, **kwargs):
        seen: list[dict] = []
        upstream = await aiohttp_server(fal_app(seen, **kwargs))
        config = provider_config("fal", str(upstream.make_url("/")), options={**OPTIONS, **(options or {})},
                                 upstream_model=upstream_model)
        return await gateway_for(aiohttp_server, config), seen

    return make


def _image(fmt: str, size: tuple[int, int], color: tuple[int, ...]) -> bytes:
    out = io.BytesIO()
    mode = "RGBA" if fmt == "PNG" else "RGB"
    Image.new(mode, size, color[: len(mode)]).save(out, fmt)
    return out.getvalue()


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


# Edits.


async def test_sdk_edit_sends_each_upload_as_its_data_uri(fal) -> None:
    a, b = _image("PNG", (64, 48), (200, 30, 30, 255)), _image("JPEG", (40, 30), (10, 90, 200))
    gw, seen = await fal(upstream_model="fal-ai/nano-banana/edit", queued_polls=1,
                         expect_uploads={"image_urls": [a, b]})
    async with sdk(gw) as client:
        result = await client.images.edit(
            model="img", image=[("a.png", a, "image/png"), ("b.jpg", b, "image/jpeg")], prompt="side by side",
            n=2, size="1024x768", extra_body={"seed": 42, "negative_prompt": "blurry"},
        )
    assert [png_size(d.b64_json) for d in result.data] == [(64, 64), (64, 64)]
    assert [s["path"] for s in seen] == [
        "/fal-ai/nano-banana/edit",
        "/fal-ai/nano-banana/requests/req-1/status", "/fal-ai/nano-banana/requests/req-1/status",
        "/fal-ai/nano-banana/requests/req-1",
        "/files/req-1-0.png", "/files/req-1-1.png",
    ]
    # The sniffed types name the URIs; the form's strings became the app's JSON types where they read as such.
    assert seen[0]["body"] == {"prompt": "side by side", "seed": 42, "negative_prompt": "blurry", "num_images": 2,
                               "image_size": {"width": 1024, "height": 768}, "output_format": "png",
                               "image_urls": [f"image/png:{len(a)}", f"image/jpeg:{len(b)}"]}
    assert seen[0]["uploads"] == {"image_urls": [a, b]}
    assert [s["key"] for s in seen] == ["Key provider-secret"] * 4 + [None, None]


async def test_sdk_edit_stream_with_mask_to_an_inpainting_app(fal) -> None:
    image = _image("PNG", (64, 48), (200, 30, 30, 255))
    mask = _image("PNG", (64, 48), (0, 0, 0, 0))
    gw, seen = await fal(upstream_model="fal-ai/flux-pro/v1/fill", queued_polls=6,
                         options={"edit_inputs": {"image": "image_url", "mask": "mask_url"}},
                         expect_uploads={"image_url": image, "mask_url": mask})
    async with sdk(gw) as client:
        stream = await client.images.edit(model="img", image=("house.png", image, "image/png"),
                                          mask=("mask.png", mask, "image/png"), prompt="a red door", stream=True)
        events = [event async for event in stream]
    assert [e.type for e in events] == ["image_edit.completed"]
    assert png_size(events[0].b64_json) == (64, 64)
    for field in ("created_at", "size", "quality", "background", "output_format", "usage"):
        assert getattr(events[0], field, None) is not None, field
    assert seen[0]["uploads"] == {"image_url": image, "mask_url": mask}


async def test_edit_refusals_call_no_app(fal) -> None:
    gw, seen = await fal(upstream_model="fal-ai/nano-banana/edit")
    image = _image("PNG", (16, 16), (1, 2, 3, 255))
    async with sdk(gw) as client:
        # The default edit inputs name no mask.
        with pytest.raises(openai.BadRequestError) as info:
            await client.images.edit(model="img", image=("a.png", image, "image/png"),
                                     mask=("m.png", image, "image/png"), prompt="a door")
    assert (info.value.code, info.value.param) == ("unsupported_parameter", "mask")
    # A JSON edit whose image is an https URL: the gateway fetches no URL for a client.
    async with aiohttp.ClientSession() as session, session.post(
        gw.make_url("/v1/images/edits"),
        json={"model": "img", "prompt": "a hat", "images": [{"image_url": "https://example.com/fox.png"}]},
    ) as resp:
        assert resp.status == 400
        error = (await resp.json())["error"]
    assert (error["code"], error["param"]) == ("unsupported_parameter", "images")
    assert seen == []
