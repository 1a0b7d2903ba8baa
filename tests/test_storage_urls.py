"""``response_format: "url"`` for every provider: images stored as they stream, the client gets signed URLs.

Real sockets throughout: the official SDK as the client, loopback fakes (or
the demo engine) as providers, a local directory or a real SeaweedFS as the
store; every URL is fetched back and compared byte for byte.
"""

from __future__ import annotations

import base64
import hashlib
import random
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web

from pixelgate.proxy.app_keys import STORAGE
from tests.providers.common import PNG, gateway_for, provider_config, sdk
from tests.providers.stability import stability_app
from tests.seaweedfs_server import SeaweedS3
from tests.test_storage import KEY_OLD, files_under

MiB = 1024 * 1024


def local(path: Path, **extra: Any) -> dict[str, Any]:
    return {"backend": "local", "local": {"path": str(path)}, "signing_keys": [KEY_OLD], **extra}


async def fetch(url: str) -> tuple[int, str, bytes]:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), await resp.read()


def stored_objects(path: Path) -> list[str]:
    return [f for f in files_under(path) if not f.endswith(".json")]


def png_like(size: int, seed: int = 7) -> bytes:
    """Bytes that start like a PNG (so they are stored as image/png) and are random after."""
    return PNG[:16] + random.Random(seed).randbytes(size - 16)


async def openai_fake(aiohttp_server, bodies: list[bytes], seen: list[dict[str, Any]]):
    """An OpenAI-compatible upstream answering each request with the next body, in pieces."""

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append(await request.json())
        body = bodies[min(len(seen), len(bodies)) - 1]
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        for start in range(0, len(body), 100_003):
            await resp.write(body[start : start + 100_003])
        await resp.write_eof()
        return resp

    app = web.Application(client_max_size=64 * MiB)
    app.router.add_post("/v1/images/generations", handler)
    return await aiohttp_server(app)


def images_body(*images: bytes, extra: str = "") -> bytes:
    data = ",".join(f'{{"b64_json":"{base64.b64encode(i).decode()}","revised_prompt":"r{n}"}}' for n, i in enumerate(images))
    return f'{{"created":1700000000,"data":[{data}],"usage":{{"input_tokens":5,"output_tokens":7,"total_tokens":12}}{extra}}}'.encode()


async def test_demo_urls_through_the_openai_sdk(aiohttp_server, tmp_path: Path) -> None:
    # The demo engine is OpenAI-compatible and, like GPT image models, refuses
    # `response_format`: the gateway drops it upstream and stores the base64.
    config = {"providers": {"demo": {"adapter": "demo"}}, "models": {"demo-image": [{"provider": "demo"}]},
              "storage": local(tmp_path / "images")}
    gw = await gateway_for(aiohttp_server, config)
    async with sdk(gw) as client:
        result = await client.images.generate(model="demo-image", prompt="a red fox", n=2, response_format="url")
    assert len(result.data) == 2
    storage = gw.app[STORAGE]
    for image in result.data:
        assert image.b64_json is None and image.url is not None
        assert image.url.startswith(f"http://{gw.host}:{gw.port}/files/")
        status, content_type, data = await fetch(image.url)
        assert (status, content_type) == (200, "image/png")
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
        record = await storage.record(image.url.split("/files/")[1].split("?")[0])
        assert record is not None and record.sha256 == hashlib.sha256(data).hexdigest() and record.size == len(data)
    assert result.usage is not None and result.usage.total_tokens > 0
    assert len(stored_objects(tmp_path / "images")) == 2


async def test_stability_bytes_become_a_url_for_generations_and_edits(aiohttp_server, tmp_path: Path) -> None:
    seen: list[dict] = []
    upstream = await aiohttp_server(stability_app(seen))
    config = provider_config("stability", str(upstream.make_url("")), upstream_model="sd3.5-large")
    gw = await gateway_for(aiohttp_server, config | {"storage": local(tmp_path / "images")})
    async with sdk(gw) as client:
        made = await client.images.generate(model="img", prompt="a lighthouse", response_format="url")
        edited = await client.images.edit(model="img", prompt="at night", image=("in.png", PNG, "image/png"),
                                          response_format="url")
    for result in (made, edited):
        (image,) = result.data
        assert image.url is not None and image.b64_json is None
        assert await fetch(image.url) == (200, "image/png", PNG)
    assert len(seen) == 2
    assert "response_format" not in seen[0]["fields"]


async def test_without_storage_url_stays_unsupported_for_byte_providers(aiohttp_server) -> None:
    seen: list[dict] = []
    upstream = await aiohttp_server(stability_app(seen))
    gw = await gateway_for(aiohttp_server, provider_config("stability", str(upstream.make_url(""))))
    async with sdk(gw) as client:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.images.generate(model="img", prompt="x", response_format="url")
    assert caught.value.body["param"] == "response_format"
    assert seen == []


async def test_a_large_image_is_stored_whole_and_the_skeleton_kept(aiohttp_server, tmp_path: Path) -> None:
    big, small = png_like(12 * MiB + 5), png_like(70_000, seed=3)
    seen: list[dict] = []
    upstream = await openai_fake(aiohttp_server, [images_body(big, small, extra=',"quality":"high"')], seen)
    config = provider_config("openai", str(upstream.make_url("/v1")))
    gw = await gateway_for(aiohttp_server, config | {"storage": local(tmp_path / "images")})
    async with aiohttp.ClientSession() as session:
        async with session.post(gw.make_url("/v1/images/generations"),
                                json={"model": "img", "prompt": "x", "response_format": "url"}) as resp:
            assert resp.status == 200, await resp.text()
            body = await resp.json()
    # OpenAI-compatible upstreams get no response_format: each model answers its own way.
    assert "response_format" not in seen[0]
    assert [sorted(item) for item in body["data"]] == [["revised_prompt", "url"]] * 2
    assert [item["revised_prompt"] for item in body["data"]] == ["r0", "r1"]
    assert body["usage"]["total_tokens"] == 12 and body["quality"] == "high" and body["created"] == 1700000000
    assert [await fetch(item["url"]) for item in body["data"]] == [(200, "image/png", big), (200, "image/png", small)]


