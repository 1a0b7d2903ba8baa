"""Cancel at the provider: a job abandoned while it runs is cancelled, once.

Against the loopback fakes of fal's queue API and Replicate's predictions API
(their jobs made slow: every poll says IN_QUEUE / IN_PROGRESS, or starting /
processing): a client that aborts mid-job (waiting for a body, or mid-stream),
the relay's total timeout and shutdown past its grace period each produce
exactly one cancel call for the right job, with the key; a job that finished
(or failed) produces none; a cancel endpoint that fails or hangs leaves the
gateway healthy. The driver is also run on its own (as the golden runner
does, but over real sockets) to see the cancel counter and the bounds of the
call when its caller is cancelled again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry

from pixelgate.adapters.bfl import BflAdapter, BflOptions
from pixelgate.adapters.fal import FalAdapter, FalOptions
from pixelgate.adapters.replicate import ReplicateAdapter, ReplicateOptions
from pixelgate.core.request import decode_request
from pixelgate.core.translator import Cancellable, Generation, ProviderSettings, Translator, UpstreamRequest
from pixelgate.metrics import Metrics
from pixelgate.proxy import upstream as upstream_module
from pixelgate.proxy.config import Timeouts
from pixelgate.proxy.exchange import Exchange, Outcome
from pixelgate.proxy.state import GatewayState
from pixelgate.proxy.transport import HttpTransport
from pixelgate.proxy.upstream import Cancels, Upstream
from tests.providers.common import gateway_for, png_size, sdk
from tests.providers.fal import fal_app
from tests.providers.replicate import replicate_app

OPTIONS = {"poll_interval": 0.05, "fetch_hosts": ["127.0.0.1"]}
FAL_MODEL = "fal-ai/flux/dev"
REPLICATE_MODEL = "black-forest-labs/flux-schnell"
SLOW = 1_000_000  # polls before the fake's job is done: never, within a test
KEY = {"fal": "Key provider-secret", "replicate": "Bearer provider-secret"}
# The job each fake names first, and where it is polled and cancelled.
POLL = {"fal": "/fal-ai/flux/requests/req-1/status", "replicate": "/v1/predictions/p1"}
CANCEL = {"fal": "/fal-ai/flux/requests/req-1/cancel", "replicate": "/v1/predictions/p1/cancel"}
METHOD = {"fal": "PUT", "replicate": "POST"}


def _fake(adapter: str, seen: list[dict], **kwargs: Any) -> Any:
    return fal_app(seen, **kwargs) if adapter == "fal" else replicate_app(seen, **kwargs)


def _slow(adapter: str) -> dict[str, Any]:
    return {"queued_polls": SLOW} if adapter == "fal" else {"pending_polls": SLOW}


def _provider(adapter: str, base_url: str, **extra: Any) -> dict[str, Any]:
    return {"adapter": adapter, "base_url": base_url, "api_key": "provider-secret", "options": OPTIONS, **extra}


def _model(adapter: str) -> str:
    return FAL_MODEL if adapter == "fal" else REPLICATE_MODEL


async def _setup(aiohttp_server, adapter: str, *, fast: bool = False, provider: dict[str, Any] | None = None,
                 server: dict[str, Any] | None = None, **fake: Any) -> tuple[TestServer, list[dict], list[dict]]:
    """A gateway whose model ``img`` runs on a slow fake (its calls in the first
    list) and, with ``fast``, model ``fast`` on a second fake that finishes."""
    seen: list[dict] = []
    slow = await aiohttp_server(_fake(adapter, seen, **{**_slow(adapter), **fake}))
    providers = {"slow": _provider(adapter, str(slow.make_url("")), **(provider or {}))}
    models: dict[str, Any] = {"img": [{"provider": "slow", "model": _model(adapter)}]}
    fast_seen: list[dict] = []
    if fast:
        quick = await aiohttp_server(_fake(adapter, fast_seen, **({"queued_polls": 1} if adapter == "fal" else {})))
        providers["quick"] = _provider(adapter, str(quick.make_url("")))
        models["fast"] = [{"provider": "quick", "model": _model(adapter)}]
    config = {
        "server": {"keepalive_interval": 0.2, **(server or {})},
        "routing": {"retries": 0},
        "providers": providers,
        "models": models,
    }
    return await gateway_for(aiohttp_server, config), seen, fast_seen


def _paths(seen: list[dict], path: str) -> list[dict]:
    return [s for s in seen if s["path"] == path]


async def _until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.01)


async def _polled(seen: list[dict], adapter: str, n: int = 2) -> None:
    """The gateway is polling the fake's job (it is running, and named)."""
    await _until(lambda: len(_paths(seen, POLL[adapter])) >= n)


