"""One public model served by several providers of different kinds: the
client sees one OpenAI API while the gateway fails over between them."""

from __future__ import annotations

import pytest

from proxy.config import parse_config
from proxy.server import create_app
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
    gw, together_seen, bfl_seen = mixed
    async with sdk(gw) as client:
        raw = await client.images.with_raw_response.generate(
            model="flux", prompt="a lighthouse", extra_body={"provider": {"only": ["bfl"]}}
        )
    assert raw.headers["x-pixelgate-provider"] == "bfl" and not together_seen
