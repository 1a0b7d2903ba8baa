"""Jobs survive the gateway: SIGTERM or SIGKILL it mid-job, start it again, every job ends, none is sent twice.

The gateway is a real ``pixelgate serve`` process with its SQLite job store
and image store in the test's directory. The providers are loopback fakes in
the test process, which count their calls: BFL (submit, then poll: the
restarted gateway must poll the same task again, never submit it anew) and
an OpenAI-compatible upstream that holds its answer (one connection: a job
cut there cannot be resumed and must fail retryably, never be re-sent).
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.providers.bfl import bfl_app
from tests.providers.common import PNG_B64
from tests.test_access_procs import gateway_proc
from tests.test_jobs import PREFER
from tests.test_storage import KEY_OLD

JOBS = 4


def _config(tmp_path: Path, bfl_url: str, slow_url: str) -> dict[str, Any]:
    return {
        "server": {"shutdown_timeout": 1, "drain_delay": 0},
        "routing": {"retries": 0},
        "providers": {
            "bfl": {"adapter": "bfl", "base_url": bfl_url, "api_key": "provider-secret",
                    "options": {"poll_interval": 0.1, "poll_hosts": ["127.0.0.1"], "fetch_hosts": ["127.0.0.1"]}},
            "slow": {"adapter": "openai", "base_url": slow_url, "timeouts": {"total": 60, "first_byte": 60, "idle": 60}},
        },
        "models": {"flux": [{"provider": "bfl", "model": "flux-pro-1.1"}], "held": [{"provider": "slow"}]},
        "storage": {"local": {"path": str(tmp_path / "images")}, "signing_keys": [KEY_OLD]},
        "jobs": {"path": str(tmp_path / "jobs.sqlite3"), "poll_interval": 0.2, "lease": 1.5},
    }


@contextmanager
def _gateway(config: dict[str, Any], tmp_path: Path, name: str) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    with gateway_proc(config, tmp_path, name) as (base, proc, _):
        yield base, proc


async def _held_upstream(aiohttp_server, calls: list[int]):
    async def generations(request: web.Request) -> web.Response:
        calls.append(1)
        await asyncio.sleep(30)  # longer than the test: the gateway dies first
        return web.json_response({"created": 1, "data": [{"b64_json": PNG_B64}]})

    app = web.Application()
    app.router.add_post("/v1/images/generations", generations)
    return await aiohttp_server(app)


async def _final(session: aiohttp.ClientSession, base: str, ids: list[str], timeout: float = 20) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    done: dict[str, dict] = {}
    while len(done) < len(ids):
        assert time.monotonic() < deadline, f"jobs not final: {set(ids) - set(done)}"
        for job_id in ids:
            if job_id in done:
                continue
            async with session.get(f"{base}/v1/images/jobs/{job_id}") as resp:
                job = await resp.json()
            if job["status"] in ("completed", "failed", "cancelled"):
                done[job_id] = job
        await asyncio.sleep(0.1)
    return done


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
async def test_jobs_finish_after_a_restart_and_none_is_submitted_twice(aiohttp_server, tmp_path: Path, sig: int) -> None:
    seen: list[dict] = []
    # Each BFL task is ready after 25 polls (2.5 s at 0.1 s): well past the kill.
    bfl = await aiohttp_server(bfl_app(seen, pending_polls=25))
    held_calls: list[int] = []
    slow = await _held_upstream(aiohttp_server, held_calls)
    config = _config(tmp_path, str(bfl.make_url("/v1")), str(slow.make_url("/v1")))
    submits = lambda: [s for s in seen if s["path"].startswith("/v1/flux")]  # noqa: E731
    async with aiohttp.ClientSession() as session:
        with _gateway(config, tmp_path, "first") as (base, proc):
            ids = []
            for n in range(JOBS):
                async with session.post(f"{base}/v1/images/generations", headers=PREFER,
                                        json={"model": "flux", "prompt": f"job {n}", "size": "1024x1024"}) as resp:
                    assert resp.status == 202
                    ids.append((await resp.json())["id"])
            async with session.post(f"{base}/v1/images/generations", headers=PREFER,
                                    json={"model": "held", "prompt": "cut"}) as resp:
                held_id = (await resp.json())["id"]
            deadline = time.monotonic() + 10
            while len(submits()) < JOBS or not held_calls:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)  # polling, checkpoints written
            proc.send_signal(sig)
            await asyncio.to_thread(proc.wait, 15)
        polls_before = len([s for s in seen if s["path"] == "/v1/get_result"])
        with _gateway(config, tmp_path, "second") as (base, _):
            done = await _final(session, base, [*ids, held_id])
    assert len(submits()) == JOBS, "a job was submitted to BFL twice"
    assert len([s for s in seen if s["path"] == "/v1/get_result"]) > polls_before, "the restarted gateway did not poll"
    for job_id in ids:
        assert done[job_id]["status"] == "completed", done[job_id]
        assert done[job_id]["result"]["data"][0]["b64_json"]
    assert done[held_id]["status"] == "failed"
    assert done[held_id]["error"]["code"] == "job_interrupted"
    assert len(held_calls) == 1, "a job cut mid-generation was sent again"