async def _one_cancel(seen: list[dict], adapter: str) -> None:
    """Exactly one cancel call, for the job, with the key; polling stopped."""
    await _until(lambda: bool(_paths(seen, CANCEL[adapter])))
    polls = len(_paths(seen, POLL[adapter]))
    await asyncio.sleep(0.3)  # time for a duplicate, or another poll, to show
    cancels = [s for s in seen if s["path"].endswith("/cancel")]
    assert len(cancels) == 1, cancels
    assert cancels[0]["method"] == METHOD[adapter]
    assert cancels[0].get("key", cancels[0].get("auth")) == KEY[adapter]
    assert len(_paths(seen, POLL[adapter])) == polls


def _no_cancel(seen: list[dict]) -> None:
    assert [s for s in seen if s["path"].endswith("/cancel")] == []


async def _healthy(gw: TestServer, fast_seen: list[dict]) -> None:
    """The gateway answers, and a whole generation through it works."""
    async with aiohttp.ClientSession() as session, session.get(gw.make_url("/healthz")) as health:
        assert health.status == 200
    async with sdk(gw) as client:
        result = await client.images.generate(model="fast", prompt="after the abort")
    assert png_size(result.data[0].b64_json) == (64, 64)
    _no_cancel(fast_seen)


def _no_errors_logged(caplog: pytest.LogCaptureFixture) -> None:
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    # Cancel calls are logged by provider and status: never the URL or the key.
    for record in caplog.records:
        if record.name == "pixelgate.upstream":
            text = record.getMessage()
            assert "provider-secret" not in text and "/cancel" not in text and "127.0.0.1" not in text, text


BODY = {"model": "img", "prompt": "a slow lighthouse"}


# --------------------------------------------------------------------- client aborts


@pytest.mark.parametrize("adapter", ["fal", "replicate"])
async def test_client_abort_waiting_for_the_body_cancels_the_job_once(aiohttp_server, caplog, adapter: str) -> None:
    caplog.set_level(logging.INFO)
    gw, seen, _ = await _setup(aiohttp_server, adapter)
    async with aiohttp.ClientSession() as session:
        task = asyncio.create_task(session.post(gw.make_url("/v1/images/generations"), json=BODY))
        await _polled(seen, adapter)
        task.cancel()  # the client gives up while the provider works
        with pytest.raises(asyncio.CancelledError):
            await task
        await _one_cancel(seen, adapter)
        async with session.get(gw.make_url("/metrics")) as m:
            text = await m.text()
    assert 'pixelgate_provider_cancels_total{provider="slow",result="ok"} 1.0' in text
    assert any("cancelled the abandoned job" in r.getMessage() for r in caplog.records)
    _no_errors_logged(caplog)


@pytest.mark.parametrize("adapter", ["fal", "replicate"])
async def test_client_abort_mid_stream_cancels_the_job_once(aiohttp_server, caplog, adapter: str) -> None:
    gw, seen, _ = await _setup(aiohttp_server, adapter)
    async with aiohttp.ClientSession() as session:
        resp = await session.post(gw.make_url("/v1/images/generations"), json={**BODY, "stream": True})
        # The job cannot stream: the client waits with keep-alives, then leaves.
        assert await resp.content.readuntil(b"\n\n") == b": keep-alive\n\n"
        await _polled(seen, adapter)
        resp.close()
        await _one_cancel(seen, adapter)
    _no_errors_logged(caplog)


@pytest.mark.parametrize("adapter", ["fal", "replicate"])
async def test_a_finished_job_is_never_cancelled(aiohttp_server, adapter: str) -> None:
    seen: list[dict] = []
    fake = await aiohttp_server(_fake(adapter, seen, **({"queued_polls": 2} if adapter == "fal" else {"pending_polls": 2})))
    config = {
        "server": {"keepalive_interval": 0.2},
        "providers": {"p": _provider(adapter, str(fake.make_url("")))},
        "models": {"img": [{"provider": "p", "model": _model(adapter)}]},
    }
    gw = await gateway_for(aiohttp_server, config)
    async with sdk(gw) as client:
        result = await client.images.generate(model="img", prompt="done in time")
        events = [e async for e in await client.images.generate(model="img", prompt="done in time", stream=True)]
    assert png_size(result.data[0].b64_json) == (64, 64)
    assert [e.type for e in events] == ["image_generation.completed"]
    await asyncio.sleep(0.2)
    _no_cancel(seen)


