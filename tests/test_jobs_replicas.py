"""Jobs shared by replicas: two ``pixelgate serve`` processes with one Redis job store and one image store.

A job submitted to one replica is read, listed and cancelled on the other; a
replica killed mid-job has its jobs taken over by the other, which resumes
polling the provider's job (the fake counts its submissions).
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp

from tests.providers.bfl import bfl_app
from tests.test_jobs import PREFER
from tests.test_jobs_restart import _final, _gateway
from tests.test_provider_cancel import CANCEL, _fake, _model, _paths, _provider, _slow
from tests.test_storage import KEY_OLD


def _config(tmp_path: Path, redis_url: str, prefix: str, providers: dict[str, Any], models: dict[str, Any]) -> dict[str, Any]:
    return {
        "server": {"shutdown_timeout": 1, "drain_delay": 0},
        "routing": {"retries": 0},
        "providers": providers,
        "models": models,
        "access": {"redis": {"url": redis_url, "prefix": prefix}},
        # One directory for both replicas: a shared volume.
        "storage": {"local": {"path": str(tmp_path / "images")}, "signing_keys": [KEY_OLD]},
        "jobs": {"backend": "redis", "poll_interval": 0.2, "lease": 1.5},
    }


async def test_a_job_is_read_and_cancelled_on_another_replica(aiohttp_server, tmp_path: Path, redis_url: str,
                                                              redis_prefix: str) -> None:
    seen: list[dict] = []
    slow = await aiohttp_server(_fake("fal", seen, **_slow("fal")))
    config = _config(tmp_path, redis_url, redis_prefix, {"slow": _provider("fal", str(slow.make_url("")))},
                     {"img": [{"provider": "slow", "model": _model("fal")}]})
    async with aiohttp.ClientSession() as session:
        with _gateway(config, tmp_path, "a") as (a, _), _gateway(config, tmp_path, "b") as (b, _):
            async with session.post(f"{a}/v1/images/generations", headers=PREFER, json={"model": "img", "prompt": "x"}) as resp:
                assert resp.status == 202
                job = await resp.json()
            deadline = time.monotonic() + 10
            while True:
                async with session.get(f"{b}/v1/images/jobs/{job['id']}") as resp:
                    seen_on_b = await resp.json()
                if seen_on_b["status"] == "in_progress":
                    break
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            async with session.get(f"{b}/v1/images/jobs") as resp:
                assert [j["id"] for j in (await resp.json())["data"]] == [job["id"]]
            async with session.delete(f"{b}/v1/images/jobs/{job['id']}") as resp:
                assert resp.status == 200
            done = await _final(session, b, [job["id"]], timeout=10)
            assert done[job["id"]]["status"] == "cancelled"
            await asyncio.sleep(0.5)
    # The replica that ran it stopped it at its next lease renewal, and cancelled the provider's job once.
    assert len(_paths(seen, CANCEL["fal"])) == 1


async def test_a_killed_replicas_jobs_are_taken_over(aiohttp_server, tmp_path: Path, redis_url: str,
                                                     redis_prefix: str) -> None:
    seen: list[dict] = []
    bfl = await aiohttp_server(bfl_app(seen, pending_polls=25))
    providers = {"bfl": {"adapter": "bfl", "base_url": str(bfl.make_url("/v1")), "api_key": "provider-secret",
                         "options": {"poll_interval": 0.1, "poll_hosts": ["127.0.0.1"], "fetch_hosts": ["127.0.0.1"]}}}
    config = _config(tmp_path, redis_url, redis_prefix, providers, {"flux": [{"provider": "bfl", "model": "flux-pro-1.1"}]})
    submits = lambda: [s for s in seen if s["path"].startswith("/v1/flux")]  # noqa: E731
    async with aiohttp.ClientSession() as session:
        with _gateway(config, tmp_path, "b") as (b, _):
            with _gateway({**config, "jobs": {**config["jobs"], "concurrency": 8}}, tmp_path, "a") as (a, proc):
                ids = []
                for n in range(3):
                    async with session.post(f"{a}/v1/images/generations", headers=PREFER,
                                            json={"model": "flux", "prompt": f"job {n}"}) as resp:
                        ids.append((await resp.json())["id"])
                deadline = time.monotonic() + 10
                while len(submits()) < 3:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.05)
                await asyncio.sleep(0.3)
                proc.send_signal(signal.SIGKILL)
                await asyncio.to_thread(proc.wait, 10)
            done = await _final(session, b, ids)
    assert all(job["status"] == "completed" for job in done.values()), done
    assert len(submits()) == 3
