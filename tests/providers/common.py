"""What the per-provider end-to-end tests share."""

from __future__ import annotations

import base64
import binascii
import io
import re
from typing import Any

import openai
from aiohttp.test_utils import TestServer
from PIL import Image

from pixelgate.proxy.config import parse_config
from pixelgate.proxy.demo.render import render_png
from pixelgate.proxy.server import create_app

PNG = render_png("pixelgate provider test", 64, 64)
PNG_B64 = base64.b64encode(PNG).decode()


_DATA_URI = re.compile(r"data:(image/(?:png|jpeg|webp));base64,(.*)", re.S)


def decode_data_uri(uri: str) -> tuple[str, bytes]:
    """(media type, bytes) of a ``data:image/...;base64,...`` URI; ValueError
    unless the payload is exactly the canonical base64 of its bytes."""
    m = _DATA_URI.fullmatch(uri)
    if m is None:
        raise ValueError(f"not a base64 image data: URI: {uri[:40]!r}")
    data = binascii.a2b_base64(m.group(2), strict_mode=True)
    if base64.b64encode(data).decode() != m.group(2):
        raise ValueError("the data: URI's base64 is not canonical")
    return m.group(1), data


def png_size(b64: str) -> tuple[int, int]:
    """Decode a returned image for real: it must be a whole PNG."""
    with Image.open(io.BytesIO(base64.b64decode(b64))) as image:
        image.load()
        return image.size


def provider_config(adapter: str, base_url: str, *, options: dict[str, Any] | None = None, model: str = "img",
                    upstream_model: str = "upstream-model", server: dict[str, Any] | None = None,
                    api_key: str = "provider-secret") -> dict[str, Any]:
    return {
        "server": {"keepalive_interval": 0.2, **(server or {})},
        "providers": {adapter: {"adapter": adapter, "base_url": base_url, "api_key": api_key,
                                "options": options or {}}},
        "models": {model: [{"provider": adapter, "model": upstream_model}]},
    }


async def gateway_for(aiohttp_server, config: dict[str, Any]) -> TestServer:
    return await aiohttp_server(create_app(parse_config(config, env={})))


def sdk(gateway: TestServer) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=str(gateway.make_url("/v1")), api_key="client-key", max_retries=0)


async def stream_events(client: openai.AsyncOpenAI, **kwargs: Any) -> list[Any]:
    stream = await client.images.generate(stream=True, **kwargs)
    return [event async for event in stream]


def check_completed(event: Any) -> None:
    """Every field the OpenAI SDK declares on a completed event is present."""
    assert event.type == "image_generation.completed"
    for field in ("b64_json", "created_at", "size", "quality", "background", "output_format", "usage"):
        assert getattr(event, field, None) is not None, field
    for field in ("input_tokens", "output_tokens", "total_tokens", "input_tokens_details"):
        assert getattr(event.usage, field, None) is not None, field
