"""Real gateway processes: limits shared through one Redis, and secrets that never come out."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web

from tests.access_util import (
    GENERATIONS,
    SMALL,
    bearer,
    burst,
    demo_config,
    key_entry,
    new_key,
)
from tests.procs import ROOT, free_port, stop, wait_http


@contextmanager
def gateway_process(config: dict[str, Any], tmp_path: Path, name: str) -> Iterator[tuple[str, Path]]:
    """``pixelgate serve`` with ``config``; stderr (every log) goes to a file, which
    a pipe could not hold. Yields the base URL and the log file."""
    with gateway_proc(config, tmp_path, name) as (base, _, log):
        yield base, log


@contextmanager
def gateway_proc(config: dict[str, Any], tmp_path: Path, name: str) -> Iterator[tuple[str, subprocess.Popen[str], Path]]:
    """``gateway_process``, with the process too (for tests that signal it). The config is
    written to ``<tmp_path>/<name>.yaml`` (with its port), which the process reads again on SIGHUP."""
    port = free_port()
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**config, "server": {**config.get("server", {}), "port": port}}))
    log = tmp_path / f"{name}.log"
    with log.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "pixelgate", "serve", "--config", str(path)], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=err, text=True)
        try:
            wait_http(f"http://127.0.0.1:{port}/readyz", proc)
            yield f"http://127.0.0.1:{port}", proc, log
        finally:
            stop(proc)


async def test_two_gateways_sharing_redis_admit_exactly_the_limit(tmp_path: Path, redis_url: str, redis_prefix: str) -> None:
    requests_key, images_key = new_key(), new_key()
    config = demo_config(
        [key_entry("by-requests", requests_key, limits={"requests_per_minute": 50}),
         key_entry("by-images", images_key, limits={"images_per_minute": 50})],
        backend="redis", redis={"url": redis_url, "prefix": redis_prefix},
    )
    with gateway_process(config, tmp_path, "one") as (one, _), gateway_process(config, tmp_path, "two") as (two, _):
        urls = [one + GENERATIONS, two + GENERATIONS]
        started = time.monotonic()
        results = await burst(urls, 200, SMALL, bearer(requests_key))
        requests_s = time.monotonic() - started
        statuses = [r[0] for r in results]
        assert (statuses.count(200), statuses.count(429)) == (50, 150)
        assert {r[1]["x-ratelimit-remaining-requests"] for r in results if r[0] == 200} == {str(i) for i in range(50)}
        # Each gateway got 100 requests: with limits of their own they would have admitted
        # 50 each. Which one admits more is a race (often one takes nearly all).
        split = [statuses[0::2].count(200), statuses[1::2].count(200)]

        started = time.monotonic()
        results = await burst(urls, 60, {**SMALL, "n": 2}, bearer(images_key))
        images_s = time.monotonic() - started
        ok = [r for r in results if r[0] == 200]
        assert (len(ok), len(results) - len(ok)) == (25, 35)
        assert sum(len(json.loads(body)["data"]) for _, _, body in ok) == 50
        assert {json.loads(body)["error"]["code"] for status, _, body in results if status == 429} == {"images_per_minute_exceeded"}
    print(f"\n200 requests at 50/min over two gateways: {statuses.count(200)} admitted ({split[0]} + {split[1]}) in {requests_s:.2f} s; "
          f"60 requests of n=2 at 50 images/min: {len(ok)} admitted in {images_s:.2f} s")


async def test_secrets_never_leave_the_gateway(tmp_path: Path, aiohttp_server, redis_url: str, redis_prefix: str) -> None:
    provider_key = "sk-PROVIDER-SECRET-4f1c9e2b7d"
    gateway_key, other_key, wrong_key = new_key(), new_key(), new_key()

    async def rejecting_upstream(request: web.Request) -> web.Response:
        # Like OpenAI: the error echoes (part of) the credential it was given.
        echoed = request.headers.get("Authorization", "")
        return web.json_response(
            {"error": {"message": f"Incorrect API key provided: {echoed}", "type": "invalid_request_error",
                       "param": None, "code": "invalid_api_key"}}, status=401)

    app = web.Application()
    app.router.add_post("/v1/images/generations", rejecting_upstream)
    upstream = await aiohttp_server(app)
    config = demo_config(
        [key_entry("team-a", gateway_key, limits={"requests_per_minute": 4}),
         key_entry("team-b", other_key, models=["other-image"])],
        backend="redis", redis={"url": redis_url, "prefix": redis_prefix}, set_user=True,
    )
    config["providers"]["locked"] = {"adapter": "openai", "base_url": str(upstream.make_url("/v1")), "api_key": provider_key}
    config["models"]["locked-image"] = [{"provider": "locked"}]
    seen: list[str] = []
    with gateway_process(config, tmp_path, "secrets") as (base, log):
        async with aiohttp.ClientSession() as session:
            async def record(method: str, path: str, **kw: Any) -> int:
                async with session.request(method, base + path, **kw) as resp:
                    seen.append(json.dumps(dict(resp.headers)) + (await resp.read()).decode("utf-8", "replace"))
                    return resp.status

            generations = []
            generations.append(await record("POST", GENERATIONS, json=SMALL, headers=bearer(gateway_key)))
            generations.append(await record("POST", GENERATIONS, json={**SMALL, "stream": True}, headers={"api-key": gateway_key}))
            generations.append(await record("POST", GENERATIONS, json={**SMALL, "model": "locked-image"}, headers=bearer(gateway_key)))
            generations.append(await record("POST", GENERATIONS, json=SMALL, headers=bearer(wrong_key)))
            generations.append(await record("POST", GENERATIONS, json=SMALL, headers=bearer(other_key)))
            generations.append(await record("POST", GENERATIONS, json=SMALL, headers={"Authorization": f"Token {gateway_key}"}))
            generations.append(await record("POST", GENERATIONS, json=SMALL, headers=bearer(gateway_key)))
            generations.append(await record("POST", GENERATIONS, json=SMALL, headers=bearer(gateway_key)))
            for path in ("/v1/models", "/v1/providers"):
                await record("GET", path, headers=bearer(gateway_key))
            await record("GET", "/metrics")
            metrics = seen[-1]
        assert generations == [200, 200, 502, 401, 403, 401, 200, 429]
        assert '"code":"upstream_auth_failed"' in seen[2].replace(" ", "")
        assert 'pixelgate_auth_failures_total{reason="invalid"} 1.0' in metrics
    logs = log.read_text()
    assert '"key":"team-a"' in logs and "open mode" not in logs
    everything = "\n".join([*seen, logs])
    secrets = [provider_key, provider_key[-10:], gateway_key, other_key, wrong_key]
    secrets += [k.split("_", 2)[2] for k in (gateway_key, other_key, wrong_key)]  # the secret parts alone
    for secret in secrets:
        assert secret not in everything