async def test_provider_urls_pass_through_untouched(aiohttp_server, tmp_path: Path) -> None:
    body = b'{"created":1,"data":[{"url":"https://images.example.com/a.png"}]}'
    upstream = await openai_fake(aiohttp_server, [body], [])
    config = provider_config("openai", str(upstream.make_url("/v1")))
    gw = await gateway_for(aiohttp_server, config | {"storage": local(tmp_path / "images")})
    async with sdk(gw) as client:
        result = await client.images.generate(model="img", prompt="x", response_format="url")
    assert result.data[0].url == "https://images.example.com/a.png"
    assert stored_objects(tmp_path / "images") == []


async def test_bad_base64_fails_over_and_leaves_nothing_behind(aiohttp_server, tmp_path: Path) -> None:
    good = png_like(300_000, seed=9)
    # The first provider's second image is not base64: its first image, already stored, is removed.
    broken = images_body(png_like(200_000)).replace(b"]", b',{"b64_json":"!!!not-base64!!!"}]')
    bad = await openai_fake(aiohttp_server, [broken], [])
    ok = await openai_fake(aiohttp_server, [images_body(good)], [])
    config = {
        "providers": {"bad": {"adapter": "openai", "base_url": str(bad.make_url("/v1"))},
                      "ok": {"adapter": "openai", "base_url": str(ok.make_url("/v1"))}},
        "models": {"img": [{"provider": "bad"}, {"provider": "ok"}]},
        "routing": {"retries": 0},
        "storage": local(tmp_path / "images"),
    }
    gw = await gateway_for(aiohttp_server, config)
    async with sdk(gw) as client:
        result = await client.images.generate(model="img", prompt="x", response_format="url")
    assert await fetch(result.data[0].url or "") == (200, "image/png", good)
    assert len(stored_objects(tmp_path / "images")) == 1


async def test_a_store_failure_is_a_503_and_leaves_nothing(aiohttp_server, tmp_path: Path) -> None:
    upstream = await openai_fake(aiohttp_server, [images_body(png_like(2 * MiB))], [])
    config = provider_config("openai", str(upstream.make_url("/v1")))
    storage = local(tmp_path / "images", max_object_bytes=MiB)
    gw = await gateway_for(aiohttp_server, config | {"storage": storage})
    async with sdk(gw) as client:
        with pytest.raises(openai.InternalServerError) as caught:
            await client.images.generate(model="img", prompt="x", response_format="url")
    assert caught.value.status_code == 503
    assert caught.value.body["code"] == "storage_unavailable"
    assert "max_object_bytes" in caught.value.body["message"]
    assert stored_objects(tmp_path / "images") == []


async def test_b64_json_and_streams_are_untouched_with_storage_on(aiohttp_server, tmp_path: Path) -> None:
    config = {"providers": {"demo": {"adapter": "demo"}}, "models": {"demo-image": [{"provider": "demo"}]},
              "storage": local(tmp_path / "images")}
    gw = await gateway_for(aiohttp_server, config)
    async with sdk(gw) as client:
        result = await client.images.generate(model="demo-image", prompt="x")
        assert result.data[0].b64_json
        stream = await client.images.generate(model="demo-image", prompt="x", stream=True, partial_images=1)
        kinds = [event.type async for event in stream]
    assert kinds[-1] == "image_generation.completed"
    assert stored_objects(tmp_path / "images") == []


async def test_s3_presigned_urls_from_seaweedfs(aiohttp_server, seaweedfs: SeaweedS3, s3_prefix: str) -> None:
    image = png_like(7 * MiB + 11, seed=5)
    upstream = await openai_fake(aiohttp_server, [images_body(image)], [])
    config = provider_config("openai", str(upstream.make_url("/v1")))
    storage = {"backend": "s3", "s3": seaweedfs.storage_section(s3_prefix)}
    gw = await gateway_for(aiohttp_server, config | {"storage": storage})
    async with sdk(gw) as client:
        result = await client.images.generate(model="img", prompt="x", response_format="url")
    url = result.data[0].url or ""
    # Straight to the store, signed by it.
    assert url.startswith(seaweedfs.endpoint) and "X-Amz-Signature=" in url
    status, _, data = await fetch(url)
    assert status == 200 and data == image


async def test_an_idempotent_retry_replays_the_same_urls_without_a_second_call(aiohttp_server, tmp_path: Path) -> None:
    seen: list[dict] = []
    upstream = await openai_fake(aiohttp_server, [images_body(png_like(500_000))], seen)
    config = provider_config("openai", str(upstream.make_url("/v1")))
    gw = await gateway_for(aiohttp_server, config | {"storage": local(tmp_path / "images")})
    async with sdk(gw) as client:
        results = [
            await client.images.generate(model="img", prompt="x", response_format="url",
                                         extra_headers={"Idempotency-Key": "order-42"})
            for _ in range(3)
        ]
    assert len(seen) == 1
    assert len({r.data[0].url for r in results}) == 1
    assert len(stored_objects(tmp_path / "images")) == 1
