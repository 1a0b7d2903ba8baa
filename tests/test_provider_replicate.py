"""Replicate end to end: create (sync mode), poll, download, through the real
relay, driven by the official SDK; edits, their uploads sent as data: URIs;
and the memory of the download path with a 20 MB base64 image and of an
edit's 15 MB upload, gateway and fake provider each in a process of its own."""

from __future__ import annotations

import binascii
import hashlib
import io
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from PIL import Image

from pixelgate.proxy.config import ConfigError, parse_config
from tests.procs import (
    ROOT,
    free_port,
    pixelgate,
    reset_peak_rss,
    rss_kib,
    stop,
    wait_http,
)
from tests.providers.common import (
    check_completed,
    gateway_for,
    png_size,
    provider_config,
    sdk,
    stream_events,
)
from tests.providers.replicate import replicate_app
from tests.providers.replicate_server import file_bytes, upload_bytes

OPTIONS = {"poll_interval": 0.05, "fetch_hosts": ["127.0.0.1"]}
MODEL = "black-forest-labs/flux-schnell"


# For an error answered before any byte: with the suite's 0.2 s keep-alive, a loaded machine
# can send a keep-alive first, and the error then is an event (the subject of another test).
_NO_EARLY_KEEPALIVE = {"keepalive_interval": 30}


@pytest.fixture
def replicate(aiohttp_server):
    async def make(*, upstream_model: str = MODEL, options: dict[str, Any] | None = None, server: dict | None = None, **kwargs):
        seen: list[dict] = []
        upstream = await aiohttp_server(replicate_app(seen, **kwargs))
        config = provider_config("replicate", str(upstream.make_url("")), options={**OPTIONS, **(options or {})},
                                 upstream_model=upstream_model, server=server)
        return await gateway_for(aiohttp_server, config), seen

    return make


async def test_sdk_without_stream_sync_mode(replicate) -> None:
    gw, seen = await replicate()
    async with sdk(gw) as client:
        result = await client.images.generate(model="img", prompt="a fox", size="1536x1024", n=2)
    assert [png_size(d.b64_json) for d in result.data] == [(64, 64), (64, 64)]
    assert seen[0]["path"] == f"/v1/models/{MODEL}/predictions"
    assert seen[0]["body"] == {"input": {"prompt": "a fox", "aspect_ratio": "3:2", "num_outputs": 2, "output_format": "png"}}
    assert seen[0]["prefer"] == "wait=60"
    # Finished within the wait: no poll; the key never goes to the file host.
    assert [s["path"] for s in seen[1:]] == ["/delivery/p1/out-0.png", "/delivery/p1/out-1.png"]
    assert [s["auth"] for s in seen] == ["Bearer provider-secret", None, None]


async def test_sdk_stream_polls_with_keepalives(replicate) -> None:
    # ~0.4 s of polling at 0.05 s; keep-alives every 0.2 s.
    gw, seen = await replicate(pending_polls=8, single=True)
    async with sdk(gw) as client, client.with_streaming_response.images.generate(
        model="img", prompt="a fox", stream=True
    ) as response:
        raw = b"".join([chunk async for chunk in response.iter_bytes()])
    assert raw.startswith(b": keep-alive\n\n")
    assert raw.count(b"event: image_generation.completed") == 1
    polls = [s for s in seen if s["path"] == "/v1/predictions/p1"]
    assert len(polls) == 8 and all(s["auth"] == "Bearer provider-secret" for s in polls)
    async with sdk(gw) as client:
        events = await stream_events(client, model="img", prompt="a fox", output_format="jpeg")
    assert len(events) == 1
    check_completed(events[0])
    assert png_size(events[0].b64_json) == (64, 64)
    assert seen[-1]["path"] == "/delivery/p2/out-0.jpg"  # jpeg is sent as FLUX's "jpg"


async def test_version_and_url_response_format(replicate) -> None:
    gw, seen = await replicate(upstream_model="stability-ai/sdxl:7762fd07", pending_polls=1)
    async with sdk(gw) as client:
        result = await client.images.generate(model="img", prompt="a fox", response_format="url")
    assert result.data[0].url.endswith("/delivery/p1/out-0.png")
    assert seen[0]["path"] == "/v1/predictions" and seen[0]["body"]["version"] == "7762fd07"
    assert not any(s["path"].startswith("/delivery") for s in seen)


