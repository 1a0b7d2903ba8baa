"""Disconnect storms, slow clients and shutdown: nothing leaks, nothing hangs."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import single_provider_config, v1
from tests.faults import PARTIAL, raw
from tests.procs import free_port, pixelgate


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_1000_aborted_streams_leave_no_tasks_connections_or_fds(fake_upstream, gateway) -> None:
    up = await fake_upstream(raw([PARTIAL], then="hang"))
    gw = await gateway(single_provider_config(v1(up)))
    url = gw.make_url("/v1/images/generations")
    body = {"model": "gpt-image-1.5", "prompt": "a fox", "stream": True}

    async def abort_one(session: aiohttp.ClientSession) -> None:
        async with session.post(url, json=body) as resp:
            assert await resp.content.readuntil(b"\n\n") == PARTIAL
        # Leaving the block releases the connection mid-stream: closed, not reused.

    async def wave(n: int) -> None:
        connector = aiohttp.TCPConnector(limit=50, force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:
            await asyncio.gather(*(abort_one(session) for _ in range(n)))

    await wave(20)  # warm up: pools, caches, lazily created objects
    await asyncio.sleep(0.3)
    tasks_before, fds_before = len(asyncio.all_tasks()), _open_fds()
    async with asyncio.timeout(120):
        for _ in range(20):
            await wave(50)
    # Let the cancellations land.
    for _ in range(50):
        await asyncio.sleep(0.1)
        if len(asyncio.all_tasks()) <= tasks_before and _open_fds() <= fds_before + 2:
            break
    assert len(asyncio.all_tasks()) <= tasks_before, [t for t in asyncio.all_tasks()][:5]
    assert _open_fds() <= fds_before + 2, (fds_before, _open_fds())
    async with aiohttp.ClientSession() as session:
        async with session.get(gw.make_url("/metrics")) as resp:
            text = await resp.text()
    assert 'pixelgate_errors_total{error_type="client_disconnect",model="gpt-image-1.5",provider="up"} 1020.0' in text


async def test_slow_reading_client_is_cut_off_and_others_are_not(fake_upstream, gateway) -> None:
    # Bigger than loopback's socket buffers can absorb (a few MB each side).
    big = b'event: image_generation.completed\ndata: {"type":"image_generation.completed","b64_json":"' + b"A" * 24_000_000 + b'"}\n\n'

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(big)
        await resp.write_eof()
        return resp

    up = await fake_upstream(handler)
    gw = await gateway(single_provider_config(v1(up), server={"write_timeout": 0.5, "max_event_bytes": 64 << 20}))
    payload = json.dumps({"model": "gpt-image-1.5", "prompt": "a fox", "stream": True}).encode()
    # The slow client sends its request, then reads nothing for a while.
    reader, writer = await asyncio.open_connection(gw.host, gw.port, limit=1 << 16)
    writer.write(b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload))
    await writer.drain()
    # Meanwhile a normal client gets the whole stream.
    async with aiohttp.ClientSession() as session:
        async with session.post(gw.make_url("/v1/images/generations"), data=payload) as resp:
            assert await resp.read() == big
        await asyncio.sleep(1.0)
        async with session.get(gw.make_url("/metrics")) as resp:
            text = await resp.text()
    assert 'pixelgate_errors_total{error_type="slow_client",model="gpt-image-1.5",provider="up"} 1.0' in text
    # Its connection was closed: it gets what the kernel had buffered, then the end.
    received = 0
    async with asyncio.timeout(20):
        try:
            while chunk := await reader.read(1 << 20):
                received += len(chunk)
        except ConnectionResetError:
            pass
    writer.close()
    assert received < len(big)


def _stream_config(tmp_path: Path, up: int, port: int, grace: float) -> Path:
    config = tmp_path / "c.yaml"
    config.write_text(
        f"server: {{port: {port}, shutdown_timeout: {grace}}}\n"
        f"providers:\n  up: {{adapter: openai, base_url: 'http://127.0.0.1:{up}/v1'}}\n"
        "models:\n  m: [{provider: up}]\n"
    )
    return config


async def _open_stream(session: aiohttp.ClientSession, port: int, interval_ms: int) -> bytes:
    body = {"model": "m", "prompt": "a fox", "size": "64x64", "stream": True, "partial_images": 3, "demo": {"interval_ms": interval_ms}}
    async with session.post(f"http://127.0.0.1:{port}/v1/images/generations", json=body) as resp:
        assert resp.status == 200
        return await resp.read()


@pytest.mark.parametrize("grace", [10.0, 0.5], ids=["streams-finish", "grace-expires"])
async def test_sigterm_drains_20_open_streams(tmp_path: Path, grace: float) -> None:
    up, gw = free_port(), free_port()
    interval = 400  # 4 events, 1.2 s per stream
    with pixelgate("demo-upstream", "--port", str(up), ready=f"http://127.0.0.1:{up}/v1/models"):
        config = _stream_config(tmp_path, up, gw, grace)
        with pixelgate("serve", "--config", str(config), ready=f"http://127.0.0.1:{gw}/healthz") as proc:
            async with aiohttp.ClientSession() as session:
                streams = [asyncio.create_task(_open_stream(session, gw, interval)) for _ in range(20)]
                await asyncio.sleep(0.3)
                proc.send_signal(signal.SIGTERM)
                await asyncio.sleep(0.1)
                # New connections are refused once the listener is closed.
                with pytest.raises(aiohttp.ClientConnectionError):
                    await session.get(f"http://127.0.0.1:{gw}/readyz")
                bodies = await asyncio.wait_for(asyncio.gather(*streams), 15)
            assert await asyncio.to_thread(proc.wait, 15) == 0
    for body in bodies:
        if grace > 2:
            assert body.count(b"event: image_generation.partial_image\n") == 3
            assert body.count(b"event: image_generation.completed\n") == 1
            assert b"event: error" not in body
        else:
            assert body.rstrip().endswith(b"}") and b"event: error\n" in body
            assert b'"code":"gateway_shutting_down"' in body
            assert b"event: image_generation.completed\n" not in body


async def test_readyz_fails_during_drain_delay(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "c.yaml"
    config.write_text(f"server: {{port: {port}, drain_delay: 1.0}}\nproviders:\n  d: {{adapter: demo}}\nmodels:\n  m: [{{provider: d}}]\n")
    with pixelgate("serve", "--config", str(config), ready=f"http://127.0.0.1:{port}/readyz") as proc:
        proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/readyz") as resp:
                assert resp.status == 503
            # Still serving while load balancers catch up.
            async with session.post(f"http://127.0.0.1:{port}/v1/images/generations", json={"model": "m", "prompt": "x", "size": "16x16"}) as resp:
                assert resp.status == 200
        assert await asyncio.to_thread(proc.wait, 10) == 0
