"""``--workers N``: one port, N processes, one set of metric totals."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.procs import free_port, pixelgate


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]


async def _wait_for(predicate, timeout: float = 15) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.1)


async def _requests_total(session: aiohttp.ClientSession, port: int) -> float:
    async with session.get(f"http://127.0.0.1:{port}/metrics") as resp:
        text = await resp.text()
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "pixelgate_requests_total"
    )


async def test_two_workers_share_the_port_and_the_metrics() -> None:
    port = free_port()
    with pixelgate("serve", "--workers", "2", "--port", str(port), env={"PIXELGATE_CONFIG": "", "OPENAI_BASE_URL": ""},
                   ready=f"http://127.0.0.1:{port}/readyz") as supervisor:
        # Collect the workers' log lines as they come (all share stderr).
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(iter(supervisor.stderr.readline, "")), daemon=True)
        reader.start()
        # Both must be listening before the load: one answering /readyz is not enough.
        await _wait_for(lambda: sum("Pixelgate listening" in line for line in list(lines)) == 2)
        workers = set(_children(supervisor.pid))
        assert len(workers) == 2
        body = {"model": "demo-image", "prompt": "a fox", "size": "16x16"}
        # A new connection per request, so the kernel spreads them over the workers.
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:
            async def one() -> None:
                async with session.post(f"http://127.0.0.1:{port}/v1/images/generations", json=body) as resp:
                    assert resp.status == 200
                    await resp.read()

            await asyncio.gather(*(one() for _ in range(60)))
            # Every worker's /metrics reports the total of all of them (a
            # request is counted just after its last byte is sent: let it land).
            async with asyncio.timeout(5):
                while await _requests_total(session, port) != 60:
                    await asyncio.sleep(0.05)
            totals = {await _requests_total(session, port) for _ in range(6)}
            assert totals == {60.0}

            # A worker that dies is replaced; the port keeps answering.
            victim = next(iter(workers))
            os.kill(victim, signal.SIGKILL)
            await _wait_for(lambda: len(_children(supervisor.pid)) == 2 and victim not in _children(supervisor.pid))
            await asyncio.gather(*(one() for _ in range(10)))

        supervisor.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(supervisor.wait, 30) == 0
        reader.join(5)
    served_by = {json.loads(line)["worker"] for line in lines if line.startswith('{"ts":')}
    assert len(served_by & workers) == 2, (served_by, workers)
