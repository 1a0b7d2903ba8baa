"""The admin API in one gateway: keys in the ledger database, usage reports, the audit log, roles and hygiene.

Real in-process gateways on loopback with their real SQLite ledger (the
embedded default, in the test's data directory); nothing mocked. Two gateway
processes sharing PostgreSQL, and the CLI, are in tests/test_admin_procs.py.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import logging
import time
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from pixelgate.proxy.access.keys import generate_key, hash_key
from pixelgate.proxy.app_keys import LEDGER_STORE
from pixelgate.proxy.config import ConfigError, parse_config
from pixelgate.proxy.ledger import LedgerStore
from tests.access_util import GENERATIONS, SMALL, bearer, demo_config, key_entry

ADMIN_KEY = generate_key()
CONFIG_KEY = generate_key()


def admin_config(keys: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    config = demo_config(keys or [])
    config["admin"] = {"keys": [{"name": "ops", "hash": hash_key(ADMIN_KEY)}], "key_poll_interval": 0.2}
    config["ledger"] = {"flush_interval": 0.05}
    config.update(extra)
    return config


class Client:
    """Every response kept (headers and body), to look for secrets in afterwards."""

    def __init__(self, session: aiohttp.ClientSession, server: TestServer) -> None:
        self.session, self.server = session, server
        self.seen: list[str] = []

    async def call(self, method: str, path: str, key: str | None = ADMIN_KEY, **kw: Any) -> tuple[int, Any]:
        headers = {**(bearer(key) if key else {}), **kw.pop("headers", {})}
        async with self.session.request(method, self.server.make_url(path), headers=headers, **kw) as resp:
            raw = await resp.read()
            self.seen.append(json.dumps(dict(resp.headers)) + raw.decode("utf-8", "replace"))
            if resp.content_type == "application/json":
                return resp.status, json.loads(raw)
            return resp.status, raw.decode()

    async def generate(self, key: str | None, **body: Any) -> tuple[int, Any]:
        return await self.call("POST", GENERATIONS, key, json={**SMALL, **body})


@pytest.fixture
async def admin_gw(gateway) -> TestServer:
    return await gateway(admin_config([key_entry("configured", CONFIG_KEY)]))


async def _flushed(store: LedgerStore, rows: int, timeout: float = 5.0) -> None:
    """Until the ledger holds ``rows`` rows (the writer flushes every ledger.flush_interval)."""
    deadline = time.monotonic() + timeout
    while (await store.usage(0, time.time() + 10, []))[0]["requests"] < rows:
        assert time.monotonic() < deadline, "the ledger was not flushed in time"
        await asyncio.sleep(0.05)


async def test_key_lifecycle_through_the_api_on_one_gateway(admin_gw: TestServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with aiohttp.ClientSession() as session:
        c = Client(session, admin_gw)
        status, created = await c.call("POST", "/admin/keys", json={"name": "team-a", "models": ["demo-image"]})
        assert status == 201
        secret = created["key"]
        assert secret.startswith("pgk_") and created["name"] == "team-a" and created["models"] == ["demo-image"]
        assert "hash" not in created and created["revoked"] is False and created["source"] == "database"
        # At once, on the gateway that made it.
        assert (await c.generate(secret))[0] == 200
        status, body = await c.generate(secret, model="other-image")
        assert status == 403 and body["error"]["code"] == "model_not_allowed"

        # PATCH models: the other model now, and not the first.
        status, patched = await c.call("PATCH", "/admin/keys/team-a", json={"models": ["other-*"]})
        assert status == 200 and patched["models"] == ["other-*"]
        assert (await c.generate(secret, model="other-image"))[0] == 200
        status, body = await c.generate(secret)
        assert status == 403 and body["error"]["param"] == "model"
        # Limits merged field by field; null back to every model.
        status, patched = await c.call("PATCH", "/admin/keys/team-a", json={"models": None, "limits": {"requests_per_minute": 100}})
        assert status == 200 and patched["models"] is None and patched["limits"]["requests_per_minute"] == 100
        status, patched = await c.call("PATCH", "/admin/keys/team-a", json={"limits": {"budget_usd": 5}})
        assert patched["limits"] == {"requests_per_minute": 100, "budget_usd": 5.0, "budget_period": "day"}
        status, _ = await c.generate(secret)
        assert status == 200

        # Rotate: a new secret, once; the old one stops at once.
        status, rotated = await c.call("POST", "/admin/keys/team-a/rotate")
        assert status == 200 and rotated["id"] == created["id"]
        new_secret = rotated["key"]
        assert new_secret != secret
        status, body = await c.generate(secret)
        assert status == 401 and body["error"]["code"] == "invalid_api_key"
        assert (await c.generate(new_secret))[0] == 200

        # Listing and reading: never a hash, never a secret.
        status, listing = await c.call("GET", "/admin/keys")
        assert status == 200
        assert [(k["name"], k["source"]) for k in listing["data"]] == [("configured", "config"), ("team-a", "database")]
        status, one = await c.call("GET", "/admin/keys/team-a")
        assert status == 200 and one["limits"]["budget_usd"] == 5.0 and "key" not in one
        assert (await c.call("GET", "/admin/keys/configured"))[1]["source"] == "config"

        # Revoke: refused as revoked (to whoever holds the whole key).
        status, revoked = await c.call("POST", "/admin/keys/team-a/revoke")
        assert status == 200 and revoked["revoked"] is True
        status, body = await c.generate(new_secret)
        assert status == 401 and body["error"]["code"] == "revoked_api_key"
        status, body = await c.call("POST", "/admin/keys/team-a/rotate")
        assert status == 409 and body["error"]["code"] == "key_revoked"

        # Every change audited, newest first, the admin key's name as actor, no secret.
        status, audit = await c.call("GET", "/admin/audit?limit=50")
        assert status == 200
        actions = [(e["actor"], e["action"], e["target"]) for e in audit["data"]]
        assert actions == [("ops", a, "team-a") for a in
                           ("key.revoke", "key.rotate", "key.update", "key.update", "key.update", "key.create")]
        assert audit["data"][-1]["detail"]["models"] == ["demo-image"]
        assert audit["data"][2]["detail"]["changed"]["limits"]["budget_usd"] == 5.0

    secrets = {"admin": ADMIN_KEY, "created": secret, "rotated": new_secret}
    for name, value in secrets.items():
        assert value not in caplog.text, f"the {name} secret reached a log line"
        assert value[-20:] not in caplog.text
    # The one-time answers are the only responses carrying a key's secret; the admin
    # key appears in none.
    assert not [s for s in c.seen if ADMIN_KEY in s]
    assert [s for s in c.seen if secret in s] == [c.seen[0]]
    assert len([s for s in c.seen if new_secret in s]) == 1
    assert "sha256$" not in "".join(c.seen)


async def test_concurrent_patches_of_one_key_all_take_effect(admin_gw: TestServer) -> None:
    # Each PATCH changes a field of its own, all at once: a read-then-write would let the
    # last writer put back what it read, undoing the others; compare-and-set keeps them all.
    changes = [{"limits": {"requests_per_minute": 100}}, {"limits": {"images_per_minute": 50}},
               {"limits": {"concurrent_streams": 3}}, {"limits": {"budget_usd": 7}},
               {"models": ["demo-*"]}, {"cors_origins": ["https://app.example.com"]}]
    async with aiohttp.ClientSession() as session:
        c = Client(session, admin_gw)
        assert (await c.call("POST", "/admin/keys", json={"name": "shared"}))[0] == 201
        for _ in range(3):
            answers = await asyncio.gather(*(c.call("PATCH", "/admin/keys/shared", json=change) for change in changes))
            assert [status for status, _ in answers] == [200] * len(changes)
        status, key = await c.call("GET", "/admin/keys/shared")
        assert status == 200
        assert key["limits"] == {"requests_per_minute": 100, "images_per_minute": 50, "concurrent_streams": 3,
                                 "budget_usd": 7.0, "budget_period": "day"}
        assert key["models"] == ["demo-*"] and key["cors_origins"] == ["https://app.example.com"]
        # One audit entry per change that went in, none for an attempt that lost its race.
        _, audit = await c.call("GET", "/admin/audit?limit=100")
        assert [e["action"] for e in audit["data"]].count("key.update") == 3 * len(changes)


async def test_a_gateway_key_cannot_administer_and_an_admin_key_cannot_generate(admin_gw: TestServer, gateway) -> None:
    async with aiohttp.ClientSession() as session:
        c = Client(session, admin_gw)
        for method, path in (("GET", "/admin/keys"), ("POST", "/admin/keys"), ("GET", "/admin/usage"), ("GET", "/admin/audit"),
                             ("POST", "/admin/keys/configured/revoke")):
            status, body = await c.call(method, path, CONFIG_KEY, json={"name": "x"})
            assert (status, body["error"]["code"]) == (403, "admin_key_required"), path
        _, created = await c.call("POST", "/admin/keys", json={"name": "made"})
        status, body = await c.call("GET", "/admin/keys", created["key"])
        assert (status, body["error"]["code"]) == (403, "admin_key_required")
        status, body = await c.call("GET", "/admin/keys", None)
        assert (status, body["error"]["code"]) == (401, "missing_api_key")
        status, body = await c.call("GET", "/admin/keys", generate_key())
        assert (status, body["error"]["code"]) == (401, "invalid_api_key")
        status, body = await c.call("GET", "/admin/keys", None, headers={"Authorization": "Basic abc"})
        assert status == 401
        # The admin key is no gateway key.
        status, body = await c.generate(ADMIN_KEY)
        assert (status, body["error"]["code"]) == (401, "invalid_api_key")
        status, body = await c.call("GET", "/v1/models", ADMIN_KEY)
        assert status == 401
        status, body = await c.call("GET", "/v1/usage", ADMIN_KEY)
        assert status == 401
        assert (await c.generate(CONFIG_KEY))[0] == 200

    # No admin keys: no admin API at all.
    plain = await gateway({**demo_config([key_entry("configured", CONFIG_KEY)]), "ledger": {"enabled": False}})
    async with aiohttp.ClientSession() as session:
        c = Client(session, plain)
        assert (await c.call("GET", "/admin/keys", ADMIN_KEY))[0] == 404


async def test_with_the_admin_api_on_no_keys_is_not_open_mode(gateway) -> None:
    gw = await gateway(admin_config())
    async with aiohttp.ClientSession() as session:
        c = Client(session, gw)
        status, body = await c.generate(None)
        assert (status, body["error"]["code"]) == (401, "missing_api_key")
        _, created = await c.call("POST", "/admin/keys", json={"name": "first"})
        assert (await c.generate(created["key"]))[0] == 200


async def test_usage_reports_equal_the_ledger(admin_gw: TestServer) -> None:
    store = admin_gw.app[LEDGER_STORE]
    async with aiohttp.ClientSession() as session:
        c = Client(session, admin_gw)
        _, a = await c.call("POST", "/admin/keys", json={"name": "team-a"})
        _, b = await c.call("POST", "/admin/keys", json={"name": "team-b", "models": ["other-image"]})
        for _ in range(3):
            assert (await c.generate(a["key"], n=2))[0] == 200
        assert (await c.generate(a["key"], model="other-image"))[0] == 200
        assert (await c.generate(b["key"], model="other-image"))[0] == 200
        assert (await c.generate(b["key"]))[0] == 403
        assert (await c.generate(CONFIG_KEY))[0] == 200
        await _flushed(store, 7)

        expected = await store.usage(0, time.time() + 10, ["key", "model"])
        status, report = await c.call("GET", "/admin/usage?by=key,model")
        assert status == 200
        assert [{k: v for k, v in row.items() if k != "cost_usd"} for row in report["data"]] == expected
        assert report["totals"]["requests"] == 7 and report["totals"]["images"] == 9
        by_key = {row["key"]: row for row in report["data"] if row["model"] == "demo-image"}
        assert by_key["team-a"]["images"] == 6 and by_key["team-a"]["requests"] == 3

        status, text = await c.call("GET", "/admin/usage?by=key,model&format=csv")
        assert status == 200
        rows = list(csv.DictReader(io.StringIO(text)))
        assert [(r["key"], r["model"], int(r["requests"]), int(r["images"]), int(r["errors"])) for r in rows] == [
            (row["key"] or "", row["model"] or "", row["requests"], row["images"], row["errors"]) for row in expected
        ]

        # Time series: one row per key and UTC day.
        status, series = await c.call("GET", "/admin/usage?by=day,key&since=1d")
        today = time.strftime("%Y-%m-%d", time.gmtime())
        assert {(r["day"], r["key"]) for r in series["data"]} == {(today, "team-a"), (today, "team-b"), (today, "configured")}
        assert (await c.call("GET", "/admin/usage?key=team-b"))[1]["totals"]["requests"] == 2
        status, later = await c.call("GET", f"/admin/usage?since={time.time() + 5:.0f}&until={time.time() + 10:.0f}")
        assert later["totals"]["requests"] == 0
        assert (await c.call("GET", "/admin/usage?until=1h"))[1]["totals"]["requests"] == 0

        # A gateway key sees its own usage, and nobody else's.
        status, own = await c.call("GET", "/v1/usage?by=key,model", a["key"])
        assert status == 200 and {row["key"] for row in own["data"]} == {"team-a"}
        assert own["totals"] == {**(await store.usage(0, time.time() + 10, [], key="team-a"))[0], "cost_usd": None}
        status, own = await c.call("GET", "/v1/usage", b["key"])
        assert own["totals"]["requests"] == 2 and own["key"] == "team-b"
        status, text = await c.call("GET", "/v1/usage?by=model&format=csv", CONFIG_KEY)
        assert status == 200 and text.splitlines()[1].startswith("demo-image,1,")
        status, body = await c.call("GET", "/v1/usage?key=team-a", b["key"])
        assert (status, body["error"]["param"]) == (403, "key")
        assert (await c.call("GET", "/v1/usage", None))[0] == 401


@pytest.mark.parametrize(("method", "path", "body", "status", "param"), [
    ("POST", "/admin/keys", {"name": "bad name"}, 400, "name"),
    ("POST", "/admin/keys", {}, 400, "name"),
    ("POST", "/admin/keys", {"name": "x", "colour": "red"}, 400, "colour"),
    ("POST", "/admin/keys", {"name": "x", "models": []}, 400, "models"),
    ("POST", "/admin/keys", {"name": "x", "limits": {"requests_per_minute": 0}}, 400, "limits.requests_per_minute"),
    ("POST", "/admin/keys", {"name": "x", "limits": {"budget_period": "year"}}, 400, "limits.budget_period"),
    ("POST", "/admin/keys", {"name": "x", "cors_origins": ["ftp://x"]}, 400, "cors_origins[0]"),
    ("POST", "/admin/keys", {"name": "x", "webhook_url": "https://example.com/h"}, 400, "webhook_url"),
    ("POST", "/admin/keys", {"name": "configured"}, 409, "name"),
    ("PATCH", "/admin/keys/configured", {"models": ["*"]}, 409, None),
    ("PATCH", "/admin/keys/nobody", {"models": ["*"]}, 404, None),
    ("POST", "/admin/keys/nobody/revoke", None, 404, None),
    ("GET", "/admin/keys/nobody", None, 404, None),
    ("GET", "/admin/usage?by=key,colour", None, 400, "by"),
    ("GET", "/admin/usage?since=yesterday", None, 400, "since"),
    ("GET", "/admin/usage?since=1d&until=2d", None, 400, "until"),
    ("GET", "/admin/usage?format=xml", None, 400, "format"),
    ("GET", "/admin/audit?limit=0", None, 400, "limit"),
])
async def test_bad_input_is_a_400_naming_the_field(admin_gw: TestServer, method: str, path: str, body: Any, status: int,
                                                   param: str | None) -> None:
    async with aiohttp.ClientSession() as session:
        c = Client(session, admin_gw)
        got, answer = await c.call(method, path, json=body) if body is not None else await c.call(method, path)
        assert got == status, answer
        assert set(answer) == {"error"} and answer["error"]["param"] == param


async def test_bad_patches_and_bodies(admin_gw: TestServer) -> None:
    async with aiohttp.ClientSession() as session:
        c = Client(session, admin_gw)
        await c.call("POST", "/admin/keys", json={"name": "team-a"})
        status, body = await c.call("PATCH", "/admin/keys/team-a", json={"limits": {"images_per_minute": -1}})
        assert (status, body["error"]["param"]) == (400, "limits.images_per_minute")
        status, body = await c.call("PATCH", "/admin/keys/team-a", json={"limits": {"colour": 1}})
        assert (status, body["error"]["param"]) == (400, "limits.colour")
        status, body = await c.call("PATCH", "/admin/keys/team-a", json={})
        assert (status, body["error"]["code"]) == (400, "empty_update")
        status, body = await c.call("POST", "/admin/keys", data=b"{not json", headers={"Content-Type": "application/json"})
        assert status == 400
        status, body = await c.call("POST", "/admin/keys", json={"name": "team-a"})
        assert (status, body["error"]["code"]) == (409, "key_exists")
        # Only the successful create was audited.
        _, audit = await c.call("GET", "/admin/audit")
        assert [e["action"] for e in audit["data"]] == ["key.create"]


def test_admin_config() -> None:
    base = demo_config([key_entry("configured", CONFIG_KEY)])
    config = parse_config(base, env={})
    assert config.admin.keys == [] and config.admin.key_poll_interval == 2.0
    good = parse_config({**base, "admin": {"keys": [{"name": "ops", "hash": hash_key(ADMIN_KEY)}], "key_poll_interval": 0.5}}, env={})
    assert good.admin.keys[0].name == "ops"
    with pytest.raises(ConfigError, match=r"admin\.keys\[0\]\.hash: this is a plaintext key"):
        parse_config({**base, "admin": {"keys": [{"name": "ops", "hash": ADMIN_KEY}]}}, env={})
    with pytest.raises(ConfigError, match=r"admin\.keys\[0\]\.hash: not a Pixelgate key hash"):
        parse_config({**base, "admin": {"keys": [{"name": "ops", "hash": "secret"}]}}, env={})
    with pytest.raises(ConfigError, match=r"admin\.keys\[0\]\.hash: this key is also a gateway key"):
        parse_config({**base, "admin": {"keys": [{"name": "ops", "hash": hash_key(CONFIG_KEY)}]}}, env={})
    with pytest.raises(ConfigError, match=r"admin\.keys\[1\]\.name: duplicate"):
        parse_config({**base, "admin": {"keys": [{"name": "ops", "hash": hash_key(ADMIN_KEY)},
                                                 {"name": "ops", "hash": hash_key(generate_key())}]}}, env={})
    with pytest.raises(ConfigError, match=r"admin\.key_poll_interval"):
        parse_config({**base, "admin": {"key_poll_interval": 0}}, env={})
    with pytest.raises(ConfigError, match=r"admin"):
        parse_config({**base, "admin": {"keys": [{"name": "ops", "hash": hash_key(ADMIN_KEY), "key": ADMIN_KEY}]}}, env={})