async def test_a_failed_prediction_is_not_cancelled(aiohttp_server) -> None:
    """The exchange ends by an error, but the job ended first: nothing to cancel."""
    seen: list[dict] = []
    fake = await aiohttp_server(replicate_app(seen, pending_polls=2, status="failed", error="CUDA out of memory"))
    config = {
        "routing": {"retries": 0},
        "providers": {"p": _provider("replicate", str(fake.make_url("")))},
        "models": {"img": [{"provider": "p", "model": REPLICATE_MODEL}]},
    }
    gw = await gateway_for(aiohttp_server, config)
    async with aiohttp.ClientSession() as session, session.post(gw.make_url("/v1/images/generations"), json=BODY) as resp:
        assert resp.status == 502
    await asyncio.sleep(0.2)
    _no_cancel(seen)
    assert len(_paths(seen, "/v1/predictions/p1")) == 2


async def test_replicate_sync_mode_create_cannot_be_cancelled(aiohttp_server) -> None:
    """A client that leaves during a sync-mode create call: no prediction id yet, no cancel call."""
    gw, seen, _ = await _setup(aiohttp_server, "replicate", delay=30)
    async with aiohttp.ClientSession() as session:
        task = asyncio.create_task(session.post(gw.make_url("/v1/images/generations"), json=BODY))
        await _until(lambda: bool(seen))  # the create call arrived; the fake holds it
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    await asyncio.sleep(0.3)
    _no_cancel(seen)


# --------------------------------------------------------------------- abandoned by the gateway


@pytest.mark.parametrize("adapter", ["fal", "replicate"])
async def test_total_timeout_cancels_the_job_once(aiohttp_server, adapter: str) -> None:
    gw, seen, _ = await _setup(aiohttp_server, adapter, provider={"timeouts": {"total": 0.5}})
    async with aiohttp.ClientSession() as session, session.post(gw.make_url("/v1/images/generations"), json=BODY) as resp:
        assert resp.status == 504
        assert (await resp.json())["error"]["code"] == "upstream_timeout"
    await _one_cancel(seen, adapter)


@pytest.mark.parametrize("adapter", ["fal", "replicate"])
async def test_shutdown_past_its_grace_period_cancels_the_job_once(aiohttp_server, adapter: str) -> None:
    gw, seen, _ = await _setup(aiohttp_server, adapter, server={"shutdown_timeout": 0.2})
    async with aiohttp.ClientSession() as session:
        task = asyncio.create_task(session.post(gw.make_url("/v1/images/generations"), json=BODY))
        await _polled(seen, adapter)
        await gw.close()  # drains for 0.2 s, then ends the request
        answer = (await asyncio.gather(task, return_exceptions=True))[0]
        assert isinstance(answer, aiohttp.ClientResponse), answer
        assert answer.status == 503
        answer.release()
    await _one_cancel(seen, adapter)


# --------------------------------------------------------------------- cancel endpoints that misbehave


