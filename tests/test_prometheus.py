"""A real Prometheus scrapes a real gateway process.

The gateway runs zero-config (the built-in demo provider); Prometheus (Debian's
``prometheus`` package: ``apt-get install -y prometheus``) scrapes it every
second with ``deploy/prometheus/alerts.yml`` loaded. After ~20 requests, some
streamed, the p95 request duration for provider ``demo`` must come back from
Prometheus' HTTP API as a number, the request counts must add up exactly, and
every alert rule must evaluate without error.

Only ``pixelgate_request_duration_seconds`` and ``pixelgate_requests_total`` are
queried: the other metrics of the dashboard are not all exported yet.
"""

from __future__ import annotations

import asyncio
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from tests.procs import stop
from tests.test_deploy import REQUIRED_ALERTS

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
P95 = "histogram_quantile(0.95, sum by (le, provider) (rate(pixelgate_request_duration_seconds_bucket[1m])))"


def _prometheus() -> str:
    path = shutil.which("prometheus")
    if path is None:
        pytest.skip("the prometheus binary is not installed (Debian: apt-get install -y prometheus)")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@contextmanager
def _process(args: list[str], log: Path, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen]:
    """Run ``args`` with output to ``log``; SIGTERM on exit, SIGKILL after 15 s."""
    with log.open("wb") as out:
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        try:
            yield proc
        finally:
            stop(proc, grace=15)


