"""Gemini end to end: the official SDK, the real gateway, a loopback server speaking
generateContent with image output (Gemini API form: x-goog-api-key, inlineData, usageMetadata).
Edits: the uploads reach the fake as inlineData parts, the base64 of each file exactly."""

from __future__ import annotations

import base64
import io
import os

import aiohttp
import openai
import pytest
from PIL import Image

from pixelgate.proxy.config import ConfigError, parse_config
from tests.providers.common import (
    check_completed,
    gateway_for,
    png_size,
    provider_config,
    sdk,
    stream_events,
)
from tests.providers.gemini import IMAGE_TOKENS, gemini_app

# For an error answered before any byte: with the suite's 0.2 s keep-alive, a loaded machine
# can send a keep-alive first, and the error then is an event (the subject of another test).
_NO_EARLY_KEEPALIVE = {"keepalive_interval": 30}


@pytest.fixture
async def gemini(aiohttp_server):
    async def make(server: dict | None = None, **kwargs):
        seen: list[dict] = []
        upstream = await aiohttp_server(gemini_app(seen, **kwargs))
        config = provider_config("gemini", str(upstream.make_url("/v1beta")), upstream_model="gemini-2.5-flash-image", server=server)
        gw = await gateway_for(aiohttp_server, config)
        return gw, seen

    return make


async def test_sdk_without_stream(gemini) -> None:
    gw, seen = await gemini()
    async with sdk(gw) as client:
        result = await client.images.generate(model="img", prompt="a fox", size="1024x1536")
    assert [png_size(d.b64_json) for d in result.data] == [(64, 64)]
    assert result.output_format == "png"
    assert result.usage is not None
    assert (result.usage.input_tokens, result.usage.output_tokens, result.usage.total_tokens) == (6, 1290, 1296)
    assert result.usage.input_tokens_details.text_tokens == 6
    assert seen == [{
        "model": "gemini-2.5-flash-image",
        "key": "provider-secret",
        "body": {"contents": [{"role": "user", "parts": [{"text": "a fox"}]}],
                 "generationConfig": {"responseModalities": ["TEXT", "IMAGE"], "imageConfig": {"aspectRatio": "2:3"}}},
    }]


async def test_sdk_stream(gemini) -> None:
    gw, _ = await gemini(delay=0.5)
    async with sdk(gw) as client:
        events = await stream_events(client, model="img", prompt="a fox")
    assert [e.type for e in events] == ["image_generation.completed"]
    check_completed(events[0])
    assert png_size(events[0].b64_json) == (64, 64)
    # usageMetadata came after the image; the event waited for it.
    assert events[0].usage.total_tokens == 1296


async def test_safety_finish_reason_is_moderation_blocked(gemini) -> None:
    gw, _ = await gemini(finish="IMAGE_SAFETY")
    async with sdk(gw) as client:
        with pytest.raises(openai.BadRequestError) as info:
            await client.images.generate(model="img", prompt="a fox")
    assert info.value.code == "moderation_blocked"
    assert "IMAGE_SAFETY" in info.value.message


async def test_rate_limit_keeps_google_retry_delay(gemini) -> None:
    gw, _ = await gemini(status=429, server=_NO_EARLY_KEEPALIVE)
    async with sdk(gw) as client:
        with pytest.raises(openai.RateLimitError) as info:
            await client.images.generate(model="img", prompt="a fox", stream=True)
    assert info.value.response.headers["retry-after"] == "3"
    assert "Resource has been exhausted" in info.value.message


async def test_stream_keeps_alive_while_gemini_works(gemini) -> None:
    # keepalive_interval is 0.2 s in these tests; the provider takes 0.7 s.
    gw, _ = await gemini(delay=0.7)
    async with sdk(gw) as client, client.with_streaming_response.images.generate(
        model="img", prompt="a fox", stream=True
    ) as response:
        assert response.status_code == 200
        raw = b"".join([chunk async for chunk in response.iter_bytes()])
    assert raw.startswith(b": keep-alive\n\n")
    assert raw.count(b"event: image_generation.completed") == 1


async def test_safety_block_after_keepalives_is_an_error_event(gemini) -> None:
    gw, _ = await gemini(finish="PROHIBITED_CONTENT", delay=0.5)
    async with sdk(gw) as client:
        stream = await client.images.generate(model="img", prompt="a fox", stream=True)
        with pytest.raises(openai.APIError) as info:
            async for _ in stream:
                pass
    assert info.value.body["code"] == "moderation_blocked"


@pytest.mark.parametrize(
    ("options", "api_key", "problem"),
    [
        ({"api": "vertex"}, "token", "providers.gemini.options.project: required when options.api is vertex"),
        ({"api": "vertex", "project": "p/../x"}, "token", "providers.gemini.options.project: not a Google Cloud"),
        ({"api": "vertex", "project": "my-project", "location": "x.evil.com/"}, "token", "options.location: not a"),
        ({}, None, "providers.gemini.api_key: required (the Gemini API key)"),
    ],
)
def test_config_is_checked(options, api_key, problem) -> None:
    config = provider_config("gemini", "https://example.test/v1beta", options=options)
    config["providers"]["gemini"]["api_key"] = api_key
    with pytest.raises(ConfigError) as info:
        parse_config(config, env={})
    assert problem in str(info.value)


