"""The usage ledger in the gateway: every finished request is one row, exact to the micro-dollar.

A mixed load (successes, streams, upstream failures, client aborts, 401s and
429s) against an in-process gateway whose ledger is a real SQLite file (the
embedded default) or a real PostgreSQL; afterwards the ledger's rows, images,
tokens and cost must equal what the clients saw and what Prometheus counted.
Durability and budgets across restarts run the gateway as a process
(tests/test_ledger_procs.py).
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
from fractions import Fraction
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from pixelgate.proxy.app_keys import LEDGER_STORE
from tests.access_util import bearer, key_entry, new_key
from tests.providers.common import gateway_for

PRICE = {"input_text": 5.0, "input_image": 10.0, "output_image": 40.0, "per_image": 0.011}
ROWS = "SELECT status, images, partials, input_text_tokens, input_image_tokens, output_text_tokens, " \
       "output_image_tokens, cost_micro_usd, price, key_name, key_id FROM ledger"


async def _failing(aiohttp_server):
    async def fail(request: web.Request) -> web.Response:
        return web.json_response({"error": {"message": "boom", "type": "server_error", "param": None, "code": None}},
                                 status=500)

    app = web.Application()
    app.router.add_post("/v1/images/generations", fail)
    return await aiohttp_server(app)


def _config(failing_url: str, keys: list[dict[str, Any]], ledger: dict[str, Any]) -> dict[str, Any]:
    return {
        "routing": {"retries": 0},
        "providers": {"demo": {"adapter": "demo", "options": {"interval_ms": 40}}, "bad": {"adapter": "openai", "base_url": failing_url}},
        "models": {"demo-image": [{"provider": "demo"}], "broken": [{"provider": "bad"}]},
        "prices": {"demo-image": PRICE},
        "access": {"keys": keys},
        "ledger": ledger,
    }


async def _metric_sum(session: aiohttp.ClientSession, url: str, name: str, having: str = "") -> float:
    async with session.get(url) as resp:
        text = await resp.text()
    return sum(float(m.group(2)) for m in re.finditer(rf"^{name}{{([^}}]*)}} (\S+)$", text, re.M) if having in m.group(1))


async def _load(gw, key: str, limited: str) -> dict[str, int]:
    """The mixed load; what the clients saw."""
    seen = {"ok": 0, "stream": 0, "failed": 0, "aborted": 0, "unauthorized": 0, "limited": 0}
    base = str(gw.make_url("/v1/images/generations"))
    body = {"model": "demo-image", "prompt": "x", "size": "64x64"}
    async with aiohttp.ClientSession() as session:
        async def one(kind: str) -> None:
            if kind == "ok":
                async with session.post(base, json={**body, "n": 2}, headers=bearer(key)) as resp:
                    assert resp.status == 200
                    await resp.read()
            elif kind == "stream":
                async with session.post(base, json={**body, "stream": True, "partial_images": 2}, headers=bearer(key)) as resp:
                    assert resp.status == 200
                    await resp.read()
            elif kind == "failed":
                async with session.post(base, json={**body, "model": "broken"}, headers=bearer(key)) as resp:
                    assert resp.status == 500
            elif kind == "aborted":
                async with session.post(base, json={**body, "stream": True, "partial_images": 3}, headers=bearer(key)) as resp:
                    await resp.content.readany()  # the first bytes, then gone
            elif kind == "unauthorized":
                async with session.post(base, json=body, headers=bearer("pg-nope")) as resp:
                    assert resp.status == 401
            elif kind == "limited":
                async with session.post(base, json=body, headers=bearer(limited)) as resp:
                    assert resp.status in (200, 429)
                    kind = "ok_limited" if resp.status == 200 else "limited"
                    await resp.read()
            seen[kind] = seen.get(kind, 0) + 1

        plan = ["ok"] * 12 + ["stream"] * 6 + ["failed"] * 5 + ["aborted"] * 4 + ["unauthorized"] * 3 + ["limited"] * 8
        await asyncio.gather(*(one(k) for k in plan))
    return seen


@pytest.fixture(params=["sqlite", "postgres"])
def ledger_section(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    if request.param == "sqlite":
        return {"url": f"sqlite+aiosqlite:///{tmp_path / 'ledger.sqlite3'}"}
    return {"url": request.getfixturevalue("postgres_database")}


async def test_the_ledger_equals_what_clients_saw_and_prometheus_counted(aiohttp_server, ledger_section) -> None:
    failing = await _failing(aiohttp_server)
    key, limited = new_key(), new_key()
    keys = [key_entry("alice", key), key_entry("bob", limited, limits={"requests_per_minute": 3})]
    gw = await gateway_for(aiohttp_server, _config(str(failing.make_url("/v1")), keys, {**ledger_section, "flush_interval": 0.1}))
    seen = await _load(gw, key, limited)
    await asyncio.sleep(0.5)  # the aborted streams' handlers end
    metrics_url = str(gw.make_url("/metrics"))
    async with aiohttp.ClientSession() as session:
        requests = await _metric_sum(session, metrics_url, "pixelgate_requests_total")
        images = await _metric_sum(session, metrics_url, "pixelgate_images_total", 'kind="final"')
        partials = await _metric_sum(session, metrics_url, "pixelgate_images_total", 'kind="partial"')
        cost = await _metric_sum(session, metrics_url, "pixelgate_cost_usd_total")
    store = gw.app[LEDGER_STORE]
    await gw.close()  # the ledger flushes at shutdown
    await store.start()
    try:
        totals = await store.usage(0, 2e9, ["key"])
    finally:
        await store.close()
    by_key = {t["key"]: t for t in totals}
    total_requests = sum(seen.values())
    assert sum(t["requests"] for t in totals) == total_requests == requests
    assert by_key["alice"]["requests"] == 12 + 6 + 5 + 4
    assert by_key["bob"]["requests"] == 8
    assert by_key[None]["requests"] == 3  # the 401s: no key
    # Images: 2 per ok request, 1 per stream (partials apart), bob's admitted ones.
    assert sum(t["images"] for t in totals) == images
    assert sum(t["partials"] for t in totals) == partials
    assert by_key["alice"]["images"] == 12 * 2 + 6
    assert by_key["alice"]["partials"] >= 6 * 2
    # Cost: the rows' integer micro-dollars sum to Prometheus's float total (to the micro-dollar).
    micro = sum(t["cost_micro_usd"] or 0 for t in totals)
    assert micro > 0 and abs(micro - round(cost * 1_000_000)) <= len(seen)
    assert by_key["alice"]["errors"] == 5 + 4  # upstream 500s and client aborts (499)


async def test_rows_carry_exact_cost_and_unpriced_is_never_zero(aiohttp_server, tmp_path: Path) -> None:
    failing = await _failing(aiohttp_server)
    key = new_key()
    url = f"sqlite+aiosqlite:///{tmp_path / 'ledger.sqlite3'}"
    config = _config(str(failing.make_url("/v1")), [key_entry("alice", key)], {"url": url, "flush_interval": 0.1})
    config["models"]["free"] = [{"provider": "demo"}]
    gw = await gateway_for(aiohttp_server, config)
    async with aiohttp.ClientSession() as session:
        for model in ("demo-image", "free"):
            async with session.post(gw.make_url("/v1/images/generations"), headers=bearer(key),
                                    json={"model": model, "prompt": "x", "size": "64x64"}) as resp:
                body = await resp.json()
                assert resp.status == 200
    usage = body["usage"]
    await gw.close()
    with sqlite3.connect(tmp_path / "ledger.sqlite3") as db:
        rows = db.execute(ROWS + " ORDER BY at").fetchall()
    assert len(rows) == 2
    priced, free = rows
    tokens = (usage["input_tokens_details"]["text_tokens"], usage["input_tokens_details"]["image_tokens"],
              usage["output_tokens"])
    exact = (Fraction(str(PRICE["per_image"])) + Fraction(tokens[0]) * Fraction(str(PRICE["input_text"])) / 10**6
             + Fraction(tokens[1]) * Fraction(str(PRICE["input_image"])) / 10**6
             + Fraction(tokens[2]) * Fraction(str(PRICE["output_image"])) / 10**6) * 10**6
    assert priced[7] == int(exact + Fraction(1, 2)) and priced[8] == "demo-image"
    assert (free[7], free[8]) == (None, "unpriced")
    assert priced[9] == "alice" and priced[10] and priced[10] not in key[-20:]
