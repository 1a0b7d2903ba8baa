"""The built-in demo provider: real PNGs, made locally, no keys, no network.

It speaks the OpenAI Images API, so its translation is the openai adapter's.
Without ``base_url`` the relay serves it in-process (``demo://``, see
``proxy.transport``); with one, it talks HTTP to ``pixelgate demo-upstream``.
Its options travel as request headers, which both forms honour.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, ClassVar

import msgspec
from msgspec import Meta

from adapters.openai import OpenAITranslator
from proxy.schema import ImageGenerationRequest

__all__ = ["DEMO_URL", "DemoAdapter", "DemoOptions"]

DEMO_URL = "demo://local/v1"


class DemoOptions(msgspec.Struct, forbid_unknown_fields=True):
    # Delay before the response starts (a provider "thinking").
    latency_ms: Annotated[float, Meta(ge=0, le=600_000)] = 0.0
    # Delay between streamed events, so partial images arrive over time.
    interval_ms: Annotated[float, Meta(ge=0, le=600_000)] = 0.0


class DemoAdapter:
    Options: ClassVar[type[msgspec.Struct]] = DemoOptions

    @classmethod
    def check(cls, *, base_url: str | None, api_key: str | None, options: msgspec.Struct) -> None:
        if base_url is not None and not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url: must start with http:// or https://, got {base_url!r}")

    def __init__(
        self, *, name: str, base_url: str | None, api_key: str | None, headers: Mapping[str, str], options: msgspec.Struct
    ) -> None:
        assert isinstance(options, DemoOptions)
        self.name = name
        self._url = (base_url or DEMO_URL).rstrip("/") + "/images/generations"
        self._headers = {
            "Content-Type": "application/json",
            **headers,
            "X-Demo-Latency-Ms": f"{options.latency_ms:g}",
            "X-Demo-Interval-Ms": f"{options.interval_ms:g}",
        }

    def translator(
        self, request: ImageGenerationRequest, body: bytes, upstream_model: str, request_id: str
    ) -> OpenAITranslator:
        headers = {**self._headers, "X-Client-Request-Id": request_id}
        return OpenAITranslator(self.name, self._url, headers, request, body, upstream_model)
