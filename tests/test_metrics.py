"""Metric values are exact after scripted traffic; the access log says what happened, and no more."""

from __future__ import annotations

import json
import logging

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.faults import event, ok, raw, status

USAGE = {"input_tokens": 10, "input_tokens_details": {"text_tokens": 7, "image_tokens": 3},
         "output_tokens": 272, "output_tokens_details": {"text_tokens": 0, "image_tokens": 272}, "total_tokens": 282}
PRICES = {"m": {"input_text": 5.0, "input_image": 10.0, "output_image": 40.0}}


def samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, tuple(sorted(labels.items()))), 0.0)


async def scrape(gw) -> str:
    async with aiohttp.ClientSession() as session:
        async with session.get(gw.make_url("/metrics")) as resp:
            return await resp.text()


async def post(gw, body) -> int:
    async with aiohttp.ClientSession() as session:
        async with session.post(gw.make_url("/v1/images/generations"), json=body) as resp:
            await resp.read()
            return resp.status


async def test_tokens_images_cost_after_three_streams(scripted) -> None:
    stream = raw([event("image_generation.partial_image", partial_image_index=0), event("image_generation.completed", usage=USAGE)])
    gw, _ = await scripted({"a": [stream]}, extra={"prices": PRICES})
    for _ in range(3):
        assert await post(gw, {"model": "m", "prompt": "x", "stream": True}) == 200
    text = await scrape(gw)
    pm = {"provider": "a", "model": "m"}
    pmo = {**pm, "operation": "generation"}
    assert value(text, "pixelgate_tokens_total", **pmo, direction="input", modality="text") == 21
    assert value(text, "pixelgate_tokens_total", **pmo, direction="input", modality="image") == 9
    assert value(text, "pixelgate_tokens_total", **pmo, direction="output", modality="image") == 816
    assert value(text, "pixelgate_images_total", **pmo, kind="final") == 3
    assert value(text, "pixelgate_images_total", **pmo, kind="partial") == 3
    # 3 x (7 * 5 + 3 * 10 + 272 * 40) / 1e6 USD
    assert value(text, "pixelgate_cost_usd_total", **pmo) == pytest.approx(3 * (7 * 5 + 3 * 10 + 272 * 40) / 1e6)
    assert value(text, "pixelgate_model_priced", model="m") == 1
    assert value(text, "pixelgate_first_partial_seconds_count", **pm) == 3
    assert value(text, "pixelgate_completed_seconds_count", **pm) == 3
    assert value(text, "pixelgate_upstream_headers_seconds_count", **pm) == 3
    assert value(text, "pixelgate_gateway_overhead_seconds_count", direction="request") == 3
    assert value(text, "pixelgate_gateway_overhead_seconds_count", direction="response") == 3
    assert value(text, "pixelgate_inflight_requests", provider="a") == 0
    assert value(text, "pixelgate_bytes_total", **pm, direction="response") > 0
    assert value(text, "pixelgate_bytes_total", **pm, direction="request") > 0


async def test_unpriced_model_counts_no_cost(scripted) -> None:
    gw, _ = await scripted({"a": [ok()]})
    assert await post(gw, {"model": "m", "prompt": "x"}) == 200
    text = await scrape(gw)
    assert value(text, "pixelgate_model_priced", model="m") == 0
    assert "pixelgate_cost_usd_total{" not in text
    assert value(text, "pixelgate_tokens_total", provider="a", model="m", operation="generation", direction="output", modality="image") == 272


async def test_per_image_price(scripted) -> None:
    gw, _ = await scripted({"a": [ok()]}, extra={"prices": {"m": {"per_image": 0.04}}})
    for _ in range(2):
        assert await post(gw, {"model": "m", "prompt": "x"}) == 200
    text = await scrape(gw)
    # The usage has 3 input and 272 output tokens, priced at 0: only images count.
    assert value(text, "pixelgate_cost_usd_total", provider="a", model="m", operation="generation") == pytest.approx(0.08)


async def test_upstream_503_counts_its_error_type(scripted) -> None:
    gw, _ = await scripted({"a": [status(503)]}, routing={"retries": 0})
    assert await post(gw, {"model": "m", "prompt": "x"}) == 503
    text = await scrape(gw)
    assert value(text, "pixelgate_errors_total", provider="a", model="m", error_type="status_5xx") == 1
    assert value(text, "pixelgate_upstream_attempts_total", provider="a", model="m", result="status_5xx") == 1
    assert value(text, "pixelgate_requests_total", provider="a", model="m", endpoint="images.generations", stream="false", status="503") == 1


async def test_unknown_models_fold_into_one_label(scripted) -> None:
    gw, _ = await scripted({"a": [ok()]}, model=None, extra={"models": {"*": [{"provider": "a"}]}})
    for name in ("alpha", "beta", "gamma"):
        assert await post(gw, {"model": name, "prompt": "x"}) == 200
    text = await scrape(gw)
    assert value(text, "pixelgate_requests_total", provider="a", model="other", endpoint="images.generations", stream="false", status="200") == 3
    assert "alpha" not in text and "beta" not in text


async def test_keepalives_are_counted(scripted) -> None:
    gw, _ = await scripted({"a": [raw([event("image_generation.completed", usage=USAGE)], delay=0.35)]}, server={"keepalive_interval": 0.1})
    assert await post(gw, {"model": "m", "prompt": "x", "stream": True}) == 200
    assert value(await scrape(gw), "pixelgate_keepalives_total", provider="a") >= 2


async def test_access_log_line_has_stages_and_no_prompt_or_key(scripted, caplog) -> None:
    caplog.set_level(logging.INFO, logger="pixelgate.access")
    gw, _ = await scripted({"a": [ok()]}, extra={"prices": PRICES}, provider={"api_key": "sk-very-secret-key"})
    assert await post(gw, {"model": "m", "prompt": "a secret prompt", "stream": True}) == 200
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "pixelgate.access"]
    assert len(lines) == 1
    line = lines[0]
    assert line["status"] == 200 and line["provider"] == "a" and line["model"] == "m" and line["stream"] is True
    assert line["request_id"].startswith("req_") and line["attempts"] == 1
    assert line["images"] == 1 and line["partials"] == 1 and line["usage"]["total_tokens"] == 275
    assert line["first_partial_ms"] <= line["completed_ms"] <= line["duration_ms"]
    assert "prompt" not in line
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "secret prompt" not in text and "sk-very-secret-key" not in text


async def test_prompt_logging_is_opt_in(scripted, caplog) -> None:
    caplog.set_level(logging.INFO, logger="pixelgate.access")
    gw, _ = await scripted({"a": [ok()]}, server={"log_prompts": True})
    assert await post(gw, {"model": "m", "prompt": "a lighthouse"}) == 200
    line = json.loads(next(r.getMessage() for r in caplog.records if r.name == "pixelgate.access"))
    assert line["prompt"] == "a lighthouse"
