"""Together end to end: the official SDK, the real gateway, a loopback server
speaking Together's wire format (width/height, response_format "base64")."""

from __future__ import annotations

import base64
import io
import json

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
from tests.providers.together import together_app

# For an error answered before any byte: with the suite's 0.2 s keep-alive, a loaded machine
# can send a keep-alive first, and the error then is an event (the subject of another test).
_NO_EARLY_KEEPALIVE = {"keepalive_interval": 30}


@pytest.fixture
async def together(aiohttp_server):
    async def make(*, upstream_model: str = "upstream-model", server: dict | None = None, **kwargs):
        seen: list[dict] = []
        upstream = await aiohttp_server(together_app(seen, **kwargs))
        config = provider_config("together", str(upstream.make_url("/v1")), upstream_model=upstream_model, server=server)
        gw = await gateway_for(aiohttp_server, config)
        return gw, seen

    return make


async def test_sdk_without_stream(together) -> None:
    gw, seen = await together()
    async with sdk(gw) as client:
        result = await client.images.generate(model="img", prompt="a fox", size="1024x1536", n=2)
    assert [png_size(d.b64_json) for d in result.data] == [(64, 64), (64, 64)]
    assert seen[0]["body"] == {"model": "upstream-model", "prompt": "a fox", "n": 2, "width": 1024, "height": 1536,
                               "response_format": "base64", "output_format": "png"}
    assert seen[0]["auth"] == "Bearer provider-secret"


async def test_sdk_stream(together) -> None:
    gw, _ = await together()
    async with sdk(gw) as client:
        events = await stream_events(client, model="img", prompt="a fox", n=2)
    assert [e.type for e in events] == ["image_generation.completed"] * 2
    for event in events:
        check_completed(event)
        assert png_size(event.b64_json) == (64, 64)


async def test_stream_keeps_alive_while_the_provider_works(together) -> None:
    # keepalive_interval is 0.2 s in these tests; the provider takes 0.7 s.
    gw, _ = await together(delay=0.7)
    async with sdk(gw) as client, client.with_streaming_response.images.generate(
        model="img", prompt="a fox", stream=True
    ) as response:
        assert response.status_code == 200
        raw = b"".join([chunk async for chunk in response.iter_bytes()])
    assert raw.startswith(b": keep-alive\n\n")
    assert raw.count(b"event: image_generation.completed") == 1


async def test_error_before_first_byte_is_a_real_status(together) -> None:
    gw, _ = await together(status=429, server=_NO_EARLY_KEEPALIVE)
    async with sdk(gw) as client:
        with pytest.raises(openai.RateLimitError) as info:
            await client.images.generate(model="img", prompt="a fox", stream=True)
    assert info.value.response.headers["retry-after"] == "3"
    assert "Rate limit exceeded for this model" in info.value.message


async def test_error_after_keepalives_is_an_error_event(together) -> None:
    gw, _ = await together(status=500, delay=0.5)
    async with sdk(gw) as client:
        stream = await client.images.generate(model="img", prompt="a fox", stream=True)
        with pytest.raises(openai.APIError) as info:
            async for _ in stream:
                pass
    assert info.value.body["code"] == "upstream_error"
    json.dumps(info.value.body)


# Edits: FLUX Kontext takes the image as image_url in the generations body; the
# fake checks the data URI's base64 against the file sent.
KONTEXT = "black-forest-labs/FLUX.1-kontext-pro"


def _jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (40, 32), (20, 120, 200)).save(out, "JPEG")
    return out.getvalue()


JPEG = _jpeg()


async def test_sdk_edit_without_stream(together) -> None:
    gw, seen = await together(upstream_model=KONTEXT, upload=(PNG, "image/png"))
    async with sdk(gw) as client:
        result = await client.images.edit(model="img", image=("fox.png", PNG, "image/png"), prompt="give it a hat",
                                          size="1024x768", extra_body={"steps": 28, "disable_safety_checker": True})
    assert png_size(result.data[0].b64_json) == (64, 64)
    assert result.size == "1024x768" and result.output_format == "png"
    (call,) = seen
    assert call["auth"] == "Bearer provider-secret" and call["sized"]
    # The form's "28" and "true" reach Together as the number and boolean they are.
    assert call["body"] == {"model": KONTEXT, "prompt": "give it a hat", "width": 1024, "height": 768,
                            "steps": 28, "disable_safety_checker": True, "response_format": "base64",
                            "output_format": "png",
                            "image_url": "data:image/png;base64," + base64.b64encode(PNG).decode()}


async def test_sdk_edit_stream(together) -> None:
    gw, seen = await together(upstream_model=KONTEXT, upload=(JPEG, "image/jpeg"))
    async with sdk(gw) as client:
        stream = await client.images.edit(model="img", image=("fox.jpg", JPEG, "image/jpeg"), prompt="in snow",
                                          n=2, stream=True)
        events = [event async for event in stream]
    assert [e.type for e in events] == ["image_edit.completed"] * 2
    for event in events:
        assert png_size(event.b64_json) == (64, 64)
        for field in ("created_at", "size", "quality", "background", "output_format", "usage"):
            assert getattr(event, field, None) is not None, field
    assert seen[0]["body"]["n"] == 2


async def test_json_edit_with_data_url(together) -> None:
    gw, seen = await together(upload=(JPEG, "image/jpeg"))
    url = "data:image/jpeg;base64," + base64.b64encode(JPEG).decode()
    body = {"model": "img", "prompt": "at night", "images": [{"image_url": url}], "seed": 3}
    async with aiohttp.ClientSession() as session, session.post(gw.make_url("/v1/images/edits"), json=body) as resp:
        assert resp.status == 200, await resp.text()
        answer = await resp.json()
    assert png_size(answer["data"][0]["b64_json"]) == (64, 64)
    assert seen[0]["body"]["seed"] == 3


async def test_json_edit_with_https_url_is_refused_before_any_call(together) -> None:
    gw, seen = await together()
    body = {"model": "img", "prompt": "at night", "images": [{"image_url": "https://example.com/fox.png"}]}
    async with aiohttp.ClientSession() as session, session.post(gw.make_url("/v1/images/edits"), json=body) as resp:
        assert resp.status == 400
        error = (await resp.json())["error"]
    assert error["code"] == "unsupported_parameter" and error["param"] == "images"
    assert seen == []


@pytest.mark.parametrize("what", ["mask", "two images", "input_fidelity"])
async def test_edit_refused_before_any_call(together, what: str) -> None:
    gw, seen = await together()
    image = ("a.png", PNG, "image/png")
    kwargs = {"mask": {"mask": image}, "two images": {"image": [image, image]},
              "input_fidelity": {"input_fidelity": "high"}}[what]
    async with sdk(gw) as client:
        with pytest.raises(openai.BadRequestError) as info:
            await client.images.edit(**{"model": "img", "image": image, "prompt": "p", **kwargs})
    assert info.value.code == "unsupported_parameter"
    assert info.value.param == {"mask": "mask", "two images": "image", "input_fidelity": "input_fidelity"}[what]
    assert seen == []