async def test_nsfw_failure_is_moderation_blocked(replicate) -> None:
    gw, _ = await replicate(status="failed", error="NSFW content detected. Try running it again, or try a different prompt.")
    async with sdk(gw) as client:
        with pytest.raises(openai.BadRequestError) as info:
            await client.images.generate(model="img", prompt="refused")
    assert info.value.code == "moderation_blocked"
    assert "NSFW content detected" in info.value.message


async def test_model_failure_after_keepalives_is_an_error_event(replicate) -> None:
    gw, _ = await replicate(pending_polls=6, status="failed", error="CUDA out of memory")
    async with sdk(gw) as client:
        stream = await client.images.generate(model="img", prompt="a fox", stream=True)
        with pytest.raises(openai.APIError) as info:
            async for _ in stream:
                pass
    assert info.value.body["code"] == "upstream_error"
    assert "CUDA out of memory" in info.value.body["message"]


async def test_rate_limit_keeps_retry_after(replicate) -> None:
    gw, _ = await replicate(http_status=429, server=_NO_EARLY_KEEPALIVE)
    async with sdk(gw) as client:
        with pytest.raises(openai.RateLimitError) as info:
            await client.images.generate(model="img", prompt="a fox", stream=True)
    assert info.value.response.headers["retry-after"] == "3"
    assert "rate limit resets" in info.value.message


# Edits.


def _image(fmt: str, size: tuple[int, int], color: tuple[int, ...]) -> bytes:
    out = io.BytesIO()
    mode = "RGBA" if fmt == "PNG" else "RGB"
    Image.new(mode, size, color[: len(mode)]).save(out, fmt)
    return out.getvalue()


async def test_sdk_edit_sends_a_list_of_data_uris(replicate) -> None:
    a, b = _image("PNG", (64, 48), (200, 30, 30, 255)), _image("WEBP", (30, 30), (10, 90, 200))
    gw, seen = await replicate(upstream_model="google/nano-banana", options={"inputs": {"images": "image_input"}},
                               expect_uploads={"image_input": [a, b]})
    async with sdk(gw) as client:
        result = await client.images.edit(
            model="img", image=[("a.png", a, "image/png"), ("b.webp", b, "image/webp")], prompt="merge them",
            size="1536x1024", extra_body={"seed": 42},
        )
    assert len(result.data) == 1 and png_size(result.data[0].b64_json) == (64, 64)
    assert seen[0]["path"] == "/v1/models/google/nano-banana/predictions"
    # The form's "42" is the number 42; the uploads went as their sniffed types.
    assert seen[0]["body"] == {"input": {"prompt": "merge them", "seed": 42, "aspect_ratio": "3:2", "output_format": "png",
                                         "image_input": [f"image/png:{len(a)}", f"image/webp:{len(b)}"]}}
    assert seen[0]["uploads"] == {"image_input": [a, b]}
    assert [s["auth"] for s in seen] == ["Bearer provider-secret", None]


async def test_sdk_edit_stream_with_mask_polls_with_keepalives(replicate) -> None:
    image, mask = _image("PNG", (64, 48), (200, 30, 30, 255)), _image("PNG", (64, 48), (255, 255, 255, 255))
    gw, seen = await replicate(upstream_model="black-forest-labs/flux-fill-pro", pending_polls=6, single=True,
                               options={"inputs": {"image": "image", "mask": "mask", "aspect_ratio": None}},
                               expect_uploads={"image": image, "mask": mask})
    async with sdk(gw) as client, client.with_streaming_response.images.edit(
        model="img", image=("house.png", image, "image/png"), mask=("mask.png", mask, "image/png"),
        prompt="a red door", stream=True,
    ) as response:
        raw = b"".join([chunk async for chunk in response.iter_bytes()])
    assert raw.startswith(b": keep-alive\n\n")
    assert raw.count(b"event: image_edit.completed") == 1 and b"image_generation" not in raw
    assert seen[0]["uploads"] == {"image": image, "mask": mask}
    assert len([s for s in seen if s["path"] == "/v1/predictions/p1"]) == 6
    async with sdk(gw) as client:
        stream = await client.images.edit(model="img", image=("house.png", image, "image/png"),
                                          mask=("mask.png", mask, "image/png"), prompt="a red door", stream=True)
        events = [event async for event in stream]
    assert [e.type for e in events] == ["image_edit.completed"]
    assert png_size(events[0].b64_json) == (64, 64) and events[0].usage is not None


