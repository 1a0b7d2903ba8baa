"""One public model served by several providers of different kinds: the
client sees one OpenAI API while the gateway fails over between them."""

from __future__ import annotations

import pytest

from pixelgate.proxy.config import parse_config
from pixelgate.proxy.server import create_app
from tests.providers.bfl import bfl_app
from tests.providers.common import check_completed, png_size, sdk, stream_events
from tests.providers.together import together_app


@pytest.fixture
async def mixed(aiohttp_server):
    together_seen: list[dict] = []
    bfl_seen: list[dict] = []
    together = await aiohttp_server(together_app(together_seen, status=503))
    bfl = await aiohttp_server(bfl_app(bfl_seen, pending_polls=1))
    config = {
        "server": {"keepalive_interval": 0.2},
        "routing": {"retries": 0},
        "providers": {
            "together": {"adapter": "together", "base_url": str(together.make_url("/v1")), "api_key": "k1"},
            "bfl": {"adapter": "bfl", "base_url": str(bfl.make_url("/v1")), "api_key": "k2",
                    "options": {"poll_interval": 0.02, "fetch_hosts": ["127.0.0.1"]}},
        },
        "models": {"flux": [
            {"provider": "together", "model": "black-forest-labs/FLUX.1-pro"},
            {"provider": "bfl", "model": "flux-pro-1.1"},
        ]},
    }
    gw = await aiohttp_server(create_app(parse_config(config, env={})))
    return gw, together_seen, bfl_seen


async def test_failover_from_together_to_bfl(mixed) -> None:
    gw, together_seen, bfl_seen = mixed
    async with sdk(gw) as client:
        raw = await client.images.with_raw_response.generate(model="flux", prompt="a lighthouse", size="1024x1024")
    result = raw.parse()
    assert png_size(result.data[0].b64_json) == (64, 64)
    assert raw.headers["x-pixelgate-attempt-log"] == "together=503, bfl=200"
    assert raw.headers["x-pixelgate-provider"] == "bfl"
    assert len(together_seen) == 1 and bfl_seen[0]["body"]["width"] == 1024


async def test_failover_streaming(mixed) -> None:
    gw, _, _ = mixed
    async with sdk(gw) as client:
        events = await stream_events(client, model="flux", prompt="a lighthouse")
    assert len(events) == 1
    check_completed(events[0])
    assert png_size(events[0].b64_json) == (64, 64)


async def test_routing_preferences_pick_a_provider(mixed) -> None:
    gw, together_seen, _bfl_seen = mixed
    async with sdk(gw) as client:
        raw = await client.images.with_raw_response.generate(
            model="flux", prompt="a lighthouse", extra_body={"provider": {"only": ["bfl"]}}
        )
    assert raw.headers["x-pixelgate-provider"] == "bfl" and not together_seen


# Every translating adapter behind one public model, each reached with the
# client's routing preference: one config, one client, nine wire formats.
_EVERY = {
    # adapter: (fake app factory, base path, options, upstream model)
    "azure": ("tests.providers.azure:azure_app", "", {}, "gpt-image-1-dep"),
    "gemini": ("tests.providers.gemini:gemini_app", "/v1beta", {}, "gemini-2.5-flash-image"),
    "imagen": ("tests.providers.imagen:imagen_app", "/v1", {"api": "vertex", "project": "test-project", "location": "us-central1"},
               "imagen-4.0-generate-001"),
    "stability": ("tests.providers.stability:stability_app", "/", {}, "core"),
    "bfl": ("tests.providers.bfl:bfl_app", "/v1", {"poll_interval": 0.02, "fetch_hosts": ["127.0.0.1"]}, "flux-pro-1.1"),
    "xai": ("tests.providers.xai:xai_app", "/v1", {}, "grok-2-image"),
    "together": ("tests.providers.together:together_app", "/v1", {}, "black-forest-labs/FLUX.1-schnell"),
    "fal": ("tests.providers.fal:fal_app", "/", {"poll_interval": 0.02, "fetch_hosts": ["127.0.0.1"]}, "fal-ai/flux/dev"),
    "replicate": ("tests.providers.replicate:replicate_app", "", {"poll_interval": 0.02, "fetch_hosts": ["127.0.0.1"]},
                  "black-forest-labs/flux-schnell"),
}


@pytest.fixture
async def every(aiohttp_server):
    import importlib

    providers, deployments = {}, []
    for name, (factory, path, options, upstream_model) in _EVERY.items():
        module, _, attr = factory.partition(":")
        upstream = await aiohttp_server(getattr(importlib.import_module(module), attr)([]))
        providers[name] = {"adapter": name, "base_url": str(upstream.make_url(path)), "api_key": "provider-secret",
                           "options": options}
        deployments.append({"provider": name, "model": upstream_model})
    config = {"server": {"keepalive_interval": 0.2}, "providers": providers, "models": {"any": deployments}}
    return await aiohttp_server(create_app(parse_config(config, env={})))


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_one_model_every_provider(every, stream: bool) -> None:
    async with sdk(every) as client:
        for name in _EVERY:
            prefs = {"provider": {"only": [name]}}
            if stream:
                events = await stream_events(client, model="any", prompt="a lighthouse", size="1024x1024",
                                             extra_body=prefs)
                assert [e.type for e in events] == ["image_generation.completed"], name
                check_completed(events[0])
                assert png_size(events[0].b64_json) == (64, 64), name
            else:
                raw = await client.images.with_raw_response.generate(model="any", prompt="a lighthouse",
                                                                     size="1024x1024", extra_body=prefs)
                assert raw.headers["x-pixelgate-provider"] == name
                assert png_size(raw.parse().data[0].b64_json) == (64, 64), name