async def _wait_ok(session: aiohttp.ClientSession, url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{proc.args[0]} exited with {proc.returncode} before {url} answered:\n{_tail(log)}")
        try:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                if resp.status == 200:
                    return
        except (TimeoutError, aiohttp.ClientError):
            pass
        await asyncio.sleep(0.1)
    pytest.fail(f"{url} did not answer 200 within {timeout} s:\n{_tail(log)}")


async def _query(session: aiohttp.ClientSession, base: str, expr: str) -> list[dict[str, Any]]:
    async with session.get(f"{base}/api/v1/query", params={"query": expr}, timeout=aiohttp.ClientTimeout(total=5)) as resp:
        body = await resp.json()
    assert body["status"] == "success", body
    assert body["data"]["resultType"] == "vector", body
    return body["data"]["result"]


def _by(result: list[dict[str, Any]], label: str) -> dict[str, float]:
    return {sample["metric"].get(label, ""): float(sample["value"][1]) for sample in result}


async def _poll(what: str, check, timeout: float, logs: list[Path]):
    """Call ``await check()`` until it returns something truthy, for at most ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.5)
    pytest.fail(f"{what}: not within {timeout} s (last: {last!r})\n" + "\n".join(_tail(log) for log in logs))


async def _generate(client: openai.AsyncOpenAI, n_plain: int, n_stream: int, tag: str) -> None:
    async def plain(i: int) -> None:
        result = await client.images.generate(model="demo-image", prompt=f"{tag} plain {i}", size="64x64")
        assert len(result.data) == 1

    async def streamed(i: int) -> None:
        stream = await client.images.generate(model="demo-image", prompt=f"{tag} stream {i}", size="64x64",
                                              stream=True, partial_images=2)
        kinds = [event.type async for event in stream]
        assert kinds[-1] == "image_generation.completed"

    await asyncio.gather(*(plain(i) for i in range(n_plain)), *(streamed(i) for i in range(n_stream)))


async def test_real_prometheus_scrapes_the_gateway(tmp_path: Path) -> None:
    prometheus = _prometheus()
    gw_port, prom_port = _free_port(), _free_port()
    gw_log, prom_log = tmp_path / "gateway.log", tmp_path / "prometheus.log"
    logs = [gw_log, prom_log]

    # Zero-config: whatever the developer's shell has set must not change that.
    env = {k: v for k, v in os.environ.items() if k not in ("PIXELGATE_CONFIG", "OPENAI_BASE_URL", "OPENAI_API_KEY")}
    gateway_cmd = [sys.executable, "-m", "pixelgate", "serve", "--host", "127.0.0.1", "--port", str(gw_port)]

    shutil.copy(ALERTS, tmp_path / "alerts.yml")
    (tmp_path / "prometheus.yml").write_text(
        "global:\n"
        "  scrape_interval: 1s\n"
        "  scrape_timeout: 1s\n"
        "  evaluation_interval: 1s\n"
        "rule_files: [alerts.yml]\n"
        "scrape_configs:\n"
        "  - job_name: pixelgate\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{gw_port}']}}]\n"
    )
    prometheus_cmd = [
        prometheus,
        f"--config.file={tmp_path / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{prom_port}",
        "--log.level=warn",
    ]
    gw = f"http://127.0.0.1:{gw_port}"
    prom = f"http://127.0.0.1:{prom_port}"

    with _process(gateway_cmd, gw_log, env) as gw_proc, _process(prometheus_cmd, prom_log) as prom_proc:
        async with aiohttp.ClientSession() as session:
            await _wait_ok(session, f"{gw}/readyz", gw_proc, gw_log, timeout=20)
            await _wait_ok(session, f"{prom}/-/ready", prom_proc, prom_log, timeout=30)

            async def scraped_up() -> bool:
                return _by(await _query(session, prom, 'up{job="pixelgate"}'), "job") == {"pixelgate": 1.0}

            await _poll("Prometheus scrapes the gateway (up == 1)", scraped_up, 30, logs)

            def total_is(n: int):
                async def check() -> bool:
                    result = await _query(session, prom, 'sum(pixelgate_requests_total{provider="demo"})')
                    return _by(result, "") == {"": float(n)}
                return check

            client = openai.AsyncOpenAI(base_url=f"{gw}/v1", api_key="unused", max_retries=0, timeout=30)
            try:
                # A first batch, seen by Prometheus before the second one, so
                # that rate() over the scrapes that follow is not zero.
                await _generate(client, n_plain=3, n_stream=2, tag="first")
                await _poll("first 5 requests scraped", total_is(5), 30, logs)
                await _generate(client, n_plain=10, n_stream=5, tag="second")
            finally:
                await client.close()

            await _poll("all 20 requests scraped", total_is(20), 30, logs)

            async def p95_demo() -> float | None:
                value = _by(await _query(session, prom, P95), "provider").get("demo")
                return value if value is not None and math.isfinite(value) else None

            p95 = await _poll("p95 request duration for provider demo", p95_demo, 30, logs)
            assert 0 < p95 < 10, p95

            by_stream = _by(await _query(session, prom, 'sum by (stream) (pixelgate_requests_total{provider="demo"})'), "stream")
            assert by_stream == {"false": 13.0, "true": 7.0}
            by_status = _by(await _query(session, prom, 'sum by (status) (pixelgate_requests_total{provider="demo"})'), "status")
            assert by_status == {"200": 20.0}

            # The shipped alert rules load into a real Prometheus and evaluate
            # cleanly (no metric is required to exist for that).
            async def rules_healthy() -> list[tuple[str, str]] | None:
                async with session.get(f"{prom}/api/v1/rules", timeout=aiohttp.ClientTimeout(total=5)) as resp:
                    body = await resp.json()
                rules = [rule for group in body["data"]["groups"] for rule in group["rules"]]
                if rules and all(rule["health"] == "ok" for rule in rules):
                    return [(rule["name"], rule["health"]) for rule in rules]
                return None

            rules = await _poll("alert rules evaluated with health ok", rules_healthy, 30, logs)
            assert {name for name, _ in rules} >= REQUIRED_ALERTS

        # Both stop cleanly on SIGTERM (the gateway with exit code 0).
        for proc, log in ((gw_proc, gw_log), (prom_proc, prom_log)):
            proc.send_signal(signal.SIGTERM)
            try:
                assert proc.wait(15) == 0, _tail(log)
            except subprocess.TimeoutExpired:
                pytest.fail(f"{proc.args[0]} did not stop within 15 s of SIGTERM:\n{_tail(log)}")
