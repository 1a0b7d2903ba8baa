"""Config reload on SIGHUP: open streams finish on the old config, new requests get the new one, a bad file changes nothing.

The gateway is a real process reading a config file; the test rewrites the
file and sends SIGHUP while 20 streams are open (the demo provider, slow
events). Prices are read back from the ledger (each row names the price it
was charged at) and from ``/metrics``.
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import sqlalchemy as sa
import yaml
from sqlalchemy.ext.asyncio import create_async_engine

from pixelgate.proxy.access.keys import hash_key
from pixelgate.proxy.app_keys import BREAKERS
from pixelgate.proxy.config import parse_config
from pixelgate.proxy.ledger.schema import ledger
from pixelgate.proxy.server import create_app
from tests.access_util import bearer, key_entry, new_key
from tests.test_jobs_restart import _gateway

BODY = {"prompt": "x", "size": "16x16"}


def _config(port: int, ledger_url: str, *, price: float, extra_model: bool = False) -> dict[str, Any]:
    models: dict[str, Any] = {"demo-image": [{"provider": "slow"}], "fast-image": [{"provider": "fast"}]}
    if extra_model:
        models["new-image"] = [{"provider": "fast"}]
    return {
        "server": {"port": port, "shutdown_timeout": 5, "drain_delay": 0},
        "providers": {"slow": {"adapter": "demo", "options": {"interval_ms": 400}}, "fast": {"adapter": "demo"}},
        "models": models,
        "prices": {"demo-image": {"per_image": price}, "fast-image": {"per_image": price}},
        "ledger": {"url": ledger_url, "flush_interval": 0.2},
    }


async def _stream(session: aiohttp.ClientSession, base: str) -> tuple[int, bytes]:
    async with session.post(f"{base}/v1/images/generations",
                            json={**BODY, "model": "demo-image", "stream": True, "partial_images": 2}) as resp:
        return resp.status, await resp.read()


async def _metric(session: aiohttp.ClientSession, base: str, pattern: str) -> list[str]:
    async with session.get(f"{base}/metrics") as resp:
        return re.findall(pattern, await resp.text(), re.M)


async def test_sighup_during_open_streams(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'ledger.sqlite3'}"
    path = tmp_path / "gw.yaml"  # what _gateway writes, and the process re-reads
    with _gateway(_config(0, url, price=0.01), tmp_path, "gw") as (base, proc):
        port = int(base.rsplit(":", 1)[1])
        async with aiohttp.ClientSession() as session:
            assert await _metric(session, base, r'^pixelgate_config_info\{version="(\w+)"\} 1\.0$')
            streams = [asyncio.create_task(_stream(session, base)) for _ in range(20)]
            await asyncio.sleep(0.5)  # all open, mid-stream
            path.write_text(yaml.safe_dump(_config(port, url, price=0.05, extra_model=True)))
            proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 10
            while not await _metric(session, base, r'^pixelgate_config_reloads_total\{result="ok"\} 1\.0$'):
                assert time.monotonic() < deadline, "no reload"
                await asyncio.sleep(0.05)
            # New requests see the new config: the added model, the new price.
            async with session.post(f"{base}/v1/images/generations", json={**BODY, "model": "new-image"}) as resp:
                assert resp.status == 200
                await resp.read()
            async with session.post(f"{base}/v1/images/generations", json={**BODY, "model": "fast-image"}) as resp:
                assert resp.status == 200
                fast_id = resp.headers["x-request-id"]
                await resp.read()
            results = await asyncio.gather(*streams)
            assert all(status == 200 and b"image_generation.completed" in body for status, body in results)

            # A broken file: refused, the running config kept.
            path.write_text("providers: [this is not\n")
            proc.send_signal(signal.SIGHUP)
            while not await _metric(session, base, r'^pixelgate_config_reloads_total\{result="error"\} 1\.0$'):
                assert time.monotonic() < deadline + 10, "the broken config was not refused"
                await asyncio.sleep(0.05)
            async with session.post(f"{base}/v1/images/generations", json={**BODY, "model": "new-image"}) as resp:
                assert resp.status == 200
                await resp.read()
            versions = await _metric(session, base, r'^pixelgate_config_info\{version="(\w+)"\} 1\.0$')
            assert len(versions) == 1
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(sa.select(ledger.c.request_id, ledger.c.model, ledger.c.cost_micro_usd, ledger.c.images, ledger.c.price, ledger.c.status))).all()
    finally:
        await engine.dispose()
    streamed = [r for r in rows if r.model == "demo-image"]
    # The streams started before the reload: charged at the old price (one image each).
    assert len(streamed) == 20 and {r.cost_micro_usd for r in streamed} == {10_000}
    assert {r.cost_micro_usd for r in rows if r.request_id == fast_id} == {50_000}
    assert "config reload refused" in (tmp_path / "gw.log").read_text()


async def test_admin_reload_applies_or_refuses_and_keeps_breakers(aiohttp_server) -> None:
    admin, key = new_key(), new_key()
    base: dict[str, Any] = {
        "providers": {"demo": {"adapter": "demo"}},
        "models": {"demo-image": [{"provider": "demo"}]},
        "access": {"keys": [key_entry("alice", key, models=["demo-image"])]},
        "admin": {"keys": [{"name": "ops", "hash": hash_key(admin)}]},
    }
    current = {"config": base}
    gw = await aiohttp_server(create_app(parse_config(base, env={}), load=lambda: parse_config(current["config"], env={})))
    breaker = gw.app[BREAKERS][("demo-image", 0)]
    async with aiohttp.ClientSession() as session:
        async def reload() -> tuple[int, dict[str, Any]]:
            async with session.post(gw.make_url("/admin/reload"), headers=bearer(admin)) as resp:
                return resp.status, await resp.json()

        async def generate(model: str) -> int:
            async with session.post(gw.make_url("/v1/images/generations"), headers=bearer(key),
                                    json={**BODY, "model": model}) as resp:
                await resp.read()
                return resp.status

        assert await generate("other-image") == 403  # not this key's model (and not configured)
        # A model added, and the key allowed to use it: both apply at once.
        current["config"] = {**base, "models": {**base["models"], "other-image": [{"provider": "demo"}]},
                             "access": {"keys": [key_entry("alice", key, models=["*"])]}}
        status, body = await reload()
        assert status == 200 and body["ok"] is True
        assert await generate("other-image") == 200
        # The unchanged deployment kept its breaker.
        assert gw.app[BREAKERS][("demo-image", 0)] is breaker
        # A section that needs a restart: refused, nothing changed.
        current["config"] = {**current["config"], "server": {"max_body_bytes": 1024}}
        status, body = await reload()
        assert status == 422 and body["ok"] is False and body["message"].startswith("server: changed")
        assert await generate("other-image") == 200
        # A gateway key may not reload.
        async with session.post(gw.make_url("/admin/reload"), headers=bearer(key)) as resp:
            assert resp.status == 403


async def test_a_budget_given_by_a_reload_starts_from_the_ledgers_spend(aiohttp_server, tmp_path: Path) -> None:
    # bob spends 0.022 USD without a budget; a reload gives him one of 0.02. His spend this
    # period is the ledger's, as at a restart: the next request is over it, not the first of a new count.
    admin, key = new_key(), new_key()
    url = f"sqlite+aiosqlite:///{tmp_path / 'ledger.sqlite3'}"
    # Hashed once: a hash is salted, and a changed admin section is refused by a reload.
    admins = {"keys": [{"name": "ops", "hash": hash_key(admin)}]}
    bob_hash = hash_key(key)

    def config(limits: dict[str, Any] | None) -> dict[str, Any]:
        bob = {"name": "bob", "hash": bob_hash, **({"limits": limits} if limits else {})}
        return {
            "providers": {"demo": {"adapter": "demo"}},
            "models": {"demo-image": [{"provider": "demo"}]},
            "prices": {"demo-image": {"per_image": 0.011}},
            "access": {"keys": [bob]},
            "admin": admins,
            "ledger": {"url": url, "flush_interval": 0.05, "spool_dir": str(tmp_path)},
        }

    current = {"config": config(None)}
    gw = await aiohttp_server(create_app(parse_config(current["config"], env={}), load=lambda: parse_config(current["config"], env={})))
    async with aiohttp.ClientSession() as session:
        async def generate() -> tuple[int, dict[str, Any]]:
            async with session.post(gw.make_url("/v1/images/generations"), headers=bearer(key), json={**BODY, "model": "demo-image"}) as resp:
                return resp.status, await resp.json()

        assert [(await generate())[0] for _ in range(2)] == [200, 200]
        engine = create_async_engine(url)
        try:
            deadline = time.monotonic() + 5
            while True:
                async with engine.connect() as conn:
                    spent = (await conn.execute(sa.select(sa.func.sum(ledger.c.cost_micro_usd)).where(ledger.c.key_name == "bob"))).scalar()
                if spent == 22_000:
                    break
                assert time.monotonic() < deadline, f"the ledger holds {spent} micro-dollars of bob's, not 22000"
                await asyncio.sleep(0.05)
        finally:
            await engine.dispose()
        current["config"] = config({"budget_usd": 0.02, "budget_period": "day"})
        async with session.post(gw.make_url("/admin/reload"), headers=bearer(admin)) as resp:
            assert (resp.status, (await resp.json())["ok"]) == (200, True), await resp.text()
        status, body = await generate()
        assert status == 429 and "budget" in body["error"]["message"]