def _image(fmt: str, size: tuple[int, int], *, noise: bool = False) -> bytes:
    """A real image; with noise, one that barely compresses (a large upload)."""
    mode = "RGBA" if fmt == "PNG" else "RGB"
    if noise:
        image = Image.frombytes(mode, size, os.urandom(size[0] * size[1] * len(mode)))
    else:
        image = Image.new(mode, size, (30, 120, 200, 255)[: len(mode)])
    out = io.BytesIO()
    image.save(out, fmt)
    return out.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def test_sdk_edit_sends_each_upload_as_inline_data(gemini) -> None:
    gw, seen = await gemini()
    # Over a megabyte, so the base64 is encoded from the spool in several chunks.
    big = _image("PNG", (700, 700), noise=True)
    small = _image("JPEG", (40, 30))
    assert len(big) > 1024 * 1024
    async with sdk(gw) as client:
        result = await client.images.edit(
            model="img", prompt="put the cat on the pillow", size="1536x1024",
            image=[("cat.png", big, "image/png"), ("pillow.jpg", small, "image/jpeg")],
        )
    assert [png_size(d.b64_json) for d in result.data] == [(64, 64)]
    assert result.usage is not None
    assert result.usage.input_tokens_details.image_tokens == 2 * IMAGE_TOKENS
    assert result.usage.input_tokens_details.text_tokens == 6
    (call,) = seen
    assert call["model"] == "gemini-2.5-flash-image" and call["key"] == "provider-secret"
    assert call["images"] == [
        {"mime": "image/png", "b64": _b64(big), "bytes": len(big)},
        {"mime": "image/jpeg", "b64": _b64(small), "bytes": len(small)},
    ]
    assert call["chunked"] is False
    body = call["body"]
    assert body["contents"][0]["parts"][0] == {"text": "put the cat on the pillow"}
    assert body["generationConfig"] == {"responseModalities": ["TEXT", "IMAGE"], "imageConfig": {"aspectRatio": "3:2"}}


async def test_sdk_edit_stream_is_image_edit_completed(gemini) -> None:
    gw, seen = await gemini(delay=0.5)
    upload = _image("WEBP", (32, 32))
    async with sdk(gw) as client:
        stream = await client.images.edit(model="img", prompt="a watercolour", image=("in.webp", upload, "image/webp"),
                                          stream=True)
        events = [event async for event in stream]
    assert [e.type for e in events] == ["image_edit.completed"]
    assert png_size(events[0].b64_json) == (64, 64)
    assert events[0].usage.total_tokens == 1296 + IMAGE_TOKENS
    assert seen[0]["images"] == [{"mime": "image/webp", "b64": _b64(upload), "bytes": len(upload)}]


async def test_json_edit_with_data_url_sends_its_bytes(gemini) -> None:
    gw, seen = await gemini()
    upload = _image("PNG", (24, 24))
    body = {"model": "img", "prompt": "a hat", "images": [{"image_url": "data:image/png;base64," + _b64(upload)}], "seed": 7}
    async with aiohttp.ClientSession() as session, session.post(gw.make_url("/v1/images/edits"), json=body) as resp:
        assert resp.status == 200, await resp.text()
        answer = await resp.json()
    assert png_size(answer["data"][0]["b64_json"]) == (64, 64)
    (call,) = seen
    assert call["images"] == [{"mime": "image/png", "b64": _b64(upload), "bytes": len(upload)}]
    assert call["body"]["generationConfig"] == {"seed": 7, "responseModalities": ["TEXT", "IMAGE"]}


async def test_json_edit_with_https_url_is_refused_before_gemini(gemini) -> None:
    gw, seen = await gemini()
    body = {"model": "img", "prompt": "a hat", "images": [{"image_url": "https://images.example.com/cat.png"}]}
    async with aiohttp.ClientSession() as session, session.post(gw.make_url("/v1/images/edits"), json=body) as resp:
        assert resp.status == 400
        error = (await resp.json())["error"]
    assert (error["code"], error["param"]) == ("unsupported_parameter", "images")
    assert "data: URL" in error["message"]
    assert seen == []


@pytest.mark.parametrize(
    ("files", "param", "why"),
    [
        ({"image": ("a.png", _image("PNG", (16, 16)), "image/png"), "mask": ("m.png", _image("PNG", (16, 16)), "image/png")},
         "mask", "Gemini edits from the prompt; it takes no mask"),
        ({"image": [(f"{i}.png", _image("PNG", (8, 8)), "image/png") for i in range(4)]}, "image",
         "Gemini takes at most 3 input images"),
    ],
    ids=["mask", "four-images"],
)
async def test_edit_gemini_cannot_do_is_refused_before_gemini(gemini, files, param, why) -> None:
    gw, seen = await gemini()
    async with sdk(gw) as client:
        with pytest.raises(openai.BadRequestError) as info:
            await client.images.edit(model="img", prompt="p", **files)
    assert (info.value.code, info.value.param) == ("unsupported_parameter", param)
    assert why in info.value.message
    assert seen == []
