"""Admin keys across real gateway processes: two replicas sharing PostgreSQL, and the CLI on SQLite.

A key created, revoked or rotated through one gateway's admin API takes effect
on the other within ``admin.key_poll_interval`` (plus one poll's query); the
CLI works on the ledger database the config names and the running gateway
follows it the same way. Every log line of every process is kept in a file and
searched for the secrets afterwards.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from pixelgate.proxy.access.keys import generate_key, hash_key
from pixelgate.proxy.ledger import LedgerStore
from tests.access_util import GENERATIONS, SMALL, bearer, demo_config
from tests.procs import ROOT
from tests.test_access_procs import gateway_process

ADMIN_KEY = generate_key()
POLL = 0.5
# What the tests allow for a change to reach the other process: the poll interval
# plus a generous margin for a loaded test machine (the documented bound is one
# interval plus one query).
BOUND = POLL + 2.0


def _config(ledger: dict[str, Any]) -> dict[str, Any]:
    config = demo_config([])
    config["admin"] = {"keys": [{"name": "ops", "hash": hash_key(ADMIN_KEY)}], "key_poll_interval": POLL}
    config["ledger"] = {"flush_interval": 0.05, **ledger}
    return config


class Calls:
    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session
        self.seen: list[str] = []
        # Image requests made (each is one ledger row, refusals too).
        self.generations = 0

    async def call(self, method: str, url: str, key: str | None = ADMIN_KEY, **kw: Any) -> tuple[int, Any]:
        self.generations += url.endswith(GENERATIONS)
        async with self.session.request(method, url, headers=bearer(key) if key else {}, **kw) as resp:
            raw = await resp.read()
            self.seen.append(json.dumps(dict(resp.headers)) + raw.decode("utf-8", "replace"))
            return resp.status, json.loads(raw) if resp.content_type == "application/json" else raw.decode()

    async def generate(self, base: str, key: str) -> int:
        return (await self.call("POST", base + GENERATIONS, key, json=SMALL))[0]

    async def until(self, base: str, key: str, status: int) -> float:
        """Seconds until ``key`` gets ``status`` from ``base`` (fails after BOUND)."""
        started = time.monotonic()
        while (got := await self.generate(base, key)) != status:
            waited = time.monotonic() - started
            assert waited < BOUND, f"still {got} after {waited:.2f} s"
            await asyncio.sleep(0.05)
        return time.monotonic() - started


async def test_two_replicas_sharing_postgres_follow_each_others_keys(tmp_path: Path, postgres_database: str) -> None:
    config_one = _config({"url": postgres_database, "spool_dir": str(tmp_path / "spool-one")})
    config_two = _config({"url": postgres_database, "spool_dir": str(tmp_path / "spool-two")})
    with gateway_process(config_one, tmp_path, "one") as (one, log_one), gateway_process(config_two, tmp_path, "two") as (two, log_two):
        async with aiohttp.ClientSession() as session:
            c = Calls(session)
            status, created = await c.call("POST", one + "/admin/keys", json={"name": "team-a", "models": ["demo-image"]})
            assert status == 201
            secret = created["key"]
            # At once where it was made; within the bound on the other replica.
            assert await c.generate(one, secret) == 200
            created_delay = await c.until(two, secret, 200)

            # PATCH on two: a model refused on one within the bound.
            status, _ = await c.call("PATCH", two + "/admin/keys/team-a", json={"models": ["other-image"]})
            assert status == 200
            assert await c.generate(two, secret) == 403
            patched_delay = await c.until(one, secret, 403)

            # Rotate on one: the old secret refused on both, the new one works on both.
            status, rotated = await c.call("POST", one + "/admin/keys/team-a/rotate")
            assert status == 200
            new_secret = rotated["key"]
            await c.call("PATCH", one + "/admin/keys/team-a", json={"models": None})
            assert await c.generate(one, secret) == 401
            assert await c.generate(one, new_secret) == 200
            rotated_delay = await c.until(two, secret, 401)
            await c.until(two, new_secret, 200)

            # Revoke on two: refused on both.
            status, _ = await c.call("POST", two + "/admin/keys/team-a/revoke")
            assert status == 200
            assert await c.generate(two, new_secret) == 401
            revoked_delay = await c.until(one, new_secret, 401)
            status, body = await c.call("POST", one + GENERATIONS, new_secret, json=SMALL)
            assert body["error"]["code"] == "revoked_api_key"

            # Both replicas report the same ledger and the same audit log.
            _, audit_one = await c.call("GET", one + "/admin/audit")
            _, audit_two = await c.call("GET", two + "/admin/audit")
            assert audit_one == audit_two
            assert [e["action"] for e in audit_one["data"]] == ["key.revoke", "key.update", "key.rotate", "key.update", "key.create"]
            assert {e["actor"] for e in audit_one["data"]} == {"ops"}

        # A restarted replica loads the database's keys before its first request.
        config_three = _config({"url": postgres_database, "spool_dir": str(tmp_path / "spool-three")})
        with gateway_process(config_three, tmp_path, "three") as (three, log_three):
            async with aiohttp.ClientSession() as session:
                c3 = Calls(session)
                status, body = await c3.call("POST", three + GENERATIONS, new_secret, json=SMALL)
                assert (status, body["error"]["code"]) == (401, "revoked_api_key")
                _, made = await c3.call("POST", three + "/admin/keys", json={"name": "team-b"})
                assert await c3.generate(three, made["key"]) == 200
                c.seen += c3.seen

    print(f"\npropagation to the other replica (poll {POLL} s): create {created_delay:.2f} s, patch {patched_delay:.2f} s, "
          f"rotate {rotated_delay:.2f} s, revoke {revoked_delay:.2f} s")
    logs = log_one.read_text() + log_two.read_text() + log_three.read_text()
    assert "Pixelgate listening" in logs
    for value in (ADMIN_KEY, secret, new_secret, made["key"]):
        assert value not in logs and value.split("_", 2)[2] not in logs
        assert value not in json.dumps(audit_one)
    assert not [s for s in c.seen if ADMIN_KEY in s]
    assert len([s for s in c.seen if secret in s]) == 1
    assert len([s for s in c.seen if new_secret in s]) == 1
    assert "sha256$" not in "".join(c.seen)


def _cli(*args: str, config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pixelgate", *args, "--config", str(config)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, env=os.environ.copy())


async def test_cli_manages_keys_and_reports_usage_on_sqlite(tmp_path: Path) -> None:
    config = _config({})
    with gateway_process(config, tmp_path, "gw") as (base, log):
        path = tmp_path / "gw.yaml"
        created = _cli("keys", "create", "team-c", "--models", "demo-image", "--budget-usd", "5", config=path)
        assert created.returncode == 0, created.stderr
        secret = created.stdout.split()[1]
        assert secret.startswith("pgk_") and "name: team-c" in created.stdout
        async with aiohttp.ClientSession() as session:
            c = Calls(session)
            await c.until(base, secret, 200)
            status, _ = await c.call("POST", base + GENERATIONS, secret, json={**SMALL, "model": "other-image"})
            assert status == 403
            await c.generate(base, secret)

            listed = _cli("keys", "list", config=path)
            assert listed.returncode == 0 and "team-c" in listed.stdout and "budget_usd=5.0" in listed.stdout
            assert secret not in listed.stdout and "sha256$" not in listed.stdout
            as_json = json.loads(_cli("keys", "list", "--format", "json", config=path).stdout)
            assert [(k["name"], k["revoked"]) for k in as_json] == [("team-c", False)]

            duplicate = _cli("keys", "create", "team-c", config=path)
            assert duplicate.returncode == 1 and "exists already" in duplicate.stderr

            rotated = _cli("keys", "rotate", "team-c", config=path)
            assert rotated.returncode == 0, rotated.stderr
            new_secret = rotated.stdout.split()[1]
            assert new_secret != secret
            await c.until(base, secret, 401)
            await c.until(base, new_secret, 200)

            # Usage: the CLI, the admin API and the ledger agree (3 requests of team-c, one refused).
            store = LedgerStore(f"sqlite+aiosqlite:///{Path(os.environ['PIXELGATE_DATA_DIR']) / 'ledger.sqlite3'}")
            try:
                deadline = time.monotonic() + 5
                while (await store.usage(0, time.time() + 10, []))[0]["requests"] < c.generations:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.05)
                expected = await store.usage(0, time.time() + 10, ["key", "model"])
                audit = await store.audit_log()
            finally:
                await store.close()
            usage = _cli("usage", "--by", "key,model", "--since", "7d", "--format", "csv", config=path)
            assert usage.returncode == 0, usage.stderr
            rows = list(csv.DictReader(io.StringIO(usage.stdout)))
            assert [(r["key"], r["model"], int(r["requests"]), int(r["images"])) for r in rows] == [
                (row["key"] or "", row["model"] or "", row["requests"], row["images"]) for row in expected
            ]
            _, api = await c.call("GET", base + "/admin/usage?by=key,model&format=csv&since=7d")
            assert api == usage.stdout
            as_json = json.loads(_cli("usage", "--by", "key", "--format", "json", config=path).stdout)
            assert as_json["totals"]["requests"] == sum(row["requests"] for row in expected)
            table = _cli("usage", "--by", "key", "--since", "7d", config=path)
            assert table.returncode == 0 and "team-c" in table.stdout

            revoked = _cli("keys", "revoke", "team-c", config=path)
            assert revoked.returncode == 0, revoked.stderr
            await c.until(base, new_secret, 401)
            missing = _cli("keys", "revoke", "nobody", config=path)
            assert missing.returncode == 1 and "No key named" in missing.stderr
            bad = _cli("keys", "create", "bad name", config=path)
            assert bad.returncode == 1 and "name" in bad.stderr

    assert [(e.actor, e.action, e.target) for e in audit] == [("cli", "key.rotate", "team-c"), ("cli", "key.create", "team-c")]
    logs = log.read_text()
    for value in (ADMIN_KEY, secret, new_secret):
        assert value not in logs
        assert value not in json.dumps([e.detail for e in audit])
    # The old `keys hash` still works.
    hashed = subprocess.run([sys.executable, "-m", "pixelgate", "keys", "hash"], input=secret + "\n", cwd=ROOT,
                            capture_output=True, text=True, timeout=30)
    assert hashed.returncode == 0 and hashed.stdout.startswith("sha256$" + secret.split("_")[1] + "$")