async def test_edit_refusals_call_no_model(replicate) -> None:
    image = _image("PNG", (16, 16), (1, 2, 3, 255))
    gw, seen = await replicate()  # FLUX schnell: no image input named, so no edits
    async with sdk(gw) as client:
        with pytest.raises(openai.BadRequestError) as info:
            await client.images.edit(model="img", image=("a.png", image, "image/png"), prompt="a hat")
    assert info.value.code == "unsupported_operation"
    gw, seen = await replicate(options={"inputs": {"image": "input_image"}})
    async with sdk(gw) as client:
        with pytest.raises(openai.BadRequestError) as info:
            await client.images.edit(model="img", image=[("a.png", image, "image/png")] * 2, prompt="both")
    assert (info.value.code, info.value.param) == ("unsupported_parameter", "image")
    async with aiohttp.ClientSession() as session, session.post(
        gw.make_url("/v1/images/edits"),
        json={"model": "img", "prompt": "a hat", "images": [{"image_url": "https://example.com/fox.png"}]},
    ) as resp:
        assert resp.status == 400
        error = (await resp.json())["error"]
    assert (error["code"], error["param"]) == ("unsupported_parameter", "images")
    assert seen == []


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"image": "input_image", "images": "image_input"}, r"options\.inputs\.images: set image \(one URI\) or images"),
        ({"mask": ""}, r"options\.inputs\.mask: empty; use null"),
    ],
)
def test_edit_input_options_are_checked(inputs: dict[str, Any], message: str) -> None:
    config = provider_config("replicate", "https://api.replicate.com", options={"inputs": inputs})
    with pytest.raises(ConfigError, match=message):
        parse_config(config, env={})


# The memory tests: a 15 MB file, 20 MB of base64 in the client's b64_json;
# an edit's 15 MB upload, 20 MB of base64 in the data: URI sent to Replicate.

IMAGE_BYTES = 15_000_000


@contextmanager
def fake_replicate(port: int, image_bytes: int) -> Iterator[subprocess.Popen]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.providers.replicate_server", "--port", str(port), "--image-bytes", str(image_bytes)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", proc)
        yield proc
    finally:
        stop(proc)
        if proc.stderr:
            proc.stderr.close()


class B64Digest:
    """SHA-256 of the bytes a response's ``b64_json`` decodes to, fed as it arrives.

    Holds a few bytes of carry, never the body: the test's own memory stays small too.
    """

    MARK = b'"b64_json":"'

    def __init__(self) -> None:
        self.digest = hashlib.sha256()
        self.size = 0
        self.images = 0
        self.total = 0
        self._inside = False
        self._tail = b""  # seeking: the last bytes, in case the mark spans chunks
        self._carry = b""  # inside: base64 short of a 4-character group

    def feed(self, chunk: bytes) -> None:
        self.total += len(chunk)
        while chunk:
            if not self._inside:
                data = self._tail + chunk
                at = data.find(self.MARK)
                if at < 0:
                    self._tail = data[-(len(self.MARK) - 1) :]
                    return
                self._tail, self._inside, chunk = b"", True, data[at + len(self.MARK) :]
                self.images += 1
                continue
            end = chunk.find(b'"')
            part = chunk if end < 0 else chunk[:end]
            data = self._carry + part
            cut = len(data) - len(data) % 4
            self._decode(data[:cut])
            self._carry = data[cut:]
            if end < 0:
                return
            self._decode(self._carry)
            self._carry, self._inside, chunk = b"", False, chunk[end + 1 :]

    def _decode(self, b64: bytes) -> None:
        if b64:
            raw = binascii.a2b_base64(b64, strict_mode=True)
            self.digest.update(raw)
            self.size += len(raw)


