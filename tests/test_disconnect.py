"""A client that goes away: the upstream request is closed promptly, quietly."""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import single_provider_config, v1


def _upstream_that_waits(closed: asyncio.Event, first: bytes | None) -> web.RequestHandler:
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream" if first else "application/json"})
        try:
            if first:
                await resp.prepare(request)
                await resp.write(first)
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            # The test server cancels a handler whose client (the gateway) left.
            closed.set()
            raise
        return resp

    return handler


@pytest.mark.parametrize("streaming", [True, False], ids=["mid-stream", "waiting-for-headers"])
async def test_client_disconnect_closes_upstream_promptly(fake_upstream, gateway, caplog, streaming: bool) -> None:
    caplog.set_level(logging.DEBUG)
    closed = asyncio.Event()
    first = b'event: image_generation.partial_image\ndata: {"type":"image_generation.partial_image","b64_json":"QQ=="}\n\n'
    up = await fake_upstream(_upstream_that_waits(closed, first if streaming else None))
    gw = await gateway(single_provider_config(v1(up)))
    body = {"model": "gpt-image-1.5", "prompt": "a fox", "stream": streaming}
    async with aiohttp.ClientSession() as session:
        if streaming:
            resp = await session.post(gw.make_url("/v1/images/generations"), json=body)
            assert await resp.content.readuntil(b"\n\n") == first
            resp.close()  # drops the connection mid-stream
        else:
            task = asyncio.create_task(session.post(gw.make_url("/v1/images/generations"), json=body))
            await asyncio.sleep(0.2)
            task.cancel()  # the client gives up while the upstream "generates"
            with pytest.raises(asyncio.CancelledError):
                await task
        gone = time.monotonic()
        await asyncio.wait_for(closed.wait(), 2)
        elapsed = time.monotonic() - gone
    print(f"upstream closed {elapsed * 1000:.1f} ms after the client left")
    assert elapsed < 0.1, elapsed
    await asyncio.sleep(0.05)
    # No traceback logged as an error anywhere.
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    async with aiohttp.ClientSession() as session:
        async with session.get(gw.make_url("/metrics")) as metrics:
            text = await metrics.text()
    assert 'pixelgate_errors_total{error_type="client_disconnect",model="gpt-image-1.5",provider="up"} 1.0' in text
    assert 'status="499"' in text
