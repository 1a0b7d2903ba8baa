"""The demo provider draws real PNGs and behaves the same in-process and over HTTP."""

from __future__ import annotations

import asyncio
import base64
import io

import aiohttp
import pytest
from PIL import Image

from pixelgate.proxy.demo.render import partial_block, render_png
from tests.conftest import single_provider_config, v1


def _image(png: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(png))
    image.load()
    return image.convert("RGB")


def _uniform_blocks(image: Image.Image, block: int) -> bool:
    """True if every block x block cell has one colour."""
    w, h = image.size
    px = image.load()
    return all(
        len({px[x, y] for x in range(bx, min(bx + block, w)) for y in range(by, min(by + block, h))}) == 1
        for bx in range(0, w, block)
        for by in range(0, h, block)
    )


@pytest.mark.parametrize("size", [(1024, 1024), (1536, 1024), (64, 48)])
def test_render_is_a_real_png_of_the_size(size: tuple[int, int]) -> None:
    image = _image(render_png("a lighthouse at dusk", *size))
    assert image.size == size
    assert len(image.getcolors(1 << 20) or []) > 50  # a picture, not a flat fill


def test_prompts_give_different_images_and_the_same_prompt_the_same() -> None:
    a, b = render_png("a fox", 128, 128), render_png("a whale", 128, 128)
    assert a != b and render_png("a fox", 128, 128) == a


def test_partials_are_coarser_and_sharpen() -> None:
    blocks = [partial_block(k, 3) for k in range(3)]
    assert blocks == [64, 32, 16]
    images = [_image(render_png("a fox", 256, 256, block)) for block in blocks]
    for image, block in zip(images, blocks, strict=True):
        assert _uniform_blocks(image, block)
    final = _image(render_png("a fox", 256, 256))
    assert not _uniform_blocks(final, 16)
    colours = [len(i.getcolors(1 << 20)) for i in (*images, final)]
    assert colours == sorted(colours) and len(set(colours)) == 4


async def test_in_process_and_http_demo_give_identical_bytes(gateway, demo_upstream) -> None:
    """``adapter: demo`` without base_url (in-process) and with one (HTTP) agree."""
    in_process = await gateway({"providers": {"d": {"adapter": "demo"}}, "models": {"m": [{"provider": "d"}]}})
    over_http = await gateway(single_provider_config(v1(demo_upstream), adapter="demo", model="m"))
    results = []
    for body in (
        {"model": "m", "prompt": "a fox", "n": 2, "size": "96x64", "demo": {"created": 1}},
        {"model": "m", "prompt": "a fox", "size": "96x64", "stream": True, "partial_images": 3, "demo": {"created": 1}},
    ):
        pair = []
        for server in (in_process, over_http):
            async with aiohttp.ClientSession() as session:
                async with session.post(server.make_url("/v1/images/generations"), json=body) as resp:
                    assert resp.status == 200
                    pair.append(await resp.read())
        results.append(pair)
    assert results[0][0] == results[0][1]
    # aiohttp-sse pings aside (none within this short exchange), streams match too.
    assert results[1][0] == results[1][1]
    assert results[1][0].count(b"event: image_generation.partial_image\n") == 3


async def test_usage_follows_openai_token_counts(gateway) -> None:
    gw = await gateway({"providers": {"d": {"adapter": "demo"}}, "models": {"m": [{"provider": "d"}]}})
    async with aiohttp.ClientSession() as session:
        body = {"model": "m", "prompt": "abcdefgh", "size": "1024x1024", "quality": "low", "n": 2}
        async with session.post(gw.make_url("/v1/images/generations"), json=body) as resp:
            result = await resp.json()
    # 272 output tokens per low-quality 1024x1024 image (OpenAI's table).
    assert result["usage"] == {
        "input_tokens": 2, "input_tokens_details": {"text_tokens": 2, "image_tokens": 0},
        "output_tokens": 544, "output_tokens_details": {"text_tokens": 0, "image_tokens": 544}, "total_tokens": 546,
    }
    assert [_image(base64.b64decode(d["b64_json"])).size for d in result["data"]] == [(1024, 1024)] * 2


async def test_configured_latency_is_applied(gateway) -> None:
    gw = await gateway({"providers": {"d": {"adapter": "demo", "options": {"latency_ms": 300}}}, "models": {"m": [{"provider": "d"}]}})
    loop_time = asyncio.get_running_loop().time
    async with aiohttp.ClientSession() as session:
        started = loop_time()
        async with session.post(gw.make_url("/v1/images/generations"), json={"model": "m", "prompt": "x", "size": "16x16"}) as resp:
            await resp.read()
        assert loop_time() - started >= 0.3


async def test_demo_rejects_what_it_cannot_draw(gateway) -> None:
    gw = await gateway({"providers": {"d": {"adapter": "demo"}}, "models": {"m": [{"provider": "d"}]}})
    async with aiohttp.ClientSession() as session:
        async with session.post(gw.make_url("/v1/images/generations"), json={"model": "m", "prompt": "x", "output_format": "webp"}) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"]["param"] == "output_format"
