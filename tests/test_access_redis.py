"""The Redis limit backend against a real redis-server: atomic admission, leases,
corrections, budgets, and what the gateway does when Redis is gone."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import aiohttp
import pytest
import redis.asyncio as aioredis

from pixelgate.proxy.access.config import Limits, RedisConfig
from pixelgate.proxy.access.limits import Demand, Refused, Ticket, period_of
from pixelgate.proxy.access.redis_backend import RedisBackend
from tests.access_util import (
    GENERATIONS,
    SMALL,
    bearer,
    demo_config,
    key_entry,
    new_key,
    post,
)
from tests.procs import free_port
from tests.redis_server import RedisProcess

KEY = new_key()


def _backend(url: str, prefix: str, **kw: float) -> RedisBackend:
    return RedisBackend(RedisConfig(url=url, prefix=prefix, **kw))


async def _admit_many(backends: list[RedisBackend], demand: Demand, n: int) -> list[Ticket | Refused]:
    return await asyncio.gather(*(backends[i % len(backends)].admit(demand, f"t{i}") for i in range(n)))


async def test_two_replicas_admit_exactly_the_limit(redis_url: str, redis_prefix: str) -> None:
    """Two backends (two replicas' worth of clients and connections) on one Redis."""
    a, b = _backend(redis_url, redis_prefix), _backend(redis_url, redis_prefix)
    try:
        requests = Demand("k", Limits(requests_per_minute=50), 1, False, None)
        results = await _admit_many([a, b], requests, 200)
        admitted = [r for r in results if isinstance(r, Ticket)]
        refused = [r for r in results if isinstance(r, Refused)]
        assert (len(admitted), len(refused)) == (50, 150)
        assert sorted(t.requests.remaining for t in admitted if t.requests) == list(range(50))
        assert {r.limit for r in refused} == {"requests_per_minute"}
        assert all(58 < r.retry_after <= 60 for r in refused)

        images = Demand("k2", Limits(images_per_minute=50), 3, False, None)
        results = await _admit_many([a, b], images, 60)
        assert sum(isinstance(r, Ticket) for r in results) == 16  # 48 images; a 17th would make 51
    finally:
        await a.close()
        await b.close()


async def test_images_corrected_after_the_request(redis_url: str, redis_prefix: str) -> None:
    backend = _backend(redis_url, redis_prefix)
    try:
        demand = Demand("k", Limits(images_per_minute=10), 4, False, None)
        first = await backend.admit(demand, "one")
        assert isinstance(first, Ticket) and first.images and first.images.remaining == 6
        await backend.settle(first, 1, 0.0)  # 3 images not returned: given back
        second = await backend.admit(demand, "two")
        assert isinstance(second, Ticket) and second.images and second.images.remaining == 5
        await backend.settle(second, 6, 0.0)  # 2 more than asked: counted
        third = await backend.admit(Demand("k", Limits(images_per_minute=10), 4, False, None), "three")
        assert isinstance(third, Refused) and third.limit == "images_per_minute"
        assert third.images is not None and third.images.remaining == 3
    finally:
        await backend.close()


async def test_stream_leases_are_refreshed_while_held_and_expire_when_the_holder_dies(redis_url: str, redis_prefix: str) -> None:
    holder, other = _backend(redis_url, redis_prefix, lease_seconds=1), _backend(redis_url, redis_prefix, lease_seconds=1)
    await holder.start()
    try:
        demand = Demand("k", Limits(concurrent_streams=1), 1, True, None)
        ticket = await holder.admit(demand, "held")
        assert isinstance(ticket, Ticket) and ticket.holds_stream
        await asyncio.sleep(1.5)  # past the lease: the holder's refresher kept it
        refused = await other.admit(demand, "waiting")
        assert isinstance(refused, Refused) and refused.limit == "concurrent_streams"
        # The holder dies without releasing: its refresher stops with it.
        await holder.close()
        started = time.monotonic()
        while isinstance(await other.admit(demand, "after"), Refused):
            assert time.monotonic() - started < 3
            await asyncio.sleep(0.05)
        assert time.monotonic() - started <= 1.2
    finally:
        await other.close()


async def test_budget_counter_expires_after_its_period(redis_url: str, redis_prefix: str) -> None:
    backend = _backend(redis_url, redis_prefix)
    period = period_of("month")
    try:
        demand = Demand("k", Limits(budget_usd=1.0, budget_period="month"), 1, False, period)
        ticket = await backend.admit(demand, "a")
        assert isinstance(ticket, Ticket)
        await backend.settle(ticket, 1, 0.75)
        assert isinstance(await backend.admit(demand, "b"), Ticket)  # 0.75 < 1: still admitted
        await backend.settle(ticket, 1, 0.25)
        refused = await backend.admit(demand, "c")
        assert isinstance(refused, Refused) and refused.limit == "budget"
        assert abs(refused.retry_after - (period.ends_at - time.time())) < 2
        client = aioredis.from_url(redis_url)
        spend_key = f"{redis_prefix}{{k}}:spent:{period.id}"
        assert int(await client.get(spend_key)) == 1_000_000
        assert abs(await client.expiretime(spend_key) - (period.ends_at + 86400)) <= 1
        await client.aclose()
    finally:
        await backend.close()


def _redis_config(url: str, prefix: str, on_error: str, **limits: object) -> dict:
    return demo_config(
        [key_entry("team-a", KEY, limits={"requests_per_minute": 100, **limits})],
        backend="redis", redis={"url": url, "prefix": prefix, "timeout": 0.2}, on_backend_error=on_error,
    )


async def _metric(gw, name: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(gw.make_url("/metrics")) as resp:
        return "\n".join(line for line in (await resp.text()).splitlines() if line.startswith(name))


async def test_fail_closed_when_redis_is_unreachable(gateway, redis_prefix: str) -> None:
    gw = await gateway(_redis_config(f"redis://127.0.0.1:{free_port()}/0", redis_prefix, "closed"))
    async with aiohttp.ClientSession() as session:
        started = time.monotonic()
        status, headers, raw = await post(session, str(gw.make_url(GENERATIONS)), SMALL, bearer(KEY))
        elapsed = time.monotonic() - started
    assert status == 503
    assert json.loads(raw) == {"error": {"message": "Rate limits cannot be checked right now; retry shortly.",
                                         "type": "server_error", "param": None, "code": "limits_unavailable"}}
    assert headers["Retry-After"] == "1"
    assert elapsed < 1.0
    text = await _metric(gw, "pixelgate_limit_backend_errors_total")
    assert text == 'pixelgate_limit_backend_errors_total{action="rejected",operation="admit"} 1.0'


async def test_fail_open_when_redis_is_unreachable(gateway, redis_prefix: str, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="pixelgate.access_control")
    gw = await gateway(_redis_config(f"redis://127.0.0.1:{free_port()}/0", redis_prefix, "open"))
    async with aiohttp.ClientSession() as session:
        for _ in range(2):
            status, headers, _ = await post(session, str(gw.make_url(GENERATIONS)), SMALL, bearer(KEY))
            assert status == 200
            assert "x-ratelimit-remaining-requests" not in headers  # nothing was counted
    text = await _metric(gw, "pixelgate_limit_backend_errors_total")
    assert text == 'pixelgate_limit_backend_errors_total{action="admitted",operation="admit"} 2.0'
    # Logged, at most once per interval.
    warnings = [r.getMessage() for r in caplog.records if "admitting without limits" in r.getMessage()]
    assert len(warnings) == 1


@pytest.mark.parametrize("on_error", ["closed", "open"])
async def test_redis_stopped_mid_test_then_back(gateway, redis_prefix: str, on_error: str) -> None:
    server = RedisProcess()
    try:
        gw = await gateway(_redis_config(server.url, redis_prefix, on_error))
        url = str(gw.make_url(GENERATIONS))
        async with aiohttp.ClientSession() as session:
            status, headers, _ = await post(session, url, SMALL, bearer(KEY))
            assert status == 200 and headers["x-ratelimit-remaining-requests"] == "99"
            server.stop()
            status, _, _ = await post(session, url, SMALL, bearer(KEY))
            assert status == (503 if on_error == "closed" else 200)
            # A new, empty Redis on the same port: scripts are loaded again (NOSCRIPT), counts start over.
            server = RedisProcess(server.port)
            status, headers, _ = await post(session, url, SMALL, bearer(KEY))
            assert status == 200 and headers["x-ratelimit-remaining-requests"] == "99"
        action = "rejected" if on_error == "closed" else "admitted"
        text = await _metric(gw, "pixelgate_limit_backend_errors_total")
        assert text == f'pixelgate_limit_backend_errors_total{{action="{action}",operation="admit"}} 1.0'
    finally:
        server.stop()


PRICES = {"demo-image": {"output_image": 10_000.0}}


async def test_budget_spent_by_a_stream_refuses_the_next_request_across_gateways(gateway, redis_url: str, redis_prefix: str) -> None:
    config = demo_config(
        [key_entry("team-a", KEY, limits={"budget_usd": 0.5, "budget_period": "month", "concurrent_streams": 2})],
        prices=PRICES, backend="redis", redis={"url": redis_url, "prefix": redis_prefix},
    )
    first, second = await gateway(config), await gateway(config)
    async with aiohttp.ClientSession() as session:
        async with session.post(first.make_url(GENERATIONS), json={**SMALL, "stream": True, "partial_images": 1},
                                headers=bearer(KEY)) as resp:
            assert resp.status == 200
            await resp.read()
        status, _, raw = await post(session, str(second.make_url(GENERATIONS)), SMALL, bearer(KEY))
    assert status == 429
    error = json.loads(raw)["error"]
    assert (error["type"], error["code"]) == ("insufficient_quota", "insufficient_quota")
    assert "monthly budget of $0.5" in error["message"]
    # The stream's slot was released at its end.
    client = aioredis.from_url(redis_url)
    assert await client.zcard(f"{redis_prefix}{{team-a}}:streams") == 0
    await client.aclose()
