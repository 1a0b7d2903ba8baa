"""The per-request path's own parts: request ids, the access log's buffered writes, the GC settings."""

from __future__ import annotations

import asyncio
import gc
import io
import json
import logging
import re
import time
from pathlib import Path

import aiohttp

from pixelgate.proxy.gc_tuning import THRESHOLDS, tune_gc
from pixelgate.proxy.log_buffer import LoopBufferedHandler
from pixelgate.proxy.server import new_request_id
from tests.access_util import demo_config
from tests.test_access_procs import gateway_proc

_ID = re.compile(r"req_([0-9a-f]{12})([0-9a-f]{16})")


class CountingStream(io.StringIO):
    """A text stream that counts the writes it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, s: str) -> int:
        self.writes += 1
        return super().write(s)


def _logger(stream: CountingStream, name: str) -> logging.Logger:
    logger = logging.getLogger(name)
    logger.handlers[:] = [LoopBufferedHandler(stream)]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger


def test_request_ids_are_unique_and_start_with_the_time() -> None:
    before = int(time.time() * 1000)
    ids = [new_request_id() for _ in range(20_000)]
    after = int(time.time() * 1000)
    assert len(set(ids)) == len(ids)
    stamps = []
    for rid in ids:
        match = _ID.fullmatch(rid)
        assert match is not None, rid
        stamps.append(int(match[1], 16))
    assert before <= stamps[0] and stamps[-1] <= after
    # Time-ordered: ids made later sort later (to the millisecond), as the ledger's index wants.
    assert stamps == sorted(stamps)


async def test_lines_of_one_loop_iteration_share_one_write() -> None:
    stream = CountingStream()
    logger = _logger(stream, "pixelgate.test.buffered")
    for n in range(50):
        logger.info("line %d", n)
    assert stream.getvalue() == ""  # nothing yet: the loop has not turned
    await asyncio.sleep(0)
    assert stream.getvalue().splitlines() == [f"line {n}" for n in range(50)]
    assert stream.writes == 1
    # The next iteration's lines go out in a write of their own, after the first ones.
    logger.info("later")
    await asyncio.sleep(0)
    assert stream.getvalue().splitlines()[-1] == "later"
    assert stream.writes == 2


def test_a_loop_closed_before_its_flush_does_not_hold_later_lines() -> None:
    stream = CountingStream()
    logger = _logger(stream, "pixelgate.test.two_loops")
    first = asyncio.new_event_loop()
    try:
        # Logged by the loop's last callback: the flush it schedules never runs there.
        first.call_soon(logger.info, "first")
        first.call_soon(first.stop)
        first.run_forever()
    finally:
        first.close()
    assert stream.getvalue() == ""

    async def on_another_loop() -> None:
        logger.info("second")
        await asyncio.sleep(0)

    asyncio.run(on_another_loop())
    assert stream.getvalue().splitlines() == ["first", "second"]


def test_without_a_loop_a_line_is_written_at_once() -> None:
    stream = CountingStream()
    logger = _logger(stream, "pixelgate.test.unbuffered")
    logger.info("now")
    assert stream.getvalue() == "now\n"


async def test_flush_writes_what_is_pending() -> None:
    # logging.shutdown() at exit flushes every handler: nothing is held back.
    stream = CountingStream()
    logger = _logger(stream, "pixelgate.test.flushed")
    logger.info("pending")
    logger.handlers[0].flush()
    assert stream.getvalue() == "pending\n"
    await asyncio.sleep(0)  # the scheduled flush finds nothing left
    assert stream.writes == 1


async def test_a_gateway_process_logs_every_request_once(tmp_path: Path) -> None:
    """Concurrent requests, then SIGTERM: one access line per request, with the
    id the client got, none lost in the buffer and none doubled."""
    with gateway_proc(demo_config(), tmp_path, "gateway") as (base, _proc, log):
        async with aiohttp.ClientSession() as session:

            async def one() -> str:
                async with session.post(f"{base}/v1/images/generations", json={"model": "demo-image", "prompt": "p"}) as resp:
                    assert resp.status == 200, await resp.text()
                    await resp.read()
                    return resp.headers["x-request-id"]

            ids = await asyncio.gather(*(one() for _ in range(64)))
    # The process has stopped (SIGTERM): its log is complete.
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    logged = [line["request_id"] for line in lines if line.get("endpoint") == "images.generations"]
    assert sorted(logged) == sorted(ids)
    assert all(_ID.fullmatch(rid) for rid in ids)


def test_tune_gc_freezes_what_start_made_and_raises_the_threshold() -> None:
    saved = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold() == THRESHOLDS
        # Everything alive at start (this process's modules, at least) is out of the collector's walks.
        assert gc.get_freeze_count() > 10_000
    finally:
        gc.unfreeze()
        gc.set_threshold(*saved)
