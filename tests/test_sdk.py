"""The official openai SDK, sync and async, against the gateway over loopback."""

from __future__ import annotations

import asyncio
import base64
import io

import openai
import pytest
from aiohttp.test_utils import TestServer
from PIL import Image

from tests.conftest import v1


def _png_size(b64: str) -> tuple[int, int]:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()  # decodes every pixel: a truncated or corrupt PNG raises
    assert image.format == "PNG"
    return image.size


async def test_async_sdk_n2_returns_decodable_pngs(async_client: openai.AsyncOpenAI) -> None:
    result = await async_client.images.generate(model="gpt-image-1.5", prompt="a red fox", n=2, size="256x256")
    assert len(result.data) == 2
    assert [_png_size(d.b64_json) for d in result.data] == [(256, 256), (256, 256)]
    assert result.data[0].b64_json != result.data[1].b64_json
    assert result.usage is not None and result.usage.output_tokens > 0
    assert result.size == "256x256" and result.output_format == "png"


async def test_sync_sdk_n2_returns_decodable_pngs(demo_gateway: TestServer) -> None:
    def call() -> openai.types.ImagesResponse:
        with openai.OpenAI(base_url=v1(demo_gateway), api_key="unused", max_retries=0) as client:
            return client.images.generate(model="gpt-image-1.5", prompt="a red fox", n=2, size="128x64")

    result = await asyncio.to_thread(call)
    assert [_png_size(d.b64_json) for d in result.data] == [(128, 64), (128, 64)]


async def test_async_sdk_stream_partials_then_completed(async_client: openai.AsyncOpenAI) -> None:
    stream = await async_client.images.generate(
        model="gpt-image-1.5", prompt="a red fox", size="256x256", stream=True, partial_images=2
    )
    events = [event async for event in stream]
    assert [type(e).__name__ for e in events] == [
        "ImageGenPartialImageEvent",
        "ImageGenPartialImageEvent",
        "ImageGenCompletedEvent",
    ]
    assert [e.partial_image_index for e in events[:2]] == [0, 1]
    final = events[-1]
    assert final.type == "image_generation.completed"
    assert _png_size(final.b64_json) == (256, 256)
    assert (final.size, final.quality, final.background, final.output_format) == ("256x256", "medium", "opaque", "png")
    assert final.usage.output_tokens > 0 and final.created_at > 0
    # Partials sharpen: each one differs from the last and from the final image.
    assert len({e.b64_json for e in events}) == 3


async def test_sync_sdk_stream_partials_then_completed(demo_gateway: TestServer) -> None:
    def call() -> list[str]:
        with openai.OpenAI(base_url=v1(demo_gateway), api_key="unused", max_retries=0) as client:
            stream = client.images.generate(model="gpt-image-1.5", prompt="a fox", size="64x64", stream=True, partial_images=2)
            return [event.type for event in stream]

    assert await asyncio.to_thread(call) == [
        "image_generation.partial_image",
        "image_generation.partial_image",
        "image_generation.completed",
    ]


async def test_upstream_400_raises_bad_request_with_upstream_message(async_client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await async_client.images.generate(
            model="gpt-image-1.5",
            prompt="a fox",
            extra_body={"demo": {"error_status": 400, "error_code": "moderation_blocked", "error_message": "Rejected by the safety system."}},
        )
    assert info.value.status_code == 400
    assert info.value.code == "moderation_blocked"
    assert info.value.body["message"] == "Rejected by the safety system."


async def test_upstream_400_sync_sdk(demo_gateway: TestServer) -> None:
    def call() -> None:
        with openai.OpenAI(base_url=v1(demo_gateway), api_key="unused", max_retries=0) as client:
            client.images.generate(model="gpt-image-1.5", prompt="a fox", size="100x")

    with pytest.raises(openai.BadRequestError) as info:
        await asyncio.to_thread(call)
    # The gateway's own validation answered: the field is named.
    assert info.value.param == "size"


async def test_error_after_stream_started_raises_in_iterator(async_client: openai.AsyncOpenAI) -> None:
    stream = await async_client.images.generate(
        model="gpt-image-1.5",
        prompt="a fox",
        size="64x64",
        stream=True,
        partial_images=2,
        extra_body={"demo": {"error_after_events": 1, "error_message": "The upstream fell over."}},
    )
    seen = []
    with pytest.raises(openai.APIError, match=r"The upstream fell over\."):
        async for event in stream:
            seen.append(event.type)
    assert seen == ["image_generation.partial_image"]


async def test_upstream_dropping_mid_stream_raises_in_iterator(async_client: openai.AsyncOpenAI) -> None:
    stream = await async_client.images.generate(
        model="gpt-image-1.5", prompt="a fox", size="64x64", stream=True, partial_images=2,
        extra_body={"demo": {"drop_after_events": 1}},
    )
    seen = []
    with pytest.raises(openai.APIError) as info:
        async for event in stream:
            seen.append(event.type)
    assert seen == ["image_generation.partial_image"]
    assert info.value.body["code"] == "upstream_protocol_error"


async def test_sync_sdk_error_after_stream_started(demo_gateway: TestServer) -> None:
    def call() -> list[str]:
        seen = []
        with openai.OpenAI(base_url=v1(demo_gateway), api_key="unused", max_retries=0) as client:
            stream = client.images.generate(
                model="gpt-image-1.5", prompt="a fox", size="64x64", stream=True, partial_images=1,
                extra_body={"demo": {"error_after_events": 1}},
            )
            with pytest.raises(openai.APIError):
                for event in stream:
                    seen.append(event.type)
        return seen

    assert await asyncio.to_thread(call) == ["image_generation.partial_image"]
