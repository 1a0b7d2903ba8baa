"""``python -m bench.hold``: hold 1,000 streams open through the gateway at once.

The demo upstream sends each stream's first (partial) event at once and its
completed event only after ``--hold`` seconds, so every stream sits open in
the gateway at the same time. While they do, the gateway's RSS and open file
descriptors are read from /proc; then every stream must end with its
completed event. Bounded: one wave of ``--streams`` requests, an overall
timeout, and the servers are stopped on exit (see ``bench.servers``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

import aiohttp

from bench.procfs import rss_kib
from bench.servers import HOST, running_servers

ROOT = Path(__file__).resolve().parent


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def _stream(session: aiohttp.ClientSession, url: str, body: dict, opened: asyncio.Event, counter: list[int]) -> bool:
    async with session.post(url, json=body) as resp:
        if resp.status != 200:
            return False
        await resp.content.readuntil(b"\n\n")  # the partial image: the stream is open
        counter[0] += 1
        if counter[0] == body["_n"]:
            opened.set()
        rest = await resp.read()
        return b"event: image_generation.completed\n" in rest


async def hold(port: int, pid: int, streams: int, seconds: float) -> dict[str, object]:
    url = f"http://{HOST}:{port}/v1/images/generations"
    body = {
        "model": "bench",
        "prompt": "held open",
        "stream": True,
        "partial_images": 1,
        "demo": {"image_bytes": 2048, "interval_ms": seconds * 1000, "created": 0},
    }
    baseline = {"rss_kib": rss_kib(pid)["VmRSS"], "fds": _fds(pid)}
    opened, counter = asyncio.Event(), [0]
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=seconds + 60)) as session:
        # "_n" tells each stream how many there are; the gateway forwards it untouched.
        tasks = [asyncio.create_task(_stream(session, url, {**body, "_n": streams}, opened, counter)) for _ in range(streams)]
        await asyncio.wait_for(opened.wait(), timeout=seconds + 30)
        all_open_s = time.perf_counter() - started
        await asyncio.sleep(min(1.0, seconds / 4))
        held = {"rss_kib": rss_kib(pid)["VmRSS"], "fds": _fds(pid)}
        ok = sum(await asyncio.gather(*tasks))
    await asyncio.sleep(1.0)
    after = {"rss_kib": rss_kib(pid)["VmRSS"], "fds": _fds(pid)}
    # The upstream connections stay in aiohttp's pool, idle, until its
    # keep-alive timeout (15 s) closes them: wait that out, then look again.
    await asyncio.sleep(16)
    settled = {"rss_kib": rss_kib(pid)["VmRSS"], "fds": _fds(pid)}
    return {
        "streams": streams,
        "completed_ok": ok,
        "seconds_to_open_all": round(all_open_s, 2),
        "gateway_before": baseline,
        "gateway_while_held": held,
        "gateway_after": after,
        "gateway_after_keepalive_expiry": settled,
        "rss_per_stream_kib": round((held["rss_kib"] - baseline["rss_kib"]) / streams, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hold", description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--hold", type=float, default=8.0, help="seconds each stream stays open")
    args = parser.parse_args()
    with running_servers(ROOT / "results" / "logs") as servers:
        result = asyncio.run(hold(servers.gateway_port, servers.gateway.pid, args.streams, args.hold))
    print(json.dumps(result, indent=2))
    held, before = result["gateway_while_held"], result["gateway_before"]
    print(
        f"\n{result['completed_ok']}/{result['streams']} streams completed; all open after {result['seconds_to_open_all']} s; "
        f"gateway RSS {before['rss_kib'] / 1024:.1f} -> {held['rss_kib'] / 1024:.1f} MiB "
        f"({result['rss_per_stream_kib']} KiB per stream), fds {before['fds']} -> {held['fds']} "
        f"-> {result['gateway_after']['fds']} just after (idle upstream keep-alives) "
        f"-> {result['gateway_after_keepalive_expiry']['fds']} 16 s later",
        file=sys.stderr,
    )
    return 0 if result["completed_ok"] == result["streams"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
