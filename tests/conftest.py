"""Shared fixtures: real servers on loopback, real clients, nothing mocked.

``demo_upstream`` is the standalone demo provider (the same app
``pixelgate demo-upstream`` runs); ``gateway`` builds the gateway from a
config dict; ``fake_upstream`` serves whatever a test's handler writes, for
exact-bytes checks and failure injection.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import Awaitable, Callable
from typing import Any

import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from pixelgate.proxy.config import parse_config
from pixelgate.proxy.demo.server import create_demo_app
from pixelgate.proxy.server import create_app
from tests.postgres_server import PostgresProcess, postgres, postgres_url  # noqa: F401  (fixtures)
from tests.procs import free_port
from tests.redis_server import redis_prefix, redis_url  # noqa: F401  (fixtures)
from tests.seaweedfs_server import s3_prefix, seaweedfs  # noqa: F401  (fixtures)

# The gateway's data directory (the embedded usage ledger lives there): never the
# repository's ./data. Gateways made by session- and module-wide fixtures share this
# one; every test gets its own (below), which its subprocesses inherit.
os.environ["PIXELGATE_DATA_DIR"] = tempfile.mkdtemp(prefix="pixelgate-test-data-")


@pytest.fixture
def postgres_database(postgres: PostgresProcess) -> str:  # noqa: F811
    """A database of this test's own on the session's PostgreSQL cluster."""
    return postgres.create_database(f"t_{secrets.token_hex(4)}")


@pytest.fixture(autouse=True)
def _data_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    # Beside the test's tmp_path, not in it: tests check what their tmp_path holds.
    monkeypatch.setenv("PIXELGATE_DATA_DIR", str(tmp_path_factory.mktemp("data")))

GatewayFactory = Callable[..., Awaitable[TestServer]]


def v1(server: TestServer) -> str:
    return str(server.make_url("/v1"))


def single_provider_config(base_url: str, *, adapter: str = "openai", server: dict[str, Any] | None = None,
                           provider: dict[str, Any] | None = None, model: str = "gpt-image-1.5",
                           upstream_model: str | None = None) -> dict[str, Any]:
    deployment = {"provider": "up"} | ({"model": upstream_model} if upstream_model else {})
    return {
        "server": server or {},
        "providers": {"up": {"adapter": adapter, "base_url": base_url, **(provider or {})}},
        "models": {model: [deployment]},
    }


@pytest.fixture
async def demo_upstream(aiohttp_server) -> TestServer:
    return await aiohttp_server(create_demo_app(ping_interval=60))


@pytest.fixture
def gateway(aiohttp_server) -> GatewayFactory:
    async def make(config: dict[str, Any]) -> TestServer:
        return await aiohttp_server(create_app(parse_config(config, env={})))

    return make


@pytest.fixture
async def demo_gateway(gateway: GatewayFactory, demo_upstream: TestServer) -> TestServer:
    """The gateway in front of the standalone demo upstream, over real HTTP."""
    return await gateway(single_provider_config(v1(demo_upstream)))


@pytest.fixture
def fake_upstream(aiohttp_server) -> Callable[[Callable[[web.Request], Awaitable[web.StreamResponse]]], Awaitable[TestServer]]:
    async def make(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> TestServer:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/images/generations", handler)
        return await aiohttp_server(app)

    return make


@pytest.fixture
async def async_client(demo_gateway: TestServer) -> openai.AsyncOpenAI:
    client = openai.AsyncOpenAI(base_url=v1(demo_gateway), api_key="sk-client-unused", max_retries=0)
    yield client
    await client.close()


@pytest.fixture
def scripted(aiohttp_server):
    """``await scripted({"a": [action, ...], ...}, routing=..., server=..., models=...)``:
    scripted upstreams named a, b, ... and a gateway whose model "m" routes to
    them in that order. Returns (gateway, {name: ScriptedUpstream})."""
    from tests.faults import ScriptedUpstream

    async def make(scripts: dict[str, list], *, routing: dict | None = None, server: dict | None = None,
                   timeouts: dict | None = None, model: dict | list | None = None, dead: tuple[str, ...] = (),
                   extra: dict | None = None, provider: dict | None = None):
        upstreams, providers = {}, {}
        for name, script in scripts.items():
            upstream = ScriptedUpstream(name, script)
            upstreams[name] = upstream
            srv = await aiohttp_server(upstream.app())
            providers[name] = {"adapter": "openai", "base_url": v1(srv), "timeouts": timeouts or {}, **(provider or {})}
        for name in dead:
            # Nothing listens there: connection refused.
            port = free_port()
            providers[name] = {"adapter": "openai", "base_url": f"http://127.0.0.1:{port}/v1", "timeouts": timeouts or {}}
        config = {
            "providers": providers,
            "models": {"m": model if model is not None else [{"provider": n} for n in providers]},
            "routing": {"backoff_base": 0.01, "backoff_max": 0.05, **(routing or {})},
            "server": server or {},
        }
        for key, value in (extra or {}).items():
            config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
        gw = await aiohttp_server(create_app(parse_config(config, env={})))
        return gw, upstreams

    return make