@pytest.mark.parametrize("adapter", ["fal", "replicate"])
async def test_a_failing_cancel_endpoint_does_not_hurt_the_gateway(aiohttp_server, caplog, adapter: str) -> None:
    caplog.set_level(logging.INFO)
    gw, seen, fast_seen = await _setup(aiohttp_server, adapter, fast=True, cancel_status=500)
    async with aiohttp.ClientSession() as session:
        task = asyncio.create_task(session.post(gw.make_url("/v1/images/generations"), json=BODY))
        await _polled(seen, adapter)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    await _one_cancel(seen, adapter)
    await _healthy(gw, fast_seen)
    async with aiohttp.ClientSession() as session, session.get(gw.make_url("/metrics")) as m:
        text = await m.text()
    assert 'pixelgate_provider_cancels_total{provider="slow",result="error"} 1.0' in text, text
    assert 'pixelgate_provider_cancels_total{provider="slow",result="ok"}' not in text
    assert any("with HTTP 500" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    _no_errors_logged(caplog)


@pytest.mark.parametrize("adapter", ["fal", "replicate"])
async def test_a_hanging_cancel_endpoint_is_given_up_on(aiohttp_server, caplog, monkeypatch, adapter: str) -> None:
    monkeypatch.setattr(upstream_module, "CANCEL_TIMEOUT", 0.5)
    gw, seen, fast_seen = await _setup(aiohttp_server, adapter, fast=True, cancel_delay=30)
    async with aiohttp.ClientSession() as session:
        task = asyncio.create_task(session.post(gw.make_url("/v1/images/generations"), json=BODY))
        await _polled(seen, adapter)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    await _until(lambda: bool(_paths(seen, CANCEL[adapter])))
    # While the cancel call hangs, the gateway serves others.
    started = time.monotonic()
    await _healthy(gw, fast_seen)
    await _until(lambda: any("given up" in r.getMessage() for r in caplog.records), timeout=2)
    assert time.monotonic() - started < 2
    assert len([s for s in seen if s["path"].endswith("/cancel")]) == 1
    _no_errors_logged(caplog)


# --------------------------------------------------------------------- the driver on its own


def _translator(adapter: str, base_url: str) -> Translator:
    body = b'{"model":"img","prompt":"a slow lighthouse"}'
    if adapter == "fal":
        settings = ProviderSettings("fal", base_url, "provider-secret", {}, msgspec.convert(OPTIONS, FalOptions))
        return FalAdapter(settings).generation(Generation(decode_request(body), body, FAL_MODEL, "req-x"))
    options = msgspec.convert({**OPTIONS, "wait": 0}, ReplicateOptions)
    settings = ProviderSettings("replicate", base_url, "provider-secret", {}, options)
    return ReplicateAdapter(settings).generation(Generation(decode_request(body), body, REPLICATE_MODEL, "req-x"))


Driven = tuple[Upstream, Callable[[], Awaitable[None]], CollectorRegistry, list[dict], GatewayState]


@pytest.fixture
async def driven(aiohttp_server):
    """An Upstream over a real session to a slow fake, run the way the relay runs it."""
    sessions: list[aiohttp.ClientSession] = []

    async def make(adapter: str, **fake: Any) -> Driven:
        seen: list[dict] = []
        server = await aiohttp_server(_fake(adapter, seen, **{**_slow(adapter), **fake}))
        session = aiohttp.ClientSession()
        sessions.append(session)
        registry = CollectorRegistry()
        metrics = Metrics(registry, models=["img"], providers=[adapter])
        ex = Exchange(adapter, _translator(adapter, str(server.make_url(""))), HttpTransport(session), Timeouts(), {})
        state = GatewayState()
        upstream = Upstream(ex, Outcome(), Cancels(state.spawn, metrics.provider_cancel))

        async def run() -> None:
            try:
                await upstream.start()
            except BaseException as exc:
                await upstream.close(exc)
                raise

        return upstream, run, registry, seen, state

    yield make
    for session in sessions:
        await session.close()


def _cancels(registry: CollectorRegistry, adapter: str, result: str) -> float:
    return registry.get_sample_value("pixelgate_provider_cancels_total", {"provider": adapter, "result": result}) or 0.0


@pytest.mark.parametrize("adapter", ["fal", "replicate"])
async def test_driver_counts_cancel_calls_by_result(driven, adapter: str) -> None:
    for status, result in ((None, "ok"), (500, "error")):
        _, run, registry, seen, _ = await driven(adapter, cancel_status=status)
        task = asyncio.create_task(run())
        await _polled(seen, adapter)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # close() waited for the call: it is over, and counted, already.
        assert len(_paths(seen, CANCEL[adapter])) == 1
        assert _cancels(registry, adapter, result) == 1
        assert _cancels(registry, adapter, "ok" if result == "error" else "error") == 0


@pytest.mark.parametrize("adapter", ["fal", "replicate"])
async def test_driver_cancel_call_survives_its_caller_being_cancelled_again(driven, adapter: str) -> None:
    """Shutdown may cancel a handler twice: the cancel call is not cut halfway, and ends on its own."""
    _, run, registry, seen, state = await driven(adapter, cancel_delay=0.5)
    task = asyncio.create_task(run())
    await _polled(seen, adapter)
    task.cancel()
    await _until(lambda: bool(_paths(seen, CANCEL[adapter])))
    task.cancel()  # again, while close() waits for the cancel call
    left = time.monotonic()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - left < 0.4  # the caller was not held for the 0.5 s call
    await _until(lambda: _cancels(registry, adapter, "ok") == 1, timeout=2)
    assert not state.background  # the app's hold on the call ended with it


@pytest.mark.parametrize("adapter", ["fal", "replicate"])
async def test_driver_gives_up_a_hanging_cancel_call(driven, monkeypatch, adapter: str) -> None:
    monkeypatch.setattr(upstream_module, "CANCEL_TIMEOUT", 0.3)
    _, run, registry, seen, _ = await driven(adapter, cancel_delay=30)
    task = asyncio.create_task(run())
    await _polled(seen, adapter)
    task.cancel()
    left = time.monotonic()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert 0.25 < time.monotonic() - left < 1.5
    assert _cancels(registry, adapter, "error") == 1


async def test_driver_sends_no_cancel_before_the_job_is_named_or_once_it_finished(driven) -> None:
    upstream, _, registry, seen, _ = await driven("fal", queued_polls=1)
    await upstream.start()  # the job finished: its result's download is next
    await upstream.close(RuntimeError("the client went away during the download"))
    _no_cancel(seen)
    assert _cancels(registry, "fal", "ok") == _cancels(registry, "fal", "error") == 0
    _, run, registry, seen, _ = await driven("replicate", http_status=429)
    with pytest.raises(Exception, match="throttled"):
        await run()  # refused before any prediction existed
    _no_cancel(seen)
    assert _cancels(registry, "replicate", "ok") == _cancels(registry, "replicate", "error") == 0


# --------------------------------------------------------------------- what the translators say


def _doc(value: object) -> bytes:
    return msgspec.json.encode(value)


def _cancel_of(translator: Translator) -> UpstreamRequest | None:
    assert isinstance(translator, Cancellable)
    return translator.cancel()


def test_fal_cancel_is_known_from_submit_to_completed() -> None:
    t = _translator("fal", "https://queue.fal.run")
    assert _cancel_of(t) is None  # submitted, not yet named
    t.collected(_doc({"request_id": "abc", "status_url": "https://queue.fal.run/fal-ai/flux/requests/abc/status",
                      "response_url": "https://queue.fal.run/fal-ai/flux/requests/abc",
                      "cancel_url": "https://queue.fal.run/fal-ai/flux/requests/abc/cancel"}))
    call = _cancel_of(t)
    assert call is not None
    assert (call.method, call.url, call.body) == ("PUT", "https://queue.fal.run/fal-ai/flux/requests/abc/cancel", b"")
    assert call.headers["Authorization"] == "Key provider-secret"
    assert call.guard is not None and "queue.fal.run" in call.guard.hosts and call.delay == 0
    t.collected(_doc({"status": "IN_PROGRESS"}))
    assert _cancel_of(t) == call
    t.collected(_doc({"status": "COMPLETED"}))
    assert _cancel_of(t) is None


def test_fal_cancel_url_is_built_when_the_answer_has_none() -> None:
    t = _translator("fal", "https://queue.fal.run")
    t.collected(_doc({"request_id": "abc"}))
    call = _cancel_of(t)
    assert call is not None and call.url == "https://queue.fal.run/fal-ai/flux/requests/abc/cancel"


def test_replicate_cancel_follows_the_prediction() -> None:
    t = _translator("replicate", "https://api.replicate.com")
    assert _cancel_of(t) is None
    t.collected(_doc({"id": "xyz", "status": "starting",
                      "urls": {"get": "https://api.replicate.com/v1/predictions/xyz",
                               "cancel": "https://api.replicate.com/v1/predictions/xyz/cancel"}}))
    call = _cancel_of(t)
    assert call is not None
    assert (call.method, call.url, call.body) == ("POST", "https://api.replicate.com/v1/predictions/xyz/cancel", b"")
    assert call.headers["Authorization"] == "Bearer provider-secret"
    assert call.guard is not None and "api.replicate.com" in call.guard.hosts
    t.collected(_doc({"id": "xyz", "status": "processing"}))  # no urls this time: the one known stays
    assert _cancel_of(t) == call
    t.collected(_doc({"id": "xyz", "status": "succeeded", "output": ["https://replicate.delivery/x.png"]}))
    assert _cancel_of(t) is None


def test_replicate_cancel_url_is_built_from_the_id() -> None:
    t = _translator("replicate", "https://api.replicate.com")
    t.collected(_doc({"id": "x/y", "status": "starting"}))
    call = _cancel_of(t)
    assert call is not None and call.url == "https://api.replicate.com/v1/predictions/x%2Fy/cancel"
    with pytest.raises(Exception, match="failed the prediction"):
        t.collected(_doc({"id": "x/y", "status": "failed", "error": "boom"}))
    assert _cancel_of(t) is None


def test_bfl_has_no_cancel_call() -> None:
    body = b'{"model":"img","prompt":"p"}'
    settings = ProviderSettings("bfl", "https://api.bfl.ai/v1", "k", {}, BflOptions())
    t = BflAdapter(settings).generation(Generation(decode_request(body), body, "flux-pro-1.1", "req-x"))
    t.collected(_doc({"id": "t1", "polling_url": "https://api.us1.bfl.ai/v1/get_result?id=t1"}))
    assert _cancel_of(t) is None
