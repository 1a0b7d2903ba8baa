"""Async jobs (proxy.jobs) over real sockets: submit with ``Prefer: respond-async``, poll, cancel, list.

The gateway runs in-process (aiohttp test server) with a real SQLite job
store in the test's directory and a local image store; providers are the demo
engine and the loopback fakes of fal and Replicate (whose calls are counted).
Restart across processes is in tests/test_jobs_restart.py.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from pixelgate.proxy.config import ConfigError, parse_config
from tests.access_util import bearer, key_entry, new_key
from tests.providers.common import PNG, gateway_for
from tests.providers.stability import stability_app
from tests.test_provider_cancel import CANCEL, METHOD, _fake, _model, _paths, _polled, _provider, _slow, _until
from tests.test_storage import KEY_OLD, files_under

PREFER = {"Prefer": "respond-async"}
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


def jobs_config(tmp_path: Path, providers: dict[str, Any] | None = None, models: dict[str, Any] | None = None,
                **jobs: Any) -> dict[str, Any]:
    return {
        "routing": {"retries": 0},
        "providers": providers or {"demo": {"adapter": "demo"}},
        "models": models or {"demo-image": [{"provider": "demo"}]},
        "storage": {"local": {"path": str(tmp_path / "images")}, "signing_keys": [KEY_OLD]},
        "jobs": {"path": str(tmp_path / "jobs.sqlite3"), "poll_interval": 0.2, "lease": 1.5, **jobs},
    }


async def submit(session: aiohttp.ClientSession, gw: TestServer, body: dict[str, Any],
                 headers: dict[str, str] | None = None, path: str = "/v1/images/generations") -> tuple[int, dict, Any]:
    async with session.post(gw.make_url(path), json=body, headers={**PREFER, **(headers or {})}) as resp:
        return resp.status, dict(resp.headers), await resp.json()


async def until_final(session: aiohttp.ClientSession, gw: TestServer, job_id: str, headers: dict[str, str] | None = None,
                      timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        async with session.get(gw.make_url(f"/v1/images/jobs/{job_id}"), headers=headers or {}) as resp:
            assert resp.status == 200, await resp.text()
            job = await resp.json()
        if job["status"] in ("completed", "failed", "cancelled"):
            return job
        assert time.monotonic() < deadline, f"job still {job['status']}"
        await asyncio.sleep(0.05)


async def test_a_job_answers_202_at_once_and_completes_with_base64_or_urls(aiohttp_server, tmp_path: Path) -> None:
    gw = await gateway_for(aiohttp_server, jobs_config(tmp_path, providers={"demo": {"adapter": "demo", "options": {"latency_ms": 300}}}))
    async with aiohttp.ClientSession() as session:
        started = time.monotonic()
        status, headers, job = await submit(session, gw, {"model": "demo-image", "prompt": "a fox", "size": "64x64"})
        assert time.monotonic() - started < 0.25  # not held for the generation
        assert status == 202
        assert job["status"] == "queued" and job["object"] == "image.job" and job["id"].startswith("imgjob_")
        assert headers["Location"] == f"/v1/images/jobs/{job['id']}"
        assert headers["Preference-Applied"] == "respond-async"
        done = await until_final(session, gw, job["id"])
        assert done["status"] == "completed" and done["started_at"] and done["finished_at"]
        (image,) = done["result"]["data"]
        assert base64.b64decode(image["b64_json"]).startswith(b"\x89PNG")
        assert done["result"]["usage"]["total_tokens"] > 0

        # The path form, and response_format url: URLs signed when the job is read.
        status, _, job = await submit(session, gw, {"model": "demo-image", "prompt": "x", "size": "64x64",
                                                    "response_format": "url", "n": 2},
                                      path="/v1/async/images/generations")
        assert status == 202
        done = await until_final(session, gw, job["id"])
        urls = [item["url"] for item in done["result"]["data"]]
        assert len(urls) == 2 and all("/files/" in u and "sig=" in u for u in urls)
        for url in urls:
            async with session.get(url) as resp:
                assert resp.status == 200 and (await resp.read()).startswith(b"\x89PNG")


async def test_jobs_are_visible_only_to_their_key(aiohttp_server, tmp_path: Path) -> None:
    a, b = new_key(), new_key()
    config = jobs_config(tmp_path) | {"access": {"keys": [key_entry("alice", a), key_entry("bob", b)]}}
    gw = await gateway_for(aiohttp_server, config)
    async with aiohttp.ClientSession() as session:
        _, _, job = await submit(session, gw, {"model": "demo-image", "prompt": "x", "size": "16x16"}, bearer(a))
        await until_final(session, gw, job["id"], bearer(a))
        for method in ("GET", "DELETE"):
            async with session.request(method, gw.make_url(f"/v1/images/jobs/{job['id']}"), headers=bearer(b)) as resp:
                body = await resp.json()
                assert resp.status == 404 and body["error"]["code"] == "job_not_found"
        async with session.get(gw.make_url("/v1/images/jobs/imgjob_" + "0" * 32), headers=bearer(a)) as resp:
            assert resp.status == 404 and (await resp.json())["error"]["code"] == "job_not_found"
        async with session.get(gw.make_url("/v1/images/jobs"), headers=bearer(b)) as resp:
            assert (await resp.json())["data"] == []
        async with session.get(gw.make_url("/v1/images/jobs"), headers=bearer(a)) as resp:
            listing = await resp.json()
        assert [j["id"] for j in listing["data"]] == [job["id"]] and listing["has_more"] is False
        async with session.get(gw.make_url("/v1/images/jobs"), headers={}) as resp:
            assert resp.status == 401


async def test_submissions_are_checked_before_202(aiohttp_server, tmp_path: Path) -> None:
    gw = await gateway_for(aiohttp_server, jobs_config(tmp_path))
    async with aiohttp.ClientSession() as session:
        status, _, body = await submit(session, gw, {"model": "nope", "prompt": "x"})
        assert status == 404 and body["error"]["param"] == "model"
        status, _, body = await submit(session, gw, {"model": "demo-image", "prompt": "x", "stream": True})
        assert status == 400 and body["error"]["param"] == "stream"
        status, _, body = await submit(session, gw, {"model": "demo-image", "prompt": "x"},
                                       {"Pixelgate-Webhook-Url": "https://example.com/hook"})
        assert status == 400 and body["error"]["code"] == "webhooks_not_configured"
        status, _, body = await submit(session, gw, {"model": "demo-image"})
        assert status == 400 and body["error"]["param"] == "prompt"


async def test_the_per_key_cap_on_active_jobs(aiohttp_server, tmp_path: Path) -> None:
    providers = {"demo": {"adapter": "demo", "options": {"latency_ms": 1500}}}
    gw = await gateway_for(aiohttp_server, jobs_config(tmp_path, providers=providers, max_active_per_key=2))
    async with aiohttp.ClientSession() as session:
        results = [await submit(session, gw, {"model": "demo-image", "prompt": "x", "size": "16x16"}) for _ in range(3)]
        assert [r[0] for r in results] == [202, 202, 429]
        assert results[2][2]["error"]["code"] == "too_many_jobs" and "max_active_per_key" in results[2][2]["error"]["message"]
        await until_final(session, gw, results[0][2]["id"])
        await until_final(session, gw, results[1][2]["id"])
        assert (await submit(session, gw, {"model": "demo-image", "prompt": "x", "size": "16x16"}))[0] == 202


async def test_a_failed_job_carries_the_synchronous_error(aiohttp_server, tmp_path: Path) -> None:
    async def moderated(request: web.Request) -> web.Response:
        error = {"error": {"message": "Your request was rejected by the safety system.", "type": "image_generation_user_error",
                           "param": None, "code": "moderation_blocked"}}
        return web.json_response(error, status=400)

    app = web.Application()
    app.router.add_post("/v1/images/generations", moderated)
    upstream = await aiohttp_server(app)
    providers = {"up": {"adapter": "openai", "base_url": str(upstream.make_url("/v1"))}}
    gw = await gateway_for(aiohttp_server, jobs_config(tmp_path, providers=providers, models={"img": [{"provider": "up"}]}))
    async with aiohttp.ClientSession() as session:
        async with session.post(gw.make_url("/v1/images/generations"), json={"model": "img", "prompt": "x"}) as resp:
            sync_status, sync_body = resp.status, await resp.json()
        _, _, job = await submit(session, gw, {"model": "img", "prompt": "x"})
        done = await until_final(session, gw, job["id"])
    assert done["status"] == "failed"
    assert (done["error_status"], {"error": done["error"]}) == (sync_status, sync_body)
    assert "result" not in done


@pytest.mark.parametrize("adapter", ["fal", "replicate"])
async def test_cancelling_a_job_cancels_the_provider_job_once(aiohttp_server, tmp_path: Path, adapter: str) -> None:
    seen: list[dict] = []
    slow = await aiohttp_server(_fake(adapter, seen, **_slow(adapter)))
    providers = {"slow": _provider(adapter, str(slow.make_url("")))}
    config = jobs_config(tmp_path / adapter, providers=providers, models={"img": [{"provider": "slow", "model": _model(adapter)}]})
    gw = await gateway_for(aiohttp_server, config)
    async with aiohttp.ClientSession() as session:
        _, _, job = await submit(session, gw, {"model": "img", "prompt": "x"})
        await _polled(seen, adapter)
        async with session.delete(gw.make_url(f"/v1/images/jobs/{job['id']}")) as resp:
            assert resp.status == 200
        done = await until_final(session, gw, job["id"])
        assert done["status"] == "cancelled"
        await _until(lambda: len(_paths(seen, CANCEL[adapter])) == 1)
        await asyncio.sleep(0.3)
        cancels = _paths(seen, CANCEL[adapter])
        assert len(cancels) == 1 and cancels[0]["method"] == METHOD[adapter]
        # Nothing more was asked of the provider after the cancel.
        last = max(i for i, s in enumerate(seen) if s["path"] == CANCEL[adapter])
        assert all(s["path"] == CANCEL[adapter] for s in seen[last:])


async def test_an_idempotent_submission_makes_one_job(aiohttp_server, tmp_path: Path) -> None:
    gw = await gateway_for(aiohttp_server, jobs_config(tmp_path))
    body = {"model": "demo-image", "prompt": "x", "size": "16x16"}
    async with aiohttp.ClientSession() as session:
        answers = await asyncio.gather(*(submit(session, gw, body, {"Idempotency-Key": "job-7"}) for _ in range(20)))
        assert {a[0] for a in answers} == {202}
        assert len({a[2]["id"] for a in answers}) == 1
        async with session.get(gw.make_url("/v1/images/jobs")) as resp:
            assert len((await resp.json())["data"]) == 1
        status, _, other = await submit(session, gw, {**body, "prompt": "y"}, {"Idempotency-Key": "job-7"})
        assert status == 409 and other["error"]["code"] == "idempotency_key_reused"


def _verify_standard_webhook(secret: str, headers: dict[str, str], body: bytes) -> None:
    """The Standard Webhooks signature, checked from the spec by hand (not with the gateway's library)."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    assert abs(time.time() - int(headers["webhook-timestamp"])) < 60
    assert any(sig == f"v1,{expected}" for sig in headers["webhook-signature"].split(" "))


async def test_a_completion_webhook_is_signed_and_names_the_job(aiohttp_server, tmp_path: Path) -> None:
    received: list[tuple[dict[str, str], bytes]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(({k.lower(): v for k, v in request.headers.items()}, await request.read()))
        return web.Response(status=204 if len(received) > 1 else 503)  # the first delivery fails: retried

    app = web.Application()
    app.router.add_post("/hook", hook)
    receiver = await aiohttp_server(app)
    webhooks = {"secrets": [WEBHOOK_SECRET], "allow_private_hosts": True, "backoff_base": 0.05}
    gw = await gateway_for(aiohttp_server, jobs_config(tmp_path, webhooks=webhooks))
    async with aiohttp.ClientSession() as session:
        _, _, job = await submit(session, gw, {"model": "demo-image", "prompt": "x", "size": "16x16"},
                                 {"Pixelgate-Webhook-Url": str(receiver.make_url("/hook"))})
        await until_final(session, gw, job["id"])
        await _until(lambda: len(received) == 2)
    (first, _), (headers, body) = received
    assert first["webhook-id"] == headers["webhook-id"] == job["id"]
    _verify_standard_webhook(WEBHOOK_SECRET, headers, body)
    event = msgspec.json.decode(body)
    assert event["type"] == "image.job.completed"
    assert event["data"]["id"] == job["id"] and event["data"]["status"] == "completed"


async def test_edits_run_as_jobs_multipart_and_json(aiohttp_server, tmp_path: Path) -> None:
    seen: list[dict] = []
    upstream = await aiohttp_server(stability_app(seen))
    providers = {"stability": {"adapter": "stability", "base_url": str(upstream.make_url("")), "api_key": "k"}}
    config = jobs_config(tmp_path, providers=providers, models={"img": [{"provider": "stability", "model": "sd3.5-large"}],
                                                              "demo-image": [{"provider": "demo"}]})
    config["providers"]["demo"] = {"adapter": "demo"}
    gw = await gateway_for(aiohttp_server, config)
    async with aiohttp.ClientSession() as session:
        form = aiohttp.FormData()
        form.add_field("model", "img")
        form.add_field("prompt", "at night")
        form.add_field("response_format", "url")
        form.add_field("image", PNG, filename="in.png", content_type="image/png")
        async with session.post(gw.make_url("/v1/async/images/edits"), data=form) as resp:
            assert resp.status == 202, await resp.text()
            job = await resp.json()
        assert job["operation"] == "edit"
        done = await until_final(session, gw, job["id"])
        assert done["status"] == "completed", done
        async with session.get(done["result"]["data"][0]["url"]) as resp:
            assert await resp.read() == PNG
        # The file reached the provider byte for byte, and the kept input is gone after the job.
        assert seen[-1]["files"]["image"]["data"] == PNG
        assert len([f for f in files_under(tmp_path / "images") if not f.endswith(".json")]) == 2  # image + result

        data_url = "data:image/png;base64," + base64.b64encode(PNG).decode()
        body = {"model": "demo-image", "prompt": "brighter", "images": [{"image_url": data_url}], "size": "64x64"}
        async with session.post(gw.make_url("/v1/images/edits"), json=body, headers=PREFER) as resp:
            assert resp.status == 202, await resp.text()
            job = await resp.json()
        done = await until_final(session, gw, job["id"])
        assert done["status"] == "completed", done
        assert base64.b64decode(done["result"]["data"][0]["b64_json"]).startswith(b"\x89PNG")


async def test_a_job_with_partial_images_reports_them_while_it_runs(aiohttp_server, tmp_path: Path) -> None:
    providers = {"demo": {"adapter": "demo", "options": {"interval_ms": 300}}}
    gw = await gateway_for(aiohttp_server, jobs_config(tmp_path, providers=providers))
    async with aiohttp.ClientSession() as session:
        for fmt in ("b64_json", "url"):
            body = {"model": "demo-image", "prompt": "x", "size": "64x64", "n": 2, "partial_images": 2,
                    "response_format": fmt}
            _, _, job = await submit(session, gw, body)
            progress = []
            deadline = time.monotonic() + 15
            while True:
                async with session.get(gw.make_url(f"/v1/images/jobs/{job['id']}")) as resp:
                    seen = await resp.json()
                if seen["status"] == "completed":
                    break
                progress.append(seen.get("partial_images", 0))
                assert seen["status"] != "failed", seen["error"]
                assert seen["status"] in ("queued", "in_progress") and time.monotonic() < deadline
                await asyncio.sleep(0.05)
            # Counted as they came (progress), and the result is the synchronous body: two images.
            assert max(progress) >= 1 and progress == sorted(progress)
            assert seen["partial_images"] == 4
            data = seen["result"]["data"]
            assert len(data) == 2 and seen["result"]["usage"]["total_tokens"] > 0
            assert seen["result"]["output_format"] == "png" and isinstance(seen["result"]["created"], int)
            for item in data:
                if fmt == "url":
                    async with session.get(item["url"]) as resp:
                        assert (await resp.read()).startswith(b"\x89PNG")
                else:
                    assert base64.b64decode(item["b64_json"]).startswith(b"\x89PNG")


async def test_a_streamed_job_ending_in_an_error_event_fails_with_it(aiohttp_server, tmp_path: Path) -> None:
    async def stream(request: web.Request) -> web.StreamResponse:
        assert (await request.json())["stream"] is True
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        partial = {"type": "image_generation.partial_image", "b64_json": "iVBORw0KGgo=", "partial_image_index": 0}
        await resp.write(b"event: image_generation.partial_image\ndata: " + msgspec.json.encode(partial) + b"\n\n")
        error = {"type": "error", "error": {"message": "Your request was rejected by the safety system.",
                                            "type": "image_generation_user_error", "code": "moderation_blocked", "param": None}}
        await resp.write(b"event: error\ndata: " + msgspec.json.encode(error) + b"\n\n")
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/v1/images/generations", stream)
    upstream = await aiohttp_server(app)
    providers = {"up": {"adapter": "openai", "base_url": str(upstream.make_url("/v1"))}}
    gw = await gateway_for(aiohttp_server, jobs_config(tmp_path, providers=providers, models={"img": [{"provider": "up"}]}))
    async with aiohttp.ClientSession() as session:
        _, _, job = await submit(session, gw, {"model": "img", "prompt": "x", "partial_images": 1})
        done = await until_final(session, gw, job["id"])
    assert done["status"] == "failed" and done["partial_images"] == 1
    assert done["error"]["code"] == "moderation_blocked" and "safety" in done["error"]["message"]
    assert [f for f in files_under(tmp_path / "images") if not f.endswith(".json")] == []


async def test_a_keys_default_webhook_and_its_config_checks(aiohttp_server, tmp_path: Path) -> None:
    received: list[dict[str, str]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append({k.lower(): v for k, v in request.headers.items()})
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/hook", hook)
    receiver = await aiohttp_server(app)
    key = new_key()
    webhooks = {"secrets": [WEBHOOK_SECRET], "allow_private_hosts": True}
    config = jobs_config(tmp_path, webhooks=webhooks) | {
        "access": {"keys": [key_entry("alice", key, webhook_url=str(receiver.make_url("/hook")))]}}
    gw = await gateway_for(aiohttp_server, config)
    async with aiohttp.ClientSession() as session:
        _, _, job = await submit(session, gw, {"model": "demo-image", "prompt": "x", "size": "16x16"}, bearer(key))
        await until_final(session, gw, job["id"], bearer(key))
        await _until(lambda: len(received) == 1)
    assert received[0]["webhook-id"] == job["id"]

    with pytest.raises(ConfigError, match=r"access.keys\[0\].webhook_url: needs jobs.webhooks"):
        parse_config(jobs_config(tmp_path) | {"access": {"keys": [key_entry("a", key, webhook_url="https://example.com/h")]}}, env={})
    private = jobs_config(tmp_path, webhooks={"secrets": [WEBHOOK_SECRET]}) | {
        "access": {"keys": [key_entry("a", key, webhook_url="https://10.0.0.1/h")]}}
    with pytest.raises(ConfigError, match=r"access.keys\[0\].webhook_url: "):
        parse_config(private, env={})
