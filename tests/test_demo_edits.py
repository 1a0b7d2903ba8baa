"""The demo provider edits for real: its pictures come from the input image, the prompt and the mask.

Inputs are real PNGs (and a JPEG) made with Pillow, outputs are checked with
Pillow too (an independent decoder). The demo is driven the ways users drive
it: the official ``openai`` SDK through the gateway with the in-process demo,
the gateway in front of the standalone demo upstream over HTTP, and the SDK
straight at a real ``pixelgate demo-upstream`` process.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import random
import struct
import zlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp.test_utils import TestServer
from PIL import Image, ImageDraw

from pixelgate.proxy.demo.png import decode_png
from tests.conftest import GatewayFactory, single_provider_config, v1
from tests.procs import free_port, pixelgate

DEMO = {"providers": {"d": {"adapter": "demo"}}, "models": {"demo-image": [{"provider": "d"}]}}


def _png(size: tuple[int, int] = (96, 64), colour: tuple[int, int, int] = (200, 30, 30), mode: str = "RGB") -> bytes:
    """A picture with structure (a gradient, a box, a disc), so resampling and recolouring show."""
    w, h = size
    image = Image.merge("RGB", [Image.linear_gradient("L").resize(size), Image.new("L", size, 90), Image.linear_gradient("L").rotate(90).resize(size)])
    draw = ImageDraw.Draw(image)
    draw.rectangle((w // 8, h // 8, w // 2, h // 2), fill=colour)
    draw.ellipse((w // 2, h // 3, w - 2, h - 2), fill=(colour[2], colour[0], colour[1]))
    out = io.BytesIO()
    image.convert(mode).save(out, "PNG")
    return out.getvalue()


def _mask(size: tuple[int, int], editable: tuple[int, int, int, int]) -> bytes:
    """Opaque everywhere but the ``editable`` box (left, top, right, bottom; exclusive), which is transparent."""
    mask = Image.new("RGBA", size, (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), editable)
    out = io.BytesIO()
    mask.save(out, "PNG")
    return out.getvalue()


def _open(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def _rgb(data: bytes) -> Image.Image:
    return _open(data).convert("RGB")


def _b64_image(b64: str | None) -> Image.Image:
    assert b64 is not None
    png = base64.b64decode(b64)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    Image.open(io.BytesIO(png)).verify()  # a whole, valid PNG (CRCs included)
    return _rgb(png)


def _uniform_blocks(image: Image.Image, block: int) -> bool:
    w, h = image.size
    px = image.load()
    assert px is not None
    return all(
        len({px[x, y] for x in range(bx, min(bx + block, w)) for y in range(by, min(by + block, h))}) == 1
        for bx in range(0, w, block)
        for by in range(0, h, block)
    )


def _region(image: Image.Image, box: tuple[int, int, int, int]) -> bytes:
    return image.crop(box).tobytes()


@pytest.fixture
async def client(gateway: GatewayFactory) -> AsyncIterator[openai.AsyncOpenAI]:
    """The SDK in front of the gateway serving the in-process demo (no sockets behind it)."""
    gw = await gateway(DEMO)
    sdk = openai.AsyncOpenAI(base_url=v1(gw), api_key="unused-by-the-demo", max_retries=0)
    yield sdk
    await sdk.close()


async def _edit(client: openai.AsyncOpenAI, image: bytes | list[bytes], prompt: str = "a fox in the snow", **kwargs: Any) -> Image.Image:
    files = [("in.png", image, "image/png")] if isinstance(image, bytes) else [(f"in{i}.png", im, "image/png") for i, im in enumerate(image)]
    result = await client.images.edit(model="demo-image", image=files[0] if isinstance(image, bytes) else files, prompt=prompt, **kwargs)
    assert result.data is not None
    return _b64_image(result.data[0].b64_json)


async def test_sdk_streams_an_edit_of_two_images_with_a_mask(client: openai.AsyncOpenAI) -> None:
    first, second, mask = _png((96, 64)), _png((40, 40), (20, 180, 40)), _mask((96, 64), (48, 0, 96, 64))
    stream = await client.images.edit(
        model="demo-image",
        image=[("first.png", first, "image/png"), ("second.png", second, "image/png")],
        mask=("mask.png", mask, "image/png"),
        prompt="a lighthouse at dusk",
        stream=True,
        partial_images=2,
    )
    events = [event async for event in stream]
    assert [e.type for e in events] == ["image_edit.partial_image"] * 2 + ["image_edit.completed"]
    assert [getattr(e, "partial_image_index", None) for e in events] == [0, 1, None]
    partials = [_b64_image(e.b64_json) for e in events[:2]]
    final = _b64_image(events[2].b64_json)
    # Without `size`, the output is the first image's size.
    assert final.size == (96, 64) and all(p.size == (96, 64) for p in partials)
    assert all(e.size == "96x64" and e.output_format == "png" for e in events)
    # Partials are drawn in 32- then 16-pixel blocks, sharpening towards the final image.
    assert _uniform_blocks(partials[0], 32) and _uniform_blocks(partials[1], 16) and not _uniform_blocks(final, 16)
    # The mask's opaque half is the input as it was, pixel for pixel; its transparent half is edited.
    original = _rgb(first)
    assert _region(final, (0, 0, 48, 64)) == _region(original, (0, 0, 48, 64))
    assert _region(final, (48, 0, 96, 64)) != _region(original, (48, 0, 96, 64))
    usage = events[2].usage
    assert usage.input_tokens_details.text_tokens == 5  # ceil(20 characters / 4)
    # Two input images of one 512-pixel tile each: 65 + 129 tokens apiece.
    assert usage.input_tokens_details.image_tokens == 2 * 194
    # Medium quality: 1056 tokens per 1024x1024 image, by area, plus 100 per partial.
    assert usage.output_tokens == -(-1056 * 96 * 64 // (1024 * 1024)) + 2 * 100
    assert usage.input_tokens == 5 + 388 and usage.total_tokens == usage.input_tokens + usage.output_tokens


async def test_the_picture_follows_the_input_image_and_the_prompt(client: openai.AsyncOpenAI) -> None:
    red, green = _png(colour=(220, 20, 20)), _png(colour=(20, 220, 20))
    base = await _edit(client, red, "a fox in the snow")
    assert (await _edit(client, red, "a fox in the snow")).tobytes() == base.tobytes()  # repeatable
    other_image = await _edit(client, green, "a fox in the snow")
    other_prompt = await _edit(client, red, "a whale at sea")
    assert other_image.tobytes() != base.tobytes()
    assert other_prompt.tobytes() != base.tobytes()
    # The change is the prompt's, the shapes are the input's: the box's edge is where it was.
    px = base.load()
    assert px is not None
    assert px[30, 20] != px[60, 20]
    # A second input image shows (as a thumbnail), and it matters which one it is.
    with_second = await _edit(client, [red, green], "a fox in the snow")
    with_other_second = await _edit(client, [red, _png(colour=(20, 20, 220))], "a fox in the snow")
    assert len({base.tobytes(), with_second.tobytes(), with_other_second.tobytes()}) == 3
    # input_fidelity: high keeps more of the input.
    high = await _edit(client, red, "a fox in the snow", input_fidelity="high")
    original = _rgb(red).tobytes()

    def distance(image: Image.Image) -> int:
        return sum(abs(a - b) for a, b in zip(image.tobytes(), original, strict=True))

    assert distance(high) < distance(base)


async def test_non_streaming_edit_answers_an_images_response(client: openai.AsyncOpenAI) -> None:
    result = await client.images.edit(
        model="demo-image", image=("a.png", _png(), "image/png"), prompt="abcdefgh", n=2, size="128x80", quality="low",
        extra_body={"demo": {"created": 7}},  # the SDK sends it as demo[created] form fields
    )
    assert result.created == 7
    assert result.size == "128x80" and result.quality == "low" and result.output_format == "png"
    assert result.data is not None and len(result.data) == 2
    images = [_b64_image(d.b64_json) for d in result.data]
    assert [i.size for i in images] == [(128, 80)] * 2
    assert images[0].tobytes() != images[1].tobytes()  # n images, each its own
    assert result.usage is not None
    per_image = -(-272 * 128 * 80 // (1024 * 1024))
    assert result.usage.model_dump() == {
        "input_tokens": 2 + 194, "input_tokens_details": {"text_tokens": 2, "image_tokens": 194},
        "output_tokens": 2 * per_image, "output_tokens_details": {"text_tokens": 0, "image_tokens": 2 * per_image},
        "total_tokens": 2 + 194 + 2 * per_image,
    }


async def test_default_size_is_the_inputs_capped_at_1024(client: openai.AsyncOpenAI) -> None:
    assert (await _edit(client, _png((1500, 300)))).size == (1024, 205)
    assert (await _edit(client, _png((50, 30)), size="auto")).size == (50, 30)


async def test_jpeg_and_unsupported_pngs_are_drawn_from_their_bytes(client: openai.AsyncOpenAI) -> None:
    def jpeg(colour: tuple[int, int, int]) -> bytes:
        out = io.BytesIO()
        _rgb(_png((80, 48), colour)).save(out, "JPEG")
        return out.getvalue()

    a, b = jpeg((200, 30, 30)), jpeg((30, 200, 30))
    first = await client.images.edit(model="demo-image", image=("a.jpg", a, "image/jpeg"), prompt="a fox")
    again = await client.images.edit(model="demo-image", image=("a.jpg", a, "image/jpeg"), prompt="a fox")
    other = await client.images.edit(model="demo-image", image=("b.jpg", b, "image/jpeg"), prompt="a fox")
    pictures = [_b64_image(r.data[0].b64_json) for r in (first, again, other) if r.data]
    assert [p.size for p in pictures] == [(80, 48)] * 3
    assert pictures[0].tobytes() == pictures[1].tobytes() != pictures[2].tobytes()
    # A 16-bit PNG (not decoded here) is drawn the same way, at its own size...
    deep = io.BytesIO()
    Image.new("I;16", (40, 24), 30000).save(deep, "PNG")
    assert (await _edit(client, deep.getvalue())).size == (40, 24)
    # ... but a mask the demo cannot read is refused, never ignored.
    mask16 = io.BytesIO()
    Image.new("I;16", (96, 64), 0).save(mask16, "PNG")
    with pytest.raises(openai.BadRequestError) as err:
        await _edit(client, _png(), mask=("m.png", mask16.getvalue(), "image/png"))
    assert err.value.param == "mask"


async def test_json_edit_with_data_urls(gateway: GatewayFactory) -> None:
    gw = await gateway(DEMO)
    data_url = "data:image/png;base64," + base64.b64encode(_png()).decode()
    mask_url = "data:image/png;base64," + base64.b64encode(_mask((96, 64), (0, 0, 48, 64))).decode()
    body = {"model": "demo-image", "prompt": "a fox", "images": [{"image_url": data_url}], "mask": {"image_url": mask_url},
            "stream": True, "partial_images": 1}
    async with aiohttp.ClientSession() as session:
        async with session.post(gw.make_url("/v1/images/edits"), json=body) as resp:
            assert resp.status == 200
            text = await resp.text()
        frames = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]
        assert [f["type"] for f in frames] == ["image_edit.partial_image", "image_edit.completed"]
        final = _b64_image(frames[1]["b64_json"])
        assert _region(final, (48, 0, 96, 64)) == _region(_rgb(_png()), (48, 0, 96, 64))
        # The demo makes no network calls: an https image it would have to fetch is refused, named.
        body = {"model": "demo-image", "prompt": "a fox", "images": [{"image_url": "https://images.example.com/a.png"}]}
        async with session.post(gw.make_url("/v1/images/edits"), json=body) as resp:
            assert resp.status == 400
            error = (await resp.json())["error"]
    assert error["param"] == "images[0].image_url" and error["code"] == "invalid_image_url"


async def test_streams_and_bodies_match_in_process_and_over_http(gateway: GatewayFactory, demo_upstream: TestServer) -> None:
    """The gateway in front of the in-process demo and of ``demo-upstream`` over HTTP: the same bytes."""
    in_process = await gateway(DEMO)
    over_http = await gateway(single_provider_config(v1(demo_upstream), adapter="demo", model="demo-image"))
    image, second, mask = _png(), _png((32, 32), (10, 10, 200)), _mask((96, 64), (0, 32, 96, 64))
    results = []
    for stream in (False, True):
        pair = []
        for server in (in_process, over_http):
            form = aiohttp.FormData()
            for name, value in (("model", "demo-image"), ("prompt", "a fox"), ("stream", str(stream).lower()),
                                ("partial_images", "3"), ("n", "2"), ("demo", '{"created": 1}')):
                form.add_field(name, value)
            form.add_field("image[]", image, filename="a.png", content_type="image/png")
            form.add_field("image[]", second, filename="b.png", content_type="image/png")
            form.add_field("mask", mask, filename="m.png", content_type="image/png")
            async with aiohttp.ClientSession() as session:
                async with session.post(server.make_url("/v1/images/edits"), data=form) as resp:
                    assert resp.status == 200, await resp.text()
                    pair.append(await resp.read())
        results.append(pair)
    assert results[0][0] == results[0][1]
    assert results[1][0] == results[1][1]
    assert results[1][0].count(b"event: image_edit.partial_image\n") == 6
    assert results[1][0].count(b"event: image_edit.completed\n") == 2


async def test_sdk_against_a_real_demo_upstream_process() -> None:
    port = free_port()
    with pixelgate("demo-upstream", "--port", str(port), ready=f"http://127.0.0.1:{port}/v1/models"):
        sdk = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        try:
            stream = await sdk.images.edit(
                image=[("a.png", _png(), "image/png"), ("b.png", _png((20, 20)), "image/png")],
                mask=("m.png", _mask((96, 64), (0, 0, 96, 32)), "image/png"),
                prompt="a fox", stream=True, partial_images=2,
            )
            events = [event async for event in stream]
            body = await sdk.images.edit(image=("a.png", _png(), "image/png"), prompt="a fox", size="64x64")
        finally:
            await sdk.close()
    assert [e.type for e in events] == ["image_edit.partial_image"] * 2 + ["image_edit.completed"]
    final = _b64_image(events[2].b64_json)
    assert _region(final, (0, 32, 96, 64)) == _region(_rgb(_png()), (0, 32, 96, 64))
    assert body.data is not None and _b64_image(body.data[0].b64_json).size == (64, 64)


def _form(images: list[tuple[str, bytes]], mask: bytes | None = None, **fields: str) -> aiohttp.FormData:
    form = aiohttp.FormData(default_to_multipart=True)  # multipart even without files
    for name, value in {"prompt": "a fox", **fields}.items():
        form.add_field(name, value)
    for i, (name, data) in enumerate(images):
        form.add_field(name, data, filename=f"{i}.bin", content_type="application/octet-stream")
    if mask is not None:
        form.add_field("mask", mask, filename="mask.png", content_type="image/png")
    return form


def _gif() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8)).save(out, "GIF")
    return out.getvalue()


@pytest.mark.parametrize(
    ("form", "param", "code"),
    [
        (lambda: _form([("image", _gif())]), "image", "invalid_image_format"),
        (lambda: _form([("image[]", _png()), ("image[]", b"not an image")]), "image[1]", "invalid_image_format"),
        (lambda: _form([("image[]", _png((8, 8)))] * 17), "image", "too_many_images"),
        (lambda: _form([]), "image", "missing_required_parameter"),
        # A PNG header over data that does not inflate: refused, not drawn from its hash.
        (lambda: _form([("image", _png_of(struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0), b"not deflate"))]), "image", "invalid_image_format"),
        (lambda: _form([("image", _png())], mask=_png()), "mask", "invalid_value"),  # no alpha: nothing marked
        (lambda: _form([("image", _png())], mask=_mask((10, 10), (0, 0, 5, 5))), "mask", "invalid_value"),
        (lambda: _form([("image", _png())], output_format="jpeg"), "output_format", "invalid_value"),
        (lambda: _form([("image", _png())], n="eleven"), "n", "invalid_value"),
        (lambda: _form([("image", _png())], size="12x12"), "size", "invalid_value"),
        (lambda: _form([("image", _png())], input_fidelity="extreme"), "input_fidelity", "invalid_value"),
        (lambda: _form([("picture", _png())]), "picture", "invalid_value"),
        (lambda: _form([("image", _png())], prompt=""), "prompt", "invalid_value"),
    ],
)
async def test_demo_upstream_refuses_what_it_cannot_take(demo_upstream: TestServer, form: Any, param: str, code: str) -> None:
    """Straight at the standalone demo (the gateway would refuse several of these first)."""
    async with aiohttp.ClientSession() as session:
        async with session.post(demo_upstream.make_url("/v1/images/edits"), data=form()) as resp:
            assert resp.status == 400
            error = (await resp.json())["error"]
    assert (error["param"], error["code"], error["type"]) == (param, code, "invalid_request_error")
    assert error["message"]


async def test_demo_faults_apply_to_edits(demo_upstream: TestServer) -> None:
    async with aiohttp.ClientSession() as session:
        form = _form([("image", _png())], **{"demo[error_status]": "503", "demo[error_code]": "overloaded"})
        async with session.post(demo_upstream.make_url("/v1/images/edits"), data=form) as resp:
            assert resp.status == 503
            assert (await resp.json())["error"]["code"] == "overloaded"


async def test_edit_streams_keep_the_demo_interval(demo_upstream: TestServer) -> None:
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as session:
        form = _form([("image", _png())], stream="true", partial_images="2", **{"demo[interval_ms]": "150"})
        started = loop.time()
        async with session.post(demo_upstream.make_url("/v1/images/edits"), data=form) as resp:
            text = await resp.text()
        assert loop.time() - started >= 0.3  # two gaps between three events
    assert text.count("event: image_edit.") == 3


# The decoder, against Pillow's, for every row filter and colour type.


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else b if pb <= pc else c


def _filtered_png(width: int, colour: int, bpp: int, rows: list[bytes]) -> bytes:
    """A PNG whose row y uses filter y % 5 (Pillow picks its own, so this is written by hand)."""
    raw = bytearray()
    prev = bytes(width * bpp)
    for y, row in enumerate(rows):
        kind = y % 5
        raw.append(kind)
        for i, v in enumerate(row):
            a = row[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            raw.append((v - (0, a, b, (a + b) // 2, _paeth(a, b, c))[kind]) & 255)
        prev = row

    return _png_of(struct.pack(">IIBBBBB", width, len(rows), 8, colour, 0, 0, 0), zlib.compress(bytes(raw)))


def _png_of(header: bytes, idat: bytes) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _rgba_of(data: bytes) -> bytes:
    raster = decode_png(data, 1 << 20)
    assert raster is not None
    out = bytearray()
    for y in range(raster.height):
        alpha = raster.alpha[y] if raster.alpha is not None else b"\xff" * raster.width
        for x in range(raster.width):
            out += bytes((raster.red[y][x], raster.green[y][x], raster.blue[y][x], alpha[x]))
    return bytes(out)


@pytest.mark.parametrize(("colour", "bpp"), [(0, 1), (2, 3), (4, 2), (6, 4)])
def test_decoder_reads_every_filter(colour: int, bpp: int) -> None:
    rng = random.Random(colour)
    rows = [bytes(rng.randrange(256) for _ in range(37 * bpp)) for _ in range(25)]
    png = _filtered_png(37, colour, bpp, rows)
    assert _rgba_of(png) == _open(png).convert("RGBA").tobytes()


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "P", "PA"])
def test_decoder_matches_pillow(mode: str) -> None:
    image = Image.open(io.BytesIO(_png((61, 43)))).convert("RGBA")
    image.putalpha(Image.linear_gradient("L").resize((61, 43)))
    if mode == "PA":
        # A palette with transparency (tRNS).
        converted = image.convert("RGB").quantize(32)
        converted.info["transparency"] = 3
    else:
        converted = image.convert(mode) if mode != "P" else image.convert("RGB").quantize(40)
    out = io.BytesIO()
    converted.save(out, "PNG")
    assert _rgba_of(out.getvalue()) == _open(out.getvalue()).convert("RGBA").tobytes()


def test_decoder_leaves_what_it_does_not_read() -> None:
    png = _filtered_png(4, 2, 3, [bytes(12)] * 4)
    header = png[12:29]
    # The same header with Adam7 interlacing (Pillow writes none).
    interlaced = header[:-1] + b"\x01"
    patched = png[:12] + interlaced + struct.pack(">I", zlib.crc32(interlaced)) + png[33:]
    assert decode_png(patched, 1 << 20) is None
    assert decode_png(_png((64, 64)), 64 * 64 - 1) is None  # over the pixel budget
