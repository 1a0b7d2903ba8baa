"""The built-in demo provider: real PNGs, made locally, no keys, no network.

It speaks the OpenAI Images API, so its translation is the openai adapter's.
Without ``base_url`` the relay serves it in-process (``demo://``, see
``proxy.transport``); with one, it talks HTTP to ``pixelgate demo-upstream``.
Its options travel as request headers, which both forms honour.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from pixelgate.adapters.base import AdapterBase
from pixelgate.adapters.images_out import EDIT_COMPLETED
from pixelgate.adapters.openai import PASS_THROUGH, OpenAITranslator
from pixelgate.adapters.openai_wire import edit_call
from pixelgate.core.request import rewrite_body
from pixelgate.core.translator import Edit, Generation, ProviderSettings, UpstreamRequest

__all__ = ["DEMO_URL", "DemoAdapter", "DemoOptions"]

DEMO_URL = "demo://local/v1"


class DemoOptions(msgspec.Struct, forbid_unknown_fields=True):
    # Delay before the response starts (a provider "thinking").
    latency_ms: Annotated[float, Meta(ge=0, le=600_000)] = 0.0
    # Delay between streamed events, so partial images arrive over time.
    interval_ms: Annotated[float, Meta(ge=0, le=600_000)] = 0.0


class DemoAdapter(AdapterBase[DemoOptions]):
    Options = DemoOptions
    # It speaks the OpenAI Images API: its server judges the parameters.
    capabilities = msgspec.structs.replace(PASS_THROUGH, provider="demo")
    __slots__ = ("_headers", "_url")

    def setup(self, settings: ProviderSettings) -> None:
        options = self.options
        self._url = (settings.base_url or DEMO_URL).rstrip("/")
        self._headers = {
            **settings.headers,
            "X-Demo-Latency-Ms": f"{options.latency_ms:g}",
            "X-Demo-Interval-Ms": f"{options.interval_ms:g}",
        }

    def generation(self, g: Generation) -> OpenAITranslator:
        headers = {"Content-Type": "application/json", **self._headers, "X-Client-Request-Id": g.request_id}
        call = UpstreamRequest("POST", self._url + "/images/generations", headers, rewrite_body(g.body, g.upstream_model))
        return OpenAITranslator(self.name, call, g.request.streaming)

    def edit(self, e: Edit) -> OpenAITranslator:
        # The in-process engine is handed a body and headers, no URL: this
        # header tells it an edit from a generation (the standalone server
        # goes by the URL, and ignores it).
        headers = {**self._headers, "X-Demo-Operation": "edits", "X-Client-Request-Id": e.request_id}
        call = edit_call(self._url + "/images/edits", headers, e)
        return OpenAITranslator(self.name, call, e.request.streaming, EDIT_COMPLETED)