async def _post(session: aiohttp.ClientSession, url: str, body: dict) -> B64Digest:
    out = B64Digest()
    async with session.post(url, json=body) as resp:
        assert resp.status == 200, await resp.text()
        async for chunk in resp.content.iter_any():
            out.feed(chunk)
    return out


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
async def test_20mb_b64_download_is_exact_and_does_not_grow_gateway_memory(tmp_path: Path, stream: bool) -> None:
    up, gw = free_port(), free_port()
    config = tmp_path / "c.yaml"
    config.write_text(
        "providers:\n"
        f"  rep: {{adapter: replicate, base_url: 'http://127.0.0.1:{up}', api_key: k,\n"
        "        options: {fetch_hosts: ['127.0.0.1'], poll_interval: 0.05}}\n"
        "models:\n  big: [{provider: rep, model: owner/big}]\n"
    )
    url = f"http://127.0.0.1:{gw}/v1/images/generations"
    body: dict = {"model": "big", "prompt": "noise"} | ({"stream": True} if stream else {})
    with fake_replicate(up, IMAGE_BYTES), pixelgate(
        "serve", "--config", str(config), "--port", str(gw), ready=f"http://127.0.0.1:{gw}/healthz"
    ) as gateway:
        async with aiohttp.ClientSession() as session:
            # Warm the gateway up on a small file (a native input the fake reads), then measure its peak.
            warm = await _post(session, url, body | {"image_bytes": 3000})
            assert warm.size == 3000
            baseline = rss_kib(gateway.pid)
            reset_peak_rss(gateway.pid)
            got = await _post(session, url, body)
            peak = rss_kib(gateway.pid, "VmHWM")
    kind = "sse" if stream else "json"
    print(f"\n20MB replicate download ({kind}): baseline {baseline} KiB, peak {peak} KiB, growth {peak - baseline} KiB")
    assert got.images == 1
    assert (got.digest.hexdigest(), got.size) == (hashlib.sha256(file_bytes(IMAGE_BYTES)).hexdigest(), IMAGE_BYTES)
    assert got.total > 20_000_000  # the base64 went through the gateway
    # Encoded as it arrives: growth is a few read buffers, never the 20 MB.
    assert peak - baseline < 16 * 1024, (baseline, peak)


async def _post_edit(session: aiohttp.ClientSession, url: str, upload: bytes, stream: bool) -> B64Digest:
    form = aiohttp.FormData()
    form.add_field("model", "big")
    form.add_field("prompt", "noise")
    if stream:
        form.add_field("stream", "true")
    form.add_field("image", io.BytesIO(upload), filename="big.png", content_type="image/png")
    out = B64Digest()
    async with session.post(url, data=form) as resp:
        assert resp.status == 200, await resp.text()
        async for chunk in resp.content.iter_any():
            out.feed(chunk)
    return out


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
async def test_15mb_edit_upload_goes_as_base64_without_growing_gateway_memory(tmp_path: Path, stream: bool) -> None:
    up, gw = free_port(), free_port()
    config = tmp_path / "c.yaml"
    config.write_text(
        "providers:\n"
        f"  rep: {{adapter: replicate, base_url: 'http://127.0.0.1:{up}', api_key: k,\n"
        "        options: {fetch_hosts: ['127.0.0.1'], poll_interval: 0.05, inputs: {image: image, aspect_ratio: null}}}\n"
        "models:\n  big: [{provider: rep, model: owner/big}]\n"
        f"server: {{upload_dir: '{tmp_path}'}}\n"
    )
    url = f"http://127.0.0.1:{gw}/v1/images/edits"
    upload = upload_bytes(IMAGE_BYTES)
    # The fake checks every data: URI is exactly upload_bytes(its size), and answers with the upload as its file.
    with fake_replicate(up, IMAGE_BYTES), pixelgate(
        "serve", "--config", str(config), "--port", str(gw), ready=f"http://127.0.0.1:{gw}/healthz"
    ) as gateway:
        async with aiohttp.ClientSession() as session:
            warm = await _post_edit(session, url, upload_bytes(3000), stream)
            assert warm.size == 3000
            baseline = rss_kib(gateway.pid)
            reset_peak_rss(gateway.pid)
            got = await _post_edit(session, url, upload, stream)
            peak = rss_kib(gateway.pid, "VmHWM")
    kind = "sse" if stream else "json"
    print(f"\n15MB replicate edit upload ({kind}): baseline {baseline} KiB, peak {peak} KiB, growth {peak - baseline} KiB")
    # Uploaded, sent as base64 from the spool, decoded by the fake, served back, encoded again: the same bytes.
    assert got.images == 1
    assert (got.digest.hexdigest(), got.size) == (hashlib.sha256(upload).hexdigest(), IMAGE_BYTES)
    # Spooled as it arrives and encoded as it is sent: growth is read buffers, never the 15 MB (or its 20 MB of base64).
    assert peak - baseline < 16 * 1024, (baseline, peak)
    assert list(tmp_path.glob("pixelgate-upload-*")) == []  # the spool went with the request
