"""The gateway as a real process: the CLI, zero-config, config errors, memory."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import openai
import pytest

from tests.procs import ROOT, free_port, pixelgate, reset_peak_rss, rss_kib


async def test_zero_config_serves_demo_with_the_sdk() -> None:
    port = free_port()
    with pixelgate("serve", "--port", str(port), env={"OPENAI_BASE_URL": "", "PIXELGATE_CONFIG": ""}, ready=f"http://127.0.0.1:{port}/readyz"):
        client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        stream = await client.images.generate(model="any-model-at-all", prompt="a lighthouse", size="128x128", stream=True, partial_images=2)
        kinds = [event.type async for event in stream]
        await client.close()
    assert kinds == ["image_generation.partial_image"] * 2 + ["image_generation.completed"]


async def test_zero_config_passthrough_to_openai_base_url() -> None:
    up, gw = free_port(), free_port()
    with pixelgate("demo-upstream", "--port", str(up), ready=f"http://127.0.0.1:{up}/v1/models"):
        env = {"OPENAI_BASE_URL": f"http://127.0.0.1:{up}/v1", "OPENAI_API_KEY": "sk-x", "PIXELGATE_CONFIG": ""}
        with pixelgate("serve", "--port", str(gw), env=env, ready=f"http://127.0.0.1:{gw}/healthz"):
            async with aiohttp.ClientSession() as session:
                body = {"model": "whatever-upstream-model", "prompt": "a fox", "size": "32x32"}
                async with session.post(f"http://127.0.0.1:{gw}/v1/images/generations", json=body) as resp:
                    assert resp.status == 200
                    assert resp.headers["x-pixelgate-provider"] == "openai"
                    assert resp.headers["x-pixelgate-upstream-model"] == "whatever-upstream-model"
                    assert len((await resp.json())["data"]) == 1


async def test_config_file_via_env_var(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "pixelgate.yaml"
    config.write_text(f"server: {{host: 127.0.0.1, port: {port}}}\nproviders:\n  local: {{adapter: demo}}\nmodels:\n  my-model: [{{provider: local}}]\n")
    with pixelgate("serve", env={"PIXELGATE_CONFIG": str(config)}, ready=f"http://127.0.0.1:{port}/healthz"):
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/v1/models") as resp:
                assert [m["id"] for m in (await resp.json())["data"]] == ["my-model"]
            async with session.post(f"http://127.0.0.1:{port}/v1/images/generations", json={"model": "other", "prompt": "x"}) as resp:
                assert resp.status == 404


def test_config_error_exits_2_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("providers:\n  p: {adapter: openai, base_url: http://x, api_key: '${PIXELGATE_TEST_UNSET_KEY}'}\nmodels:\n  m: [{provider: p}]\n")
    result = subprocess.run([sys.executable, "-m", "pixelgate", "serve", "--config", str(config)], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "providers.p.api_key: environment variable PIXELGATE_TEST_UNSET_KEY is not set" in result.stderr


def test_pixelgate_script_matches_python_m_proxy() -> None:
    script = Path(sys.executable).parent / "pixelgate"
    a = subprocess.run([str(script), "serve", "--help"], capture_output=True, text=True, timeout=30)
    b = subprocess.run([sys.executable, "-m", "pixelgate", "serve", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert a.returncode == b.returncode == 0
    assert a.stdout == b.stdout and "--config" in a.stdout and "--port" in a.stdout


async def test_sigterm_exits_cleanly() -> None:
    port = free_port()
    with pixelgate("serve", "--port", str(port), ready=f"http://127.0.0.1:{port}/healthz") as proc:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0


async def test_uvloop_is_the_event_loop(tmp_path: Path) -> None:
    code = "import asyncio, pixelgate.proxy.loop as l; loop = l.new_event_loop(); print(type(loop).__module__); loop.close()"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert out.stdout.strip().startswith("uvloop")


async def _sha256_of_body(session: aiohttp.ClientSession, url: str, body: dict) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    async with session.post(url, json=body) as resp:
        assert resp.status == 200
        async for chunk in resp.content.iter_any():
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
async def test_50mb_relay_is_exact_and_does_not_grow_gateway_memory(tmp_path: Path, stream: bool) -> None:
    """A 50 MB b64_json goes through chunk by chunk: same bytes, bounded memory."""
    up, gw = free_port(), free_port()
    config = tmp_path / "c.yaml"
    config.write_text(f"providers:\n  up: {{adapter: openai, base_url: 'http://127.0.0.1:{up}/v1'}}\nmodels:\n  big: [{{provider: up}}]\n"
                      "server: {max_event_bytes: 67108864}\n")
    body = {"model": "big", "prompt": "noise", "demo": {"image_bytes": 50_000_000, "created": 0}}
    if stream:
        body |= {"stream": True, "partial_images": 0}
    with pixelgate("demo-upstream", "--port", str(up), ready=f"http://127.0.0.1:{up}/v1/models"):
        with pixelgate("serve", "--config", str(config), "--port", str(gw), ready=f"http://127.0.0.1:{gw}/healthz") as gateway:
            async with aiohttp.ClientSession() as session:
                direct = await _sha256_of_body(session, f"http://127.0.0.1:{up}/v1/images/generations", body)
                # Warm the gateway up on a small image, then measure its peak.
                await _sha256_of_body(session, f"http://127.0.0.1:{gw}/v1/images/generations", {"model": "big", "prompt": "x", "size": "16x16"})
                baseline = rss_kib(gateway.pid)
                reset_peak_rss(gateway.pid)
                relayed = await _sha256_of_body(session, f"http://127.0.0.1:{gw}/v1/images/generations", body)
                peak = rss_kib(gateway.pid, "VmHWM")
    kind = "sse" if stream else "json"
    print(f"\n50MB relay ({kind}): baseline {baseline} KiB, peak {peak} KiB, growth {peak - baseline} KiB")
    assert relayed == direct and direct[1] > 50_000_000
    # Relayed as it arrives, events included: growth is a few read buffers,
    # never the 50 MB image.
    assert peak - baseline < 16 * 1024, (baseline, peak)
